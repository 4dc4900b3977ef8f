"""Stage 1: normalise text for matching, keeping a map back to the original offsets.

Matching sees only letters and digits: NFKC folds full-width forms, OpenCC folds Traditional
to Simplified, case is folded, look-alike letters fold to what they imitate, and everything
else (punctuation, spaces, emoji, zero-width and other format characters) is dropped outright
rather than treated as a separator, so a copy with characters spaced out or stuffed with
invisible marks normalises to the same string as the original. Every normalised character
remembers the index of the original character it came from, so spans found on the normalised
text can be reported in the text the client received.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import opencc

_to_simplified = opencc.OpenCC("t2s")

# Bump when normalisation changes: an index built with another version would not match.
NORMALISER_VERSION = 2

# Look-alikes a copier may swap in so that text reads the same but matches nothing: Cyrillic and
# Greek letters that look Latin (after case folding), and katakana that look like common Chinese
# characters (ー for 一, ロ for 口, ...). Each folds to what it imitates.
LOOKALIKES = str.maketrans({
    **dict(zip("аеорсхуіјѕһԁԛԝүӏвкмнт", "aeopcxyijshdqwylbkmht", strict=True)),  # Cyrillic
    **dict(zip("αβεζηικμνορτυχ", "abezhikmvoptux", strict=True)),  # Greek
    **dict(zip("ーロエカタニハトチ", "一口工力夕二八卜千", strict=True)),  # katakana
})


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
    folded = unicodedata.normalize("NFKC", char).casefold().translate(LOOKALIKES)
    return "".join(c for c in folded if c.isalnum())


def normalise(text: str) -> Normalised:
    """Normalise `text` for matching; see the module docstring for what is folded."""
    matchable, unstable = _tables()
    code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    offsets = np.flatnonzero(matchable[code_points])
    kept = code_points[offsets]
    to_fold = np.flatnonzero(unstable[kept])
    if len(to_fold):
        folds = [_fold_char(chr(c)) for c in kept[to_fold].tolist()]
        if any(len(f) != 1 for f in folds):  # rare: a ligature or ß becomes several characters
            return _normalise_by_character(kept, offsets)
        kept = kept.copy()
        kept[to_fold] = [ord(f) for f in folds]
    folded = kept.tobytes().decode("utf-32-le", "surrogatepass")
    return Normalised(_simplify(folded), offsets.astype(np.int64))


def matchable_chars(text: str) -> int:
    """How many characters of `text` count for matching (cheaper than normalising it)."""
    code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return int(_tables()[0][code_points].sum())


def _normalise_by_character(kept: np.ndarray, offsets: np.ndarray) -> Normalised:
    chars: list[str] = []
    expanded: list[int] = []
    for code, offset in zip(kept.tolist(), offsets.tolist(), strict=True):
        for folded in _fold_char(chr(code)):
            chars.append(folded)
            expanded.append(offset)
    return Normalised(_simplify("".join(chars)), np.asarray(expanded, dtype=np.int64))


def warm_up() -> None:
    """Build the lookup tables now rather than inside the first timed check."""
    _tables()


@lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """Two tables over all code points, so that normalising is a few numpy gathers:
    matchable (a letter or digit, or NFKC turns it into some) and unstable (NFKC or case
    folding changes it). Building them takes ~0.25 s, once."""
    size = 0x110000
    is_normalized = unicodedata.is_normalized
    matchable = np.fromiter((chr(i).isalnum() for i in range(size)), dtype=bool, count=size)
    unstable = np.fromiter(((c := chr(i)) != c.casefold() or not is_normalized("NFKC", c) for i in range(size)),
                           dtype=bool, count=size)
    unstable[list(LOOKALIKES)] = True
    for code in np.flatnonzero(unstable & ~matchable).tolist():
        matchable[code] = bool(_fold_char(chr(code)))  # e.g. circled digits, compatibility ideographs
    return matchable, unstable


def _simplify(text: str) -> str:
    """Traditional to Simplified without changing the length (the offset map depends on it)."""
    simplified: str = _to_simplified.convert(text)
    if len(simplified) == len(text):
        return simplified
    # A phrase rule changed the length: convert character by character instead.
    per_char = [_to_simplified.convert(c) for c in text]
    return "".join(s if len(s) == 1 else c for s, c in zip(per_char, text, strict=True))
