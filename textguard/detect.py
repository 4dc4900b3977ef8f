"""Stage 5: find copied spans: look up band runs, then verify candidates against stored text.

LSH hits only nominate documents and rough positions. Each nomination is verified by aligning
the checked text with the stored text around it (rapidfuzz's bit-parallel LCS alignment), and
the equal blocks of that alignment are chained into spans: blocks of at least `_ANCHOR` chars
start and end a span, and gaps of up to `_GAP` chars between them (a substituted, inserted or
deleted word, a homophone, a renamed character) are bridged, so an edited copy yields one span.
Alignment is repeated with found spans masked out, which recovers reordered sentences.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz.distance import Indel

from textguard.normalise import Normalised, normalise
from textguard.pipeline import Pipeline
from textguard.store import DocumentRegion, IndexReader

_ANCHOR = 4  # shortest equal block that can start or end a span
_GAP = 16  # longest gap (normalised chars, each side) bridged inside a span
_MIN_SPAN = 8  # shorter spans are noise (common phrases), not copying
_MIN_SIMILARITY = 0.5
_PAD = 160  # normalised chars of context aligned beyond the outermost hits
_SPLIT = 800  # hits further apart than this in a document are verified separately
_MAX_DOCUMENTS = 16  # candidate documents verified per check, most hits first
_MAX_PASSES = 3


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
        wanted = {number: [(d_lo - 2 * _PAD, d_hi + 2 * _PAD + (q_hi - q_lo))
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
    """Spans copied from `region` around one group of hits, found by repeated alignment."""
    q_lo, q_hi, d_lo, d_hi = group
    q_from, q_to = max(0, q_lo - _PAD), min(len(query), q_hi + _PAD)
    # original document text around the hits (a little wider: it still holds punctuation)
    d_from = max(0, d_lo - region.start - 2 * _PAD)
    d_to = min(len(region.text), d_hi - region.start + 2 * _PAD + (q_hi - q_lo))
    source = normalise(region.text[d_from:d_to])
    q_text, d_text = query[q_from:q_to], source.text
    spans: list[_Span] = []
    for _ in range(_MAX_PASSES):
        found = _chain(Indel.opcodes(q_text, d_text).as_list())
        if not found:
            break
        for qs, qe, ds, de, matched, longest in found:
            d_start = region.start + d_from + int(source.offsets[ds])
            d_end = region.start + d_from + int(source.offsets[de - 1]) + 1
            spans.append(_Span(q_from + qs, q_from + qe, d_start, d_end, de - ds, matched, longest))
            q_text = q_text[:qs] + "\x00" * (qe - qs) + q_text[qe:]
            d_text = d_text[:ds] + "\x01" * (de - ds) + d_text[de:]
    return spans


def _chain(opcodes: list[tuple[str, int, int, int, int]]) -> list[tuple[int, int, int, int, int, int]]:
    """Chain equal blocks into spans: (q_start, q_end, d_start, d_end, matched, longest)."""
    blocks = [(qs, qe, ds, de) for tag, qs, qe, ds, de in opcodes if tag == "equal"]
    spans = []
    current: list[tuple[int, int, int, int]] = []  # blocks of the span being built
    anchored_end = 0  # index in `current` after its last anchor block

    def close() -> None:
        kept = current[:anchored_end]
        if not kept:
            return
        qs, ds, qe, de = kept[0][0], kept[0][2], kept[-1][1], kept[-1][3]
        matched = sum(b[1] - b[0] for b in kept)
        length = max(qe - qs, de - ds)
        if matched >= _MIN_SPAN and matched / length >= _MIN_SIMILARITY:
            spans.append((qs, qe, ds, de, matched, max(b[1] - b[0] for b in kept)))

    for block in blocks:
        is_anchor = block[1] - block[0] >= _ANCHOR
        if current:
            last = current[anchored_end - 1] if anchored_end else current[-1]
            if block[0] - last[1] > _GAP or block[2] - last[3] > _GAP:
                close()
                current, anchored_end = [], 0
        if not current and not is_anchor:
            continue
        current.append(block)
        if is_anchor:
            anchored_end = len(current)
    if current:
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
