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

import copy
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import opencc

__all__ = [
    "LOOKALIKES",
    "NORMALISER_VERSION",
    "GrowingNormal",
    "Normalised",
    "matchable_chars",
    "normalise",
    "warm_up",
]

_to_simplified = opencc.OpenCC("t2s")

# Bump when normalisation changes: an index built with another version would not match.
NORMALISER_VERSION = 2
SETTLE_CHARS = 16  # a character's normal form depends on no more than this many that follow it
_SHORT = 16  # texts up to this long are counted in Python, longer ones in numpy

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
        if any(len(f) != 1 for f in folds):  # rare: a ligature, ß or ⑩ becomes several characters
            return _expand_folds(kept, offsets, to_fold, folds)
        kept = kept.copy()
        kept[to_fold] = [ord(f) for f in folds]
    folded = kept.tobytes().decode("utf-32-le", "surrogatepass")
    return Normalised(_simplify(folded), offsets.astype(np.int64))


class GrowingNormal:
    """The normal form of a text that grows at its end (a streamed answer), each time costing
    only what was added: characters `SETTLE_CHARS` or more before the end keep their normal form
    (OpenCC's phrase rules, the only ones that read neighbours, read only a few characters either
    way), so only the rest is normalised again, with as many before it for context. The part
    before `forget()` is let go."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._text = ""
        self._kept = Normalised("", np.zeros(0, dtype=np.int64))  # text[_start:_settled], offsets into text
        self._start = 0
        self._settled = 0
        self._length = 0
        self._forgotten = 0  # normalised characters let go

    @property
    def text(self) -> str:
        """The whole original text so far."""
        if self._pieces:
            self._text += "".join(self._pieces)
            self._pieces.clear()
        return self._text

    def add(self, delta: str) -> None:
        self._pieces.append(delta)
        self._length += len(delta)

    @property
    def length(self) -> int:
        """Of the whole text (without joining its pieces)."""
        return self._length

    @property
    def start(self) -> int:
        """Where the text still normalised begins (offsets are into the whole text)."""
        return self._start

    def normalised(self) -> Normalised:
        """The normal form of text[start:], offsets into the whole text (`forgotten` more
        normalised characters came before it)."""
        text = self.text
        context = max(self._settled - SETTLE_CHARS, 0)  # phrase rules read back as far as ahead
        tail = normalise(text[context:])
        first = int(np.searchsorted(tail.offsets, self._settled - context))
        offsets = np.concatenate([self._kept.offsets, tail.offsets[first:] + context])
        whole = Normalised(self._kept.text + tail.text[first:], offsets)
        settled = len(text) - SETTLE_CHARS
        if settled > self._settled:
            kept = int(np.searchsorted(whole.offsets, settled))
            self._kept = Normalised(whole.text[:kept], whole.offsets[:kept])
            self._settled = settled
        return whole

    def copy(self) -> GrowingNormal:
        twin = copy.copy(self)
        twin._pieces = list(self._pieces)
        return twin

    def forget(self, before: int) -> None:
        """Stop keeping the normal form of text[:before] (a stream no longer looks there)."""
        before = min(before, self._settled)
        if before > self._start:
            cut = int(np.searchsorted(self._kept.offsets, before))
            self._kept = Normalised(self._kept.text[cut:], self._kept.offsets[cut:])
            self._start = before
            self._forgotten += cut

    @property
    def forgotten(self) -> int:
        """Normalised characters of text[:start]."""
        return self._forgotten


def matchable_chars(text: str) -> int:
    """How many characters of `text` count for matching (cheaper than normalising it)."""
    matchable = _tables()[0]
    if len(text) <= _SHORT:  # a streamed token: numpy's per-call cost would dominate
        return sum(1 for c in text if matchable[ord(c)])
    code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return int(matchable[code_points].sum())


def _expand_folds(kept: np.ndarray, offsets: np.ndarray, to_fold: np.ndarray, folds: list[str]) -> Normalised:
    """Apply folds of which some are not one character long: every character of a fold keeps
    the offset of the one it came from."""
    text = kept.tobytes().decode("utf-32-le", "surrogatepass")
    pieces: list[str] = []
    previous = 0
    for position, fold in zip(to_fold.tolist(), folds, strict=True):
        pieces += (text[previous:position], fold)
        previous = position + 1
    pieces.append(text[previous:])
    counts = np.ones(len(kept), dtype=np.int64)
    counts[to_fold] = [len(f) for f in folds]
    return Normalised(_simplify("".join(pieces)), np.repeat(offsets.astype(np.int64), counts))


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
