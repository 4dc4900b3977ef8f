"""Key names, sizing (bucket bits from the corpus and the server's small-hash limit) and shard tags."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from redis.crc import key_slot

from textguard._redis import REDIS_ERRORS, SyncClient
from textguard.errors import IndexMismatchError
from textguard.sketch import SketchParams
from textguard.store._format import (
    ENTRIES_PER_CHAR,
    FALLBACK_SMALL_HASH_LIMIT,
    FIELD_BYTES,
    FORMAT_VERSION,
    MAX_BUCKET_BITS,
    MIN_BUCKET_BITS,
    SHARDS,
    TARGET_FILL,
)
from textguard.store._membership import MembershipFilter, filter_positions

__all__ = ["SHARD_SLOTS", "FilterSlot", "Layout", "by_shard", "choose_bucket_bits", "small_hash_limit"]

logger = logging.getLogger(__name__)

class FilterSlot:
    """The key filter the readers of one guard share (as they share a ChunkCache): the snapshot
    lookups go through (None until read, or while out of date), and the background read of a
    fresh one."""

    def __init__(self) -> None:
        self.current: MembershipFilter | None = None
        self.refreshing: asyncio.Task[None] | None = None
        self.next_refresh = 0.0  # event loop time before which no read starts


class Layout:
    """Key names and the packing of band keys; shared by the reading and the writing side.

    `bucket_bits` None means "whatever the index records" (or, for a new index, what its first
    writer chooses); `adopt` fills it in from the stored record.
    """

    def __init__(self, index: str, params: SketchParams, bucket_bits: int | None,
                 extra: dict[str, Any] | None = None) -> None:
        self.base = f"textguard:v{FORMAT_VERSION}:{index}"
        control = "{" + self.base + "}"
        self.meta = f"{control}:meta"
        self.docs = f"{control}:docs"
        self.live = f"{control}:live"
        self.pending = f"{control}:pending"
        self.versions = f"{control}:versions"
        self.stats = f"{control}:stats"
        self.seq = f"{control}:seq"
        self.nonce = f"{control}:nonce"
        self.params = params
        self._requested_bits = bucket_bits
        self.bucket_bits = bucket_bits
        self.filter_bits: int | None = None  # chosen with a new index; None for one from before filters
        self._extra = extra or {}
        self._bucket_prefix = f"{self.base}:" + "{s%d}" + ":b%d"

    def record(self) -> dict[str, Any]:
        filter_bits = {} if self.filter_bits is None else {"filter_bits": self.filter_bits}
        return {"format": FORMAT_VERSION, "bucket_bits": self.bucket_bits, **filter_bits,
                **self.params.as_record(), **self._extra}

    def key_patterns(self) -> tuple[str, str]:
        """SCAN patterns that together match every key of the index: the data keys start with
        its base, the control keys carry it in their hash tag."""
        return self.base + "*", "[{]" + self.base + "}*"

    def document(self, number: int) -> str:
        return f"{self.base}:d:{number}"

    def packed(self, band_keys: np.ndarray) -> tuple[np.ndarray, bytes]:
        """Bucket numbers and the packed 5-byte fields for `band_keys`."""
        if self.bucket_bits is None:
            raise RuntimeError("the index's bucket_bits are not known yet (adopt its record first)")
        keys = band_keys.astype(np.uint64)
        fields = (keys >> np.uint64(self.bucket_bits)).astype(">u8").tobytes()
        # keep the low FIELD_BYTES bytes of each big-endian 8-byte value
        packed = np.frombuffer(fields, dtype=np.uint8).reshape(-1, 8)[:, 8 - FIELD_BYTES:].tobytes()
        return (keys & np.uint64((1 << self.bucket_bits) - 1)).astype(np.uint32), packed

    def names(self, buckets: Iterable[int]) -> list[str]:
        return [self._bucket_prefix % (b % SHARDS, b) for b in buckets]

    def filter_keys(self) -> list[str]:
        return [f"{self.base}:{{s{shard}}}:f" for shard in range(SHARDS)]

    def filter_slots(self, band_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each band key's shard and its bits in that shard's filter (the index must have one)."""
        if self.bucket_bits is None or self.filter_bits is None:
            raise RuntimeError("the index's bucket_bits and filter_bits are not known yet")
        stored_bits = self.bucket_bits + 8 * FIELD_BYTES  # what bucket and field keep of a key
        keys = band_keys.astype(np.uint64)
        if stored_bits < 64:
            keys = keys & np.uint64((1 << stored_bits) - 1)
        return (keys % np.uint64(SHARDS)).astype(np.intp), filter_positions(keys, self.filter_bits)

    def entries(self, band_keys: np.ndarray) -> tuple[np.ndarray, list[str], bytes]:
        """Bucket numbers, bucket key names and the packed 5-byte fields for `band_keys`."""
        buckets, packed = self.packed(band_keys)
        return buckets, self.names(buckets.tolist()), packed

    def adopt(self, stored: str | bytes) -> None:
        """Take bucket_bits from the stored record unless set explicitly; then `check` it."""
        record = json.loads(stored)
        if self._requested_bits is None:
            self.bucket_bits = record.get("bucket_bits")
        self.filter_bits = record.get("filter_bits")
        self.check(stored)

    def check(self, stored: str | bytes | None) -> None:
        """Refuse an index built with other parameters (their hashes would never match)."""
        if stored is None:
            return
        found = json.loads(stored)
        expected = self.record()
        differing = sorted(k for k in expected.keys() | found.keys() if found.get(k) != expected.get(k))
        if differing:
            detail = ", ".join(f"{k}: index has {found.get(k)!r}, settings say {expected.get(k)!r}"
                               for k in differing)
            raise IndexMismatchError(
                f"index {self.base!r} was built with other parameters ({detail}); "
                "use the settings it was built with, another --index name, or rebuild it")


def choose_bucket_bits(characters: int, small_hash_limit: int) -> int:
    """Bucket bits for an index expected to hold `characters`: buckets then average at most
    TARGET_FILL entries, and at most half the small-hash limit (room for chance and for the
    corpus to grow). Lookups scan a listpack, so fuller buckets cost Redis CPU per check and
    per write, while the ~100 bytes each key costs are already small beside 64 entries."""
    wanted = characters * ENTRIES_PER_CHAR / max(min(TARGET_FILL, small_hash_limit / 2), 1)
    bits = math.ceil(math.log2(wanted)) if wanted > 1 else 0
    return min(max(bits, MIN_BUCKET_BITS), MAX_BUCKET_BITS)


def small_hash_limit(client: SyncClient) -> int:
    """Entries a hash may hold and stay a compact listpack (Redis 7) or ziplist (Redis 6)."""
    try:
        for name in ("hash-max-listpack-entries", "hash-max-ziplist-entries"):
            value = client.config_get(name).get(name)
            if value is not None:
                return int(value)
    except REDIS_ERRORS as exc:  # CONFIG may be disabled on managed services
        logger.warning("cannot read the small-hash limit (%s); assuming %d", exc, FALLBACK_SMALL_HASH_LIMIT)
    return FALLBACK_SMALL_HASH_LIMIT


SHARD_SLOTS = [key_slot(b"s%d" % shard) for shard in range(SHARDS)]  # the slot of hash tag {sN}


def by_shard(buckets: np.ndarray) -> list[np.ndarray]:
    """Indices of `buckets` grouped by shard tag (each group lives in one cluster slot)."""
    shards = buckets % SHARDS
    order = np.argsort(shards, kind="stable")
    cuts = np.flatnonzero(np.diff(shards[order])) + 1
    return np.split(order, cuts) if len(order) else []
