"""Stored text: zlib(GB18030) chunks of a document, the regions assembled from them, and the
cache of decoded chunks a reader keeps (verification never normalises fetched text again)."""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from textguard.normalise import Normalised, normalise
from textguard.store._format import CACHED_CHUNKS, CHUNK_CHARS, TEXT_ENCODING, DocumentMeta, DocumentRegion, Ranges

__all__ = [
    "Chunk", "ChunkCache", "assembled_regions", "chunk_numbers", "cut_regions", "pack_text",
    "unpack_text",
]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One stored text chunk, decoded and normalised, with the metadata of its document's version.

    Checks verify against the normal form, so it is kept too: a check's candidates are mostly
    chunks it met before, and normalising them again was a tenth of a scan's time. (A region's
    normal form is its chunks' joined, which differs from normalising the region whole only
    where an OpenCC phrase rule would straddle a chunk's edge.)
    """

    meta: DocumentMeta  # shared by the chunks of one version
    text: str
    normal_text: str
    normal_offsets: np.ndarray  # uint16 into `text`

    @property
    def digest(self) -> str:
        return str(self.meta.get("sha256", ""))

    @classmethod
    def decode(cls, meta: DocumentMeta, blob: bytes) -> Chunk:
        text = unpack_text(blob)
        normal = normalise(text)
        return cls(meta, text, normal.text, normal.offsets.astype(np.uint16))


def assembled_regions(number: int, found: dict[int, Chunk], meta: DocumentMeta | None = None) -> list[DocumentRegion]:
    """Regions of document `number` from its chunks at hand, one per run of consecutive ones;
    `meta` read just now, or the chunks' own."""
    return [DocumentRegion(number, meta or found[run[0]].meta, run[0] * CHUNK_CHARS, *_joined([found[c] for c in run]))
            for run in _consecutive(sorted(found))]


def _joined(chunks: Sequence[Chunk]) -> tuple[str, Normalised]:
    """The text of consecutive chunks, and its normal form."""
    offsets = [chunk.normal_offsets.astype(np.int64) + i * CHUNK_CHARS for i, chunk in enumerate(chunks)]
    return "".join(c.text for c in chunks), Normalised("".join(c.normal_text for c in chunks), np.concatenate(offsets))


class ChunkCache:
    """Decoded text chunks of stored documents; the least recently used go first.

    A chunk never changes under its document number (a new version gets a new number), but an
    index built anew hands the numbers out again. So the cache holds chunks of one index
    `nonce` (each lookup reads it; another one empties the cache), and a fetch still compares
    the digest read with the metadata.
    """

    def __init__(self, capacity: int = CACHED_CHUNKS) -> None:
        self.capacity = capacity
        self._chunks: OrderedDict[tuple[int, int], Chunk] = OrderedDict()
        self.nonce: bytes | None = None  # of the index the chunks came from; None: not known

    def observe_nonce(self, nonce: bytes | None) -> None:
        """The nonce a lookup just read: chunks of another index go."""
        if nonce != self.nonce:
            self._chunks.clear()
            self.nonce = nonce

    def get(self, number: int, chunk: int) -> Chunk | None:
        found = self._chunks.get((number, chunk))
        if found is not None:
            self._chunks.move_to_end((number, chunk))
        return found

    def put(self, number: int, chunk: int, value: Chunk) -> None:
        self._chunks[number, chunk] = value
        self._chunks.move_to_end((number, chunk))
        while len(self._chunks) > self.capacity:
            self._chunks.popitem(last=False)


def _consecutive(chunks: Iterable[int]) -> list[list[int]]:
    """Sorted chunk numbers grouped into runs of consecutive ones."""
    runs: list[list[int]] = []
    for chunk in chunks:
        if runs and chunk == runs[-1][-1] + 1:
            runs[-1].append(chunk)
        else:
            runs.append([chunk])
    return runs



def pack_text(text: str) -> list[bytes]:
    return [zlib.compress(text[i:i + CHUNK_CHARS].encode(TEXT_ENCODING), 6)
            for i in range(0, len(text), CHUNK_CHARS)] or [zlib.compress(b"")]


def unpack_text(blob: bytes) -> str:
    return zlib.decompress(blob).decode(TEXT_ENCODING)



def chunk_numbers(ranges: Iterable[tuple[int, int]]) -> list[int]:
    """The text chunks holding the original offsets [start, end) of each range, in order."""
    return sorted({c for start, end in ranges
                   for c in range(max(start, 0) // CHUNK_CHARS, max(end - 1, 0) // CHUNK_CHARS + 1)})


def cut_regions(fetched: Sequence[DocumentRegion], wanted: Ranges) -> list[DocumentRegion]:
    """The regions `IndexReader.regions(wanted)` returns, cut out of regions fetched for a
    superset of `wanted` (so that many readers' fetches can share one round trip)."""
    by_number: dict[int, list[DocumentRegion]] = {}
    for region in fetched:
        by_number.setdefault(region.number, []).append(region)
    regions: list[DocumentRegion] = []
    for number in sorted(wanted):
        chunks = chunk_numbers(wanted[number])
        for region in by_number.get(number, []):
            first = region.start // CHUNK_CHARS
            inside = [c for c in chunks if first <= c < first + -(-len(region.text) // CHUNK_CHARS)]
            regions += [region.cut(run[0] * CHUNK_CHARS, (run[-1] + 1) * CHUNK_CHARS) for run in _consecutive(inside)]
    return regions
