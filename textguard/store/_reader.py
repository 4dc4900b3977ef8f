"""`IndexReader`: the request path, no writes.

A check is one round trip for its lookups (only the keys the key filter may hold) and one for
the stored text it verifies against (what the chunk cache does not hold), then a read of
`live` that confirms the documents it found. A check's deadline (`check_deadline`) is honoured
at each round trip. On a cluster, each round trip is one pipeline per node, the nodes at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import redis.asyncio.cluster as acluster
from redis.crc import key_slot

from textguard._redis import REDIS_ERRORS, AsyncClient
from textguard.store._chunks import Chunk, ChunkCache, assembled_regions, chunk_numbers
from textguard.store._cluster import NodePipelines, encode_command
from textguard.store._format import (
    CHUNK_CHARS,
    FIELD_BYTES,
    FILTER_REFRESH_SECONDS,
    SHARDS,
    DocumentMeta,
    DocumentRegion,
    Postings,
    Ranges,
)
from textguard.store._layout import SHARD_SLOTS, FilterSlot, Layout, by_shard
from textguard.store._membership import MembershipFilter
from textguard.store._scripts import LOOKUP

__all__ = ["IndexReader", "Reader", "check_deadline"]

logger = logging.getLogger(__name__)


check_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("textguard_check_deadline",
                                                                           default=None)
"""The event loop time by which the current check must be done (None: no budget)."""


def _ensure_time_left() -> None:
    """Do not start a round trip for a check already over its budget (CPU work or a wait for
    the processor used it up): cancelled in the middle of the round trip instead, redis-py
    would drop the connection, and under overload every such check would cost a new one."""
    deadline = check_deadline.get()
    if deadline is not None and asyncio.get_running_loop().time() >= deadline:
        raise TimeoutError("the check's time budget ran out before its next Redis round trip")


class Reader(Protocol):
    """What a check reads from the index: `IndexReader` serves one check at a time,
    `BatchedReader` the checks of a batch at once (each getting what its own read would)."""

    @property
    def key_filter_held(self) -> MembershipFilter | None:
        """The key-filter snapshot the last lookup trusted."""

    async def lookup(self, band_keys: np.ndarray, *, trusted: MembershipFilter | None = None) -> Postings:
        """The postings of `band_keys`."""

    def cached_regions(self, wanted: Ranges) -> list[DocumentRegion] | None:
        """`wanted` from the text already held, or None if some of it is not."""

    async def regions(self, wanted: Ranges) -> list[DocumentRegion]:
        """`wanted`, fetched where it is not held."""

    async def live_metas(self, numbers: list[int]) -> dict[int, DocumentMeta]:
        """The records of those of `numbers` that are still live."""


class IndexReader:
    """The request path, no writes: at most two pipelined round trips per check (on a cluster,
    per node: the pipelines to the nodes run at once)."""

    def __init__(self, client: AsyncClient, layout: Layout, chunks: ChunkCache | None = None,
                 key_filter: FilterSlot | None = None) -> None:
        self._client = client
        self._layout = layout
        self.chunks = chunks if chunks is not None else ChunkCache()
        self.key_filter = key_filter if key_filter is not None else FilterSlot()
        self._lookup = client.register_script(LOOKUP)
        self._nodes = NodePipelines(client) if isinstance(client, acluster.RedisCluster) else None
        self._sha = self._lookup.sha.encode()
        self._checked = False

    async def ensure_compatible(self) -> bool:
        """Check the index's parameters once; False while there is no index yet (nothing to find).

        Until the index exists it is looked for again at every check, so that a guard started
        before its corpus learns the parameters the first writer records.
        """
        if not self._checked:
            stored = await self._client.get(self._layout.meta)
            if stored is None:
                return False
            self._layout.adopt(stored)
            self._checked = True
        return True

    @property
    def key_filter_held(self) -> MembershipFilter | None:
        """The filter snapshot lookups go through now (None: they go unfiltered)."""
        return self.key_filter.current

    async def lookup(self, band_keys: np.ndarray, *, trusted: MembershipFilter | None = None) -> Postings:
        """Postings of every band key: one script call on one Redis (for the keys its filter
        lets through); on a cluster, one per shard tag touched, pipelined per node.

        `trusted`: a filter snapshot an earlier lookup of the caller's found current. While it
        is still the one held, a lookup it lets no key through asks Redis nothing: the caller
        accepts the corpus as of that earlier lookup (a stream, as of its start).
        """
        if len(band_keys) == 0 or not await self.ensure_compatible():
            return Postings.empty()
        if self._nodes is None:
            return await self._lookup_filtered(band_keys, trusted)
        _ensure_time_left()
        buckets, fields = self._layout.packed(band_keys)
        groups = by_shard(buckets)
        field_rows = np.frombuffer(fields, dtype=np.uint8).reshape(-1, FIELD_BYTES)
        calls = []
        for group in groups:
            names = self._layout.names(buckets[group].tolist())
            calls.append((SHARD_SLOTS[int(buckets[group[0]]) % SHARDS], encode_command(
                b"EVALSHA", self._sha, b"%d" % len(names), *(n.encode() for n in names),
                (self._layout.base + ":").encode(), buckets[group].astype(">u4").tobytes(),
                field_rows[group].tobytes())))
        replies = [reply for group in await self._nodes.run(calls, self._lookup) for reply in group]
        return Postings.unpack(np.concatenate(groups).tolist(), replies)

    async def _lookup_filtered(self, band_keys: np.ndarray, trusted: MembershipFilter | None) -> Postings:
        """`lookup` on one Redis, asking only for the keys the filter says may be there. Should
        the reply show the filter out of date (the corpus changed since it was read), the other
        keys are looked up too, in a second round trip, and a fresh filter is read in the
        background: a guard never misses a document for a filter it holds."""
        membership = self.key_filter.current
        asked = np.arange(len(band_keys))
        if membership is not None:
            asked = np.flatnonzero(membership.may_contain(*self._layout.filter_slots(band_keys)))
            if len(asked) == 0 and membership is trusted:
                return Postings.empty()
        replies, nonce, generation = await self._lookup_once(band_keys[asked])
        runs = asked.tolist()
        if membership is None or (membership.nonce, membership.generation) != (nonce, generation):
            if membership is not None:
                self.key_filter.current = None
                skipped = np.setdiff1d(np.arange(len(band_keys)), asked, assume_unique=True)
                more, _, _ = await self._lookup_once(band_keys[skipped])
                runs += skipped.tolist()
                replies += more
            self._schedule_refresh()
        return Postings.unpack(runs, replies)

    async def _lookup_once(self, band_keys: np.ndarray) -> tuple[list[bytes | None], bytes | None, int]:
        """The lookup script's replies for `band_keys`, and the index's nonce and generation."""
        _ensure_time_left()
        buckets, fields = self._layout.packed(band_keys)
        *replies, nonce, generation = await self._lookup(keys=[], args=[
            self._layout.base + ":", buckets.astype(">u4").tobytes(), fields, self._layout.nonce, self._layout.stats])
        self.chunks.observe_nonce(nonce)
        return replies, nonce, int(generation or 0)

    def _schedule_refresh(self) -> None:
        """Read the filter again in the background, at most once a second (while a corpus is
        being loaded the generation changes at every commit, and lookups go unfiltered)."""
        loop, slot = asyncio.get_running_loop(), self.key_filter
        if self._layout.filter_bits is None or (slot.refreshing is not None and not slot.refreshing.done()) \
                or loop.time() < slot.next_refresh:
            return
        slot.next_refresh = loop.time() + FILTER_REFRESH_SECONDS
        # (a context of its own: not bound by the budget of the check that started it)
        slot.refreshing = loop.create_task(self._refresh_quietly(), context=contextvars.Context())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh_filter()
        except REDIS_ERRORS as exc:
            logger.warning("cannot read the index's key filter (%s); lookups go unfiltered until it is read", exc)

    async def refresh_filter(self) -> None:
        """Read the index's filter of band keys (about 8 MB for 13 M characters), as one snapshot
        with the nonce and generation it is valid for. (Not on a cluster: its lookups go unfiltered.)"""
        if self._nodes is not None:
            return
        pipe = self._client.pipeline(transaction=True)
        pipe.get(self._layout.meta)
        pipe.get(self._layout.nonce)
        pipe.hget(self._layout.stats, "generation")
        pipe.mget(self._layout.filter_keys())
        meta, nonce, generation, strings = await pipe.execute()
        filter_bits = json.loads(meta).get("filter_bits") if meta else None
        if filter_bits is None or filter_bits != self._layout.filter_bits:
            self.key_filter.current = None  # no filter, or one of an index built anew since start-up
            return
        self.key_filter.current = MembershipFilter.from_strings(nonce, int(generation or 0), filter_bits, strings)

    async def aclose(self) -> None:
        refreshing = self.key_filter.refreshing
        if refreshing is not None:
            refreshing.cancel()
            await asyncio.gather(refreshing, return_exceptions=True)
        if self._nodes is not None:
            await self._nodes.aclose()

    def cached_regions(self, wanted: Ranges) -> list[DocumentRegion] | None:
        """`regions(wanted)` from the chunks this reader holds, without a round trip; None unless
        it holds them all (and knows they are of the index its last lookup saw).

        They may have been withdrawn since: what is found in them must still be confirmed with
        `live_metas`. But most candidates are chance, nothing is found, and nothing need be asked.
        """
        if self.chunks.nonce is None:
            return None
        regions: list[DocumentRegion] = []
        for number in sorted(wanted):
            chunks = chunk_numbers(wanted[number])
            held = {c: chunk for c in chunks if (chunk := self.chunks.get(number, c)) is not None}
            chars = next(iter(held.values())).meta.get("chars") if held else None
            if chars is None or len(held) < sum(c * CHUNK_CHARS < int(chars) for c in chunks):
                return None  # a chunk of the document that is not held (those past its end are none)
            regions += assembled_regions(number, held)
        return regions

    async def regions(self, wanted: Ranges) -> list[DocumentRegion]:
        """Text around the wanted original offsets of live documents: one round trip, which
        reads only the chunks this reader does not hold already."""
        numbers = sorted(wanted)
        chunk_lists = [chunk_numbers(wanted[number]) for number in numbers]
        regions, stale = await self._regions(numbers, chunk_lists, use_cache=True)
        if stale:  # the index was built anew under numbers this reader had cached: read them afresh
            again, _ = await self._regions(stale, [chunk_lists[numbers.index(n)] for n in stale], use_cache=False)
            regions = sorted([*regions, *again], key=lambda region: (region.number, region.start))
        return regions

    async def _regions(self, numbers: list[int], chunk_lists: list[list[int]],
                       use_cache: bool) -> tuple[list[DocumentRegion], list[int]]:
        """The regions, and the numbers whose cached chunks belong to another version of the
        document than the one stored now."""
        held = [{c: cached for c in chunks if (cached := self.chunks.get(number, c)) is not None} if use_cache else {}
                for number, chunks in zip(numbers, chunk_lists, strict=True)]
        missing = [[c for c in chunks if c not in have] for chunks, have in zip(chunk_lists, held, strict=True)]
        live, *documents = await self._read_documents(numbers, missing)
        regions: list[DocumentRegion] = []
        stale: list[int] = []
        for number, is_live, have, chunks, values in zip(numbers, live, held, missing, documents, strict=True):
            if is_live is None or values[0] is None:
                continue  # not committed, or withdrawn since the lookup
            meta = json.loads(values[0])
            digest = meta.get("sha256", "")
            if any(chunk.digest != digest for chunk in have.values()):
                stale.append(number)
                continue
            fetched = {c: Chunk.decode(meta, blob) for c, blob in zip(chunks, values[1:], strict=True)
                       if blob is not None}
            if digest:  # without a digest one version cannot be told from another: not cached
                for c, chunk in fetched.items():
                    self.chunks.put(number, c, chunk)
            regions += assembled_regions(number, {**have, **fetched}, meta)
        return regions, stale

    async def live_metas(self, numbers: list[int]) -> dict[int, DocumentMeta]:
        """The metadata of those of `numbers` that are live now: one round trip."""
        live, *documents = await self._read_documents(numbers, [[] for _ in numbers])
        return {number: json.loads(values[0]) for number, is_live, values in zip(numbers, live, documents, strict=True)
                if is_live is not None and values[0] is not None}

    async def _read_documents(self, numbers: list[int], chunk_lists: list[list[int]]) -> list[list[Any]]:
        """One round trip: which of `numbers` are live, then per number its metadata and chunks."""
        _ensure_time_left()
        reads = [[self._layout.live, *(str(n) for n in numbers)]]
        reads += [[self._layout.document(number), "meta", *(f"t{c}" for c in chunks)]
                  for number, chunks in zip(numbers, chunk_lists, strict=True)]
        if self._nodes is not None:
            encoded = [[part.encode() for part in read] for read in reads]
            return await self._nodes.run([(key_slot(read[0]), encode_command(b"HMGET", *read)) for read in encoded])
        pipe = self._client.pipeline(transaction=False)
        for key, *fields in reads:
            pipe.hmget(key, fields)
        return list(await pipe.execute())

    async def passages(self, spans: Sequence[tuple[str, int, int]]) -> list[DocumentRegion | None]:
        """Stored text of each (document id, start, end), original offsets clipped to the
        document; None where the document is not (or no longer) indexed. Two round trips in all."""
        if not spans:
            return []
        ids = sorted({doc_id for doc_id, _, _ in spans})
        numbers = {doc_id: int(n) for doc_id, n in zip(ids, await self._client.hmget(self._layout.docs, ids),
                                                           strict=True) if n is not None}
        wanted: Ranges = {}
        for doc_id, start, end in spans:
            if doc_id in numbers:
                wanted.setdefault(numbers[doc_id], []).append((start, end))
        by_number: dict[int, list[DocumentRegion]] = {}
        for region in await self.regions(wanted) if wanted else []:
            by_number.setdefault(region.number, []).append(region)
        found: list[DocumentRegion | None] = []
        for doc_id, start, end in spans:
            regions = by_number.get(numbers.get(doc_id, -1), [])
            found.append(next((r.cut(start, end) for r in regions
                               if r.start <= max(start, 0) < r.start + max(len(r.text), 1)), None))
        return found
