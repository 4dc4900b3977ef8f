"""How much of a reference text an answer reproduces, counted in characters.

These are the regurgitation metrics of CoTaEval (longest common substring, longest common
subsequence, ROUGE-L, accumulated common substrings) and CopyBench's literal-copying test
(ROUGE-L >= 0.8), adapted to Chinese: they were defined on space-split English words, which
Chinese does not have, so here every unit is a character. Both texts are first normalised as
for matching (normalise.py: letters and digits only; full-width, Traditional and case folded),
so punctuation and spacing count for nothing, as they count for nothing in the quotation limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from rapidfuzz.distance import LCSseq

from textguard.normalise import Normalised, normalise

__all__ = [
    "LITERAL_ROUGE_L",
    "MIN_RUN",
    "Comparison",
    "accumulated_runs",
    "compare",
    "compare_normalised",
    "coverage",
    "longest_common_run",
]

MIN_RUN = 13
"""Shortest run counted by `acs`: the run length at which Chinese plagiarism checkers flag text."""
LITERAL_ROUGE_L = 0.8
"""CopyBench counts a continuation as literal copying from this ROUGE-L on."""

_BASE = 0x100000001B3  # odd, so invertible modulo 2**64
_INVERSE = pow(_BASE, -1, 1 << 64)


@dataclass(frozen=True, slots=True)
class Comparison:
    """An answer against a reference, in normalised characters."""

    answer_chars: int
    reference_chars: int
    longest_run: int  # longest common substring
    lcs: int  # longest common subsequence
    rouge_l: float  # F1 of LCS precision (lcs / answer) and recall (lcs / reference)
    acs: int  # accumulated common substrings of at least MIN_RUN characters

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["rouge_l"] = round(self.rouge_l, 4)
        return values


def compare(answer: str, reference: str, min_run: int = MIN_RUN) -> Comparison:
    """Compare two texts as they stand (both are normalised here)."""
    return compare_normalised(normalise(answer).text, normalise(reference).text, min_run)


def compare_normalised(answer: str, reference: str, min_run: int = MIN_RUN) -> Comparison:
    lcs = int(LCSseq.similarity(answer, reference)) if answer and reference else 0
    rouge_l = 2 * lcs / (len(answer) + len(reference)) if lcs else 0.0  # = 2PR / (P + R)
    grams_a, grams_b = _Grams(answer), _Grams(reference)
    acs, longest_counted = _accumulate(grams_a, grams_b, min_run)
    longest = _longest(grams_a, grams_b, longest_counted, min_run)
    return Comparison(len(answer), len(reference), longest, lcs, rouge_l, acs)


def coverage(normalised: Normalised, spans: Sequence[tuple[int, int]]) -> float:
    """Share of the normalised characters of a text that lie in `spans` (original offsets,
    end exclusive; overlaps counted once)."""
    if not len(normalised.text):
        return 0.0
    covered = np.zeros(len(normalised.text), dtype=bool)
    for start, end in spans:
        covered[np.searchsorted(normalised.offsets, start):np.searchsorted(normalised.offsets, end)] = True
    return float(covered.mean())


class _Grams:
    """Rolling hashes of a text, so that the hashes of all its L-character runs cost O(n) for any L."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
        n = len(self.codes)
        self._powers = np.ones(n, dtype=np.uint64)  # BASE**i
        inverse = np.ones(n, dtype=np.uint64)  # BASE**-i
        self._prefix = np.zeros(n + 1, dtype=np.uint64)  # sum of codes[t] * BASE**-t for t < i
        if n > 1:
            np.cumprod(np.full(n - 1, _BASE, dtype=np.uint64), out=self._powers[1:])
            np.cumprod(np.full(n - 1, _INVERSE, dtype=np.uint64), out=inverse[1:])
        np.cumsum(self.codes * inverse, out=self._prefix[1:])

    def hashes(self, length: int) -> np.ndarray:
        """Hash of the run of `length` characters starting at each position (the same wherever it stands)."""
        count = len(self.codes) - length + 1
        if count <= 0 or length <= 0:
            return np.zeros(0, dtype=np.uint64)
        return (self._prefix[length:] - self._prefix[:count]) * self._powers[length - 1:]


def _shared_run(a: _Grams, b: _Grams, length: int) -> bool:
    """Do the texts share a run of `length` characters? (A hash hit is confirmed on the text.)"""
    a_hashes, b_hashes = a.hashes(length), b.hashes(length)
    for i in np.flatnonzero(_member(a_hashes, np.sort(b_hashes))).tolist():
        if any(a.text[i:i + length] == b.text[j:j + length] for j in np.flatnonzero(b_hashes == a_hashes[i]).tolist()):
            return True
    return False


def _longest(a: _Grams, b: _Grams, known: int, min_run: int) -> int:
    """Longest common substring, given the longest run of `min_run` or more characters found
    (`known`, 0 if none): usually that is the longest (one probe says so); otherwise gallop
    up, then bisect. With none found, the answer lies below `min_run`."""
    low, high = known, min(len(a.text), len(b.text)) if known else min(min_run - 1, len(a.text), len(b.text))
    step = 1
    while low < high and _shared_run(a, b, min(low + step, high)):
        low, step = min(low + step, high), step * 2
    high = min(low + step, high) - 1 if low < high else low
    while low < high:  # low is shared, high + 1 is not
        middle = (low + high + 1) // 2
        if _shared_run(a, b, middle):
            low = middle
        else:
            high = middle - 1
    return low


def longest_common_run(a: str, b: str) -> int:
    """Length of the longest common substring of two texts."""
    grams_a, grams_b = _Grams(a), _Grams(b)
    return _longest(grams_a, grams_b, _accumulate(grams_a, grams_b, MIN_RUN)[1], MIN_RUN)


def accumulated_runs(answer: str, reference: str, min_run: int = MIN_RUN) -> int:
    """CoTaEval's accumulated common substrings, on characters: read the answer left to right;
    where the longest run of the reference starting here has `min_run` characters or more,
    count it and go on after it."""
    return _accumulate(_Grams(answer), _Grams(reference), min_run)[0]


def _accumulate(a: _Grams, b: _Grams, min_run: int) -> tuple[int, int]:
    """(accumulated runs, longest run counted)."""
    a_hashes, b_hashes = a.hashes(min_run), b.hashes(min_run)
    order = np.argsort(b_hashes, kind="stable")
    sorted_b = b_hashes[order]
    starts = np.flatnonzero(_member(a_hashes, sorted_b))
    total = longest = 0
    index = 0
    while index < len(starts):
        position = int(starts[index])
        value = a_hashes[position]
        places = order[np.searchsorted(sorted_b, value):np.searchsorted(sorted_b, value, side="right")]
        run = max(_common_prefix(a.codes, position, b.codes, place) for place in places.tolist())
        if run >= min_run:  # (shorter only on a hash collision)
            total += run
            longest = max(longest, run)
            index = int(np.searchsorted(starts, position + run))
        else:
            index += 1
    return total, longest


def _member(values: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Which of `values` are in the sorted array `pool` (np.isin costs ten times more here)."""
    if not len(pool):
        return np.zeros(len(values), dtype=bool)
    found = np.minimum(np.searchsorted(pool, values), len(pool) - 1)
    matched: np.ndarray = pool[found] == values
    return matched


def _common_prefix(a: np.ndarray, i: int, b: np.ndarray, j: int) -> int:
    limit = min(len(a) - i, len(b) - j)
    differ = np.flatnonzero(a[i:i + limit] != b[j:j + limit])
    return int(differ[0]) if len(differ) else limit
