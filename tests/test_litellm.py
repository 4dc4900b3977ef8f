"""textguard as a guardrail of a real LiteLLM proxy (the `litellm` package, started as its own
process with the README's config), in front of the fake model, driven by the openai client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from tests.support.chat import collect
from tests.support.helpers import AFTER, BEFORE, longest_shared_run
from tests.support.litellm_proxy import MASTER_KEY, guardrail, litellm_proxy
from tests.support.llm_app import Recorder, create_app
from tests.support.paraphrasers import RESTATEMENT, Paraphrasers
from tests.support.redis_admin import audit_reader
from tests.support.servers import serve
from textguard import Settings
from textguard.serve.server import create_app as create_textguard_app

API_TOKEN = "litellm-guardrail-token-0123456789"


@pytest.fixture(scope="module")
def textguard_settings(indexed: Settings) -> Settings:
    return indexed.replace(api_token=API_TOKEN)


@pytest.fixture(scope="module")
def litellm_proxy_url(textguard_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """LiteLLM with two guardrails: textguard (on for every request), and a textguard whose Redis
    is gone, failing closed (asked for by name)."""
    closed = textguard_settings.replace(redis_url="redis://127.0.0.1:1", fail_mode="closed")
    with serve(create_app(Recorder(), chunk_chars=2)) as upstream, \
            serve(create_textguard_app(textguard_settings), lifespan="on") as textguard, \
            serve(create_textguard_app(closed), lifespan="on") as closed_textguard:
        guardrails = [guardrail("textguard", textguard, token=API_TOKEN),
                      guardrail("textguard-closed", closed_textguard, token=API_TOKEN, default_on=False)]
        with litellm_proxy(upstream, guardrails, tmp_path_factory.mktemp("litellm")) as url:
            yield url


@pytest.fixture(scope="module")
def litellm_styles_url(textguard_settings: Settings, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[tuple[str, Paraphrasers]]:
    """LiteLLM with a guardrail per rewrite style (quote, paraphrase), asked for by name; the
    paraphrases come from a local model that restates properly."""
    models = Paraphrasers()
    with serve(create_app(Recorder(), chunk_chars=2)) as upstream, serve(models.app) as model:
        settings = textguard_settings.replace(paraphrase_url=f"{model}/restate/v1")
        with serve(create_textguard_app(settings), lifespan="on") as textguard:
            guardrails = [guardrail(f"textguard-{style}", textguard, token=API_TOKEN, default_on=False,
                                    rewrite_style=style) for style in ("quote", "paraphrase")]
            with litellm_proxy(upstream, guardrails, tmp_path_factory.mktemp("litellm-styles")) as url:
                yield url, models


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)


def ask(url: str, text: str, **kwargs: Any) -> Any:
    return client(url).chat.completions.create(model="demo", messages=[{"role": "user", "content": text}], **kwargs)


def streamed(url: str, text: str, **kwargs: Any) -> tuple[str, list[str | None], list[Any]]:
    return collect(ask(url, text, stream=True, stream_options={"include_usage": True}, **kwargs))


def test_copies_in_streams_are_replaced_and_never_released_past_q(litellm_proxy_url: str, corpus_records: list[dict],
                                                                  negative_records: list[dict]) -> None:
    """Copies of several works, early and late in the answer (after 700 clean characters, where
    LiteLLM's default mode let all of them through): each is replaced by the notice mid-stream,
    the answer goes on after it, and the stream ends normally."""
    long_records = [r for r in corpus_records if len(r["text"]) > 3000][:6]
    clean = next(r["text"] for r in negative_records if len(r["text"]) > 800)[:700]
    for index, record in enumerate(long_records):
        head = BEFORE if index % 2 == 0 else clean
        copied = record["text"][1000:1000 + (100 if head == BEFORE else 300)]  # under half the answer
        text, reasons, usage = streamed(litellm_proxy_url, head + copied + AFTER)
        assert longest_shared_run(text, copied) <= 50, record["id"]
        assert f"出自《{record['work']}》" in text
        assert text.startswith(head) and text.endswith(AFTER)
        assert reasons[-1] == "stop" and len(usage) == 1


def test_clean_streams_and_answers_pass_unchanged(litellm_proxy_url: str, negative_records: list[dict]) -> None:
    for record in negative_records[:8]:
        assert streamed(litellm_proxy_url, record["text"])[0] == record["text"]
        assert ask(litellm_proxy_url, record["text"]).choices[0].message.content == record["text"]


def test_whole_answers_are_rewritten_or_blocked(litellm_proxy_url: str, corpus_records: list[dict]) -> None:
    record = next(r for r in corpus_records if len(r["text"]) > 3000)
    copied = record["text"][1000:1100]
    answer = ask(litellm_proxy_url, BEFORE + copied + AFTER).choices[0].message.content
    assert answer.startswith(BEFORE) and f"出自《{record['work']}》" in answer
    assert longest_shared_run(answer, copied) < 50
    with pytest.raises(openai.BadRequestError) as blocked:
        ask(litellm_proxy_url, record["text"][:1500])
    assert f"《{record['work']}》" in str(blocked.value) and "已被拦截" in str(blocked.value)


def test_a_stream_that_must_be_blocked_ends_with_the_block_message(litellm_proxy_url: str,
                                                                   corpus_records: list[dict]) -> None:
    record = next(r for r in corpus_records if len(r["text"]) > 3000)
    text, reasons, _ = streamed(litellm_proxy_url, BEFORE + record["text"][:1500])
    assert longest_shared_run(text, record["text"][:1500]) <= 50
    assert text.startswith(BEFORE) and text.endswith("已被拦截〕") and reasons[-1] == "stop"


def test_failing_closed_without_redis_blocks_what_it_cannot_check(litellm_proxy_url: str,
                                                                   negative_records: list[dict]) -> None:
    clean = negative_records[0]["text"]
    with pytest.raises(openai.BadRequestError) as blocked:
        ask(litellm_proxy_url, clean, extra_body={"guardrails": ["textguard-closed"]})
    assert "未能完成著作权核查" in str(blocked.value)
    released: list[str] = []
    with pytest.raises(openai.APIError) as stopped:  # LiteLLM ends a stream it was told to block with an error
        for chunk in ask(litellm_proxy_url, clean, stream=True, extra_body={"guardrails": ["textguard-closed"]}):
            released += [choice.delta.content or "" for choice in chunk.choices]
    assert "未能完成著作权核查" in str(stopped.value) and "".join(released) == ""


def test_the_guardrail_demands_its_token_and_reads_what_litellm_may_send(litellm_proxy_url: str,
                                                                         textguard_settings: Settings) -> None:
    with serve(create_textguard_app(textguard_settings), lifespan="on") as textguard:
        url = textguard + "/beta/litellm_basic_guardrail_api"
        body = {"texts": ["你好"], "input_type": "response", "litellm_call_id": "token-test"}
        assert httpx2.post(url, json=body).status_code == 401
        assert httpx2.post(url, json=body, headers={"x-api-key": "wrong-token-0123456789"}).status_code == 401
        authorised = {"authorization": f"Bearer {API_TOKEN}"}
        assert httpx2.post(url, json={**body, "texts": None}, headers=authorised).json() == {"action": "NONE"}
        assert httpx2.post(url, json={"input_type": "response"}, headers=authorised).json() == {"action": "NONE"}
        assert httpx2.post(url, json={**body, "texts": "not a list"}, headers=authorised).status_code == 400


def test_a_guardrail_per_rewrite_style(litellm_styles_url: tuple[str, Paraphrasers], record: dict) -> None:
    """Quote: whole and streamed, one attributed quotation then the notice. Paraphrase: a whole
    answer gets the model's restatement (asked as LiteLLM's model), a stream falls back to quote."""
    url, models = litellm_styles_url
    copied = record["text"][1000:1110]
    answer = BEFORE + copied + AFTER
    for style in ("quote", "paraphrase"):
        chosen = {"extra_body": {"guardrails": [f"textguard-{style}"]}}
        whole = ask(url, answer, **chosen).choices[0].message.content
        text, reasons, _ = streamed(url, answer, **chosen)
        assert reasons[-1] == "stop" and text.startswith(BEFORE) and text.endswith(AFTER)
        assert text.count("……”（") == 1 and f"（{record['author']}《{record['work']}》）" in text
        for released in (whole, text):
            assert longest_shared_run(released, record["text"]) < 50
        if style == "quote":
            assert whole.count("……”（") == 1 and f"出自《{record['work']}》" in whole
        else:
            assert RESTATEMENT in whole and "出自《" not in whole
    assert models.asked and all(body["model"] == "demo" for _, _, body in models.asked)


def test_verdicts_reach_the_audit_log(textguard_settings: Settings, corpus_records: list[dict]) -> None:
    """A stream's verdict is known once LiteLLM stops posting; what is kept is recorded when the
    server stops at the latest."""
    record = next(r for r in corpus_records if len(r["text"]) > 3000)
    copied = record["text"][1000:1100]
    settings = textguard_settings
    reader = audit_reader(settings)
    before = reader.length()
    with serve(create_textguard_app(settings), lifespan="on") as textguard:
        url = textguard + "/beta/litellm_basic_guardrail_api"
        headers = {"authorization": f"Bearer {API_TOKEN}"}
        answer = BEFORE + copied + AFTER
        for end in range(20, len(answer) + 20, 20):  # LiteLLM's posts of one stream: the text so far
            body = {"texts": [answer[:end]], "input_type": "response", "litellm_call_id": "audited-stream"}
            reply = httpx2.post(url, json=body, headers=headers).json()
        assert f"出自《{record['work']}》" in reply["texts"][0]
    entries = [e.fields for e in reader.latest(reader.length() - before)]
    assert [(e["route"], e["verdict"], e["doc_ids"]) for e in entries] == [
        ("/beta/litellm_basic_guardrail_api", "rewrite", [record["id"]])]
