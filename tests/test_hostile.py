"""Hostile and malformed answers through TextGuardMiddleware on a real uvicorn: nothing crashes,
nothing hangs, every answer ends, and with fail mode closed nothing unchecked gets out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.support.chat import RawAnswer, chat_chunks
from tests.support.helpers import AFTER, BEFORE, longest_shared_run
from tests.support.servers import serve
from textguard import Settings
from textguard.serve.middleware import TextGuardMiddleware


def chat_json(content: str) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


@pytest.fixture
def answer(indexed: Settings) -> Iterator[Any]:
    """answer(body, mode="open", **RawAnswer options) -> the guarded response to a chat request."""
    def respond(body: bytes, mode: str = "open", settings: Settings | None = None, method: str = "POST",
                **options: Any) -> httpx2.Response:
        app = RawAnswer(body, piece=options.pop("piece", 1 << 16), **options)
        guarded = TextGuardMiddleware(app, settings=(settings or indexed).replace(fail_mode=mode))
        with serve(guarded) as url:
            return httpx2.request(method, url + "/v1/chat/completions", json={"stream": True}, timeout=30)
    yield respond


def sse(events: list[dict]) -> bytes:
    return b"".join(b"data: " + json.dumps(e, ensure_ascii=False).encode() + b"\n\n" for e in events) \
        + b"data: [DONE]\n\n"


def streamed_text(response: httpx2.Response) -> str:
    pieces = []
    for line in response.content.split(b"\n"):
        if line.startswith(b"data: {") and line != b"data: {not json":
            for choice in json.loads(line[6:]).get("choices", []):
                pieces.append((choice.get("delta") or {}).get("content") or "")
    return "".join(pieces)


def test_invalid_utf8_in_a_stream(answer: Any, record: dict) -> None:
    copied = record["text"][1000:1100]
    body = sse(chat_chunks("u", BEFORE + copied + AFTER, 3)).replace(b"\xe7\x9a\x84", b"\xff\xfe", 3)
    response = answer(body, piece=5)
    assert response.status_code == 200 and response.content.rstrip().endswith(b"data: [DONE]")
    assert longest_shared_run(streamed_text(response), copied) <= 50


def test_lone_surrogates_in_json(answer: Any, record: dict) -> None:
    copied = record["text"][1000:1100]
    body = json.dumps(chat_json("\ud800" + BEFORE + copied + AFTER + "\udfff")).encode()  # escaped, as JSON allows
    response = answer(body, content_type=b"application/json")
    assert response.headers["x-textguard-verdict"] == "rewrite"
    content = response.json()["choices"][0]["message"]["content"]
    assert content.startswith("\ud800") and content.endswith("\udfff") and f"出自《{record['work']}》" in content


@pytest.mark.parametrize("mode", ["open", "closed"])
@pytest.mark.parametrize("body", [b'{"choices": [{"message": {"content": "\xe6\x9c\xaa',
                                  b"[" * 100_000 + b"]" * 100_000], ids=["truncated", "nested"])
def test_unreadable_json_follows_the_fail_mode(answer: Any, mode: str, body: bytes) -> None:
    response = answer(body, mode=mode, content_type=b"application/json")
    assert response.headers["x-textguard-skipped"] == "malformed"
    if mode == "open":
        assert response.status_code == 200 and response.content == body
    else:
        assert response.status_code == 502 and response.json()["error"]["code"] == "answer_not_checked"


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_malformed_events_follow_the_fail_mode(answer: Any, mode: str, negative_records: list[dict]) -> None:
    text = negative_records[2]["text"][:200]
    events = sse(chat_chunks("m", text, 5))
    body = events.replace(b"\n\n", b"\n\ndata: {not json\n\n", 1)
    response = answer(body, mode=mode)
    assert response.status_code == 200 and streamed_text(response) == text
    assert (b"data: {not json" in response.content) == (mode == "open")


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_enormous_answers_follow_the_fail_mode(answer: Any, indexed: Settings, mode: str,
                                               record: dict) -> None:
    small = indexed.replace(max_check_chars=2000)
    text = record["text"][:3000]
    checked = answer(json.dumps(chat_json(text), ensure_ascii=False).encode(), mode=mode, settings=small,
                     content_type=b"application/json")
    assert checked.headers["x-textguard-skipped"] == "too_large"
    choice = checked.json()["choices"][0]
    assert (choice["message"]["content"] == text) == (mode == "open")
    assert (choice["finish_reason"] == "content_filter") == (mode == "closed")

    huge = json.dumps(chat_json(text * 20), ensure_ascii=False).encode()  # beyond what may be buffered
    overflow = answer(huge, mode=mode, settings=small, content_type=b"application/json", piece=4096)
    assert overflow.headers["x-textguard-skipped"] == "too_large"
    if mode == "open":
        assert overflow.content == huge
    else:
        assert overflow.status_code == 502 and record["text"][:50] not in overflow.text


def test_json_under_other_content_types(answer: Any, record: dict) -> None:
    body = json.dumps(chat_json(record["text"][:1500]), ensure_ascii=False).encode()
    for content_type in (b"application/vnd.example+json", b"text/json; charset=utf-8", None):
        response = answer(body, content_type=content_type)
        assert response.headers["x-textguard-verdict"] == "block", content_type
    html = answer(body, content_type=b"text/html")
    assert html.content == body and "x-textguard-verdict" not in html.headers


def test_head_no_content_and_not_modified_pass_untouched(answer: Any) -> None:
    head = answer(b"", method="HEAD", content_type=b"application/json", headers=((b"content-length", b"1234"),))
    assert head.headers["content-length"] == "1234" and "x-textguard-verdict" not in head.headers
    empty = answer(b"", status=204, content_type=b"application/json")
    assert empty.status_code == 204 and empty.content == b"" and "x-textguard-verdict" not in empty.headers
    unchanged = answer(b"", status=304, content_type=b"application/json")
    assert unchanged.status_code == 304 and unchanged.content == b"" and "x-textguard-verdict" not in unchanged.headers


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_enormous_streams_follow_the_fail_mode(answer: Any, indexed: Settings, mode: str,
                                               negative_records: list[dict], record: dict) -> None:
    clean = "".join(r["text"] for r in negative_records[:20])[:2500]
    copied = record["text"][1000:1400]
    text = clean + copied  # the copy comes after the limit
    response = answer(sse(chat_chunks("e", text, 4)), mode=mode, settings=indexed.replace(max_check_chars=2000))
    streamed = streamed_text(response)
    assert response.status_code == 200 and response.content.rstrip().endswith(b"data: [DONE]")
    if mode == "open":
        assert streamed == text
    else:
        assert b'"finish_reason": "content_filter"' in response.content
        assert longest_shared_run(streamed, copied) <= 50
