"""The evasion suite: copies disguised the ways a copier would, each found with its span in the
text as received. Chinese passages come from the shared corpus; mixed Chinese-Latin passages
from real chat answers, indexed as protected texts of their own."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator

import opencc
import pytest

from tests.support.helpers import DATA, PREFIX, SUFFIX, check, expected_span, long_records, passage
from textguard import Corpus, Document, Guard, Settings

_to_traditional = opencc.OpenCC("s2t").convert
_CYRILLIC = str.maketrans("aeopcxyiAEOPCXYHKMBT", "аеорсхуіАЕОРСХУНКМВТ")
_KATAKANA = str.maketrans("一口工力夕二八卜千", "ーロエカタニハトチ")


def _every(separator: str) -> Callable[[str], str]:
    return lambda text: separator.join(text)


def _sprinkle(marks: str) -> Callable[[str], str]:
    rng = random.Random(3)
    return lambda text: "".join(c + (rng.choice(marks) if i % 3 == 2 else "") for i, c in enumerate(text))


DISGUISES: dict[str, Callable[[str], str]] = {
    "zero-width": _every("\u200b"),
    "joiners and BOMs": _sprinkle("\u200c\u200d\u2060\ufeff\u00ad"),
    "spaced": _every(" "),
    "punctuation between every character": _every("、"),
    "full-width and other punctuation": lambda t: t.replace("，", "､").replace("。", "！").replace("1", "１"),
    "traditional": _to_traditional,
    "emoji": _sprinkle("✨🙂👍🔥"),
    "look-alike katakana": lambda t: t.translate(_KATAKANA),
    "everything at once": lambda t: _every("\u200b")(_to_traditional(t).translate(_KATAKANA)).replace("，", " , "),
}


@pytest.fixture(scope="module")
def guard(indexed: Settings) -> Iterator[Guard]:
    guard = Guard(indexed)
    yield guard
    guard.close()


@pytest.mark.parametrize("name", DISGUISES)
def test_disguised_copy_is_found_with_its_span(guard: Guard, corpus_records: list[dict], name: str) -> None:
    for record in long_records(corpus_records, 4):
        disguised = DISGUISES[name](passage(record, 150))
        text = PREFIX + disguised + SUFFIX
        verdict = check(guard, text)
        assert verdict.verdict in ("rewrite", "block"), (name, record["id"])
        (match,) = verdict.matches
        assert match.doc_id == record["id"]
        assert (match.start, match.end) == expected_span(text, disguised)


def test_two_works_mixed_are_both_found(guard: Guard, corpus_records: list[dict]) -> None:
    first, second = long_records(corpus_records, 2)
    pieces = [passage(first, 80, at=0.2), passage(second, 80, at=0.5)]
    text = PREFIX + _every("\u200b")(pieces[0]) + "。" + _to_traditional(pieces[1]) + SUFFIX
    verdict = check(guard, text)
    assert [m.doc_id for m in verdict.matches] == [first["id"], second["id"]]
    for match, piece in zip(verdict.matches, (_every("\u200b")(pieces[0]), _to_traditional(pieces[1])), strict=True):
        assert (match.start, match.end) == expected_span(text, piece)


@pytest.fixture(scope="module")
def mixed_script(base_settings: Settings) -> Iterator[tuple[Guard, list[dict]]]:
    """Chat answers that mix Chinese with English words, indexed as protected texts."""
    path = DATA / "llm_answers_zh.jsonl"
    if not path.is_file():
        pytest.skip(f"shared data not found at {path}")
    with path.open(encoding="utf-8") as handle:
        records = [r for r in map(json.loads, handle)
                   if 0.3 < r["cjk_ratio"] < 0.7 and len(r["text"]) > 600 and sum(c.isascii() and c.isalpha()
                                                                                  for c in r["text"]) > 150][:6]
    settings = base_settings.replace(index="evasion-mixed")
    with Corpus(settings) as corpus:
        corpus.add(Document(r["id"], r["text"], title="混合文本") for r in records)
    guard = Guard(settings)
    yield guard, records
    guard.close()


def test_look_alike_latin_letters_in_mixed_text(mixed_script: tuple[Guard, list[dict]]) -> None:
    guard, records = mixed_script
    for record in records:
        original = passage(record, 160, at=0.3)
        assert sum(c.isascii() and c.isalpha() for c in original) >= 10, "the passage should mix scripts"
        disguised = original.translate(_CYRILLIC)
        assert disguised != original
        text = PREFIX + disguised + SUFFIX
        verdict = check(guard, text)
        assert verdict.verdict in ("rewrite", "block"), record["id"]
        (match,) = verdict.matches
        assert match.doc_id == record["id"]
        assert (match.start, match.end) == expected_span(text, disguised)
