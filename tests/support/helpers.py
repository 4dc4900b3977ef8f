"""Helpers more than one test module (or a benchmark) uses, so that no test module imports
another: the shared data, answers built around a passage copied from a protected work, and the
command line run as a process. (Fixtures are in conftest.py; the chat client's side in chat.py,
a look at what Redis holds in redis_admin.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from difflib import SequenceMatcher
from pathlib import Path

from textguard import Document, Guard, Settings, Verdict
from textguard.normalise import normalise

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data beside the project

# The clean text around a copy, so that the copy is a part of the answer and not all of it: a
# chat answer (the served surfaces), a longer one (detection) and another (scans and reports).
BEFORE = "我来回答这个问题，先说说背景，再看原文的一段话，最后谈一谈我自己的看法和体会。这段话是这样写的："
AFTER = ("这就是原文。我觉得作者在这里写得很好，值得我们反复阅读和体会。从这段文字里，我们能看到作者对当时社会的观察，"
         "也能感受到他的语言风格：简练、冷峻，却又带着温度。欢迎你继续提问，我们可以再讨论别的问题。")
PREFIX = ("以下是我的回答，希望对你有帮助。关于这个问题，我们可以先从背景说起，"
          "再看具体的文字，最后谈谈自己的理解和体会。")
SUFFIX = ("以上就是全部内容，需要说明的是，不同版本之间可能有细微的差别，引用时请以权威版本为准。"
          "总的来说，这段文字值得反复阅读，每次都会有新的收获；如果还有别的问题，欢迎继续提问，我会尽量详细地回答。")
FRONT = "谢谢你的提问。关于这个问题，我先说说自己的理解，再引一段原文给你参考："
BACK = "以上就是我找到的内容，仅供参考。如果你还想了解作者的生平或者写作背景，欢迎继续提问。"


def to_document(record: dict) -> Document:
    """A record of the shared data as the Document the corpus is given."""
    return Document(record["id"], record["text"], record.get("title", ""), record.get("author", ""),
                    record.get("work", ""))


def longest_shared_run(a: str, b: str) -> int:
    """The longest run of normalised characters `a` and `b` share: how much of a copy got out
    (the quotation limit and the stream's leakage bound are stated in these characters)."""
    x, y = normalise(a).text, normalise(b).text
    return SequenceMatcher(None, x, y, autojunk=False).find_longest_match(0, len(x), 0, len(y)).size


def passage(record: dict, chars: int, at: float = 0.3) -> str:
    """`chars` normalised characters of `record`, as they stand in its original text."""
    norm = normalise(record["text"])
    start = int((len(norm.text) - chars) * at)
    begin, end = norm.original_span(start, start + chars)
    return record["text"][begin:end]


def piece(record: dict, chars: int, at: float = 0.4) -> str:
    """A `passage` taken by default a little further into the work, where the scan and report
    tests take theirs."""
    return passage(record, chars, at)


def long_records(records: list[dict], count: int, minimum: int = 3000) -> list[dict]:
    """The first `count` records of at least `minimum` characters."""
    return [r for r in records if len(r["text"]) >= minimum][:count]


def records_longer_than(records: list[dict], chars: int) -> list[dict]:
    """Every record of more than `chars` characters."""
    return [r for r in records if len(r["text"]) > chars]


def expected_span(text: str, copied: str) -> tuple[int, int]:
    """Where a match of `copied` inside `text` must start and end: at its first and past its last
    normalised character (what a disguise adds around them is not part of the copy)."""
    begin = text.index(copied)
    norm = normalise(copied)
    return begin + int(norm.offsets[0]), begin + int(norm.offsets[-1]) + 1


def check(guard: Guard, text: str) -> Verdict:
    """A check that raises rather than skips: a detection test must not pass by a skipped check."""
    return guard.check_sync(text, fail_mode="raise")


def copied_answer(record: dict, chars: int) -> str:
    """An answer quoting `chars` normalised characters of `record` between clean sentences."""
    norm = normalise(record["text"])
    begin, end = norm.original_span(50, 50 + chars)
    return "我来回答这个问题。首先要说明背景，然后引用原文，最后谈谈感想和体会，希望对你有所帮助。" \
        + record["text"][begin:end] + "以上是原文的一部分，仅供参考，欢迎继续讨论这个话题，我们可以聊聊别的方面。"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def textguard_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a textguard process the home, index and Redis of `settings`."""
    env = {"TEXTGUARD_HOME": str(settings.home), "TEXTGUARD_INDEX": settings.index, **extra}
    if settings.redis_url:
        env["TEXTGUARD_REDIS_URL"] = settings.redis_url
    return env


def run(settings: Settings, *args: str, stdin: str | None = None,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m textguard ARGS` as a process of its own on the index of `settings`, as a user
    runs it: exit code, stdout and stderr."""
    env = {**os.environ, **textguard_env(settings, **(extra_env or {}))}
    return subprocess.run([sys.executable, "-m", "textguard", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=120)
