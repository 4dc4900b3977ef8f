"""Answer formats beyond OpenAI's, guarded by the middleware and the proxy: the Anthropic Messages
API (driven by the official `anthropic` client), Ollama's native API (the official `ollama`
client, through the proxy), and a format textguard cannot read (a skip, never "allow")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import ollama
import pytest

from tests.support.helpers import AFTER, BEFORE, longest_shared_run, textguard_env
from tests.support.llm_app import Recorder, create_app
from tests.support.servers import serve, spawn
from textguard import Settings
from textguard.serve.middleware import TextGuardMiddleware


@pytest.fixture(scope="module")
def url(indexed: Settings) -> Iterator[str]:
    with serve(TextGuardMiddleware(create_app(Recorder(), delay=0.001), settings=indexed)) as url:
        httpx2.post(url + "/v1/messages", json=say("先热身：第一次检查要加载词典。" * 10))  # loads the dictionaries
        yield url


def messages(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="test", max_retries=0, timeout=30)


def say(text: str) -> dict[str, Any]:
    return {"model": "fake", "max_tokens": 4096, "messages": [{"role": "user", "content": text}]}


def test_messages_api_answers_are_rewritten_blocked_and_passed(url: str, record: dict,
                                                               negative_records: list[dict]) -> None:
    copied = record["text"][1000:1100]
    message = messages(url).messages.create(**say(BEFORE + copied + AFTER))
    text = message.content[0].text
    assert text.startswith(BEFORE) and text.endswith(AFTER) and f"出自《{record['work']}》" in text
    assert message.stop_reason == "end_turn"
    blocked = messages(url).messages.create(**say(record["text"][:1500]))
    assert blocked.stop_reason == "refusal" and "已被拦截" in blocked.content[0].text
    clean = negative_records[3]["text"]
    raw = httpx2.post(url + "/v1/messages", json=say(clean))
    assert raw.headers["x-textguard-verdict"] == "allow" and raw.json()["content"][0]["text"] == clean


def test_messages_api_streams_hold_the_bound(url: str, record: dict, negative_records: list[dict]) -> None:
    copied = record["text"][1000:1100]
    with messages(url).messages.stream(**say(BEFORE + copied + AFTER)) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed.startswith(BEFORE) and streamed.endswith(AFTER) and f"出自《{record['work']}》" in streamed
    assert longest_shared_run(streamed, copied) <= 50 and final.content[0].text == streamed
    clean = negative_records[5]["text"]
    with messages(url).messages.stream(**say(clean)) as stream:
        assert "".join(stream.text_stream) == clean

    copied = record["text"][:2000]
    with messages(url).messages.stream(**say(BEFORE + copied)) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()  # the SDK accepts how the blocked stream ended
    assert final.stop_reason == "refusal" and longest_shared_run(streamed, copied) <= 50
    assert final.usage.input_tokens == 7  # the upstream's own count, not a made-up one


@pytest.fixture(scope="module")
def proxy(indexed: Settings) -> Iterator[str]:
    with serve(create_app(Recorder(), delay=0.001)) as upstream, \
            spawn(["proxy", "--upstream", upstream, "--port", "0"], textguard_env(indexed)) as (_, url):
        yield url


def test_ollama_native_api_through_the_proxy(proxy: str, record: dict, negative_records: list[dict]) -> None:
    client = ollama.Client(host=proxy, timeout=30)
    copied = record["text"][1000:1100]
    answer = BEFORE + copied + AFTER
    chat = client.chat(model="fake", messages=[{"role": "user", "content": answer}])
    assert chat.message.content.startswith(BEFORE) and f"出自《{record['work']}》" in chat.message.content
    pieces = [part.message.content for part in client.chat(model="fake", stream=True,
                                                            messages=[{"role": "user", "content": answer}])]
    streamed = "".join(pieces)
    assert streamed.startswith(BEFORE) and streamed.endswith(AFTER) and f"出自《{record['work']}》" in streamed
    assert longest_shared_run(streamed, copied) <= 50
    clean = negative_records[7]["text"]
    assert "".join(p.response for p in client.generate(model="fake", prompt=clean, stream=True)) == clean
    assert client.generate(model="fake", prompt=clean).response == clean

    copied = record["text"][:2000]
    parts = list(client.generate(model="fake", prompt=BEFORE + copied, stream=True))
    streamed = "".join(p.response for p in parts)
    assert parts[-1].done and parts[-1].done_reason == "content_filter"
    assert longest_shared_run(streamed, copied) <= 50 and streamed.endswith("已被拦截〕")
    blocked = client.generate(model="fake", prompt=copied)
    assert blocked.done_reason == "content_filter" and "已被拦截" in blocked.response


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_an_answer_in_a_format_it_cannot_read_is_a_skip(indexed: Settings, record: dict, mode: str) -> None:
    settings = indexed.replace(fail_mode=mode, guard_paths=("/v1/unknown",))
    guard_app = TextGuardMiddleware(create_app(Recorder()), settings=settings)
    copied = record["text"][1000:1300].replace("\n", "")
    with serve(guard_app) as url:
        answer = httpx2.post(url + "/v1/unknown", json=say(copied))
        streamed = httpx2.post(url + "/v1/unknown", params={"stream": "1"}, json=say(copied))
    assert guard_app.guard.skipped["unknown_format"] == 2
    assert "x-textguard-verdict" not in answer.headers or answer.headers["x-textguard-verdict"] == "block"
    if mode == "open":  # passed as it came, marked as not checked
        assert answer.headers["x-textguard-skipped"] == "unknown_format" and copied in answer.text
        assert "x-textguard-verdict" not in answer.headers and copied in streamed.text
    else:  # refused: nothing of it goes out
        assert answer.status_code == 502 and copied not in answer.text and copied not in streamed.text
