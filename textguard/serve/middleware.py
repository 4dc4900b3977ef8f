"""`TextGuardMiddleware`: a pure ASGI middleware that guards the answers of chat endpoints.

One responder object per request. Answers of the guarded paths are checked: JSON bodies (the
formats of `answer_fields`, or plain text and markdown) are buffered, checked, rewritten or
blocked, and sent with a recomputed Content-Length; event streams and NDJSON streams are
checked as they grow by the handler of their format (`answer_streams`), and released as soon as
that is safe. An answer in a format textguard cannot read is a skipped check (`unknown_format`),
never "allow". Every other response passes byte for byte, unbuffered. The guard never swallows
the client's `http.disconnect`; when it blocks a stream it stops reading the app, which then
sees one.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import uuid
import zlib
from collections.abc import Callable
from typing import Any, NoReturn

from textguard import telemetry
from textguard._asgi import ASGIApp, Message, Receive, Scope, Send
from textguard.audit import AuditLog
from textguard.guard import Guard
from textguard.policy import Verdict
from textguard.serve._answer_fields import answer_fields
from textguard.serve._answer_streams import AnswerStream, pick
from textguard.serve._http import send_error
from textguard.serve._sse import Event, EventParser, Line, LineParser, encode_data
from textguard.settings import Settings

logger = logging.getLogger(__name__)

VERDICT_HEADER = b"x-textguard-verdict"
SKIPPED_HEADER = b"x-textguard-skipped"
REQUEST_ID_HEADER = b"x-request-id"
_BYTES_PER_CHAR = 8  # a buffered answer beyond max_check_chars * this cannot fit the check
_RANK = {"allow": 0, "rewrite": 1, "block": 2}
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
        self._audit: AuditLog | None = None
        self._logs_checked = False

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            self._audit = AuditLog(self.guard.redis, self.guard.settings)
        return self._audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "HEAD" \
                or not any(fnmatch.fnmatchcase(scope["path"], p) for p in self.paths):
            await self.app(scope, receive, send)  # HEAD answers carry no text to check
            return
        if not self._logs_checked:  # at the first request: the host server has set up its logging by now
            telemetry.keep_logs_visible()
            self._logs_checked = True
        token = telemetry.request_id.set(_request_id(scope))
        try:
            await _Responder(self, scope, receive, send).run()
        finally:
            telemetry.request_id.reset(token)


class _Stopped(OSError):
    """Raised into the app when the guard has ended the response (a blocked stream). An
    OSError, as a vanished client is to an ASGI app: apps and servers already unwind on it."""


class _Responder:
    def __init__(self, middleware: TextGuardMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
        self.app = middleware.app
        self.guard = middleware.guard
        self.audit = middleware.audit
        self.settings = middleware.guard.settings
        self.scope = scope
        self.receive = receive
        self.send = send
        self.start: Message | None = None
        self.mode = "pass"  # pass, buffer, stream (events), lines (NDJSON) or drop, decided at http.response.start
        self.body = bytearray()
        self.stopped = asyncio.Event()
        self.parser: EventParser | LineParser = EventParser()
        self.decode: Callable[[bytes], bytes] = bytes
        self.handler: AnswerStream | None = None  # picked by the stream's first readable event
        self.unknown_format = False

    async def run(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        except Exception:
            if not self.stopped.is_set():
                raise
            # the app unwinding from the stop we caused (perhaps wrapped in its own exception)
        finally:
            for stream in self.handler.streams.values() if self.handler else ():
                await self.audit.record(stream.summary(), self.scope["path"], stream.text)

    async def _receive(self) -> Message:
        if self.stopped.is_set():
            return {"type": "http.disconnect"}
        receiving = asyncio.ensure_future(self.receive())
        stopping = asyncio.ensure_future(self.stopped.wait())
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
        if self.stopped.is_set():
            raise _Stopped
        if message["type"] == "http.response.start":
            message = _with_headers(message, {REQUEST_ID_HEADER: telemetry.request_id.get().encode()})
            self.start = message
            self.mode = self._mode(message)
            if self.mode == "pass":
                await self.send(message)
            elif self.mode in ("stream", "lines"):
                try:
                    self.decode = _decoder(_header(message, b"content-encoding", "identity"))
                except ValueError as exc:  # a stream we cannot read: the fail mode decides
                    logger.warning("cannot decode a streamed answer: %s", exc)
                    self.guard.note_skip("encoding")
                    if self.settings.fail_mode == "open":
                        self.mode = "pass"
                        await self.send(_with_headers(message, {SKIPPED_HEADER: b"encoding"}))
                        return
                    self.decode = _refuse
                if self.mode == "lines":
                    self.parser = LineParser()
                await self.send(_with_headers(message, {b"x-textguard": b"guarded"},
                                              drop=(b"content-length", b"content-encoding")))
            return
        if message["type"] != "http.response.body":
            await self.send(message)
            return
        if self.mode == "pass":
            await self.send(message)
        elif self.mode == "buffer":
            self.body += message.get("body", b"")
            if len(self.body) > _BYTES_PER_CHAR * self.settings.max_check_chars:
                await self._overflow(more=message.get("more_body", False))
            elif not message.get("more_body", False):
                await self._send_checked()
        elif self.mode == "drop":
            return
        else:
            try:
                await self._stream(message.get("body", b""), more=message.get("more_body", False))
            except _Stopped:
                # We ended the response. The app learns it from receive() (http.disconnect) or,
                # if it does not listen, from its next send, which raises.
                return

    def _mode(self, start: Message) -> str:
        if not 200 <= start["status"] < 300 or start["status"] in (204, 205):
            return "pass"  # errors, and answers without a body
        content_type = _header(start, b"content-type")
        if content_type.startswith("text/event-stream"):
            return "stream"
        if content_type.startswith(_LINE_TYPES):
            return "lines"
        if _is_json(content_type) or content_type.startswith(_TEXT_TYPES) or not content_type:
            return "buffer"
        return "pass"

    async def _overflow(self, more: bool) -> None:
        """An answer too large to hold and check: the fail mode decides, and the rest of it is
        relayed (open) or dropped (closed)."""
        logger.warning("answer larger than %d bytes: not checked, failing %s",
                       _BYTES_PER_CHAR * self.settings.max_check_chars, self.settings.fail_mode)
        self.guard.note_skip("too_large")
        if self.settings.fail_mode == "closed":
            self.mode = "drop"
            await self._finish_unchecked("too_large")
            return
        assert self.start is not None
        self.mode = "pass"
        await self.send(_with_headers(self.start, {VERDICT_HEADER: b"allow", SKIPPED_HEADER: b"too_large"}))
        await self.send({"type": "http.response.body", "body": bytes(self.body), "more_body": more})

    # -- whole answers ------------------------------------------------------------------

    async def _send_checked(self) -> None:
        assert self.start is not None
        encoding = _header(self.start, b"content-encoding", "identity")
        try:
            body = _decoder(encoding)(bytes(self.body))
        except (OSError, ValueError, zlib.error) as exc:
            logger.warning("cannot decode a %s answer: %s", encoding, exc)
            self.guard.note_skip("encoding")
            await self._finish_unchecked("encoding")
            return
        content_type = _header(self.start, b"content-type")
        try:
            payload = json.loads(body) if _is_json(content_type) or not content_type else None
        except (ValueError, RecursionError):  # not JSON, or nested beyond reason
            if content_type:
                logger.warning("a guarded answer is not valid JSON: not checked, failing %s", self.settings.fail_mode)
                self.guard.note_skip("malformed")
                await self._finish_unchecked("malformed")
                return
            payload = None  # no content type: read it as text
        if payload is None:
            text = body.decode("utf-8", "replace")
            verdict = await self.guard.check_held(text)
            await self._respond(body if verdict.verdict == "allow" else verdict.text.encode(), [verdict])
            await self.audit.record(verdict, self.scope["path"], text)
            return
        fields = answer_fields(payload)
        if fields is None:
            await self._unknown_format()
            return
        checked = []
        for field in fields:
            text = field.holder[field.key]
            verdict = await self.guard.check_held(text)
            if verdict.verdict != "allow":
                field.holder[field.key] = verdict.text
            if verdict.verdict == "block":
                field.mark_blocked()
            checked.append((verdict, text))
        verdicts = [verdict for verdict, _ in checked]
        if self.settings.expose_matches and isinstance(payload, dict) and verdicts:
            payload["textguard"] = _summary(verdicts)
        changed = any(v.verdict != "allow" or v.skipped for v in verdicts) or self.settings.expose_matches
        await self._respond(_json_bytes(payload) if changed else body, verdicts)
        for verdict, text in checked:
            await self.audit.record(verdict, self.scope["path"], text)

    async def _unknown_format(self) -> None:
        """A JSON answer in no format textguard reads: a skip, never "allow". Passed (fail open,
        marked only as skipped) or refused (closed)."""
        logger.warning("a guarded answer is in no format textguard reads: not checked, failing %s",
                       self.settings.fail_mode)
        self.guard.note_skip("unknown_format")
        if self.settings.fail_mode == "closed":
            await self._finish_unchecked("unknown_format")
            return
        assert self.start is not None
        await self.send(_with_headers(self.start, {SKIPPED_HEADER: b"unknown_format"}))
        await self.send({"type": "http.response.body", "body": bytes(self.body), "more_body": False})

    async def _respond(self, body: bytes, verdicts: list[Verdict]) -> None:
        assert self.start is not None
        worst = max((v.verdict for v in verdicts), key=_RANK.__getitem__, default="allow")
        extra = {VERDICT_HEADER: worst.encode(), b"content-length": str(len(body)).encode()}
        skipped = sorted({v.skipped for v in verdicts if v.skipped})
        if skipped:
            extra[SKIPPED_HEADER] = ",".join(skipped).encode()
        await self.send(_with_headers(self.start, extra, drop=(b"content-encoding", b"content-length")))
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _finish_unchecked(self, reason: str) -> None:
        """Send an answer that could not be checked as it is (open), or an error in its place
        (closed): it cannot be rewritten or blocked in its own format if it cannot be read."""
        if self.settings.fail_mode == "closed":
            message = self.guard.policy.block_message(())
            headers = [(VERDICT_HEADER, b"block"), (SKIPPED_HEADER, reason.encode()),
                       (REQUEST_ID_HEADER, telemetry.request_id.get().encode())]
            await send_error(self.send, 502, message, "answer_not_checked", headers)
            await self.audit.record(Verdict("block", message, 0, (), 0.0, skipped=reason), self.scope["path"], "")
        else:
            assert self.start is not None
            await self.send(_with_headers(self.start, {VERDICT_HEADER: b"allow", SKIPPED_HEADER: reason.encode()}))
            await self.send({"type": "http.response.body", "body": bytes(self.body), "more_body": False})

    # -- streams ------------------------------------------------------------------------

    async def _stream(self, chunk: bytes, more: bool) -> None:
        try:
            events: list[Event] | list[Line] = self.parser.feed(self.decode(chunk))
        except (OSError, ValueError, zlib.error) as exc:
            logger.warning("cannot decode a streamed answer, failing closed: %s", exc)
            self.guard.note_skip("encoding")
            if self.mode == "stream":  # end it as a filtered chat stream, which clients finish on
                await self.emit({"object": "chat.completion.chunk",
                                 "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]})
                await self.emit("[DONE]")
            await self.end()
        if not more:
            events += self.parser.close()  # type: ignore[operator]
        for event in events:
            await self._event(event)
            if self.stopped.is_set():
                return
        if not more:
            if self.handler is not None:
                await self.handler.on_done()
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _event(self, event: Event | Line) -> None:
        if event.data is None:
            await self._emit(event.encode())  # comments and keep-alives pass as they are
            return
        if event.data.strip() == "[DONE]":
            if self.handler is not None:
                await self.handler.on_done()
            await self._emit(event.encode())
            return
        try:
            payload = json.loads(event.data)
        except (ValueError, RecursionError):
            self.guard.note_skip("malformed")
            if self.settings.fail_mode == "open":
                logger.warning("passing an event whose data is not JSON (fail mode open)")
                await self._emit(event.encode())
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
                await self._emit(event.encode())
            else:
                await self._unknown_event(event)

    async def _unknown_event(self, event: Event | Line) -> None:
        """An event of no format textguard reads: a skip (counted once per response); fail open
        passes it, fail closed ends the stream."""
        if not self.unknown_format:
            self.unknown_format = True
            logger.warning("a guarded stream is in no format textguard reads: not checked, failing %s",
                           self.settings.fail_mode)
            self.guard.note_skip("unknown_format")
        if self.settings.fail_mode == "open":
            await self._emit(event.encode())
        else:
            await self.end()

    # -- the Sink the format handlers write to ----------------------------------------------

    async def emit(self, payload: Any, event: str | None = None) -> None:
        data = payload if isinstance(payload, str) else _dumps(payload)
        await self._emit((data + "\n").encode() if self.mode == "lines" else encode_data(data, event=event))

    async def end(self) -> NoReturn:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        self.stopped.set()
        raise _Stopped

    async def _emit(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})


def _dumps(payload: Any) -> str:
    """JSON as compact as the answer was; escaped (still valid JSON) if it holds lone surrogates,
    which an upstream may send escaped and UTF-8 cannot carry."""
    text = json.dumps(payload, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = json.dumps(payload)
    return text


def _json_bytes(payload: Any) -> bytes:
    return _dumps(payload).encode()


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip()
    return media_type in ("application/json", "text/json") or media_type.endswith("+json")


def _request_id(scope: Scope) -> str:
    """The caller's X-Request-ID if it is a sane one, else a new one."""
    for name, value in scope["headers"]:
        if name.lower() == REQUEST_ID_HEADER:
            given = str(value.decode("latin-1"))
            if 0 < len(given) <= 128 and given.isascii() and given.isprintable():
                return given
            break
    return uuid.uuid4().hex


def _summary(verdicts: list[Verdict]) -> dict[str, Any]:
    worst = max((v.verdict for v in verdicts), key=_RANK.__getitem__)
    return {"verdict": worst, "matches": [m.to_dict() for v in verdicts for m in v.matches]}


def _decoder(encoding: str) -> Callable[[bytes], bytes]:
    """An incremental decoder for a Content-Encoding (whole bodies and streams alike)."""
    if encoding in ("identity", ""):
        return bytes
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress
    if encoding == "deflate":
        return zlib.decompressobj().decompress
    if encoding == "br":
        try:
            import brotli  # optional: only needed when an app compresses with Brotli
        except ImportError as exc:
            raise ValueError("content-encoding br needs the brotli package") from exc
        decompressor = brotli.Decompressor()
        return lambda chunk: bytes(decompressor.process(chunk))
    raise ValueError(f"unsupported content-encoding {encoding!r}")


def _header(start: Message, name: bytes, default: str = "") -> str:
    """A response header's value, lower-cased (`name` in lower case)."""
    for key, value in start.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1").lower().strip())
    return default


def _refuse(_: bytes) -> bytes:
    raise ValueError("the stream's content-encoding cannot be decoded")


def _with_headers(start: Message, extra: dict[bytes, bytes], drop: tuple[bytes, ...] = ()) -> Message:
    dropped = set(drop) | set(extra)
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in dropped]
    return {**start, "headers": headers + list(extra.items())}
