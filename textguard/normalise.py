"""Stage 1: normalise text for matching, keeping a map back to the original offsets.

Matching sees only letters and digits: NFKC folds full-width forms, OpenCC folds Traditional
to Simplified, case is folded, and everything else (punctuation, spaces, emoji, zero-width and
other format characters) is dropped outright rather than treated as a separator, so a copy with
characters spaced out or stuffed with invisible marks normalises to the same string as the
original. Every normalised character remembers the index of the original character it came
from, so spans found on the normalised text can be reported in the text the client received.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import opencc

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
    code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    offsets = np.flatnonzero(_matchable_table()[code_points])
    kept = code_points[offsets].tobytes().decode("utf-32-le", "surrogatepass")
    folded = kept.casefold()
    if len(folded) == len(kept) and unicodedata.is_normalized("NFKC", folded):
        return Normalised(_simplify(folded), offsets.astype(np.int64))
    # Compatibility forms (full-width letters, ligatures, circled digits) or a case fold that
    # changes the length: fold the kept characters one by one.
    chars: list[str] = []
    expanded: list[int] = []
    for char, offset in zip(kept, offsets.tolist(), strict=True):
        for folded_char in _fold_char(char):
            chars.append(folded_char)
            expanded.append(offset)
    return Normalised(_simplify("".join(chars)), np.asarray(expanded, dtype=np.int64))


def warm_up() -> None:
    """Build the lookup table now rather than inside the first timed check."""
    _matchable_table()


@lru_cache(maxsize=1)
def _matchable_table() -> np.ndarray:
    """For every code point: is it a letter or digit, or does NFKC turn it into some?

    Filtering a text is then one numpy gather; building the table takes ~0.3 s, once.
    """
    return np.fromiter(
        ((c := chr(i)).isalnum() or any(x.isalnum() for x in unicodedata.normalize("NFKC", c))
         for i in range(0x110000)), dtype=bool, count=0x110000)


def _simplify(text: str) -> str:
    """Traditional to Simplified without changing the length (the offset map depends on it)."""
    simplified: str = _to_simplified.convert(text)
    if len(simplified) == len(text):
        return simplified
    # A phrase rule changed the length: convert character by character instead.
    per_char = [_to_simplified.convert(c) for c in text]
    return "".join(s if len(s) == 1 else c for s, c in zip(per_char, text, strict=True))
