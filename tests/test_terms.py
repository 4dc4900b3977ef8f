"""Per-work terms: a rights holder's `policy` ("allow": licensed, never flagged; "block": any copy
blocks the answer) and `quote_chars` (that work's own quotation limit), given on a record; each
changes the verdict as stated, in whole answers and in streams."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.support.helpers import AFTER, BEFORE, run
from textguard import Guard, Settings
from textguard.stream import GuardedStream

TERMS = {"licensed": {"policy": "allow"}, "strict": {"policy": "block"}, "tight": {"quote_chars": 20},
         "loose": {"quote_chars": 150}, "plain": {}}


@pytest.fixture
def works(settings: Settings, tmp_path: Path, corpus_records: list[dict]) -> dict[str, str]:
    """One long work per set of terms, added from a JSONL file through the command line."""
    texts = [r["text"] for r in corpus_records if len(r["text"]) > 3000][:len(TERMS)]
    path = tmp_path / "terms.jsonl"
    records = [{"id": name, "text": text, "title": name, **terms}
               for (name, terms), text in zip(TERMS.items(), texts, strict=True)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    added = run(settings, "corpus", "add", "--quiet", str(path))
    assert added.returncode == 0, added.stdout + added.stderr
    return dict(zip(TERMS, texts, strict=True))


def _answer(text: str, chars: int) -> str:
    return BEFORE + text[1000:1000 + chars] + AFTER * 2


def _whole(settings: Settings, answer: str) -> str:
    guard = Guard(settings)
    try:
        return guard.check_sync(answer, fail_mode="raise").verdict
    finally:
        guard.close()


def _streamed(settings: Settings, answer: str, before_finish: list[str] | None = None) -> tuple[bool, str]:
    async def go() -> tuple[bool, str]:
        guard = Guard(settings)
        try:
            stream = GuardedStream(guard)
            released = [(await stream.feed(answer[i:i + 3])).text for i in range(0, len(answer), 3)]
            if before_finish is not None:
                before_finish.append("".join(released))
            released.append((await stream.finish()).text)
            return stream.blocked, "".join(released)
        finally:
            await guard.aclose()

    return asyncio.run(go())


def test_each_term_changes_the_verdict_of_a_whole_answer(settings: Settings, works: dict[str, str]) -> None:
    assert _whole(settings, _answer(works["plain"], 80)) == "rewrite"  # the settings: Q = 50
    assert _whole(settings, _answer(works["licensed"], 80)) == "allow"
    assert _whole(settings, _answer(works["strict"], 80)) == "block"
    assert _whole(settings, _answer(works["plain"], 30)) == "allow"
    assert _whole(settings, _answer(works["tight"], 30)) == "rewrite"
    assert _whole(settings, _answer(works["loose"], 120)) == "allow"  # past the mosaic limit (100): its own Q
    assert _whole(settings, _answer(works["loose"], 260)) != "allow"


def test_each_term_changes_the_verdict_of_a_stream(settings: Settings, works: dict[str, str]) -> None:
    plain_blocked, plain = _streamed(settings, _answer(works["plain"], 80))
    assert not plain_blocked and "出自《plain》" in plain
    licensed = _answer(works["licensed"], 80)
    assert _streamed(settings, licensed) == (False, licensed)
    ending = BEFORE + works["licensed"][1000:1200]  # a licensed copy still growing at the end...
    early: list[str] = []
    assert _streamed(settings, ending, early) == (False, ending)
    assert len(early[0]) >= len(ending) - 40  # ...is not held back as a copy in the making would be
    strict_blocked, strict = _streamed(settings, _answer(works["strict"], 80))
    assert strict_blocked and works["strict"][1000:1050] not in strict
    loose = _answer(works["loose"], 120)
    assert _streamed(settings, loose) == (False, loose)


def test_terms_are_listed_and_bad_ones_named(settings: Settings, works: dict[str, str], tmp_path: Path) -> None:
    listed = dict(line.split("\t", 1) for line in run(settings, "corpus", "list").stdout.splitlines())
    assert listed["strict"].endswith("policy=block") and listed["tight"].endswith("quote_chars=20")
    assert listed["plain"].count("\t") == 3  # id, work, title, author, chars: no terms column
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "一二三", "policy": "maybe"}\n'
                   '{"id": "b", "text": "一二三", "quote_chars": -3}\n'
                   '{"id": "c", "text": "一二三", "quote_chars": true}\n', "utf-8")
    result = run(settings, "corpus", "add", "--quiet", str(bad))
    assert result.returncode == 1
    assert f"{bad}:1: 'policy' must be \"allow\"" in result.stdout
    assert f"{bad}:2: 'quote_chars' must be a whole number" in result.stdout
    assert f"{bad}:3: 'quote_chars'" in result.stdout
