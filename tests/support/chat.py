"""Chat answers over HTTP, shared by the tests of the served surfaces: asking a guarded server
through the official openai client, reading back a stream, and an upstream that sends a
prepared body byte for byte (for bodies the fake model of llm_app.py would never send)."""

from __future__ import annotations

from typing import Any

import openai


def openai_client(url: str) -> openai.OpenAI:
    """The official client of the OpenAI API at `url`, without retries: a failure shows at once."""
    return openai.OpenAI(base_url=url + "/v1", api_key="test", max_retries=0, timeout=30)


def ask(url: str, text: str, **kwargs: Any) -> Any:
    """A chat completion of the fake model, which answers with the user's message: `text`."""
    messages = [{"role": "user", "content": text}]
    return openai_client(url).chat.completions.create(model="fake", messages=messages, **kwargs)


def collect(stream: Any) -> tuple[str, list[str | None], list[Any]]:
    """A streamed chat answer as the client saw it: its text, its finish reasons, its usage chunks."""
    text, reasons, usage = [], [], []
    for chunk in stream:
        if chunk.usage is not None:
            usage.append(chunk.usage)
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    return "".join(text), [r for r in reasons if r], usage


class RawAnswer:
    """An app that answers with a prepared body, sent in pieces of `piece` bytes."""

    def __init__(self, body: bytes, piece: int, headers: tuple[tuple[bytes, bytes], ...] = (),
                 content_type: bytes | None = b"text/event-stream", status: int = 200) -> None:
        self.body, self.piece, self.status = body, piece, status
        self.headers = [*(((b"content-type", content_type),) if content_type else ()), *headers]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        for i in range(0, len(self.body), self.piece):
            await send({"type": "http.response.body", "body": self.body[i:i + self.piece], "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def chat_chunks(chunk_id: str, text: str, step: int) -> list[dict]:
    """The chunks of a streamed chat answer: `step` characters each, then the finish chunk."""
    base = {"id": chunk_id, "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = [{**base, "choices": [{"index": 0, "delta": {"content": text[i:i + step]},
                                    "finish_reason": None}]} for i in range(0, len(text), step)]
    return [*events, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
