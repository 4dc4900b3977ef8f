"""rewrite_style "quote": a copied span's opening kept as a quotation naming author and work
(“……”（作者《作品》）), shorter than Q, once per work per answer, then the notice; through the
middleware with the official openai client, JSON and streamed, and the check API."""

from __future__ import annotations

import re

import httpx2
import pytest

from tests.support.chat import ask, collect, openai_client
from tests.support.helpers import AFTER, BEFORE, longest_shared_run
from tests.support.llm_app import Recorder, create_app, messages_request
from tests.support.servers import serve
from textguard import Guard, Settings
from textguard.normalise import normalise
from textguard.serve.middleware import TextGuardMiddleware
from textguard.serve.server import create_app as create_textguard_app


def _quotation(text: str) -> str:
    """The quotation a rewrite kept, without its marks."""
    found = re.search(r"“(.*?)……”（", text)
    assert found, text
    return found.group(1)


def _assert_quoted_once(content: str, record: dict, settings: Settings) -> None:
    attribution = "）" if not record["author"] else f"（{record['author']}《{record['work']}》）"
    assert content.count("……”（") == 1 and attribution in content
    assert f"出自《{record['work']}》" in content
    kept = _quotation(content)
    assert 0 < len(normalise(kept).text) < settings.quote_chars and kept in record["text"]
    assert longest_shared_run(content, record["text"]) < settings.quote_chars


@pytest.fixture
def quoting(indexed: Settings) -> Settings:
    return indexed.replace(rewrite_style="quote")


def test_a_whole_answer_keeps_one_attributed_quotation_per_work(quoting: Settings, record: dict) -> None:
    first, second = record["text"][1000:1100], record["text"][2000:2100]
    answer = BEFORE + first + "。我再引一段：" + second + AFTER * 3
    guard = Guard(quoting)
    try:
        verdict = guard.check_sync(answer, fail_mode="raise")
    finally:
        guard.close()
    assert verdict.verdict == "rewrite" and len(verdict.matches) == 2
    _assert_quoted_once(verdict.text, record, quoting)
    assert verdict.text.count(f"出自《{record['work']}》") == 2  # the second copy: the notice alone


def test_middleware_json_and_stream_and_the_check_api(quoting: Settings, record: dict) -> None:
    answer = BEFORE + record["text"][1000:1110] + AFTER
    with serve(TextGuardMiddleware(create_app(Recorder(), chunk_chars=3), settings=quoting)) as url:
        _assert_quoted_once(ask(url, answer).choices[0].message.content, record, quoting)
        stream = openai_client(url).chat.completions.create(
            model="fake", stream=True, messages=[{"role": "user", "content": answer}])
        streamed, reasons, _ = collect(stream)
    assert reasons[-1] == "stop"
    _assert_quoted_once(streamed, record, quoting)
    with serve(create_textguard_app(quoting), lifespan="on") as url:
        checked = httpx2.post(url + "/v1/textguard/check", json={"text": answer}, timeout=30).json()
    assert checked["verdict"] == "rewrite"
    _assert_quoted_once(checked["text"], record, quoting)


def test_notice_stays_the_default(indexed: Settings, record: dict) -> None:
    assert indexed.rewrite_style == "notice"
    with serve(TextGuardMiddleware(create_app(Recorder()), settings=indexed)) as url:
        content = ask(url, BEFORE + record["text"][1000:1110] + AFTER).choices[0].message.content
    assert "……”（" not in content and f"出自《{record['work']}》" in content


def test_one_quotation_per_work_across_the_texts_of_one_answer(quoting: Settings, record: dict) -> None:
    """A Messages answer of two text blocks, each copying the same work: the first copy is
    quoted, the second gets the notice alone."""
    blocks = [BEFORE + record["text"][1000:1100] + AFTER * 2, BEFORE + record["text"][2000:2100] + AFTER * 2]
    with serve(TextGuardMiddleware(create_app(Recorder()), settings=quoting)) as url:
        answer = httpx2.post(url + "/v1/messages", json=messages_request(blocks), timeout=30).json()
    texts = [block["text"] for block in answer["content"]]
    assert texts[0].count("……”（") == 1 and "……”（" not in texts[1]
    assert all(f"出自《{record['work']}》" in text for text in texts)
