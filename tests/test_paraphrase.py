"""rewrite_style "paraphrase": copies restated by a model, checked again, released only if they
pass; against local model servers that restate, copy the passage again, hang, or fail. Only
the first releases a paraphrase; the others fall back (to quote) within the budget; and nothing
released holds Q or more consecutive characters of the work. Also the style asked per request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx2
import openai
import pytest
from fastapi import FastAPI
from starlette.requests import Request

from tests.support.chat import ask, collect, openai_client
from tests.support.helpers import AFTER, BEFORE, longest_shared_run
from tests.support.llm_app import Recorder, create_app, messages_request
from tests.support.paraphrasers import BEHAVIOURS, RESTATEMENT, Paraphrasers
from tests.support.redis_admin import audit_reader
from tests.support.servers import serve
from textguard import Guard, Settings
from textguard.paraphrase import Paraphraser
from textguard.policy import Rewriting
from textguard.serve.middleware import TextGuardMiddleware
from textguard.serve.server import create_app as create_textguard_app

BUDGET_MS = 1500.0
FAILURES = {"copy": "copied_again", "hang": "timeout", "error": "model_error", "garbage": "model_error"}


@pytest.fixture(scope="module")
def paraphrasers() -> Iterator[tuple[Paraphrasers, str]]:
    models = Paraphrasers()
    with serve(models.app) as url:
        yield models, url
        models.release.set()  # the hanging answers end before the server stops


def _settings(indexed: Settings, url: str, behaviour: str) -> Settings:
    return indexed.replace(rewrite_style="paraphrase", paraphrase_url=f"{url}/{behaviour}/v1",
                           paraphrase_timeout_ms=BUDGET_MS)


def _answer(record: dict) -> tuple[str, str]:
    copied = record["text"][1000:1110]
    return BEFORE + copied + AFTER, copied


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_only_a_proper_restatement_is_released(behaviour: str, indexed: Settings, record: dict,
                                              paraphrasers: tuple[Paraphrasers, str]) -> None:
    """Through the middleware, with the openai client (its timeout only a little over the
    budget: a fallback that took longer would fail the request)."""
    models, url = paraphrasers
    settings = _settings(indexed, url, behaviour)
    answer, _ = _answer(record)
    asked_before = len(models.spans(behaviour))
    app = TextGuardMiddleware(create_app(Recorder()), settings=settings)
    with serve(app) as guarded:
        client = openai_client(guarded).with_options(timeout=BUDGET_MS / 1000 + 5)
        raw = client.chat.completions.with_raw_response.create(
            model="fake", messages=[{"role": "user", "content": answer}])
    content = raw.parse().choices[0].message.content
    entry = audit_reader(settings).latest(1)[0].fields  # the server has stopped: its record is written
    assert entry["rewrite_style"] == raw.headers["x-textguard-rewrite-style"]
    assert entry["paraphrase_failure"] == FAILURES.get(behaviour, "")
    assert longest_shared_run(content, record["text"]) < settings.quote_chars
    assert content.startswith(BEFORE) and content.endswith(AFTER)
    assert raw.headers["x-textguard-verdict"] == "rewrite"
    sent = models.spans(behaviour)[asked_before:]
    assert sent and sent[0] in answer and sent[0] != answer  # the copied span, not the whole answer
    if behaviour == "restate":
        assert RESTATEMENT in content and "出自《" not in content
        assert raw.headers["x-textguard-rewrite-style"] == "paraphrase"
    else:
        assert RESTATEMENT not in content and f"出自《{record['work']}》" in content and "……”（" in content
        assert raw.headers["x-textguard-rewrite-style"] == "quote"
    if behaviour == "copy":  # restated again what still copied, as many times as allowed
        assert len(sent) == settings.paraphrase_attempts


@pytest.mark.parametrize("behaviour", [*BEHAVIOURS, "garbage"])
def test_the_check_api_says_what_happened(behaviour: str, indexed: Settings, record: dict,
                                          paraphrasers: tuple[Paraphrasers, str]) -> None:
    _, url = paraphrasers
    settings = _settings(indexed, url, behaviour).replace(rewrite_style="notice")
    answer, _ = _answer(record)
    with serve(create_textguard_app(settings), lifespan="on") as api:
        checked = httpx2.post(api + "/v1/textguard/check", timeout=BUDGET_MS / 1000 + 5,
                              json={"text": answer, "rewrite_style": "paraphrase", "model": "m"}).json()
        plain = httpx2.post(api + "/v1/textguard/check", json={"text": answer}, timeout=30).json()
        bad = httpx2.post(api + "/v1/textguard/check", json={"text": answer, "rewrite_style": "poem"}, timeout=30)
    assert checked["verdict"] == "rewrite"
    assert longest_shared_run(checked["text"], record["text"]) < settings.quote_chars
    if behaviour == "restate":
        assert checked["rewrite_style"] == "paraphrase" and "paraphrase_failure" not in checked
    else:
        assert checked["rewrite_style"] == "quote" and checked["paraphrase_failure"] == FAILURES[behaviour]
    assert "rewrite_style" not in plain and "……”（" not in plain["text"]  # the settings' notice, as the contract has it
    assert bad.status_code == 400 and "rewrite_style" in bad.json()["error"]["message"]


def test_the_proxy_asks_its_upstream_with_the_request_model_and_credentials(indexed: Settings,
                                                                             record: dict) -> None:
    """No paraphrase_url: the upstream is asked, as the client's model, with the client's key.
    The fake upstream answers with what it is sent, so the restatement copies again and the
    answer falls back. A stream through the proxy gets the quote it asks for."""
    recorder = Recorder()
    answer, _ = _answer(record)
    with serve(create_app(recorder)) as upstream:
        settings = indexed.replace(upstream_url=upstream, rewrite_style="paraphrase", paraphrase_attempts=1)
        with serve(create_textguard_app(settings), lifespan="on") as proxy:
            content = ask(proxy, answer).choices[0].message.content
            quoted, reasons, _ = collect(ask(proxy, answer, stream=True,
                                             extra_headers={"X-TextGuard-Rewrite-Style": "quote"}))
    asked = [(headers, body) for headers, body in recorder.requests if b"\xe8\xbd\xac\xe8\xbf\xb0" in body]  # 转述
    assert len(asked) == 1 and b'"model":"fake"' in asked[0][1].replace(b" ", b"")
    assert asked[0][0]["authorization"] == "Bearer test"
    assert "……”（" in content and longest_shared_run(content, record["text"]) < settings.quote_chars
    assert reasons[-1] == "stop" and quoted.count("……”（") == 1  # a quote asked for, streamed through the proxy
    assert longest_shared_run(quoted, record["text"]) < settings.quote_chars


def test_a_stream_falls_back_and_a_request_picks_its_style(indexed: Settings, record: dict,
                                                           paraphrasers: tuple[Paraphrasers, str]) -> None:
    models, url = paraphrasers
    settings = _settings(indexed, url, "restate").replace(rewrite_style="notice")
    answer, _ = _answer(record)
    asked_before = len(models.asked)
    with serve(TextGuardMiddleware(create_app(Recorder(), chunk_chars=3), settings=settings)) as guarded:
        client = openai_client(guarded)
        messages = [{"role": "user", "content": answer}]
        streamed, reasons, _ = collect(client.chat.completions.create(
            model="fake", stream=True, messages=messages, extra_headers={"X-TextGuard-Rewrite-Style": "paraphrase"}))
        whole = client.chat.completions.create(model="fake", messages=messages,
                                               extra_headers={"X-TextGuard-Rewrite-Style": "paraphrase"})
        default = client.chat.completions.create(model="fake", messages=messages)
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="fake", messages=messages,
                                           extra_headers={"X-TextGuard-Rewrite-Style": "poem"})
    entries = [e.fields for e in audit_reader(settings).latest(3)]  # the server has stopped: all are written
    assert sorted(e["paraphrase_failure"] for e in entries) == ["", "", "stream"]
    assert reasons[-1] == "stop" and "……”（" in streamed  # a stream: the fallback, quote
    assert longest_shared_run(streamed, record["text"]) < settings.quote_chars
    assert RESTATEMENT in whole.choices[0].message.content
    assert "……”（" not in default.choices[0].message.content  # the settings' notice
    assert f"出自《{record['work']}》" in default.choices[0].message.content
    assert "x-textguard-rewrite-style" in str(refused.value)
    assert len(models.asked) == asked_before + 1  # only the whole answer that asked for it


def test_without_a_model_to_ask_the_fallback_says_so(indexed: Settings, record: dict) -> None:
    guard = Guard(indexed.replace(rewrite_style="paraphrase"))
    paraphraser = Paraphraser(guard)  # no paraphrase_url, no app
    answer, _ = _answer(record)
    try:
        rewriting = Rewriting("paraphrase")
        verdict = guard.check_sync(answer, fail_mode="raise")
        verdict = asyncio.run(paraphraser.restate(answer, verdict, rewriting, model="m"))  # asks no one
    finally:
        guard.close()
    assert verdict.rewrite_style == "quote" and verdict.paraphrase_failure == "no_model"


def test_a_request_may_ask_only_for_the_styles_allowed(indexed: Settings, record: dict) -> None:
    settings = indexed.replace(request_rewrite_styles=("notice", "quote"))
    answer, _ = _answer(record)
    with serve(create_textguard_app(settings), lifespan="on") as api:
        refused = httpx2.post(api + "/v1/textguard/check", json={"text": answer, "rewrite_style": "paraphrase"},
                              timeout=30)
        quoted = httpx2.post(api + "/v1/textguard/check", json={"text": answer, "rewrite_style": "quote"}, timeout=30)
    assert refused.status_code == 400 and "notice, quote" in refused.json()["error"]["message"]
    assert quoted.status_code == 200 and quoted.json()["rewrite_style"] == "quote"
    with serve(TextGuardMiddleware(create_app(Recorder()), settings=settings)) as guarded, \
            pytest.raises(openai.BadRequestError):
        ask(guarded, answer, extra_headers={"X-TextGuard-Rewrite-Style": "paraphrase"})


def test_one_budget_for_all_the_texts_of_an_answer(indexed: Settings, record: dict,
                                                   paraphrasers: tuple[Paraphrasers, str]) -> None:
    """A Messages answer of two texts, each with a copy, and a model that hangs: the first text
    spends the budget, the second is not asked at all, and both fall back."""
    models, url = paraphrasers
    settings = _settings(indexed, url, "hang")
    blocks = [BEFORE + record["text"][1000:1110] + AFTER * 2, BEFORE + record["text"][2000:2110] + AFTER * 2]
    asked_before = len(models.spans("hang"))
    with serve(TextGuardMiddleware(create_app(Recorder()), settings=settings)) as guarded:
        answer = httpx2.post(guarded + "/v1/messages", json=messages_request(blocks), timeout=30)
    assert answer.headers["x-textguard-rewrite-style"] == "quote"
    texts = [block["text"] for block in answer.json()["content"]]
    assert all(f"出自《{record['work']}》" in text for text in texts)
    assert len(models.spans("hang")) == asked_before + 1


def test_a_fastapi_app_is_asked_as_its_server_would_call_it(indexed: Settings, record: dict) -> None:
    """The in-process default inside a FastAPI app whose handler reads `request.app.state`, with
    the middleware added as vLLM's `--middleware` adds it: the paraphrase comes from the app."""
    app = FastAPI()
    app.state.restatement = RESTATEMENT
    prefix = Settings().paraphrase_prompt.split("{text}")[0]

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        asked = body["messages"][-1]["content"]
        content = request.app.state.restatement if asked.startswith(prefix) else asked
        message = {"role": "assistant", "content": content}
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}

    app.add_middleware(TextGuardMiddleware, settings=indexed.replace(rewrite_style="paraphrase"))
    answer, _ = _answer(record)
    with serve(app) as url:
        raw = openai_client(url).chat.completions.with_raw_response.create(
            model="fake", messages=[{"role": "user", "content": answer}])
    assert raw.headers["x-textguard-rewrite-style"] == "paraphrase"
    assert RESTATEMENT in raw.parse().choices[0].message.content
