"""The guarded reverse proxy and the check API, as real processes on 127.0.0.1: a fake upstream
model on its own uvicorn, `textguard proxy` as a process of its own, the official openai client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.support.chat import collect
from tests.support.helpers import AFTER, BEFORE, longest_shared_run, textguard_env
from tests.support.llm_app import BREAK, SLOW, Recorder, create_app
from tests.support.redis_admin import admin_client
from tests.support.servers import read_until, serve, spawn
from textguard import Settings
from textguard._asgi import Message, Receive, Scope, Send
from textguard.audit import stream_key
from textguard.serve.proxy import Forwarder
from textguard.serve.server import create_app as create_textguard_app

TOKEN = "test-admin-token-0123456789abcdef"
USER_KEY = "sk-user-key-for-the-upstream"


@pytest.fixture(scope="module")
def upstream_recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def upstream(upstream_recorder: Recorder) -> Iterator[str]:
    with serve(create_app(upstream_recorder, delay=0.002)) as url:
        yield url


@pytest.fixture
def recorder(upstream_recorder: Recorder) -> Iterator[Recorder]:
    upstream_recorder.reset()
    yield upstream_recorder
    upstream_recorder.release.set()  # let a slow answer a test left waiting finish


@pytest.fixture(scope="module")
def proxy(indexed: Settings, upstream: str) -> Iterator[str]:
    env = textguard_env(indexed, TEXTGUARD_ADMIN_TOKEN=TOKEN, TEXTGUARD_UPSTREAM_READ_TIMEOUT_S="1.5")
    with spawn(["proxy", "--upstream", upstream, "--port", "0"], env) as (_, url):
        yield url


def client(url: str, key: str = USER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def ask(url: str, text: str, **kwargs: Any) -> Any:
    return client(url).chat.completions.create(model="fake", messages=[{"role": "user", "content": text}], **kwargs)


def test_answers_through_the_proxy_clean_rewritten_blocked(proxy: str, recorder: Recorder, record: dict,
                                                           negative_records: list[dict]) -> None:
    clean = negative_records[3]["text"]
    assert ask(proxy, clean).choices[0].message.content == clean
    headers, body = recorder.requests[-1]
    assert headers["authorization"] == f"Bearer {USER_KEY}"
    assert json.loads(body)["messages"][0]["content"] == clean

    copied = record["text"][1000:1100]
    rewritten = ask(proxy, BEFORE + copied + AFTER).choices[0]
    assert rewritten.message.content.startswith(BEFORE) and rewritten.message.content.endswith(AFTER)
    assert f"出自《{record['work']}》" in rewritten.message.content
    assert longest_shared_run(rewritten.message.content, copied) < 30

    blocked = ask(proxy, record["text"][:1500]).choices[0]
    assert blocked.finish_reason == "content_filter" and record["work"] in blocked.message.content


def test_rewritten_answers_through_the_proxy_are_audited(proxy: str, recorder: Recorder, record: dict,
                                                        indexed: Settings) -> None:
    audit, key = admin_client(indexed), stream_key(indexed.index)
    entries = audit.xlen(key)
    copied = record["text"][1000:1100]
    for _ in range(3):
        assert "出自" in ask(proxy, BEFORE + copied + AFTER).choices[0].message.content
    deadline = time.monotonic() + 10
    while audit.xlen(key) < entries + 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # written after the answer is out: wait for the condition, bounded
    assert audit.xlen(key) == entries + 3
    audit.close()


def test_what_the_app_does_after_the_answer_is_out_is_not_cut_short(upstream: str, recorder: Recorder) -> None:
    """Once a whole answer is out, uvicorn reports every receive() as a disconnect. The forwarder
    must not take that for a client gone and cancel the send still under way: the guard writes
    its audit entry there (cancelled, the entry could be lost, and was its Redis connection)."""
    forwarder = Forwarder(Settings(upstream_url=upstream))
    finished = threading.Event()

    async def slow_after_answer(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_then_work(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await asyncio.sleep(0.2)  # the work itself (a slow audit write), not a synchronisation
                finished.set()
        await forwarder(scope, receive, send_then_work)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await forwarder.open()
        yield
        await forwarder.aclose()

    app = Starlette(routes=[Mount("/v1", slow_after_answer)], lifespan=lifespan)
    with serve(app, lifespan="on") as url:
        assert ask(url, "你好").choices[0].message.content == "你好"
        assert finished.wait(10), "the send after the answer was cancelled"


def test_streams_through_the_proxy(proxy: str, recorder: Recorder, record: dict,
                                   negative_records: list[dict]) -> None:
    clean = negative_records[4]["text"]
    assert collect(ask(proxy, clean, stream=True))[:2] == (clean, ["stop"])

    copied = record["text"][1000:1100]
    text, reasons, _ = collect(ask(proxy, BEFORE + copied + AFTER, stream=True))
    assert f"出自《{record['work']}》" in text and text.endswith(AFTER) and reasons == ["stop"]
    assert longest_shared_run(text, copied) <= 50

    recorder.reset()
    copied = record["text"][:2000]
    text, reasons, usage = collect(ask(proxy, BEFORE + copied, stream=True, stream_options={"include_usage": True}))
    assert reasons == ["content_filter"] and usage == []  # blocked before the upstream counted: none made up
    assert longest_shared_run(text, copied) <= 50
    assert recorder.cancelled.wait(10), "the upstream's generation was not cancelled"


def test_client_disconnect_cancels_the_upstream(proxy: str, recorder: Recorder,
                                                negative_records: list[dict]) -> None:
    text = negative_records[5]["text"] * 4
    with httpx2.stream("POST", proxy + "/v1/chat/completions",
                       json={"stream": True, "messages": [{"role": "user", "content": text}]}) as response:
        for _ in zip(range(5), response.iter_lines(), strict=False):
            pass
    assert recorder.cancelled.wait(10), "the upstream did not see the client go"


def test_headers_relayed_and_cookies_kept_by_no_one(proxy: str, recorder: Recorder) -> None:
    response = httpx2.post(proxy + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "你好"}]},
                           headers={"Keep-Alive": "timeout=5", "Proxy-Authorization": "Basic eDp5",
                                    "X-Custom": "kept", "Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    headers, _ = recorder.requests[-1]
    assert headers["x-custom"] == "kept"
    assert "keep-alive" not in headers and "proxy-authorization" not in headers
    assert "authorization" not in headers, "the admin token was forwarded upstream"
    assert headers["host"] != proxy.removeprefix("http://")

    first = httpx2.get(proxy + "/v1/cookie")
    assert "session=" in first.headers["set-cookie"]  # relayed to its caller...
    assert httpx2.get(proxy + "/v1/cookie").json() == {"cookies": {}}  # ...and kept by no one for the next


def test_slow_upstream_gives_504(proxy: str, recorder: Recorder) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        ask(proxy, SLOW + "一个迟到的回答")
    assert raised.value.status_code == 504
    assert raised.value.body["code"] == "upstream_timeout"  # type: ignore[index]


def test_upstream_breaking_off_a_stream_is_an_error_to_the_client(proxy: str, recorder: Recorder,
                                                                   negative_records: list[dict]) -> None:
    with pytest.raises(openai.APIError) as raised:
        collect(ask(proxy, BREAK + negative_records[6]["text"], stream=True))
    assert "broke off" in str(raised.value)


def test_unreachable_upstream_gives_502(settings: Settings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    app = create_textguard_app(settings.replace(upstream_url=f"http://127.0.0.1:{closed_port}"))
    with serve(app, lifespan="on") as url, pytest.raises(openai.APIStatusError) as raised:
        ask(url, "你好")
    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "upstream_unreachable"  # type: ignore[index]


def test_check_api_answers_with_the_contract(proxy: str, record: dict) -> None:
    copied = record["text"][1000:1100]
    text = BEFORE + copied + AFTER
    response = httpx2.post(proxy + "/v1/textguard/check", json={"text": text})
    verdict = response.json()
    assert response.headers["x-textguard-verdict"] == verdict["verdict"] == "rewrite"
    assert set(verdict) == {"verdict", "text", "checked_chars", "matches", "elapsed_ms"}
    (match,) = verdict["matches"]
    assert set(match) == {"doc_id", "title", "author", "work", "start", "end", "source_start", "source_end",
                          "verbatim_chars", "similarity"}
    assert match["doc_id"] == record["id"]
    assert text[match["start"]:match["end"]] == copied
    assert record["text"][match["source_start"]:match["source_end"]] == copied

    for bad in (b"not json", b"[1, 2]", json.dumps({"text": 7}).encode()):
        refused = httpx2.post(proxy + "/v1/textguard/check", content=bad, headers={"content-type": "application/json"})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_request"


def test_request_bodies_over_the_limit_get_413(settings: Settings) -> None:
    app = create_textguard_app(settings.replace(max_request_bytes=1000))
    with serve(app, lifespan="on") as url:
        declared = httpx2.post(url + "/v1/textguard/check", json={"text": "长" * 1000})
        chunked = httpx2.post(url + "/v1/textguard/check", content=iter([b'{"text": "', b"x" * 2000, b'"}']))
        small = httpx2.post(url + "/v1/textguard/check", json={"text": "短"})
    for response in (declared, chunked):
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert small.status_code == 200


def test_admin_endpoints_demand_the_token(proxy: str, negative_records: list[dict]) -> None:
    document = {"id": "admin-test-doc", "text": negative_records[-1]["text"], "title": "测试", "work": "管理测试"}
    url = proxy + "/v1/textguard/corpus"
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abcdef"}, {"Authorization": TOKEN}):
        refused = httpx2.post(url + "/documents", json={"documents": [document]}, headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert httpx2.get(url + "/stats", headers=headers).status_code == 401
    admin = {"Authorization": f"Bearer {TOKEN}"}
    before = httpx2.get(url + "/stats", headers=admin).json()["documents"]
    added = httpx2.post(url + "/documents", json={"documents": [document]}, headers=admin, timeout=30).json()
    assert added == {"added": 1, "replaced": 0, "unchanged": 0, "characters": len(document["text"])}
    try:
        assert httpx2.get(url + "/stats", headers=admin).json()["documents"] == before + 1
        found = httpx2.post(proxy + "/v1/textguard/check", json={"text": document["text"]}).json()
        assert found["verdict"] == "block" and found["matches"][0]["doc_id"] == "admin-test-doc"
        bad = httpx2.post(url + "/documents", json={"documents": [{"id": "x"}]}, headers=admin)
        assert bad.status_code == 400 and "'text'" in bad.json()["error"]["message"]
    finally:
        removed = httpx2.post(url + "/remove", json={"ids": ["admin-test-doc", "never-there"]}, headers=admin).json()
    assert removed == {"removed": 1, "missing": ["never-there"]}
    assert httpx2.post(proxy + "/v1/textguard/check", json={"text": document["text"]}).json()["verdict"] == "allow"


def test_admin_endpoints_do_not_exist_without_a_token(settings: Settings) -> None:
    with serve(create_textguard_app(settings), lifespan="on") as url:
        assert httpx2.get(url + "/v1/textguard/corpus/stats").status_code == 404
        paths = httpx2.get(url + "/openapi.json").json()["paths"]
    assert "/v1/textguard/check" in paths and not any("corpus" in path for path in paths)


def test_demo_serves_a_guarded_answer_and_stops_on_sigint(tmp_path: Any, base_settings: Settings) -> None:
    env = textguard_env(base_settings.replace(home=tmp_path))
    with spawn(["demo", "--port", "0"], env, ready="guarded proxy") as (process, url):
        response = httpx2.post(url + "/v1/chat/completions", timeout=30, json={
            "model": "demo-model", "messages": [{"role": "user", "content": "请背诵《灯塔守望者》第一章。"}]})
        assert response.headers["x-textguard-verdict"] == "block"
        assert response.json()["choices"][0]["finish_reason"] == "content_filter"
        tour = read_until(process, "Ctrl-C")  # the opening tour is over
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert process.stdout is not None
        out = process.stdout.read()
    assert "block" in tour and "textguard demo stopped." in out
