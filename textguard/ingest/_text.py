"""Bytes to text in the encodings Chinese text circulates in, never a silent mojibake.

Novels in circulation are as often GB18030 (or its subsets GBK and GB2312) or Big5 as UTF-8,
and Windows tools write UTF-16. A byte-order mark decides first; NUL bytes, which no text holds, mean
UTF-16/32 without one; then strict UTF-8 (most files, and all ASCII); then GB18030 or Big5,
whichever decodes strictly into text that jieba finds words in. (Mojibake is a string of
unrelated single characters. The two encodings share most of their byte ranges, and general
detectors such as charset-normalizer took GB18030 text for Big5 on short texts here.) Whatever
is picked must decode the whole input strictly, so a wrong guess is an error a person sees, not
garbage in the index.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from typing import IO

from textguard.normalise import normalise
from textguard.segment import get_segmenter

__all__ = ["EncodingError", "decode_text", "decoded_lines", "detect_encoding"]

_BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]  # UTF-32 LE starts like UTF-16 LE
_SAMPLE_BYTES = 1 << 20  # what detection reads of a streamed file
_JUDGED_CHARS = 20_000  # of a text decoded two ways, what is segmented to tell which reads as words
_PRIVATE_USE = 0.01  # share of private-use characters above which a reading is mojibake
_WORDY = 0.3  # share of characters in words of two or more, below which a decoding is not Chinese


class EncodingError(ValueError):
    """The bytes are in no encoding textguard can tell (or not in the one forced)."""


def detect_encoding(sample: bytes, complete: bool = True) -> str:
    """The encoding of `sample` (the whole input if `complete`, else its start). Python codec
    names, except "gb18030" and "big5" as people call them."""
    for bom, name in _BOMS:
        if sample.startswith(bom):
            return name
    if b"\x00" in sample[:_SAMPLE_BYTES]:  # no text has NULs: UTF-16/32 without a byte-order mark
        readings = {name: _readable(text) for name in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
                    if (text := _decoded(sample, name, complete)) is not None and "\x00" not in text}
        if readings and max(readings.values()) >= _WORDY:
            return max(readings, key=readings.__getitem__)
        raise EncodingError("holds NUL bytes that are no UTF-16/32 text: a binary file? "
                            "(name its encoding with --encoding)")
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if not complete and exc.start >= len(sample) - 3:  # a character cut at the sample's end
            return "utf-8"
    readings = {name: _wordiness(text) for name in ("gb18030", "big5", "utf-16-le", "utf-16-be")
                if (text := _decoded(sample, name, complete)) is not None}
    if readings and max(readings.values()) >= _WORDY:
        return max(readings, key=readings.__getitem__)
    raise EncodingError("cannot tell its encoding (not UTF-8, UTF-16/32, GB18030 or Big5); "
                        "name it with --encoding")


def _codec(name: str) -> str:
    """The codec that reads `name`: Big5 as written today carries the HKSCS additions, and a
    forced UTF-8 may still start with the BOM that Windows tools write."""
    return {"big5": "big5hkscs", "utf-8": "utf-8-sig", "utf8": "utf-8-sig"}.get(name.lower(), name)


def _decoded(sample: bytes, name: str, complete: bool) -> str | None:
    decoder = codecs.getincrementaldecoder("big5hkscs" if name == "big5" else name)("strict")
    try:
        return decoder.decode(sample, final=complete)
    except UnicodeDecodeError:
        return None


def _wordiness(text: str) -> float:
    """Share of the Chinese characters of `text` that jieba puts in words of two or more; 0 for
    a text with more than a trace of private-use characters, which a wrong reading of GB18030 or
    Big5 makes (old texts hold a few, for characters their encoding lacked)."""
    judged = text[:_JUDGED_CHARS]
    if sum("\ue000" <= char <= "\uf8ff" for char in judged) > _PRIVATE_USE * len(judged):
        return 0.0
    normal = normalise(judged).text
    tokens, _ = get_segmenter().tokens(normal)
    chinese = [token for token in tokens if _is_chinese(token[0])]
    total = sum(len(token) for token in chinese)
    return sum(len(token) for token in chinese if len(token) > 1) / total if total else 0.0


def _readable(text: str) -> float:
    """How much `text` reads as text: its Chinese in words, or else its share of printable ASCII."""
    ascii_share = sum(" " <= char <= "~" or char in "\n\r\t" for char in text[:_JUDGED_CHARS]) / max(
        min(len(text), _JUDGED_CHARS), 1)
    return max(_wordiness(text), ascii_share)


def _is_chinese(char: str) -> bool:
    return "\u3400" <= char <= "\u9fff" or "\U00020000" <= char <= "\U0003134f"


def decode_text(data: bytes, encoding: str | None = None) -> tuple[str, str]:
    """`data` decoded strictly, and the encoding used (`encoding` forces one)."""
    name = encoding or detect_encoding(data[:_SAMPLE_BYTES], complete=len(data) <= _SAMPLE_BYTES)
    codec = _codec(name)
    try:
        return data.decode(codec), name
    except UnicodeDecodeError as exc:
        raise EncodingError(f"not valid {name} ({exc.reason} at byte {exc.start})") from exc
    except LookupError as exc:
        raise EncodingError(f"unknown encoding {name!r}") from exc


def decoded_lines(handle: IO[bytes], encoding: str | None = None) -> tuple[str, Iterator[str]]:
    """The encoding of a binary stream (told from its first megabyte unless given) and its
    lines, decoded strictly as they are read: memory stays bounded whatever the file's size."""
    sample = handle.read(_SAMPLE_BYTES)
    name = encoding or detect_encoding(sample, complete=len(sample) < _SAMPLE_BYTES)
    codec = _codec(name)
    try:
        decoder = codecs.getincrementaldecoder(codec)("strict")
    except LookupError as exc:
        raise EncodingError(f"unknown encoding {name!r}") from exc

    def lines() -> Iterator[str]:
        pending = ""
        offset = 0
        block = sample
        while block:
            try:
                pending += decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise EncodingError(f"not valid {name} ({exc.reason} near byte {offset + exc.start})") from exc
            offset += len(block)
            *complete, pending = pending.split("\n")
            for line in complete:
                yield line + "\n"
            block = handle.read(1 << 16)
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending

    return name, lines()
