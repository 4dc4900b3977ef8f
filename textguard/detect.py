"""Stage 5: find copied spans: look up band runs, then verify candidates against stored text.

LSH hits only nominate documents and rough positions. Each nomination is verified by aligning
the checked text with the stored text around it (rapidfuzz's bit-parallel LCS alignment), and
the equal blocks of that alignment are chained into spans: blocks of at least `_ANCHOR` chars
start and end a span, blocks of `_BRIDGE` chars or more keep it going, and gaps of up to `_GAP`
chars between them (a substituted, inserted or deleted word, a homophone, a renamed character)
are bridged, so an edited copy yields one span.
Alignment is repeated with found spans masked out, which recovers reordered sentences.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz.distance import Indel, MatchingBlock

from textguard.normalise import Normalised, normalise
from textguard.pipeline import Pipeline
from textguard.store import DocumentRegion, IndexReader

_ANCHOR = 4  # shortest equal block that can start or end a span
_BRIDGE = 2  # shortest equal block that keeps a span going
_GAP = 16  # longest gap (normalised chars, each side) bridged between blocks of a span
_MIN_SPAN = 8  # shorter spans are noise (common phrases), not copying
_MIN_SIMILARITY = 0.5
_PAD = 160  # normalised chars of context aligned beyond the outermost hits
_FETCH = 2000  # original chars fetched around hits, room for a stretch to grow
_SPLIT = 800  # hits further apart than this in a document are verified separately
_MAX_DOCUMENTS = 16  # candidate documents verified per check, most hits first
_MAX_PASSES = 8  # alignments per stretch (each finds what the ones before did not)
_MAX_GROWTH = 4  # times a stretch may grow when a span runs into its edge


@dataclass(frozen=True, slots=True)
class Match:
    """A span of the checked text copied from a protected document."""

    doc_id: str
    title: str
    author: str
    work: str
    start: int  # in the checked text, end exclusive
    end: int
    source_start: int  # in the document's original text
    source_end: int
    verbatim_chars: int  # longest exact run, normalised characters
    similarity: float  # matched / span length, on normalised text
    chars: int  # normalised characters of the checked text inside the span

    def to_dict(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "title": self.title, "author": self.author, "work": self.work,
                "start": self.start, "end": self.end, "source_start": self.source_start,
                "source_end": self.source_end, "verbatim_chars": self.verbatim_chars,
                "similarity": round(self.similarity, 4)}


@dataclass(slots=True)
class _Span:
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


class Detector:
    def __init__(self, pipeline: Pipeline, reader: IndexReader) -> None:
        self._pipeline = pipeline
        self._reader = reader

    def prepare(self, text: str) -> tuple[Normalised, np.ndarray, np.ndarray]:
        """CPU part before the lookup: normalised text, unique band keys, anchors per key."""
        normalised = normalise(text)
        runs, anchors = self._pipeline.sketch(normalised)
        keys, inverse = np.unique(runs.keys, return_inverse=True)
        return normalised, keys, np.stack([inverse, anchors]) if len(keys) else np.zeros((2, 0), np.int64)

    async def find(self, text: str) -> tuple[Normalised, list[Match]]:
        normalised, keys, key_anchors = self.prepare(text)
        if len(keys) == 0:
            return normalised, []
        anchors_by_key: dict[int, list[int]] = defaultdict(list)
        for key_index, anchor in key_anchors.T.tolist():
            anchors_by_key[key_index].append(anchor)
        hits: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for posting in await self._reader.lookup(keys):
            for anchor in anchors_by_key[posting.run]:
                hits[posting.number].append((anchor, posting.offset))
        if not hits:
            return normalised, []
        ranked = sorted(hits, key=lambda n: len(hits[n]), reverse=True)[:_MAX_DOCUMENTS]
        groups = {number: _group(hits[number]) for number in ranked}
        wanted = {number: [(d_lo - _FETCH, d_hi + _FETCH + 2 * (q_hi - q_lo))
                           for (q_lo, q_hi, d_lo, d_hi) in groups[number]] for number in ranked}
        regions = await self._reader.regions(wanted)
        spans_by_doc: dict[int, list[_Span]] = defaultdict(list)
        metas: dict[int, dict[str, Any]] = {}
        for region in regions:
            metas[region.number] = region.meta
            for group in groups[region.number]:
                spans_by_doc[region.number].extend(_verify(normalised.text, region, group))
        return normalised, _resolve(normalised, spans_by_doc, metas)


def _group(doc_hits: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """Hits of one document cut where they are far apart: (q_lo, q_hi, d_lo, d_hi) each."""
    doc_hits.sort(key=lambda hit: hit[1])
    groups: list[tuple[int, int, int, int]] = []
    current = [doc_hits[0]]
    for hit in doc_hits[1:]:
        if hit[1] - current[-1][1] > _SPLIT:
            groups.append(_extent(current))
            current = []
        current.append(hit)
    groups.append(_extent(current))
    return groups


def _extent(hits: list[tuple[int, int]]) -> tuple[int, int, int, int]:
    qs = [q for q, _ in hits]
    ds = [d for _, d in hits]
    return min(qs), max(qs), min(ds), max(ds)


def _verify(query: str, region: DocumentRegion, group: tuple[int, int, int, int]) -> list[_Span]:
    """Spans copied from `region` around one group of hits.

    Hits mark only where some windows matched: a copy can reach well beyond them, so the
    aligned stretch grows while a span runs into its edge.
    """
    q_lo, q_hi, d_lo, d_hi = group
    # the document side is wider: it still holds punctuation
    q_from, q_to = q_lo - _PAD, q_hi + _PAD
    d_from, d_to = d_lo - region.start - 2 * _PAD, d_hi - region.start + 2 * _PAD
    for _ in range(_MAX_GROWTH):
        q_from, q_to = max(0, q_from), min(len(query), q_to)
        d_from, d_to = max(0, d_from), min(len(region.text), d_to)
        spans, touches_start, touches_end = _align(query, q_from, q_to, region, d_from, d_to)
        grow_start = touches_start and (q_from > 0 or d_from > 0)
        grow_end = touches_end and (q_to < len(query) or d_to < len(region.text))
        if not (grow_start or grow_end):
            break
        if grow_start:
            q_from, d_from = q_from - 2 * _PAD, d_from - 3 * _PAD
        if grow_end:
            q_to, d_to = q_to + 2 * _PAD, d_to + 3 * _PAD
    return spans


def _align(query: str, q_from: int, q_to: int, region: DocumentRegion, d_from: int,
           d_to: int) -> tuple[list[_Span], bool, bool]:
    """Align query[q_from:q_to] with the region's text; also say if a span reaches an edge."""
    source = normalise(region.text[d_from:d_to])
    q_text, d_text = query[q_from:q_to], source.text
    spans: list[_Span] = []
    touches_start = touches_end = False
    for _ in range(_MAX_PASSES):
        found = _chain(Indel.opcodes(q_text, d_text).as_matching_blocks())
        if not found:
            break
        for blocks in found:
            # An LCS may pair a span's first or last characters elsewhere; take them back.
            blocks[0] = _extend_left(q_text, d_text, blocks[0])
            blocks[-1] = _extend_right(q_text, d_text, blocks[-1])
            qs, ds, qe, de = blocks[0][0], blocks[0][2], blocks[-1][1], blocks[-1][3]
            touches_start |= qs <= _GAP or ds <= _GAP
            touches_end |= qe >= len(q_text) - _GAP or de >= len(d_text) - _GAP
            matched = sum(b[1] - b[0] for b in blocks)
            longest = max(b[1] - b[0] for b in blocks)
            d_start = region.start + d_from + int(source.offsets[ds])
            d_end = region.start + d_from + int(source.offsets[de - 1]) + 1
            spans.append(_Span(q_from + qs, q_from + qe, d_start, d_end, de - ds, matched, longest))
            q_text = q_text[:qs] + "\x00" * (qe - qs) + q_text[qe:]
            d_text = d_text[:ds] + "\x01" * (de - ds) + d_text[de:]
    return spans, touches_start, touches_end


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


def _resolve(normalised: Normalised, spans_by_doc: dict[int, list[_Span]],
             metas: dict[int, dict[str, Any]]) -> list[Match]:
    """Merge overlapping spans of one document; where documents overlap, keep the best."""
    merged: list[tuple[int, _Span]] = []
    for number, spans in spans_by_doc.items():
        spans.sort(key=lambda s: s.q_start)
        current: _Span | None = None
        for span in spans:
            if current is not None and span.q_start <= current.q_end + 1:
                current.d_chars += max(0, span.q_end - current.q_end)
                current.q_end = max(current.q_end, span.q_end)
                current.d_start = min(current.d_start, span.d_start)
                current.d_end = max(current.d_end, span.d_end)
                current.matched += span.matched
                current.longest = max(current.longest, span.longest)
            else:
                if current is not None:
                    merged.append((number, current))
                current = span
        if current is not None:
            merged.append((number, current))
    merged.sort(key=lambda item: item[1].matched, reverse=True)
    chosen: list[tuple[int, _Span]] = []
    covered = np.zeros(len(normalised.text), dtype=bool)
    for number, span in merged:
        overlap = covered[span.q_start:span.q_end].sum()
        if overlap > (span.q_end - span.q_start) / 2:
            continue  # the same text, found again in another (duplicate) document
        covered[span.q_start:span.q_end] = True
        chosen.append((number, span))
    matches = []
    for number, span in sorted(chosen, key=lambda item: item[1].q_start):
        meta = metas[number]
        start, end = normalised.original_span(span.q_start, span.q_end)
        matches.append(Match(
            doc_id=meta["id"], title=meta.get("title", ""), author=meta.get("author", ""),
            work=meta.get("work", ""), start=start, end=end, source_start=span.d_start,
            source_end=span.d_end, verbatim_chars=span.longest,
            similarity=span.similarity(),
            chars=span.q_end - span.q_start))
    return matches
