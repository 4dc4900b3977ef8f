"""Many checks, two round trips: the Redis reads of concurrent checks gathered into one call each.

A check makes two reads, its band lookups and then the stored text of its candidates, and
spends a loopback round trip and an event-loop wake-up on each. Offline scans check thousands
of answers, so `BatchedReader` lets a batch of ordinary checks (the detector's own code, run
concurrently) meet at each read: once every check of the batch is waiting on a read, the
waiting lookups go out as one script call and the waiting fetches as one pipeline, and each
check gets back exactly what its own read would have returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from typing import TypeVar

import numpy as np

from textguard._redis import AsyncClient
from textguard.store._chunks import ChunkCache, cut_regions
from textguard.store._format import DocumentRegion, Postings, Ranges, ragged
from textguard.store._layout import FilterSlot, Layout
from textguard.store._membership import MembershipFilter
from textguard.store._reader import IndexReader

__all__ = ["SCRIPT_KEYS", "BatchedReader"]

T = TypeVar("T")

SCRIPT_KEYS = 8192
"""Band keys per lookup script: a batch's lookups go out as several scripts at once (still one
round trip), so that none holds Redis, single-threaded, long enough to delay live checks."""


class BatchedReader(IndexReader):
    """An IndexReader whose reads, made by the checks of one `run`, reach Redis together."""

    def __init__(self, client: AsyncClient, layout: Layout, chunks: ChunkCache | None = None,
                 key_filter: FilterSlot | None = None) -> None:
        super().__init__(client, layout, chunks, key_filter)
        self._running = 0
        self._lookups: list[tuple[np.ndarray, asyncio.Future[Postings]]] = []
        self._fetches: list[tuple[Ranges, asyncio.Future[list[DocumentRegion]]]] = []
        self._sending: set[asyncio.Task[None]] = set()

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
                self._send_when_all_wait()

        return await asyncio.gather(*(one(c) for c in checks), return_exceptions=True)

    async def lookup(self, band_keys: np.ndarray, *, trusted: MembershipFilter | None = None) -> Postings:
        """(A batch's lookups always confirm the filter: `trusted` is not used.)"""
        future: asyncio.Future[Postings] = asyncio.get_running_loop().create_future()
        self._lookups.append((band_keys, future))
        self._send_when_all_wait()
        return await future

    def cached_regions(self, wanted: Ranges) -> list[DocumentRegion] | None:
        """None: a batch's fetches share one round trip anyway, and confirming what held text
        shows would take another (`live_metas` is not batched)."""
        return None

    async def regions(self, wanted: Ranges) -> list[DocumentRegion]:
        future: asyncio.Future[list[DocumentRegion]] = asyncio.get_running_loop().create_future()
        self._fetches.append((wanted, future))
        self._send_when_all_wait()
        return await future

    def _send_when_all_wait(self) -> None:
        waiting = len(self._lookups) + len(self._fetches)
        if waiting and waiting >= self._running:
            lookups, fetches = self._lookups, self._fetches
            self._lookups, self._fetches = [], []
            task = asyncio.get_running_loop().create_task(self._send(lookups, fetches))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, lookups: list[tuple[np.ndarray, asyncio.Future[Postings]]],
                    fetches: list[tuple[Ranges, asyncio.Future[list[DocumentRegion]]]]) -> None:
        # Failures reach the waiting checks through their futures; nothing is left to raise here.
        await asyncio.gather(self._send_lookups(lookups), self._send_fetches(fetches), return_exceptions=True)

    async def _send_lookups(self, lookups: list[tuple[np.ndarray, asyncio.Future[Postings]]]) -> None:
        if not lookups:
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

    async def _send_fetches(self, fetches: list[tuple[Ranges, asyncio.Future[list[DocumentRegion]]]]) -> None:
        if not fetches:
            return
        union: Ranges = {}
        for wanted, _ in fetches:
            for number, ranges in wanted.items():
                union.setdefault(number, []).extend(ranges)
        try:
            fetched = await super().regions(union)
        except BaseException as exc:
            _fail(fetches, exc)
            raise
        for wanted, future in fetches:
            _settle(future, fetched if len(fetches) == 1 else cut_regions(fetched, wanted))


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
