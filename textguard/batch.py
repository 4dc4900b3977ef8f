"""Reads of concurrent checks gathered into one Redis call each.

A check makes two reads, its band lookups and then the stored text of its candidates, and
spends a loopback round trip and an event-loop wake-up on each, most of it client-side CPU in
redis-py and the socket calls. Checks that read at about the same time can share them: the
waiting lookups go out as one script call and the waiting fetches as one pipeline, and each
check gets back exactly what its own read would have returned. Two readers decide when:

- `SharedReader` (live traffic: concurrent requests and streams): a read goes out at once
  unless one of its kind is in flight; then it waits for that one and goes out with every read
  that queued meanwhile. An idle server reads as before; a busy one makes fewer calls.
- `BatchedReader` (offline scans): a batch of checks runs concurrently and meets at each read,
  which goes out once every check of the batch waits on it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from typing import TypeVar

import numpy as np

from textguard._redis import AsyncClient
from textguard.store import ChunkCache, DocumentRegion, IndexReader, Layout, Postings, cut_regions, ragged

T = TypeVar("T")
Wanted = dict[int, list[tuple[int, int]]]
Lookup = tuple[np.ndarray, "asyncio.Future[Postings]"]
Fetch = tuple[Wanted, "asyncio.Future[list[DocumentRegion]]"]

SCRIPT_KEYS = 8192
"""Band keys per lookup script: gathered lookups go out as several scripts at once (still one
round trip), so that none holds Redis, single-threaded, long enough to delay live checks."""


class _GatheringReader(IndexReader):
    """An IndexReader whose reads queue up until `_flush_lookups` / `_flush_fetches` send them."""

    def __init__(self, client: AsyncClient, layout: Layout, chunks: ChunkCache | None = None) -> None:
        super().__init__(client, layout, chunks)
        self._lookups: list[Lookup] = []
        self._fetches: list[Fetch] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def lookup(self, band_keys: np.ndarray) -> Postings:
        future: asyncio.Future[Postings] = asyncio.get_running_loop().create_future()
        self._lookups.append((band_keys, future))
        self._arrived()
        return await future

    async def regions(self, wanted: Wanted) -> list[DocumentRegion]:
        future: asyncio.Future[list[DocumentRegion]] = asyncio.get_running_loop().create_future()
        self._fetches.append((wanted, future))
        self._arrived()
        return await future

    def _arrived(self) -> None:
        """A read has queued: send what is waiting, or leave it to wait."""
        raise NotImplementedError

    def _flush_lookups(self) -> asyncio.Task[None]:
        lookups, self._lookups = [w for w in self._lookups if not w[1].done()], []
        return self._start(self._send_lookups(lookups))

    def _flush_fetches(self) -> asyncio.Task[None]:
        fetches, self._fetches = [w for w in self._fetches if not w[1].done()], []
        return self._start(self._send_fetches(fetches))

    def _start(self, sending: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(sending)
        self._sending.add(task)
        task.add_done_callback(self._sent)
        return task

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if not task.cancelled():
            task.exception()  # failures reached the waiting checks through their futures

    async def _send_lookups(self, lookups: list[Lookup]) -> None:
        if not lookups:
            return
        if len(lookups) == 1:  # nothing to merge
            keys, future = lookups[0]
            try:
                _settle(future, await IndexReader.lookup(self, keys))
            except BaseException as exc:
                _fail(lookups, exc)
                raise
            return
        keys = np.unique(np.concatenate([k for k, _ in lookups]))
        starts = range(0, len(keys), SCRIPT_KEYS)
        try:
            replies = await asyncio.gather(*(IndexReader.lookup(self, keys[i:i + SCRIPT_KEYS]) for i in starts))
        except BaseException as exc:  # every waiting check sees the failure of the shared read
            _fail(lookups, exc)
            raise
        merged = Postings.concatenate([replace(part, runs=part.runs + start)
                                       for start, part in zip(starts, replies, strict=True)])
        order = np.argsort(merged.runs, kind="stable")  # (a cluster answers shard by shard)
        counts = np.bincount(merged.runs, minlength=len(keys))
        firsts = np.cumsum(counts) - counts
        for band_keys, future in lookups:
            positions = np.searchsorted(keys, band_keys)
            own = order[ragged(firsts[positions], counts[positions])]
            _settle(future, Postings(np.repeat(np.arange(len(band_keys)), counts[positions]),
                                     merged.numbers[own], merged.offsets[own]))

    async def _send_fetches(self, fetches: list[Fetch]) -> None:
        if not fetches:
            return
        union: Wanted = {}
        for wanted, _ in fetches:
            for number, ranges in wanted.items():
                union.setdefault(number, []).extend(ranges)
        try:
            fetched = await IndexReader.regions(self, union)
        except BaseException as exc:
            _fail(fetches, exc)
            raise
        for wanted, future in fetches:
            _settle(future, fetched if len(fetches) == 1 else cut_regions(fetched, wanted))


class SharedReader(_GatheringReader):
    """Live checks' reader: one lookup call and one fetch in flight; reads that arrive meanwhile
    go out together when it returns. One per Guard (per event loop).

    A call still out after `STALE_S` (Redis stalled, or a connection waiting on its timeout)
    no longer holds back the reads queued behind it: they go out on their own, so that checks
    recover as soon as Redis does rather than when the stalled call gives up.
    """

    STALE_S = 0.05

    def __init__(self, client: AsyncClient, layout: Layout) -> None:
        super().__init__(client, layout)
        self._lookup_since: float | None = None  # when the lookup call in flight went out
        self._fetch_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def _arrived(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._lookups and (self._lookup_since is None or now - self._lookup_since > self.STALE_S):
            self._lookup_since = now
            self._flush_lookups().add_done_callback(functools.partial(self._lookup_done, now))
        if self._fetches and (self._fetch_since is None or now - self._fetch_since > self.STALE_S):
            self._fetch_since = now
            self._flush_fetches().add_done_callback(functools.partial(self._fetch_done, now))
        if (self._lookups or self._fetches) and self._timer is None:
            self._timer = loop.call_later(self.STALE_S, self._look_again)  # queued behind a call in flight

    def _look_again(self) -> None:
        self._timer = None
        self._arrived()

    def _lookup_done(self, since: float, _: asyncio.Task[None]) -> None:
        if self._lookup_since == since:  # not a stale call that was overtaken
            self._lookup_since = None
            self._arrived()

    def _fetch_done(self, since: float, _: asyncio.Task[None]) -> None:
        if self._fetch_since == since:
            self._fetch_since = None
            self._arrived()


class BatchedReader(_GatheringReader):
    """An offline batch's reader: the reads made by the checks of one `run` reach Redis together."""

    def __init__(self, client: AsyncClient, layout: Layout, chunks: ChunkCache | None = None) -> None:
        super().__init__(client, layout, chunks)
        self._running = 0

    async def run(self, checks: Sequence[Awaitable[T]]) -> list[T | BaseException]:
        """Await `checks` (coroutines reading through this reader) together; an exception is
        returned in its check's place."""
        if self._running:
            raise RuntimeError("BatchedReader.run is already running")
        self._running = len(checks)

        async def one(check: Awaitable[T]) -> T:
            try:
                return await check
            finally:
                self._running -= 1
                self._arrived()

        return await asyncio.gather(*(one(c) for c in checks), return_exceptions=True)

    def _arrived(self) -> None:
        waiting = len(self._lookups) + len(self._fetches)
        if waiting and waiting >= self._running:
            self._flush_lookups()
            self._flush_fetches()


def _settle(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


def _fail(waiting: Sequence[tuple[object, asyncio.Future[T]]], exc: BaseException) -> None:
    for _, future in waiting:
        if future.done():
            continue
        if isinstance(exc, Exception):
            future.set_exception(exc)
        else:
            future.cancel()
