"""TextGuardMiddleware in front of a fake model, served by a real uvicorn on 127.0.0.1 and
driven by the official openai client (and raw httpx2 where bytes matter)."""

from __future__ import annotations

import json
import logging
import logging.config
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.support.chat import RawAnswer, ask, chat_chunks, collect, openai_client
from tests.support.helpers import AFTER, BEFORE, longest_shared_run
from tests.support.llm_app import Recorder, create_app
from tests.support.servers import serve
from textguard import Settings
from textguard.serve.middleware import TextGuardMiddleware


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def guarded(settings: Settings, recorder: Recorder, **kwargs: Any) -> Iterator[str]:
    with serve(TextGuardMiddleware(create_app(recorder, **kwargs), settings=settings)) as url:
        yield url


@pytest.fixture
def url(indexed: Settings, recorder: Recorder) -> Iterator[str]:
    yield from guarded(indexed, recorder)


def test_json_answer_is_rewritten_with_headers(url: str, record: dict) -> None:
    copied = record["text"][1000:1100]
    answer = BEFORE + copied + AFTER
    completion = ask(url, answer)
    content = completion.choices[0].message.content
    assert content.startswith(BEFORE) and content.endswith(AFTER)
    assert f"出自《{record['work']}》" in content and longest_shared_run(content, copied) < 30
    assert completion.choices[0].finish_reason == "stop"
    raw = httpx2.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": answer}]})
    assert raw.headers["x-textguard-verdict"] == "rewrite"
    assert int(raw.headers["content-length"]) == len(raw.content)


def test_json_answer_is_blocked(url: str, record: dict) -> None:
    completion = ask(url, record["text"][:1200])
    assert completion.choices[0].finish_reason == "content_filter"
    assert record["work"] in completion.choices[0].message.content


def test_clean_answers_pass_unchanged(url: str, negative_records: list[dict]) -> None:
    text = negative_records[3]["text"]
    assert ask(url, text).choices[0].message.content == text
    streamed, reasons, _ = collect(ask(url, text, stream=True))
    assert streamed == text and reasons == ["stop"]


def test_legacy_completions(url: str, record: dict) -> None:
    copied = record["text"][2000:2100]
    completion = openai_client(url).completions.create(model="fake", prompt=BEFORE + copied + AFTER)
    assert f"出自《{record['work']}》" in completion.choices[0].text


def test_stream_is_rewritten_and_goes_on(url: str, record: dict) -> None:
    copied = record["text"][1000:1100]
    text, reasons, _ = collect(ask(url, BEFORE + copied + AFTER, stream=True))
    assert text.startswith(BEFORE) and text.endswith(AFTER)
    assert f"出自《{record['work']}》" in text
    assert longest_shared_run(text, copied) <= 50 and reasons == ["stop"]


def test_stream_block_ends_as_clients_expect(indexed: Settings, recorder: Recorder, record: dict) -> None:
    for url in guarded(indexed, recorder, delay=0.002):
        copied = record["text"][:2000]
        text, reasons, usage = collect(ask(url, BEFORE + copied, stream=True,
                                           stream_options={"include_usage": True}))
        assert reasons == ["content_filter"]
        assert usage == []  # blocked before the upstream sent its counts: none are made up
        assert longest_shared_run(text, copied) <= 50
        assert recorder.cancelled.wait(10), "the app's generator was not stopped"
        assert recorder.completed == 0
        # blocked only at its end (mostly copied, though under block_chars): the upstream's real usage passes
        text, reasons, usage = collect(ask(url, BEFORE + record["text"][:300], stream=True,
                                           stream_options={"include_usage": True}))
        assert reasons == ["content_filter"] and [u.total_tokens for u in usage] == [14]


def test_other_routes_pass_byte_for_byte(url: str) -> None:
    response = httpx2.get(url + "/v1/other", params={"text": "天下大势"})
    assert response.text == "no guard here: 天下大势" and "x-textguard-verdict" not in response.headers


def test_client_disconnect_stops_the_app(indexed: Settings, recorder: Recorder, negative_records: list[dict]) -> None:
    for url in guarded(indexed, recorder, delay=0.01, chunk_chars=1):
        text = negative_records[5]["text"] * 3
        with httpx2.stream("POST", url + "/v1/chat/completions",
                           json={"stream": True, "messages": [{"role": "user", "content": text}]}) as response:
            for _ in zip(range(5), response.iter_lines(), strict=False):
                pass
        assert recorder.cancelled.wait(10), "the app did not see the disconnect"


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_down_fails_as_configured(settings: Settings, recorder: Recorder, mode: str) -> None:
    down = settings.replace(redis_url="redis://127.0.0.1:1/0", fail_mode=mode, redis_timeout_s=0.2)
    for url in guarded(down, recorder):
        started = time.monotonic()
        response = httpx2.post(url + "/v1/chat/completions",
                               json={"messages": [{"role": "user", "content": "一个普通的回答。"}]})
        assert time.monotonic() - started < 5
        assert response.headers["x-textguard-skipped"] == "redis"
        content = response.json()["choices"][0]["message"]["content"]
        assert (content == "一个普通的回答。") == (mode == "open")
        _streamed, reasons, _ = collect(ask(url, "一个普通的回答，稍微长一点，足够触发一次检查。" * 3, stream=True))
        assert (reasons == ["content_filter"]) == (mode == "closed")


def test_skips_stay_visible_when_the_host_server_reconfigures_logging(settings: Settings, recorder: Recorder,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """vLLM configures its own loggers with a dictConfig that disables every logger existing
    before it, textguard's among them, and a package it imports sets the root logger to ERROR:
    the middleware lets textguard's warnings through again at its first request."""
    down = settings.replace(redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.2)
    app = TextGuardMiddleware(create_app(recorder), settings=down)
    loggers = [item for item in logging.Logger.manager.loggerDict.values() if isinstance(item, logging.Logger)]
    disabled = [item.disabled for item in loggers]
    root, package = logging.getLogger(), logging.getLogger("textguard")
    levels = root.level, package.level
    try:
        logging.config.dictConfig({"version": 1, "loggers": {"host": {"level": "INFO"}}})
        root.setLevel(logging.ERROR)
        assert logging.getLogger("textguard.guard").disabled
        with serve(app) as url:
            httpx2.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "普通的回答。"}]})
    finally:
        for item, was in zip(loggers, disabled, strict=True):
            item.disabled = was
        root.setLevel(levels[0])
        package.setLevel(levels[1])
    assert any("check skipped (redis)" in record.getMessage() for record in caplog.records)


def test_split_events_crlf_and_cut_characters(indexed: Settings, negative_records: list[dict]) -> None:
    text = negative_records[7]["text"][:300]
    events = chat_chunks("x", text, 4)
    body = b"".join(b"data: " + json.dumps(e, ensure_ascii=False).encode() + b"\r\n\r\n" for e in events)
    body += b": ping\r\n\r\ndata: [DONE]\r\n\r\n"
    with serve(TextGuardMiddleware(RawAnswer(body, piece=7), settings=indexed)) as url:
        text_out, reasons, _ = collect(ask(url, "x", stream=True))
        raw = httpx2.post(url + "/v1/chat/completions", json={"stream": True})
    assert text_out == text and reasons == ["stop"]
    assert b": ping" in raw.content and raw.content.rstrip().endswith(b"data: [DONE]")
    assert all(json.loads(line[6:])["id"] == "x" for line in raw.content.split(b"\n")
               if line.startswith(b"data: {"))


def test_responses_api_json_and_stream(url: str, record: dict) -> None:
    copied = record["text"][1000:1100]
    answer = BEFORE + copied + AFTER
    response = openai_client(url).responses.create(model="fake", input=answer)
    assert f"出自《{record['work']}》" in response.output_text and response.output_text.endswith(AFTER)
    events = list(openai_client(url).responses.create(model="fake", input=answer, stream=True))
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed.startswith(BEFORE) and streamed.endswith(AFTER) and f"出自《{record['work']}》" in streamed
    assert longest_shared_run(streamed, copied) <= 50
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == streamed
    assert events[-1].type == "response.completed" and events[-1].response.output_text == streamed


def test_responses_api_block(indexed: Settings, recorder: Recorder, record: dict) -> None:
    for url in guarded(indexed, recorder, delay=0.002):
        copied = record["text"][:2000]
        with openai_client(url).responses.stream(model="fake", input=BEFORE + copied) as stream:
            events = list(stream)
            final = stream.get_final_response()  # the SDK's helper accepts how the stream ended
        assert events[-1].type == "response.completed"
        assert final.status == "incomplete" and final.incomplete_details.reason == "content_filter"
        streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert longest_shared_run(streamed, copied) <= 50
        assert final.output_text == streamed
        assert [e.type for e in events[-4:]] == ["response.output_text.done", "response.content_part.done",
                                                 "response.output_item.done", "response.completed"]
        assert recorder.cancelled.wait(10)
        blocked = openai_client(url).responses.create(model="fake", input=copied)
        assert blocked.status == "incomplete" and blocked.incomplete_details.reason == "content_filter"


def test_builds_itself_from_the_environment(indexed: Settings, monkeypatch: pytest.MonkeyPatch,
                                             recorder: Recorder, record: dict) -> None:
    monkeypatch.setenv("TEXTGUARD_HOME", str(indexed.home))
    monkeypatch.setenv("TEXTGUARD_INDEX", indexed.index)
    monkeypatch.setenv("TEXTGUARD_EXPOSE_MATCHES", "true")
    if indexed.redis_url:
        monkeypatch.setenv("TEXTGUARD_REDIS_URL", indexed.redis_url)
    import textguard

    middleware = textguard.TextGuardMiddleware(create_app(recorder))  # as vLLM's --middleware builds it
    with serve(middleware) as url:
        payload = httpx2.post(url + "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": BEFORE + record["text"][1000:1100] + AFTER}]}).json()
    assert payload["textguard"]["verdict"] == "rewrite"
    assert payload["textguard"]["matches"][0]["doc_id"] == record["id"]


class _Compressed:
    """An app answering with a gzip-compressed JSON body, and a background task."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.background_ran = False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        import gzip

        from starlette.background import BackgroundTask
        from starlette.responses import Response

        def mark() -> None:
            self.background_ran = True

        body = gzip.compress(json.dumps({"object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": self.text}, "finish_reason": "stop"}]},
            ensure_ascii=False).encode())
        response = Response(body, media_type="application/json", headers={"content-encoding": "gzip"},
                            background=BackgroundTask(mark))
        await response(scope, receive, send)


def test_compressed_answers_are_checked_and_background_tasks_run(indexed: Settings, record: dict) -> None:
    app = _Compressed(BEFORE + record["text"][1000:1100] + AFTER)
    with serve(TextGuardMiddleware(app, settings=indexed)) as url:
        response = httpx2.post(url + "/v1/chat/completions", json={})
    assert response.headers["x-textguard-verdict"] == "rewrite"
    assert "content-encoding" not in response.headers
    assert f"出自《{record['work']}》" in response.json()["choices"][0]["message"]["content"]
    assert app.background_ran


def test_tool_call_and_role_deltas_pass_through(indexed: Settings) -> None:
    tool_call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\""}}
    events = [
        {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}]},
        {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m",
         "choices": [{"index": 0, "delta": {"tool_calls": [tool_call]}, "finish_reason": None}]},
        {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m",
         "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    with serve(TextGuardMiddleware(RawAnswer(body, piece=11), settings=indexed)) as url:
        raw = httpx2.post(url + "/v1/chat/completions", json={"stream": True})
    sent = [json.loads(line[6:]) for line in raw.content.split(b"\n") if line.startswith(b"data: {")]
    assert sent == events


def test_compressed_stream_is_decoded_and_guarded(indexed: Settings, record: dict) -> None:
    import gzip

    copied = record["text"][1000:1100]
    text = BEFORE + copied + AFTER
    events = chat_chunks("g", text, 3)
    plain = b"".join(b"data: " + json.dumps(e, ensure_ascii=False).encode() + b"\n\n" for e in events)
    body = gzip.compress(plain + b"data: [DONE]\n\n")

    app = RawAnswer(body, piece=50, headers=((b"content-encoding", b"gzip"),))
    with serve(TextGuardMiddleware(app, settings=indexed)) as url:
        streamed, reasons, _ = collect(ask(url, "x", stream=True))
    assert f"出自《{record['work']}》" in streamed and streamed.endswith(AFTER) and reasons == ["stop"]
    assert longest_shared_run(streamed, copied) <= 50
