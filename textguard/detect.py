"""Stage 5: find copied spans: look up band runs, then verify candidates against stored text.

LSH hits only nominate documents and rough positions; a document is verified only when its
hits are convincing (several in line, or many). Its text around the hits is fetched (for the
best candidates, most of the chapter) but first verified only close to the hits, since most
candidates are chance; where that finds a copy, the whole fetched text is verified
(`_align`). Overlapping spans of one document merge; where documents overlap, the best one is
kept; and what a public-domain document holds is never a copy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textguard._align import Query, Span, spans_in
from textguard.normalise import Normalised
from textguard.sketching import TextSketcher
from textguard.store import DocumentMeta, DocumentRegion, MembershipFilter, Postings, Ranges, Reader

__all__ = ["Detector", "Hits", "KeyPostings", "LookupMemo", "Match"]

Hits = dict[int, list[tuple[int, int]]]
"""Per document number: (anchor in the checked text, offset in the document) of each LSH hit."""
KeyPostings = dict[int, list[tuple[int, int]]]
"""Per band key: (document number, offset) of each of its postings."""

_MIN_REPORTED = 12  # normalised chars of the shortest span reported: shorter is a name or set phrase
_FETCH = 2000  # original chars fetched around the LSH hits of a document...
_WHOLE = 16_000  # ...or up to this many, around all of them, for the best candidates
_NARROW = 200  # original chars around each hit verified first: the rest only if they hold a copy
_WIDE_DOCUMENTS = 4  # how many of the best candidates are fetched that wide...
_WIDE_HITS = 3  # ...if they have at least this many hits
_IN_LINE = 2  # a candidate is verified with this many hits on one diagonal...
_DIAGONAL = 16  # ...(offsets agreeing within this many characters)...
_SCATTERED = 4  # ...or this many hits anywhere in it
_MAX_DOCUMENTS = 16  # candidate documents verified per check, most hits first


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
    policy: str = ""  # the document's terms: "allow", "block", or "" for the settings'
    quote_chars: int = 0  # the document's own quotation limit (0: the settings')

    def to_dict(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "title": self.title, "author": self.author, "work": self.work,
                "start": self.start, "end": self.end, "source_start": self.source_start,
                "source_end": self.source_end, "verbatim_chars": self.verbatim_chars,
                "similarity": round(self.similarity, 4)}


class Detector:
    def __init__(self, sketcher: TextSketcher, reader: Reader) -> None:
        self._sketcher = sketcher
        self._reader = reader

    def prepare(self, normalised: Normalised) -> tuple[np.ndarray, np.ndarray]:
        """CPU part before the lookup: unique band keys, and anchors per key."""
        runs, anchors = self._sketcher.sketch(normalised)
        keys, inverse = np.unique(runs.keys, return_inverse=True)
        return keys, np.stack([inverse, anchors]) if len(keys) else np.zeros((2, 0), np.int64)

    async def find(self, normalised: Normalised, memo: LookupMemo | None = None) -> list[Match]:
        """Copied spans of the text `normalised` came from. `memo` carries lookups over between
        checks of one growing text (a stream), so that each check looks up only the band keys it
        has not seen."""
        keys, key_anchors = self.prepare(normalised)
        if len(keys) == 0:
            return []
        hits = _hits(key_anchors, await self._postings(keys, memo))
        if not hits:
            return []
        # Hits shared by chance (common bigram pairs) are few and scattered; a copy of Q chars
        # gives several in line. Verifying chance hits would cost a fetch and an alignment.
        ranked = sorted((n for n in hits if _convincing(hits[n]) and not _heard(memo, n, hits[n])),
                        key=lambda n: len(hits[n]), reverse=True)[:_MAX_DOCUMENTS]
        if not ranked:
            return []
        wanted = {number: _fetch_ranges(hits[number], wide=rank < _WIDE_DOCUMENTS and len(hits[number]) >= _WIDE_HITS)
                  for rank, number in enumerate(ranked)}
        query = Query(normalised.text)
        # per candidate, once however many regions of it come back: its hits as rows, and the
        # stretches close to them
        hit_rows = {number: np.array(hits[number], dtype=np.int64) for number in ranked}
        close = {number: _clusters(hits[number], _NARROW) for number in ranked}
        cached = self._reader.cached_regions(wanted)
        regions = cached if cached is not None else await self._reader.regions(wanted)
        copying = memo.copying if memo is not None else set()
        spans_by_doc = _verified(query, regions, hit_rows, close, copying)
        metas = {region.number: region.meta for region in regions}
        if cached is not None and spans_by_doc:  # found in text held from earlier checks: still live?
            current = await self._live_metas(sorted(spans_by_doc), memo)
            # (a number keeps its version within one index; the text is read afresh if not)
            changed = {n: wanted[n] for n in current if current[n].get("sha256") != metas[n].get("sha256")}
            spans_by_doc = {n: spans for n, spans in spans_by_doc.items() if n in current and n not in changed}
            metas.update(current)
            if changed:
                regions = await self._reader.regions(changed)
                spans_by_doc.update(_verified(query, regions, hit_rows, close, copying))
                metas.update({region.number: region.meta for region in regions})
        if memo is not None:
            for number in ranked:
                if spans_by_doc.get(number):
                    memo.quiet.pop(number, None)
                    memo.copying.add(number)
                else:
                    memo.quiet[number] = {d for _, d in hits[number]}
                    memo.copying.discard(number)
        return _resolve(normalised, spans_by_doc, metas)

    async def _live_metas(self, numbers: list[int], memo: LookupMemo | None) -> dict[int, DocumentMeta]:
        """`IndexReader.live_metas`, asking only about documents this text did not find live before."""
        if memo is None:
            return await self._reader.live_metas(numbers)
        unknown = [number for number in numbers if number not in memo.live]
        if unknown:
            memo.live.update(await self._reader.live_metas(unknown))
        return {number: memo.live[number] for number in numbers if number in memo.live}

    async def _postings(self, keys: np.ndarray, memo: LookupMemo | None) -> Postings:
        """Every posting of `keys` (its runs index `keys`)."""
        if memo is None:
            return await self._reader.lookup(keys)
        key_list = keys.tolist()
        known = memo.postings
        unknown = [i for i, key in enumerate(key_list) if key not in known]
        if unknown:
            found: KeyPostings = {key_list[i]: [] for i in unknown}
            postings = await self._reader.lookup(keys[unknown], trusted=memo.key_filter)
            memo.key_filter = self._reader.key_filter_held
            for run, number, offset in zip(postings.runs.tolist(), postings.numbers.tolist(),
                                           postings.offsets.tolist(), strict=True):
                found[key_list[unknown[run]]].append((number, offset))
            known.update(found)
        held = [(i, number, offset) for i, key in enumerate(key_list) for number, offset in known[key]]
        if not held:
            return Postings.empty()
        runs, numbers, offsets = np.array(held, dtype=np.int64).T
        return Postings(runs, numbers, offsets)


def _verified(query: Query, regions: Iterable[DocumentRegion], hit_rows: dict[int, np.ndarray],
              close: Ranges, copying: set[int]) -> dict[int, list[Span]]:
    """Spans per candidate document found in its `regions`. Most candidates are chance: each
    region is first verified only close to the hits (`close`, original offset ranges), and
    whole (a mosaic's other sentences) only where that holds a copy, or where the text's last
    check found one in that document (`copying`: a stream in the middle of a copy)."""
    spans_by_doc: dict[int, list[Span]] = defaultdict(list)
    for region in regions:
        doc_hits = hit_rows[region.number]
        if region.number in copying or any(spans_in(query, region.cut(start, end), doc_hits)
                                           for start, end in close[region.number]):
            spans_by_doc[region.number].extend(spans_in(query, region, doc_hits, screen=False))
    return spans_by_doc


def _hits(key_anchors: np.ndarray, postings: Postings) -> Hits:
    """Per document: (anchor in the checked text, offset in the document) of every hit, each
    posting of a key paired with every place the key's run is anchored in the checked text."""
    anchors_by_key: dict[int, list[int]] = defaultdict(list)
    for key_index, anchor in key_anchors.T.tolist():
        anchors_by_key[key_index].append(anchor)
    hits: Hits = defaultdict(list)
    for key_index, number, offset in zip(postings.runs.tolist(), postings.numbers.tolist(),
                                         postings.offsets.tolist(), strict=True):
        anchors = anchors_by_key[key_index]
        if len(anchors) == 1:  # most keys: spare building a list per posting
            hits[number].append((anchors[0], offset))
        else:
            hits[number] += [(anchor, offset) for anchor in anchors]
    return hits


@dataclass
class LookupMemo:
    """What earlier checks of one growing text (a stream) learned, so later ones skip it."""

    postings: KeyPostings = field(default_factory=dict)
    quiet: dict[int, set[int]] = field(default_factory=dict)  # document -> hit offsets verified in vain
    key_filter: MembershipFilter | None = None  # the filter snapshot the text's last lookup found current
    live: dict[int, DocumentMeta] = field(default_factory=dict)  # document -> its record, found live
    copying: set[int] = field(default_factory=set)  # documents the last check that verified them found copied


def _heard(memo: LookupMemo | None, number: int, doc_hits: list[tuple[int, int]]) -> bool:
    """Were all these hits verified before, in vain? (Then a stream need not verify them again.)"""
    if memo is None or number not in memo.quiet:
        return False
    return all(d in memo.quiet[number] for _, d in doc_hits)


def _convincing(doc_hits: list[tuple[int, int]]) -> bool:
    """Enough hits to verify: `_IN_LINE` on one diagonal, or `_SCATTERED` anywhere (a mosaic)."""
    if len(doc_hits) >= _SCATTERED:
        return True
    diagonals = sorted(d - q for q, d in doc_hits)
    return any(diagonals[i + _IN_LINE - 1] - diagonals[i] <= _DIAGONAL
               for i in range(len(diagonals) - _IN_LINE + 1))


def _clusters(doc_hits: list[tuple[int, int]], margin: int) -> list[tuple[int, int]]:
    """Original offset ranges reaching `margin` characters around the hits, overlaps merged."""
    offsets = sorted(d for _, d in doc_hits)
    ranges = [(offsets[0] - margin, offsets[0] + margin)]
    for offset in offsets[1:]:
        if offset - margin <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], offset + margin)
        else:
            ranges.append((offset - margin, offset + margin))
    return ranges


def _fetch_ranges(doc_hits: list[tuple[int, int]], wide: bool) -> list[tuple[int, int]]:
    """Original offsets of a document to fetch for verifying its hits.

    The best candidates (`wide`) get up to `_WHOLE` characters around their hits, usually the
    whole chapter: a mosaic's copied sentences are too short to hit on their own and can lie
    anywhere in it. Other candidates get the surroundings of each cluster of hits.
    """
    offsets = sorted(d for _, d in doc_hits)
    if wide and offsets[-1] - offsets[0] <= _WHOLE:
        margin = (_WHOLE - (offsets[-1] - offsets[0])) // 2
        return [(offsets[0] - margin, offsets[-1] + margin)]
    return _clusters(doc_hits, _FETCH)


def _outside_public_domain(length: int, merged: list[tuple[int, Span]],
                           metas: dict[int, DocumentMeta]) -> list[tuple[int, Span]]:
    """The spans of protected documents, less what a public-domain document also holds: text
    anyone may reproduce is never a copy, even of a work that quotes it. What a protected span
    holds around the quotation still counts, in pieces long enough to report."""
    free = np.zeros(length, dtype=bool)
    for number, span in merged:
        if metas[number].get("public_domain"):
            free[span.q_start:span.q_end] = True
    kept = []
    for number, span in merged:
        if metas[number].get("public_domain"):
            continue
        inside = ~free[span.q_start:span.q_end]
        if inside.all():
            kept.append((number, span))
            continue
        edges = np.flatnonzero(np.diff(np.concatenate([[False], inside, [False]]).astype(np.int8)))
        for begin, end in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            if end - begin >= _MIN_REPORTED:
                kept.append((number, _piece(span, begin, end)))
    return kept


def _piece(span: Span, begin: int, end: int) -> Span:
    """Part [begin, end) of `span` (offsets into it), its source range and counts in proportion."""
    width = max(span.q_end - span.q_start, 1)
    share = (end - begin) / width
    source = span.d_end - span.d_start
    return Span(span.q_start + begin, span.q_start + end, span.d_start + source * begin // width,
                 span.d_start + source * end // width, round(span.d_chars * share), round(span.matched * share),
                 min(span.longest, end - begin))

def _resolve(normalised: Normalised, spans_by_doc: dict[int, list[Span]],
             metas: dict[int, DocumentMeta]) -> list[Match]:
    """Merge overlapping spans of one document; where documents overlap, keep the best."""
    merged: list[tuple[int, Span]] = []
    for number, spans in spans_by_doc.items():
        spans.sort(key=lambda s: s.q_start)
        current: Span | None = None
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
    merged = [(number, span) for number, span in merged if span.matched >= _MIN_REPORTED]
    if any(metas[number].get("public_domain") for number, _ in merged):
        merged = _outside_public_domain(len(normalised.text), merged, metas)
    merged.sort(key=lambda item: item[1].matched, reverse=True)
    chosen: list[tuple[int, Span]] = []
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
            chars=span.q_end - span.q_start, policy=meta.get("policy", ""), quote_chars=meta.get("quote_chars", 0)))
    return matches
