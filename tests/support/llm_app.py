"""A small fake OpenAI-compatible model for tests: it answers with the user's last message
verbatim (so a test chooses the answer), streaming it a few characters per chunk."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from textguard._asgi import ASGIApp, Message, Receive, Scope, Send


class Recorder:
    """What the fake model saw happen, for tests to assert on (and a gate for slow answers).

    `cancelled` is set when the app learns that its client went away before its answer was
    complete: its receive() returned http.disconnect (as a real model server learns it, and
    stops generating), or its generator was cancelled.
    """

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.completed = 0
        self.requests: list[tuple[dict[str, str], bytes]] = []  # headers and raw body of each request
        self.release = threading.Event()  # answers asked to be slow, or to pause, wait for this
        self.paused = threading.Event()  # a streamed answer reached its pause

    def reset(self) -> None:
        self.cancelled.clear()
        self.release.clear()
        self.paused.clear()
        self.completed = 0
        self.requests.clear()


SLOW = "[[slow]]"  # an answer starting with this waits for Recorder.release before it begins
BREAK = "[[break]]"  # a streamed answer starting with this breaks off after a few chunks
PAUSE = "[[pause]]"  # a streamed answer stops here (sets Recorder.paused) until Recorder.release


def _answer(body: dict[str, Any]) -> str:
    if "messages" in body:
        return str(body["messages"][-1]["content"])
    return str(body.get("prompt", ""))


def _watched(app: ASGIApp, recorder: Recorder) -> ASGIApp:
    """`app`, telling `recorder` when it hears of a disconnect before its answer was complete."""

    async def watched(scope: Scope, receive: Receive, send: Send) -> None:
        complete = False

        async def watched_send(message: Message) -> None:
            nonlocal complete
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not complete:
                recorder.cancelled.set()
            return message

        await app(scope, watched_receive, watched_send)

    return watched


def create_app(recorder: Recorder, chunk_chars: int = 3, delay: float = 0.0) -> ASGIApp:
    async def chat(request: Request) -> Response:
        try:
            raw = await request.body()
        except ClientDisconnect:  # gone before its request was read (a load run ending): no one to answer
            return Response(status_code=499)
        recorder.requests.append((dict(request.headers), raw))
        body = json.loads(raw)
        text = _answer(body)
        if text.startswith(SLOW):
            await asyncio.to_thread(recorder.release.wait, 10)
        pause_at = text.find(PAUSE)
        text = text.replace(PAUSE, "")
        chat_api = request.url.path.endswith("/chat/completions")
        base = {"id": "cmpl-test", "created": int(time.time()), "model": body.get("model", "fake")}
        if not body.get("stream"):
            recorder.completed += 1
            if chat_api:
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                return JSONResponse({**base, "object": "chat.completion", "choices": [choice],
                                     "usage": {"prompt_tokens": 5, "completion_tokens": len(text),
                                               "total_tokens": 5 + len(text)}})
            choice = {"index": 0, "text": text, "finish_reason": "stop"}
            return JSONResponse({**base, "object": "text_completion", "choices": [choice]})

        async def events() -> AsyncIterator[str]:
            nonlocal pause_at
            kind = "chat.completion.chunk" if chat_api else "text_completion"
            try:
                if chat_api:
                    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    yield f"data: {json.dumps({**base, 'object': kind, 'choices': [first]})}\n\n"
                yield ": keep-alive\n\n"
                for i in range(0, len(text), chunk_chars):
                    if text.startswith(BREAK) and i >= 10 * chunk_chars:
                        raise RuntimeError("the fake model breaks off its answer")
                    if 0 <= pause_at <= i:
                        pause_at = -1
                        recorder.paused.set()
                        await asyncio.to_thread(recorder.release.wait, 30)
                    piece = text[i:i + chunk_chars]
                    choice: dict[str, Any] = {"index": 0, "finish_reason": None}
                    if chat_api:
                        choice["delta"] = {"content": piece}
                    else:
                        choice["text"] = piece
                    yield f"data: {json.dumps({**base, 'object': kind, 'choices': [choice]}, ensure_ascii=False)}\n\n"
                    await asyncio.sleep(delay)
                last: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
                last["delta" if chat_api else "text"] = {} if chat_api else ""
                yield f"data: {json.dumps({**base, 'object': kind, 'choices': [last]})}\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):
                    usage = {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
                    yield f"data: {json.dumps({**base, 'object': kind, 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
                recorder.completed += 1
            except asyncio.CancelledError:
                recorder.cancelled.set()
                raise
            finally:
                if recorder.completed == 0:
                    recorder.cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def responses(request: Request) -> Response:
        body = await request.json()
        text = str(body["input"] if isinstance(body["input"], str) else body["input"][-1]["content"])
        message = {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}
        response = {"id": "resp_1", "object": "response", "created_at": int(time.time()), "model": "fake",
                    "status": "completed", "output": [message], "parallel_tool_calls": True, "tool_choice": "auto",
                    "tools": []}
        if not body.get("stream"):
            recorder.completed += 1
            return JSONResponse(response)

        async def events() -> AsyncIterator[str]:
            sequence = 0

            def event(payload: dict[str, Any]) -> str:
                nonlocal sequence
                payload["sequence_number"] = sequence
                sequence += 1
                return f"event: {payload['type']}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"

            started = {**response, "status": "in_progress", "output": []}
            try:
                yield event({"type": "response.created", "response": started})
                yield event({"type": "response.output_item.added", "output_index": 0,
                             "item": {**message, "status": "in_progress", "content": []}})
                part = {"type": "output_text", "text": "", "annotations": []}
                yield event({"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0,
                             "content_index": 0, "part": part})
                for i in range(0, len(text), chunk_chars):
                    yield event({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                                 "content_index": 0, "delta": text[i:i + chunk_chars]})
                    await asyncio.sleep(delay)
                yield event({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0,
                             "content_index": 0, "text": text})
                yield event({"type": "response.content_part.done", "item_id": "msg_1", "output_index": 0,
                             "content_index": 0, "part": {**part, "text": text}})
                yield event({"type": "response.output_item.done", "output_index": 0, "item": message})
                yield event({"type": "response.completed", "response": response})
                recorder.completed += 1
            finally:
                if recorder.completed == 0:
                    recorder.cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def messages(request: Request) -> Response:
        """The Anthropic Messages API, with the events vLLM's /v1/messages sends. A last message of
        several text blocks is answered with as many blocks (streamed: with one, of them all)."""
        body = await request.json()
        content = body["messages"][-1]["content"]
        blocks = [str(block["text"]) for block in content] if isinstance(content, list) else [str(content)]
        text = "".join(blocks)
        usage = {"input_tokens": 7, "output_tokens": 1}
        message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model", "fake"),
                   "content": [{"type": "text", "text": block} for block in blocks], "stop_reason": "end_turn",
                   "stop_sequence": None, "usage": {"input_tokens": 7, "output_tokens": len(text)}}
        if not body.get("stream"):
            recorder.completed += 1
            return JSONResponse(message)

        async def events() -> AsyncIterator[str]:
            def event(payload: dict[str, Any]) -> str:
                return f"event: {payload['type']}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"

            try:
                yield event({"type": "message_start", "message": {**message, "content": [], "stop_reason": None,
                                                                  "usage": usage}})
                yield event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
                for i in range(0, len(text), chunk_chars):
                    yield event({"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": text[i:i + chunk_chars]}})
                    await asyncio.sleep(delay)
                yield event({"type": "content_block_stop", "index": 0})
                yield event({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                             "usage": {"output_tokens": len(text)}})
                yield event({"type": "message_stop"})
                recorder.completed += 1
            finally:
                if recorder.completed == 0:
                    recorder.cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def ollama(request: Request) -> Response:
        """Ollama's native /api/chat and /api/generate: one JSON object, or NDJSON lines."""
        body = await request.json()
        chat_api = request.url.path.endswith("/chat")
        text = str(body["messages"][-1]["content"] if chat_api else body["prompt"])
        base = {"model": body.get("model", "fake"), "created_at": "2026-12-07T00:00:00Z"}

        def line(piece: str, done: bool) -> dict[str, Any]:
            content = {"message": {"role": "assistant", "content": piece}} if chat_api else {"response": piece}
            stats = {"done_reason": "stop", "total_duration": 1000, "eval_count": len(text)} if done else {}
            return {**base, **content, "done": done, **stats}

        if not body.get("stream", True):
            recorder.completed += 1
            return JSONResponse(line(text, True))

        async def lines() -> AsyncIterator[str]:
            for i in range(0, len(text), chunk_chars):
                yield json.dumps(line(text[i:i + chunk_chars], False), ensure_ascii=False) + "\n"
                await asyncio.sleep(delay)
            yield json.dumps(line("", True)) + "\n"
            recorder.completed += 1

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def unknown(request: Request) -> Response:
        """A text route in a format no guard reads."""
        text = str((await request.json())["messages"][-1]["content"])
        if request.query_params.get("stream"):
            async def events() -> AsyncIterator[str]:
                yield f"data: {json.dumps({'kind': 'piece', 'said': text}, ensure_ascii=False)}\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse({"generation": {"said": text}})

    async def other(request: Request) -> Response:
        return PlainTextResponse("no guard here: " + request.query_params.get("text", ""))

    async def cookie(request: Request) -> Response:
        """Sets a cookie, and says which cookies it was sent."""
        response = JSONResponse({"cookies": dict(request.cookies)})
        response.set_cookie("session", "secret-of-one-caller")
        return response

    return _watched(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/completions", chat, methods=["POST"]),
                             Route("/v1/responses", responses, methods=["POST"]),
                             Route("/v1/messages", messages, methods=["POST"]),
                             Route("/api/chat", ollama, methods=["POST"]),
                             Route("/api/generate", ollama, methods=["POST"]),
                             Route("/v1/unknown", unknown, methods=["POST"]),
                             Route("/v1/other", other), Route("/v1/cookie", cookie)]), recorder)


def messages_request(blocks: list[str]) -> dict[str, Any]:
    """A Messages API request that the fake model answers with `blocks`, a text block each."""
    return {"model": "fake", "max_tokens": 1024,
            "messages": [{"role": "user", "content": [{"type": "text", "text": text} for text in blocks]}]}


def default_app() -> ASGIApp:
    """The fake model with a recorder nobody reads, for `uvicorn --factory` (benchmarks); its
    pace comes from FAKE_MODEL_DELAY (seconds a chunk) and FAKE_MODEL_CHUNK_CHARS."""
    return create_app(Recorder(), chunk_chars=int(os.environ.get("FAKE_MODEL_CHUNK_CHARS", "3")),
                      delay=float(os.environ.get("FAKE_MODEL_DELAY", "0")))
