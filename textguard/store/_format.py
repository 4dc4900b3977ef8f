"""Format constants, and the value types the store's parts pass around: postings as arrays,
documents staged for writing, regions of stored text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Required, TypedDict

import numpy as np

from textguard.normalise import Normalised

__all__ = [
    "CACHED_CHUNKS",
    "CHUNK_CHARS",
    "ENTRIES_PER_CHAR",
    "FALLBACK_SMALL_HASH_LIMIT",
    "FIELD_BYTES",
    "FILTER_REFRESH_SECONDS",
    "FORMAT_VERSION",
    "POSTING_DTYPE",
    "SHARDS",
    "TARGET_FILL",
    "TEXT_ENCODING",
    "DocumentMeta",
    "DocumentRegion",
    "Postings",
    "Ranges",
    "StagedDocument",
    "ragged",
]

FORMAT_VERSION = 1
CHUNK_CHARS = 4096
CACHED_CHUNKS = 1024
"""Decoded text chunks a reader keeps (24 KB or so each, with their normal form). A few
documents are the chance candidates of many clean answers, since they share common phrases,
so most chunks a check needs were fetched before (`benchmarks.speed` counts the fetches)."""
FIELD_BYTES = 5
POSTING_DTYPE = np.dtype([("n", ">u4"), ("o", ">u4")])  # internal document number, original character offset
SHARDS = 64
TEXT_ENCODING = "gb18030"  # a complete Unicode encoding, two bytes for common Chinese
MIN_BUCKET_BITS, MAX_BUCKET_BITS = 16, 24
ENTRIES_PER_CHAR = 0.3  # band entries per corpus character, a little above the measured 0.26
TARGET_FILL = 64  # band entries per bucket a new index is sized for
FALLBACK_SMALL_HASH_LIMIT = 128  # assumed when the server will not say (CONFIG disabled)
FILTER_REFRESH_SECONDS = 1.0

Ranges = dict[int, list[tuple[int, int]]]
"""Per document number: (start, end) ranges of its original text."""


class DocumentMeta(TypedDict, total=False):
    """A stored document's record: what `corpus list` prints and a match names."""

    id: Required[str]
    title: str
    author: str
    work: str
    chars: int
    extra: dict[str, Any]  # the input record's other fields
    public_domain: bool  # anyone may reproduce it: its text is never flagged (absent: False)
    policy: str  # the rights holder's terms for it: "allow" (licensed) or "block" (any copy blocks)
    quote_chars: int  # its own quotation limit, stricter or looser than the settings'
    sha256: str  # of the record and text: an unchanged document is not written again


@dataclass(frozen=True, slots=True)
class Postings:
    """Lookup hits as parallel arrays: the looked-up key `runs[i]` met document `numbers[i]` at
    original offset `offsets[i]`, in key order. (Arrays, not objects: a check gets hundreds.)"""

    runs: np.ndarray  # int64 index into the looked-up keys
    numbers: np.ndarray  # int64
    offsets: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.runs)

    @classmethod
    def empty(cls) -> Postings:
        nothing = np.zeros(0, dtype=np.int64)
        return cls(nothing, nothing, nothing)

    @classmethod
    def concatenate(cls, parts: Sequence[Postings]) -> Postings:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("runs", "numbers", "offsets")))

    @classmethod
    def unpack(cls, runs: Iterable[int], replies: Iterable[bytes | None]) -> Postings:
        """From the lookup script's replies (packed postings, or nil), one per key run."""
        found = [(run, reply) for run, reply in zip(runs, replies, strict=True) if reply]
        if not found:
            return cls.empty()
        packed = np.frombuffer(b"".join(reply for _, reply in found), dtype=POSTING_DTYPE)
        counts = [len(reply) // POSTING_DTYPE.itemsize for _, reply in found]
        return cls(np.repeat(np.array([run for run, _ in found], dtype=np.int64), counts),
                   packed["n"].astype(np.int64), packed["o"].astype(np.int64))


def ragged(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Indices of the ranges [starts[i], starts[i] + counts[i]), concatenated."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.repeat(starts - (ends - counts), counts) + np.arange(total)


@dataclass(frozen=True, slots=True)
class StagedDocument:
    """A document prepared for writing: its number, metadata, text and band runs."""

    doc_id: str
    number: int
    meta: DocumentMeta
    text: str
    band_keys: np.ndarray
    offsets: np.ndarray  # original character offset of each run's anchor


@dataclass(frozen=True, slots=True)
class DocumentRegion:
    """A stretch of a stored document's original text, with its normal form (offsets into
    `text`) and the document's metadata."""

    number: int
    meta: DocumentMeta
    start: int  # original offset of text[0] in the document
    text: str
    normal: Normalised

    def cut(self, start: int, end: int) -> DocumentRegion:
        """The part of this region between original offsets `start` and `end` (clipped)."""
        begin = min(max(start - self.start, 0), len(self.text))
        stop = min(max(end - self.start, begin), len(self.text))
        low, high = np.searchsorted(self.normal.offsets, (begin, stop)).tolist()
        normal = Normalised(self.normal.text[low:high], self.normal.offsets[low:high] - begin)
        return DocumentRegion(self.number, self.meta, self.start + begin, self.text[begin:stop], normal)
