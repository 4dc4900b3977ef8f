"""Stage 5's verification: where a checked text and a stored text agree, as spans.

Seeds, exact shared runs plus the LSH hits, are clustered into stretches. Each stretch is
aligned (rapidfuzz's bit-parallel LCS alignment), and the equal blocks of that alignment are
chained into spans: blocks of at least `_ANCHOR` chars start and end a span, blocks of
`_BRIDGE` chars or more keep it going, and gaps of up to `_GAP` chars between them (a
substituted, inserted or deleted word, a homophone, a renamed character) are bridged, so an
edited copy yields one span. Alignment is repeated with found spans masked out, which recovers
reordered sentences. A region that holds no two of the checked text's 4-character runs cannot
hold a span and is not aligned at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import Indel, MatchingBlock

from textguard.normalise import Normalised
from textguard.store import DocumentRegion

__all__ = ["Query", "Span", "seeds", "spans_in", "stretches", "verify"]

_ANCHOR = 4  # shortest equal block that can start or end a span
_BRIDGE = 2  # shortest equal block that keeps a span going
_GAP = 16  # longest gap (normalised chars, each side) bridged between blocks of a span
_MIN_SPAN = 8  # shortest piece of a span (an aligned chain of blocks)
_MIN_SIMILARITY = 0.5
_SEED = 6  # shared runs this long (normalised chars) seed an alignment
_PAD = 60  # normalised chars aligned beyond the outermost seeds (more while spans reach the edge)
_SPLIT = 300  # seeds further apart than this in the source are aligned separately
_MAX_PASSES = 8  # alignments per stretch (each finds what the ones before did not)
_MAX_GROWTH = 4  # times a stretch may grow when a span runs into its edge


@dataclass(slots=True)
class Span:
    """A span on normalised text while it is being built and merged."""

    q_start: int
    q_end: int
    d_start: int  # original offsets in the document
    d_end: int
    d_chars: int  # normalised characters of the document inside the span
    matched: int
    longest: int

    def similarity(self) -> float:
        return min(1.0, self.matched / max(self.q_end - self.q_start, self.d_chars, 1))


def spans_in(query: Query, region: DocumentRegion, doc_hits: np.ndarray, screen: bool = True) -> list[Span]:
    """Spans of `query` copied from `region`, seeded by its exact shared runs and the hits in it
    (`doc_hits`: rows of query anchor, document offset; `screen`: first test that the region can
    hold a span at all, not worth it where part of it did)."""
    source = region.normal
    if screen and not query.may_share_span(source.text):
        return []
    inside = doc_hits[:, 1] - region.start
    hint = np.stack([doc_hits[:, 0], inside], axis=1)[(inside >= 0) & (inside < len(region.text))]
    return [span for stretch in stretches(seeds(query, source, hint))
            for span in verify(query.text, source, region.start, stretch)]


def _gram_hashes(text: str, size: int = _SEED) -> np.ndarray:
    """Polynomial hashes of every `size`-character run of `text`."""
    count = len(text) - size + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    hashes = codes[:count].copy()
    for offset in range(1, size):
        hashes = hashes * np.uint64(0x100000001B3) + codes[offset:offset + count]
    return hashes


class _Grams:
    """The hashes of one text's runs of one length, sorted, for finding which runs of other
    texts it shares. A 64 K-bit filter on the low bits turns away nearly every run it does not
    hold before the sorted search: the search alone costs about 15 times as much on a fetched
    region of thousands of characters."""

    def __init__(self, hashes: np.ndarray) -> None:
        self.order = np.argsort(hashes, kind="stable")
        self.sorted = hashes[self.order]
        self._filter = np.zeros(1 << 16, dtype=bool)
        self._filter[self.sorted.astype(np.uint16)] = True

    def find(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions in `hashes` of the runs held here, and where each stands in `sorted`."""
        maybe = np.flatnonzero(self._filter[hashes.astype(np.uint16)])
        if len(maybe) == 0:
            return maybe, maybe
        index = np.minimum(np.searchsorted(self.sorted, hashes[maybe]), len(self.sorted) - 1)
        held = self.sorted[index] == hashes[maybe]
        return maybe[held], index[held]


class Query:
    """The checked text, with its runs hashed once for all the regions it meets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.seeds = _Grams(_gram_hashes(text))
        self._anchors = _Grams(_gram_hashes(text, _ANCHOR))

    def may_share_span(self, source: str) -> bool:
        """False when `source` can hold no span of this text, so that its alignment is skipped.

        Every span starts and ends with an equal block of `_ANCHOR` characters or more (one
        block of `_MIN_SPAN` >= 2 * `_ANCHOR` at least, if it is the only one), so the source
        holds two runs of `_ANCHOR` characters found in the text, `_ANCHOR` or more apart. The
        narrow pieces of chance candidates in clean answers mostly hold none or one: this turns
        away two in three of them, and never a region an alignment would find a span in (a
        hash collision only lets one more by).
        """
        shared, _ = self._anchors.find(_gram_hashes(source, _ANCHOR))
        return len(shared) > 0 and int(shared[-1] - shared[0]) >= _ANCHOR


def seeds(query: Query, source: Normalised, hint: np.ndarray) -> np.ndarray:
    """Pairs (query position, normalised source position) where the two texts agree.

    Exact `_SEED`-character runs shared by both, plus the LSH hits (rows of query position,
    original source offset), which survive edits that leave no exact run. Each source position
    is paired with the first query position of its run.
    """
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    d_positions, index = query.seeds.find(_gram_hashes(source.text))
    if len(d_positions):
        pairs.append(np.stack([query.seeds.order[index], d_positions], axis=1))
    if len(hint):
        pairs.append(np.stack([hint[:, 0], np.searchsorted(source.offsets, hint[:, 1])], axis=1))
    return np.concatenate(pairs)


@dataclass(frozen=True, slots=True)
class _Stretch:
    """Where to align: query positions and normalised source positions (half-open)."""

    q_from: int
    q_to: int
    d_from: int
    d_to: int


def stretches(seeds: np.ndarray) -> list[_Stretch]:
    """Seeds cut where they lie far apart in the source: one stretch to align per cluster."""
    if len(seeds) == 0:
        return []
    seeds = seeds[np.argsort(seeds[:, 1], kind="stable")]
    cuts = np.flatnonzero(np.diff(seeds[:, 1]) > _SPLIT) + 1
    bounds = np.r_[0, cuts, len(seeds)]
    stretches = []
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        cluster = seeds[lo:hi]
        stretches.append(_Stretch(int(cluster[:, 0].min()) - _PAD, int(cluster[:, 0].max()) + _SEED + _PAD,
                                  int(cluster[0, 1]) - _PAD, int(cluster[-1, 1]) + _SEED + _PAD))
    return stretches


def verify(query: str, source: Normalised, base: int, stretch: _Stretch) -> list[Span]:
    """Spans copied from `source` (a region starting at original offset `base`) in a stretch.

    A copy can reach beyond its seeds (an edited stretch has few exact runs), so the stretch
    grows while a span runs into an edge of it that can move. (An edge that is the end of the
    query or of the source cannot: a stream's window mostly starts and ends inside a copy.)
    """
    q_from, q_to, d_from, d_to = stretch.q_from, stretch.q_to, stretch.d_from, stretch.d_to
    for _ in range(_MAX_GROWTH):
        q_from, q_to = max(0, q_from), min(len(query), q_to)
        d_from, d_to = max(0, d_from), min(len(source.text), d_to)
        spans, grow_start, grow_end = _align(query, q_from, q_to, source, d_from, d_to)
        if not (grow_start or grow_end):
            break
        if grow_start:
            q_from, d_from = q_from - 2 * _PAD, d_from - 2 * _PAD
        if grow_end:
            q_to, d_to = q_to + 2 * _PAD, d_to + 2 * _PAD
    for span in spans:
        span.d_start += base
        span.d_end += base
    return spans


def _align(query: str, q_from: int, q_to: int, source: Normalised, d_from: int,
           d_to: int) -> tuple[list[Span], bool, bool]:
    """Align query[q_from:q_to] with source.text[d_from:d_to]; also say if a span reaches the
    start or the end of the stretch where the text goes on beyond it (the stretch should grow).

    Spans carry source offsets relative to the region; `verify` adds the region's start.
    """
    q_text, d_text = query[q_from:q_to], source.text[d_from:d_to]
    spans: list[Span] = []
    cut_start = cut_end = False
    q_more, d_more = q_to < len(query), d_to < len(source.text)
    for _ in range(_MAX_PASSES):
        found = _chain(Indel.opcodes(q_text, d_text).as_matching_blocks())
        if not found:
            break
        for blocks in found:
            # An LCS may pair a span's first or last characters elsewhere; take them back.
            blocks[0] = _extend_left(q_text, d_text, blocks[0])
            blocks[-1] = _extend_right(q_text, d_text, blocks[-1])
            qs, ds, qe, de = blocks[0][0], blocks[0][2], blocks[-1][1], blocks[-1][3]
            cut_start |= (qs <= _GAP and q_from > 0) or (ds <= _GAP and d_from > 0)
            cut_end |= (qe >= len(q_text) - _GAP and q_more) or (de >= len(d_text) - _GAP and d_more)
            matched = sum(b[1] - b[0] for b in blocks)
            longest = max(b[1] - b[0] for b in blocks)
            d_start, d_end = source.original_span(d_from + ds, d_from + de)
            spans.append(Span(q_from + qs, q_from + qe, d_start, d_end, de - ds, matched, longest))
            q_text = q_text[:qs] + "\x00" * (qe - qs) + q_text[qe:]
            d_text = d_text[:ds] + "\x01" * (de - ds) + d_text[de:]
    return spans, cut_start, cut_end


Block = tuple[int, int, int, int]  # q_start, q_end, d_start, d_end of an equal run


def _extend_left(q: str, d: str, block: Block) -> Block:
    qs, qe, ds, de = block
    while qs > 0 and ds > 0 and q[qs - 1] == d[ds - 1]:
        qs, ds = qs - 1, ds - 1
    return qs, qe, ds, de


def _extend_right(q: str, d: str, block: Block) -> Block:
    qs, qe, ds, de = block
    while qe < len(q) and de < len(d) and q[qe] == d[de]:
        qe, de = qe + 1, de + 1
    return qs, qe, ds, de


def _chain(matching: Iterable[MatchingBlock]) -> list[list[Block]]:
    """Chain the equal blocks of an alignment into spans (each a list of blocks)."""
    spans: list[list[Block]] = []
    current: list[Block] = []  # blocks of the span being built
    anchored_end = 0  # index in `current` after its last anchor block

    def close() -> None:
        kept = current[:anchored_end]
        if kept:
            matched = sum(b[1] - b[0] for b in kept)
            length = max(kept[-1][1] - kept[0][0], kept[-1][3] - kept[0][2])
            if matched >= _MIN_SPAN and matched / length >= _MIN_SIMILARITY:
                spans.append(kept)

    for qs, ds, size in matching:
        if size < _BRIDGE:
            continue  # single characters align by chance everywhere
        qe, de = qs + size, ds + size
        is_anchor = qe - qs >= _ANCHOR
        if current:
            last = current[-1]
            if qs - last[1] > _GAP or ds - last[3] > _GAP:
                close()
                current, anchored_end = [], 0
        if not current and not is_anchor:
            continue
        current.append((qs, qe, ds, de))
        if is_anchor:
            anchored_end = len(current)
    close()
    return spans
