"""The evasion suite: copies disguised the ways a copier would (or a prompt asks a model to),
each found with its span in the text as received. Chinese passages come from the shared corpus;
mixed Chinese-Latin passages from real chat answers, indexed as protected texts of their own."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Iterator

import opencc
import pytest
from pypinyin import lazy_pinyin

from tests.support.helpers import (
    DATA,
    PREFIX,
    SUFFIX,
    check,
    expected_span,
    long_records,
    longest_shared_run,
    passage,
)
from textguard import Corpus, Document, Guard, Settings
from textguard.evasions import PLACEHOLDER, undisguise
from textguard.normalise import normalise
from textguard.stream import GuardedStream

_to_traditional = opencc.OpenCC("s2t").convert
_CYRILLIC = str.maketrans("aeopcxyiAEOPCXYHKMBT", "аеорсхуіАЕОРСХУНКМВТ")
_KATAKANA = str.maketrans("一口工力夕二八卜千", "ーロエカタニハトチ")


def _every(separator: str) -> Callable[[str], str]:
    return lambda text: separator.join(text)


def _pinyin(text: str) -> str:
    """Every fifth Chinese character written in pinyin (never the first or last: a span ends at a
    character, and the copy's first and last stay where the test expects its span)."""
    return "".join(lazy_pinyin(char)[0] if i % 5 == 2 and 0 < i < len(text) - 1 and "\u4e00" <= char <= "\u9fff"
                   else char for i, char in enumerate(text))


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
    "a letter between every character": _every("x"),
    "a digit between every character": _every("7"),
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


def test_a_copy_with_pinyin_for_some_characters_is_found(guard: Guard, corpus_records: list[dict]) -> None:
    """A syllable stands where its character stood, as a homophone would: the span may begin or
    end a few characters inside the copy (an alignment starts on four equal characters), never
    outside it."""
    for record in long_records(corpus_records, 4):
        disguised = _pinyin(passage(record, 150))
        text = PREFIX + disguised + SUFFIX
        verdict = check(guard, text)
        assert verdict.verdict in ("rewrite", "block"), record["id"]
        (match,) = verdict.matches
        begin, end = expected_span(text, disguised)
        assert match.doc_id == record["id"] and begin <= match.start and match.end <= end
        assert match.end - match.start >= 0.9 * (end - begin)


def test_undisguising_keeps_offsets_and_leaves_ordinary_text_alone() -> None:
    separated = normalise("x".join("床前明月光，疑是地上霜。"))
    undone = undisguise(separated)
    assert undone.text == "床前明月光疑是地上霜"
    assert ["x".join("床前明月光，疑是地上霜。")[i] for i in undone.offsets] == list(undone.text)
    spelled = "床前明yue光，疑是地shang霜"
    undone = undisguise(normalise(spelled))
    assert undone.text == f"床前明{PLACEHOLDER}光疑是地{PLACEHOLDER}霜"
    assert [spelled[i] for i in undone.offsets] == list("床前明y光疑是地s霜")
    for ordinary in ("第1章第2节第3页第4行第5字第6句", "我用Python和numpy写了代码", "邓南遮（dannunzio）的诗",
                     "x坐标和y坐标之和为3x加2y，a、b、c三个点"):
        assert undisguise(normalise(ordinary)).text == normalise(ordinary).text


def test_a_separated_copy_streamed_releases_no_more_than_q(indexed: Settings, corpus_records: list[dict]) -> None:
    record = long_records(corpus_records, 1)[0]
    copied = passage(record, 300)
    text = PREFIX + "x".join(copied) + SUFFIX

    async def streamed() -> str:
        guard = Guard(indexed)
        try:
            stream = GuardedStream(guard)
            released = [(await stream.feed(text[i:i + 4])).text for i in range(0, len(text), 4)]
            released.append((await stream.finish()).text)
            return "".join(released)
        finally:
            await guard.aclose()

    released = asyncio.run(streamed())
    assert "出自《" in released
    seen = undisguise(normalise(released)).text
    assert longest_shared_run(seen, normalise(copied).text) <= indexed.quote_chars
