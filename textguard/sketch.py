"""Stage 3: MinHash sketches of every sliding window of token shingles, and their LSH bands.

All windows of a text are sketched at once with numpy, using datasketch's own permutations
(scheme affine32: murmur3 finaliser, then h -> a*h + b mod 2**32), so a window's signature is
bit-identical to `datasketch.MinHash(num_perm, seed, hashfunc=shingle_hash)` fed the same
shingles. A band's value over consecutive windows changes only when one of its minima leaves
or enters the window, so each text yields a short list of band *runs*. Both the corpus and a
checked text are reduced to runs the same way, which keeps every sliding window matchable while
storing and looking up only about 2 * num_perm / window entries per token. Each run is anchored
at the shingle holding its first row's minimum: the same content gives the same anchor, so a
hit pairs a position in the checked text with a position in the document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import xxhash
from datasketch import MinHash
from datasketch.lsh import _optimal_param

__all__ = ["SCHEME", "TOKEN_HASH", "BandRuns", "SketchParams", "Sketcher", "shingle_bytes", "shingle_hash"]

SCHEME = "affine32"
TOKEN_HASH = "xxh32"
_SEPARATOR = "\x1f"  # joins the tokens of a shingle when it is spelled out as bytes
_MIX = np.uint32(0x9E3779B1)
_M64 = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))
_S32, _LOW32 = np.uint64(32), np.uint64(0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class SketchParams:
    """Everything that decides a sketch; recorded in the index, which refuses a mismatch."""

    num_perm: int
    bands: int
    rows: int
    window: int
    shingle: int
    seed: int
    threshold: float
    scheme: str = SCHEME
    token_hash: str = TOKEN_HASH

    @classmethod
    def choose(cls, threshold: float, num_perm: int, window: int, shingle: int, seed: int) -> SketchParams:
        """Pick bands x rows with datasketch's optimiser for `threshold` (equal FP/FN weights)."""
        bands, rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
        return cls(num_perm=num_perm, bands=bands, rows=rows, window=window, shingle=shingle,
                   seed=seed, threshold=threshold)

    def as_record(self) -> dict[str, object]:
        return asdict(self)


_token_hash_cache: dict[str, int] = {}
_CACHE_LIMIT = 1 << 20  # the vocabulary is bounded; this only guards against unbounded input


def _token_hash(token: str) -> int:
    if len(_token_hash_cache) >= _CACHE_LIMIT:
        _token_hash_cache.clear()
    value = _token_hash_cache[token] = xxhash.xxh32_intdigest(token.encode())
    return value


def _token_hashes(tokens: Sequence[str]) -> np.ndarray:
    cache = _token_hash_cache
    return np.array([cache[t] if t in cache else _token_hash(t) for t in tokens], dtype=np.uint32)


def _combine(token_hashes: np.ndarray, shingle: int) -> np.ndarray:
    """Shingle hashes from the hashes of `shingle` consecutive tokens (order-sensitive)."""
    count = len(token_hashes) - shingle + 1
    combined = token_hashes[:count].copy()
    for offset in range(1, shingle):
        combined = combined * _MIX + token_hashes[offset:offset + count]
    return combined


def shingle_hash(shingle: bytes) -> int:
    """The hash of one shingle spelled out as bytes; datasketch's `hashfunc` for the same sketch."""
    hashes = _token_hashes(shingle.decode().split(_SEPARATOR))
    return int(_combine(hashes, len(hashes))[0])


def shingle_bytes(tokens: Sequence[str], shingle: int) -> list[bytes]:
    """The shingles of `tokens` as bytes, as `shingle_hash` reads them (for cross-checks)."""
    count = max(len(tokens) - shingle + 1, 0)
    return [_SEPARATOR.join(tokens[i:i + shingle]).encode() for i in range(count)]


# murmur3's finalisers, in place on a fresh array (numpy's per-call cost dominates short texts,
# so constants are made once and no temporaries are kept)
_F32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35))
_S33 = np.uint64(33)


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _F32[0])
    h *= _F32[1]
    h ^= h >> _F32[2]
    h *= _F32[3]
    h ^= h >> _F32[0]
    return h


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _S33)
    h *= _M64[0]
    h ^= h >> _S33
    h *= _M64[1]
    h ^= h >> _S33
    return h


@dataclass(frozen=True, slots=True)
class BandRuns:
    """The band runs of one text: parallel arrays, one entry per run."""

    keys: np.ndarray  # uint64: band value, mixed with the band's index
    anchors: np.ndarray  # int64: token index where the anchoring shingle starts

    def __len__(self) -> int:
        return len(self.keys)


class Sketcher:
    def __init__(self, params: SketchParams) -> None:
        self.params = params
        template = MinHash(num_perm=params.num_perm, seed=params.seed, scheme=SCHEME)
        a, b = template.permutations
        self._a = np.asarray(a, dtype=np.uint32)
        self._b = np.asarray(b, dtype=np.uint32)
        self._band_numbers = np.arange(1, params.bands + 1, dtype=np.uint64)

    def _permuted(self, tokens: Sequence[str]) -> np.ndarray:
        """Every shingle hashed under every permutation: (n_shingles, num_perm)."""
        hashed = _fmix32(_combine(_token_hashes(tokens), self.params.shingle))
        permuted: np.ndarray = hashed[:, None] * self._a[None, :] + self._b[None, :]
        return permuted

    def signatures(self, tokens: Sequence[str]) -> np.ndarray:
        """MinHash of every sliding window: (n_windows, num_perm)."""
        if len(tokens) < self.params.shingle:
            return np.zeros((0, self.params.num_perm), dtype=np.uint32)
        return _sliding_min(self._permuted(tokens), self.params.window)

    def band_runs(self, tokens: Sequence[str]) -> BandRuns:
        p = self.params
        if len(tokens) < p.shingle:
            return BandRuns(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))
        used = self._permuted(tokens)[:, :p.bands * p.rows]
        # Each hash value carries its shingle's index in its low 32 bits, so the sliding minimum
        # also says where the window's (first) minimum sits: the anchor, without a second pass.
        positioned = used.astype(np.uint64) << _S32 | np.arange(len(used), dtype=np.uint64)[:, None]
        width = min(p.window, len(used))
        minima = _sliding_min(positioned, width).reshape(-1, p.bands, p.rows)
        value = np.broadcast_to(self._band_numbers, (len(minima), p.bands))
        for row in range(p.rows):
            value = _fmix64(value * _M64[0] + (minima[:, :, row] >> _S32))
        changed = np.ones_like(value, dtype=bool)
        changed[1:] = value[1:] != value[:-1]
        starts, bands = np.nonzero(changed)
        anchors = (minima[starts, bands, 0] & _LOW32).astype(np.int64)
        return BandRuns(value[starts, bands], anchors)


def _sliding_min(values: np.ndarray, width: int) -> np.ndarray:
    """Minimum of every `width` consecutive rows, by doubling spans: O(n log width)."""
    width = min(width, len(values))
    spans = {1: values}
    span = 1
    while span * 2 <= width:
        previous = spans[span]
        spans[span * 2] = np.minimum(previous[:-span], previous[span:])
        span *= 2
    result = spans[span]
    covered = span
    count = len(values) - width + 1
    result = result[:count]
    for size in sorted(spans, reverse=True):  # add the binary digits of width - span
        if covered + size <= width:
            result = np.minimum(result, spans[size][covered:covered + count])
            covered += size
    return result
