"""Stage 5: find copied spans: look up band runs, then verify candidates against stored text.

LSH hits only nominate documents and rough positions; a document is verified only when its
hits are convincing (several in line, or many). Its text around the hits is fetched (for the
best candidates, most of the chapter) but first verified only close to the hits, since most
candidates are chance; where that finds a copy, the whole fetched text is verified. Seeds, exact
shared runs plus the hits, are clustered into stretches. Each stretch is aligned (rapidfuzz's
bit-parallel LCS alignment), and the equal blocks of that alignment are chained into spans:
blocks of at least `_ANCHOR` chars start and end a span, blocks of `_BRIDGE` chars or more keep
it going, and gaps of up to `_GAP` chars between them (a substituted, inserted or deleted word,
a homophone, a renamed character) are bridged, so an edited copy yields one span.
Alignment is repeated with found spans masked out, which recovers reordered sentences.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rapidfuzz.distance import Indel, MatchingBlock

from textguard.normalise import Normalised
from textguard.sketching import TextSketcher
from textguard.store import DocumentMeta, DocumentRegion, MembershipFilter, Postings, Ranges, Reader

__all__ = ["Detector", "Hits", "KeyPostings", "LookupMemo", "Match"]

Hits = dict[int, list[tuple[int, int]]]
"""Per document number: (anchor in the checked text, offset in the document) of each LSH hit."""
KeyPostings = dict[int, list[tuple[int, int]]]
"""Per band key: (document number, offset) of each of its postings."""

_ANCHOR = 4  # shortest equal block that can start or end a span
_BRIDGE = 2  # shortest equal block that keeps a span going
_GAP = 16  # longest gap (normalised chars, each side) bridged between blocks of a span
_MIN_SPAN = 8  # shortest piece of a span (an aligned chain of blocks)...
_MIN_REPORTED = 12  # ...and of a span reported once adjacent pieces merged: shorter is a name or set phrase
_MIN_SIMILARITY = 0.5
_SEED = 6  # shared runs this long (normalised chars) seed an alignment
_PAD = 60  # normalised chars aligned beyond the outermost seeds (more while spans reach the edge)
_SPLIT = 300  # seeds further apart than this in the source are aligned separately
_FETCH = 2000  # original chars fetched around the LSH hits of a document...
_WHOLE = 16_000  # ...or up to this many, around all of them, for the best candidates
_NARROW = 200  # original chars around each hit verified first: the rest only if they hold a copy
_WIDE_DOCUMENTS = 4  # how many of the best candidates are fetched that wide...
_WIDE_HITS = 3  # ...if they have at least this many hits
_IN_LINE = 2  # a candidate is verified with this many hits on one diagonal...
_DIAGONAL = 16  # ...(offsets agreeing within this many characters)...
_SCATTERED = 4  # ...or this many hits anywhere in it
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
        query = _Query(normalised.text)
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


def _verified(query: _Query, regions: Iterable[DocumentRegion], hit_rows: dict[int, np.ndarray],
              close: Ranges, copying: set[int]) -> dict[int, list[_Span]]:
    """Spans per candidate document found in its `regions`. Most candidates are chance: each
    region is first verified only close to the hits (`close`, original offset ranges), and
    whole (a mosaic's other sentences) only where that holds a copy, or where the text's last
    check found one in that document (`copying`: a stream in the middle of a copy)."""
    spans_by_doc: dict[int, list[_Span]] = defaultdict(list)
    for region in regions:
        doc_hits = hit_rows[region.number]
        if region.number in copying or any(_spans_in(query, region.cut(start, end), doc_hits)
                                           for start, end in close[region.number]):
            spans_by_doc[region.number].extend(_spans_in(query, region, doc_hits, screen=False))
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


def _spans_in(query: _Query, region: DocumentRegion, doc_hits: np.ndarray, screen: bool = True) -> list[_Span]:
    """Spans of `query` copied from `region`, seeded by its exact shared runs and the hits in it
    (`doc_hits`: rows of query anchor, document offset; `screen`: first test that the region can
    hold a span at all, not worth it where part of it did)."""
    source = region.normal
    if screen and not query.may_share_span(source.text):
        return []
    inside = doc_hits[:, 1] - region.start
    hint = np.stack([doc_hits[:, 0], inside], axis=1)[(inside >= 0) & (inside < len(region.text))]
    return [span for stretch in _stretches(_seeds(query, source, hint))
            for span in _verify(query.text, source, region.start, stretch)]


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


class _Query:
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


def _seeds(query: _Query, source: Normalised, hint: np.ndarray) -> np.ndarray:
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


def _stretches(seeds: np.ndarray) -> list[_Stretch]:
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


def _verify(query: str, source: Normalised, base: int, stretch: _Stretch) -> list[_Span]:
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
           d_to: int) -> tuple[list[_Span], bool, bool]:
    """Align query[q_from:q_to] with source.text[d_from:d_to]; also say if a span reaches the
    start or the end of the stretch where the text goes on beyond it (the stretch should grow).

    Spans carry source offsets relative to the region; `_verify` adds the region's start.
    """
    q_text, d_text = query[q_from:q_to], source.text[d_from:d_to]
    spans: list[_Span] = []
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
            spans.append(_Span(q_from + qs, q_from + qe, d_start, d_end, de - ds, matched, longest))
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


def _resolve(normalised: Normalised, spans_by_doc: dict[int, list[_Span]],
             metas: dict[int, DocumentMeta]) -> list[Match]:
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
    merged = [(number, span) for number, span in merged if span.matched >= _MIN_REPORTED]
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
