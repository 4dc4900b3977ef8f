"""Which band keys the index may hold: a Bloom filter that a reader keeps, so that a lookup asks
Redis only for keys that can be there.

Nearly all band keys of a clean answer are in no document (and most even of an answer with a
copy: `benchmarks.speed` counts them), and in Redis each costs a hash lookup in cold memory:
most of a check's Redis time went on keys that were not there. The filter lives in Redis as one bit
string per shard tag (`…:{sN}:f`, beside that shard's buckets, so that the script adding a
shard's postings sets its bits in the same call, atomically, also on a cluster), two bits per
band entry. Bits are set before the documents they belong to are committed, and a commit bumps
the index's `generation`: a snapshot of the filter taken with generation G says "maybe" for
every key of every document committed up to G. Removed documents leave their bits behind, which
costs only a lookup that finds nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MembershipFilter", "choose_filter_bits", "filter_positions"]

MIN_FILTER_BITS, MAX_FILTER_BITS = 18, 23  # log2 of the bits per shard: 32 KB to 1 MB each
BITS_PER_ENTRY = 16  # sized for: two bits per entry then make about 1.4% false "maybe"s
_MULTIPLIERS = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))  # odd: Fibonacci hashing


def choose_filter_bits(entries: float, shards: int) -> int:
    """log2 of the bits per shard for an index expected to hold `entries` band entries."""
    wanted = entries * BITS_PER_ENTRY / shards
    bits = math.ceil(math.log2(wanted)) if wanted > 1 else 0
    return min(max(bits, MIN_FILTER_BITS), MAX_FILTER_BITS)


def filter_positions(entry_keys: np.ndarray, filter_bits: int) -> np.ndarray:
    """The two bit positions (within its shard's filter) of each band entry: (n, 2) uint32.
    `entry_keys` are band keys as stored, i.e. cut to the bits the bucket and field keep."""
    keys = entry_keys.astype(np.uint64)
    shift = np.uint64(64 - filter_bits)
    return np.stack([(keys * multiplier) >> shift for multiplier in _MULTIPLIERS], axis=1).astype(np.uint32)


@dataclass(frozen=True, slots=True)
class MembershipFilter:
    """A snapshot of the index's filter: valid for lookups that read the same nonce and generation."""

    nonce: bytes | None
    generation: int
    filter_bits: int
    bits: np.ndarray  # uint8 (shards, 2**filter_bits // 8), Redis bit order (bit 0 is a byte's top bit)

    @classmethod
    def from_strings(cls, nonce: bytes | None, generation: int, filter_bits: int,
                     strings: Sequence[bytes | None]) -> MembershipFilter:
        """From the shards' bit strings as Redis holds them (only as long as their last set bit)."""
        width = (1 << filter_bits) // 8
        bits = np.zeros((len(strings), width), dtype=np.uint8)
        for shard, value in enumerate(strings):
            if value:
                bits[shard, :len(value)] = np.frombuffer(value[:width], dtype=np.uint8)
        return cls(nonce, generation, filter_bits, bits)

    def may_contain(self, shards: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Per entry (its shard, its `filter_positions`): False only if the index cannot hold it."""
        bytes_ = self.bits[shards[:, None], positions >> 3]
        held: np.ndarray = np.all((bytes_ >> (7 - (positions & 7)).astype(np.uint8)) & 1, axis=1)
        return held
