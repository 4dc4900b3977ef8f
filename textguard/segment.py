"""Stage 2: segment normalised text into tokens with jieba (its Rust port, jieba-rs).

Segmentation runs on the normalised text (punctuation and spaces already gone), so a passage
segments the same way however it was punctuated or spaced. Runs of Latin letters and digits
become one token per character: once spaces are stripped, jieba would make a whole Latin
passage a single token, and character tokens keep it matchable.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np
import rjieba

from textguard.errors import ConfigError

__all__ = ["Segmenter", "get_segmenter"]

logger = logging.getLogger(__name__)


class Segmenter:
    """jieba's dictionary and algorithm (no HMM), run by jieba-rs through `rjieba`.

    jieba-rs splits exactly as Python jieba does with HMM off (checked on the shared corpus)
    at a fourteenth of the cost; a check spends most of its time segmenting.
    """

    def __init__(self, user_dict: Path | None = None) -> None:
        self._tokenizer = rjieba.Jieba()
        self.user_dict_digest = ""
        if user_dict is not None:
            try:
                content = user_dict.read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read jieba user dictionary {user_dict}: {exc.strerror}") from exc
            self.user_dict_digest = hashlib.sha256(content).hexdigest()[:16]
            for line in content.decode("utf-8-sig").splitlines():
                self._add_word(line)

    def _add_word(self, line: str) -> None:
        """One line of a jieba user dictionary: word, then optional frequency and tag."""
        parts = line.strip().split()
        if not parts:
            return
        frequency = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        tag = parts[-1] if len(parts) > 1 and not parts[-1].isdigit() else None
        self._tokenizer.add_word(parts[0], frequency, tag)

    def tokens(self, text: str) -> tuple[list[str], np.ndarray]:
        """Tokens of `text` and the start index of each token in `text`."""
        tokens: list[str] = []
        for token in self._tokenizer.cut(text, hmm=False):
            if len(token) > 1 and token.isascii():
                tokens.extend(token)
            else:
                tokens.append(token)
        lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
        starts = np.zeros(len(tokens), dtype=np.int64)
        if len(tokens) > 1:
            np.cumsum(lengths[:-1], out=starts[1:])
        return tokens, starts


_segmenters: dict[Path | None, Segmenter] = {}
_lock = threading.Lock()


def get_segmenter(user_dict: Path | None = None) -> Segmenter:
    """The process-wide segmenter for `user_dict`, initialised once."""
    with _lock:
        segmenter = _segmenters.get(user_dict)
        if segmenter is None:
            logger.debug("initialising jieba (user dictionary: %s)", user_dict)
            segmenter = _segmenters[user_dict] = Segmenter(user_dict)
        return segmenter
