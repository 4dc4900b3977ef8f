"""Stage 1: normalise text for matching, keeping a map back to the original offsets.

Matching sees only letters and digits: NFKC folds full-width forms, OpenCC folds Traditional
to Simplified, case is folded, and everything else (punctuation, spaces, emoji, zero-width and
other format characters) is dropped outright rather than treated as a separator, so a copy with
characters spaced out or stuffed with invisible marks normalises to the same string as the
original. Every normalised character remembers the index of the original character it came
from, so spans found on the normalised text can be reported in the text the client received.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import opencc

# `[^\W_]` is "word character but not underscore": Unicode letters and digits (and marks).
_MATCHABLE_RUN = re.compile(r"[^\W_]+")
_to_simplified = opencc.OpenCC("t2s")

# Bump when normalisation changes: an index built with another version would not match.
NORMALISER_VERSION = 1


@dataclass(frozen=True, slots=True)
class Normalised:
    """Normalised text and, per normalised character, the original index it came from."""

    text: str
    offsets: np.ndarray  # int64, len(offsets) == len(text)

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """Map a normalised half-open span [start, end) to an original half-open span."""
        if start >= end:
            raise ValueError(f"empty span [{start}, {end})")
        return int(self.offsets[start]), int(self.offsets[end - 1]) + 1


@lru_cache(maxsize=65536)
def _fold_char(char: str) -> str:
    """Fold one character the slow way (NFKC, case folding, keep letters and digits only)."""
    folded = unicodedata.normalize("NFKC", char).casefold()
    return "".join(c for c in folded if c.isalnum())


def normalise(text: str) -> Normalised:
    """Normalise `text` for matching; see the module docstring for what is folded."""
    if not unicodedata.is_normalized("NFKC", text):
        return _normalise_slowly(text)
    pieces: list[str] = []
    offsets: list[np.ndarray] = []
    for run in _MATCHABLE_RUN.finditer(text):
        piece = run.group().casefold()
        if len(piece) != run.end() - run.start():  # rare: a case fold changed the length
            return _normalise_slowly(text)
        pieces.append(piece)
        offsets.append(np.arange(run.start(), run.end(), dtype=np.int64))
    if not pieces:
        return Normalised("", np.zeros(0, dtype=np.int64))
    return Normalised(_simplify("".join(pieces)), np.concatenate(offsets))


def _normalise_slowly(text: str) -> Normalised:
    """Character by character: handles NFKC expansions and length-changing case folds."""
    chars: list[str] = []
    offsets: list[int] = []
    for index, char in enumerate(text):
        for folded in _fold_char(char):
            chars.append(folded)
            offsets.append(index)
    return Normalised(_simplify("".join(chars)), np.asarray(offsets, dtype=np.int64))


def _simplify(text: str) -> str:
    """Traditional to Simplified without changing the length (the offset map depends on it)."""
    simplified: str = _to_simplified.convert(text)
    if len(simplified) == len(text):
        return simplified
    # A phrase rule changed the length: convert character by character instead.
    per_char = [_to_simplified.convert(c) for c in text]
    return "".join(s if len(s) == 1 else c for s, c in zip(per_char, text, strict=True))
