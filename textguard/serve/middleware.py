"""`TextGuardMiddleware`: a pure ASGI middleware that guards the answers of chat endpoints.

One responder object per request, and one handler per kind of answer, picked when the
response starts: `WholeAnswer` holds a JSON or text answer, checks it, and sends it rewritten
or blocked with a new Content-Length; `StreamedAnswer` checks event streams and NDJSON streams
as they grow, through the handler of their format, and releases text as soon as that is safe.
An answer in a format textguard cannot read is a skipped check (`unknown_format`), never
"allow". Every other response passes byte for byte, unbuffered. The guard never swallows the
client's `http.disconnect`; when it blocks a stream it stops reading the app, which then sees one.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging

from starlette.datastructures import Headers

from textguard import telemetry
from textguard._asgi import ASGIApp, Message, Receive, Scope, Send
from textguard.audit import AuditLog
from textguard.guard import Guard
from textguard.paraphrase import Paraphraser
from textguard.policy import REWRITE_STYLES, rewrite_style_problem
from textguard.serve._http import (
    REQUEST_ID_HEADER,
    REWRITE_STYLE_HEADER,
    is_json,
    request_id,
    response_headers,
    send_error,
    with_headers,
)
from textguard.serve._reply import Answer, Reply, Stopped
from textguard.serve._streamed import StreamedAnswer
from textguard.serve._whole import WholeAnswer
from textguard.settings import Settings

__all__ = ["TextGuardMiddleware"]

logger = logging.getLogger(__name__)

_TEXT_TYPES = ("text/plain", "text/markdown")
_LINE_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-lines")


class TextGuardMiddleware:
    """Guard the answers of `paths` (default: settings.guard_paths, the OpenAI endpoints).

    With no arguments but the app (as vLLM's `--middleware` builds it) it configures itself
    from the environment and settings file, as the CLI does.
    """

    def __init__(self, app: ASGIApp, *, guard: Guard | None = None, settings: Settings | None = None,
                 paths: tuple[str, ...] | None = None) -> None:
        self.app = app
        self.guard = guard or Guard(settings or Settings.load())
        self.paths = paths if paths is not None else self.guard.settings.guard_paths
        self.paraphraser = Paraphraser(self.guard, app=self._app_as_served)
        self._audit: AuditLog | None = None
        self._first_request: Scope | None = None

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            self._audit = AuditLog(self.guard.redis, self.guard.settings)
        return self._audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing_at_shutdown(send))
            return
        if scope["type"] != "http" or scope["method"] == "HEAD" \
                or not any(fnmatch.fnmatchcase(scope["path"], p) for p in self.paths):
            await self.app(scope, receive, send)  # HEAD answers carry no text to check
            return
        if self._first_request is None:  # the host server has set up its logging by now
            telemetry.keep_logs_visible()
            self._first_request = scope
        headers = Headers(scope=scope)
        asked = headers.get(REWRITE_STYLE_HEADER)
        style = self.guard.settings.rewrite_style if asked is None else asked.strip().lower()
        if asked is not None and (problem := rewrite_style_problem(style, self.guard.settings)):
            await send_error(send, 400, f"{REWRITE_STYLE_HEADER}: {problem}", "invalid_rewrite_style")
            return
        assert style in REWRITE_STYLES
        token = telemetry.request_id.set(request_id(scope))
        try:
            reply = Reply(send, self.guard, self.audit, scope["path"], self.paraphraser, style,
                          headers.get("authorization"))
            await _Responder(self.app, reply, scope, receive).run()
        finally:
            telemetry.request_id.reset(token)


    async def _app_as_served(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The guarded app called in-process (a paraphrase asked of it) with the scope keys the
        layers above the middleware set on a served request: FastAPI's handlers (vLLM's) read
        `request.app.state`, and a lifespan's `state` reaches requests through the scope."""
        served = self._first_request or {}
        above = {key: served[key] for key in ("app", "router") if key in served}
        if "state" in served:
            above["state"] = dict(served["state"])  # each request gets its own copy, as servers give it
        await self.app({**scope, **above}, receive, send)

    def _closing_at_shutdown(self, send: Send) -> Send:
        """`send`, closing the paraphrasing model's connections once the app has shut down."""

        async def closing(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.paraphraser.aclose()
            await send(message)
        return closing


class _Responder:
    """One request: the app's receive and send wrapped, and the handler of its answer's kind."""

    def __init__(self, app: ASGIApp, reply: Reply, scope: Scope, receive: Receive) -> None:
        self.app = app
        self.scope = scope
        self.receive = receive
        self.send = reply.send
        self.reply = reply
        self.answer: Answer | None = None  # None: the response passes byte for byte

    async def run(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        except Exception:
            if not self.reply.stopped.is_set():
                raise
            # the app unwinding from the stop we caused (perhaps wrapped in its own exception)
        finally:
            if self.answer is not None:
                await self.answer.close()

    async def _receive(self) -> Message:
        if self.reply.stopped.is_set():
            return {"type": "http.disconnect"}
        receiving = asyncio.ensure_future(self.receive())
        stopping = asyncio.ensure_future(self.reply.stopped.wait())
        try:
            done, _ = await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the app cancels its receive(): leave no task behind
            stopping.cancel()
            if not receiving.done():
                receiving.cancel()
        if receiving in done:
            return receiving.result()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if self.reply.stopped.is_set():
            raise Stopped
        if message["type"] == "http.response.start":
            message = with_headers(message, {REQUEST_ID_HEADER: telemetry.request_id.get()})
            self.answer = _answer_for(self.reply, message)
            if self.answer is None:
                await self.send(message)
            else:
                await self.answer.start()
        elif message["type"] == "http.response.body" and self.answer is not None:
            try:
                await self.answer.feed(message.get("body", b""), message.get("more_body", False))
            except Stopped:
                # We ended the response. The app learns it from receive() (http.disconnect) or,
                # if it does not listen, from its next send, which raises.
                return
        else:
            await self.send(message)


def _answer_for(reply: Reply, start: Message) -> Answer | None:
    """The handler for the answer that `start` begins (None: not one to guard)."""
    if not 200 <= start["status"] < 300 or start["status"] in (204, 205):
        return None  # errors, and answers without a body
    content_type = response_headers(start).get("content-type", "").strip().lower()
    if content_type.startswith("text/event-stream"):
        return StreamedAnswer(reply, start, lines=False)
    if content_type.startswith(_LINE_TYPES):
        return StreamedAnswer(reply, start, lines=True)
    if is_json(content_type) or content_type.startswith(_TEXT_TYPES) or not content_type:
        return WholeAnswer(reply, start)
    return None
