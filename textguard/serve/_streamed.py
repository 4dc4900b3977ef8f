"""Streamed answers: server-sent events or NDJSON lines, parsed as they arrive and handed one
event at a time to the handler of their format (`_answer_streams`), which its first readable
event picks. What the handler releases goes out at once; comments and keep-alives pass as they
are. An event textguard cannot read is a skipped check: passed (fail open) or the stream's end
(closed).
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable
from typing import Any, NoReturn

from textguard._asgi import Message
from textguard.guard import Guard
from textguard.policy import RewriteStyle
from textguard.serve._answer_streams import AnswerStream, pick
from textguard.serve._http import SKIPPED_HEADER, compact_json, decoder, response_headers, with_headers
from textguard.serve._reply import Reply
from textguard.serve._sse import Event, EventParser, Line, LineParser, encode_data

__all__ = ["StreamedAnswer"]

logger = logging.getLogger(__name__)


class StreamedAnswer:
    """One streamed response, and the `Sink` its format's handler writes to."""

    def __init__(self, reply: Reply, start: Message, lines: bool) -> None:
        self.reply = reply
        self.guard: Guard = reply.guard
        self.rewrite_style: RewriteStyle = reply.rewrite_style
        self.start_message = start
        self.lines = lines
        self.parser: EventParser | LineParser = LineParser() if lines else EventParser()
        self.decode: Callable[[bytes], bytes] = bytes
        self.handler: AnswerStream | None = None
        self.relaying = False  # an encoding we cannot read, failing open: the stream passes as it is
        self.unknown_format = False

    async def start(self) -> None:
        encoding = response_headers(self.start_message).get("content-encoding", "identity")
        try:
            self.decode = decoder(encoding)
        except ValueError as exc:
            logger.warning("cannot decode a streamed answer: %s", exc)
            self.guard.note_skip("encoding")
            if self.reply.settings.fail_mode == "open":
                self.relaying = True
                await self.reply.send(with_headers(self.start_message, {SKIPPED_HEADER: "encoding"}))
                return
            self.decode = _refuse
        await self.reply.send(with_headers(self.start_message, {"x-textguard": "guarded"},
                                           drop=("content-length", "content-encoding")))

    async def feed(self, chunk: bytes, more: bool) -> None:
        if self.relaying:
            await self.reply.body(chunk, more)
            return
        try:
            events: list[Event] | list[Line] = self.parser.feed(self.decode(chunk))
        except (OSError, ValueError, zlib.error) as exc:
            await self._undecodable(exc)
        if not more:
            events += self.parser.close()  # type: ignore[operator]
        for event in events:
            await self._event(event)
            if self.reply.stopped.is_set():
                return
        if not more:
            if self.handler is not None:
                await self.handler.on_done()
            await self.reply.body(b"", more=False)

    async def close(self) -> None:
        for stream in self.handler.streams.values() if self.handler else ():
            await self.reply.record(stream.summary(), stream.text)

    async def _undecodable(self, exc: Exception) -> NoReturn:
        logger.warning("cannot decode a streamed answer, failing closed: %s", exc)
        self.guard.note_skip("encoding")
        if not self.lines:  # end it as a filtered chat stream, which clients finish on
            await self.emit({"object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]})
            await self.emit("[DONE]")
        await self.end()

    async def _event(self, event: Event | Line) -> None:
        if event.data is None:
            await self.reply.body(event.encode())  # comments and keep-alives pass as they are
            return
        if event.data.strip() == "[DONE]":
            if self.handler is not None:
                await self.handler.on_done()
            await self.reply.body(event.encode())
            return
        try:
            payload = json.loads(event.data)
        except (ValueError, RecursionError):
            self.guard.note_skip("malformed")
            if self.reply.settings.fail_mode == "open":
                logger.warning("passing an event whose data is not JSON (fail mode open)")
                await self.reply.body(event.encode())
            else:
                logger.warning("dropping an event whose data is not JSON (fail mode closed)")
            return
        if isinstance(payload, dict) and self.handler is None:
            self.handler = pick(payload, self)
        if not isinstance(payload, dict) or self.handler is None:
            await self._unknown_event(event)
        elif not await self.handler.on(payload):
            other = pick(payload, self)  # an event of another format in this stream cannot be placed: a skip
            if other is None or type(other) is type(self.handler):
                await self.reply.body(event.encode())
            else:
                await self._unknown_event(event)

    async def _unknown_event(self, event: Event | Line) -> None:
        """An event of no format textguard reads: a skip (counted once per response); fail open
        passes it, fail closed ends the stream."""
        if not self.unknown_format:
            self.unknown_format = True
            logger.warning("a guarded stream is in no format textguard reads: not checked, failing %s",
                           self.reply.settings.fail_mode)
            self.guard.note_skip("unknown_format")
        if self.reply.settings.fail_mode == "open":
            await self.reply.body(event.encode())
        else:
            await self.end()

    # the Sink of `_answer_streams`

    async def emit(self, payload: Any, event: str | None = None) -> None:
        data = payload if isinstance(payload, str) else compact_json(payload)
        await self.reply.body((data + "\n").encode() if self.lines else encode_data(data, event=event))

    async def end(self) -> NoReturn:
        await self.reply.end()


def _refuse(_: bytes) -> bytes:
    raise ValueError("the stream's content-encoding cannot be decoded")
