"""`TextGuardMiddleware`: a pure ASGI middleware that guards the answers of chat endpoints.

One responder object per request. Answers of the guarded paths are checked: JSON bodies
(OpenAI chat and legacy completions, or plain text and markdown) are buffered, checked,
rewritten or blocked, and sent with a recomputed Content-Length; event streams are checked as
they grow, per choice, through `GuardedStream`, and released as soon as that is safe. Every
other response passes byte for byte, unbuffered. The guard never swallows the client's
`http.disconnect`; when it blocks a stream it stops reading the app, which then sees one.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import uuid
import zlib
from collections.abc import Callable
from typing import Any

from textguard import telemetry
from textguard._asgi import ASGIApp, Message, Receive, Scope, Send
from textguard._http import send_error
from textguard.audit import AuditLog
from textguard.guard import Guard
from textguard.policy import Verdict
from textguard.settings import Settings
from textguard.sse import Event, EventParser, encode_data
from textguard.stream import GuardedStream

logger = logging.getLogger(__name__)

VERDICT_HEADER = b"x-textguard-verdict"
SKIPPED_HEADER = b"x-textguard-skipped"
REQUEST_ID_HEADER = b"x-request-id"
_BYTES_PER_CHAR = 8  # a buffered answer beyond max_check_chars * this cannot fit the check
_RANK = {"allow": 0, "rewrite": 1, "block": 2}
_TEXT_TYPES = ("text/plain", "text/markdown")


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
        self.mode = "pass"  # pass, buffer, stream or drop, decided at http.response.start
        self.body = bytearray()
        self.stopped = asyncio.Event()
        self.request_body = bytearray()
        self.parser = EventParser()
        self.decode: Callable[[bytes], bytes] = bytes
        self.streams: dict[int, GuardedStream] = {}
        self.streams_by_part: dict[tuple[Any, Any, Any], GuardedStream] = {}
        self.released_by_part: dict[tuple[Any, Any, Any], str] = {}
        self.response_object: dict[str, Any] = {}
        self.sequence = 0

    async def run(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        except Exception:
            if not self.stopped.is_set():
                raise
            # the app unwinding from the stop we caused (perhaps wrapped in its own exception)
        finally:
            for stream in (*self.streams.values(), *self.streams_by_part.values()):
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
            message = receiving.result()
            if message["type"] == "http.request":
                self.request_body += message.get("body", b"")
            return message
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
            elif self.mode == "stream":
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
            verdict = await self.guard.check(text, budget_ms=self.settings.check_timeout_ms)
            await self._respond(body if verdict.verdict == "allow" else verdict.text.encode(), [verdict])
            await self.audit.record(verdict, self.scope["path"], text)
            return
        checked = [(await self._check_field(choice, holder, key), text)
                   for choice, holder, key in _answer_fields(payload) for text in [holder[key]]]
        verdicts = [verdict for verdict, _ in checked]
        if self.settings.expose_matches and isinstance(payload, dict) and verdicts:
            payload["textguard"] = _summary(verdicts)
        changed = any(v.verdict != "allow" or v.skipped for v in verdicts) or self.settings.expose_matches
        await self._respond(_json_bytes(payload) if changed else body, verdicts)
        for verdict, text in checked:
            await self.audit.record(verdict, self.scope["path"], text)

    async def _check_field(self, choice: dict[str, Any], holder: dict[str, Any], key: str) -> Verdict:
        verdict = await self.guard.check(holder[key], budget_ms=self.settings.check_timeout_ms)
        if verdict.verdict != "allow":
            holder[key] = verdict.text
        if verdict.verdict == "block":
            if choice.get("object") == "response":  # the Responses API's way to say it
                choice.update(status="incomplete", incomplete_details={"reason": "content_filter"})
            else:
                choice["finish_reason"] = "content_filter"
        return verdict

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

    # -- streams --------------------------------------------------------------------------

    async def _stream(self, chunk: bytes, more: bool) -> None:
        try:
            events = self.parser.feed(self.decode(chunk))
        except (OSError, ValueError, zlib.error) as exc:
            logger.warning("cannot decode a streamed answer, failing closed: %s", exc)
            self.guard.note_skip("encoding")
            await self._block({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}}]}, 0)
            return
        if not more:
            events += self.parser.close()
        for event in events:
            await self._event(event)
            if self.stopped.is_set():
                return
        if not more:
            await self._finish_streams()
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _event(self, event: Event) -> None:
        if event.data is None:
            await self._emit(event.encode())  # comments and keep-alives pass as they are
            return
        if event.data.strip() == "[DONE]":
            await self._finish_streams()
            await self._emit(event.encode())
            return
        try:
            chunk = json.loads(event.data)
        except (ValueError, RecursionError):
            self.guard.note_skip("malformed")
            if self.settings.fail_mode == "open":
                logger.warning("passing an event whose data is not JSON (fail mode open)")
                await self._emit(event.encode())
            else:
                logger.warning("dropping an event whose data is not JSON (fail mode closed)")
            return
        if isinstance(chunk, dict) and str(chunk.get("type", "")).startswith("response."):
            await self._responses_event(chunk)
            return
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list) or not chunk["choices"]:
            await self._emit(event.encode())  # usage chunks, errors, other objects
            return
        await self._chat_chunk(chunk, event)

    # -- the Responses API's events --------------------------------------------------------

    async def _responses_event(self, event: dict[str, Any]) -> None:
        """Guard response.output_text.delta per content part; put the released text into the
        done events and the final response; renumber events, since held-back deltas are dropped."""
        kind = event["type"]
        if kind == "response.created" and isinstance(event.get("response"), dict):
            self.response_object = event["response"]
        part = (event.get("item_id"), event.get("output_index"), event.get("content_index"))
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            stream = self._part_stream(part)
            release = await stream.feed(event["delta"])
            if release.blocked:
                await self._incomplete()
            self.released_by_part[part] = self.released_by_part.get(part, "") + release.text
            if not release.text:
                return
            event["delta"] = release.text
        elif kind == "response.output_text.done":
            stream = self._part_stream(part)
            release = await stream.finish()
            if release.blocked:
                await self._incomplete()
            if release.text:
                self.released_by_part[part] = self.released_by_part.get(part, "") + release.text
                await self._emit_response_event({**event, "type": "response.output_text.delta",
                                                 "delta": release.text})
                event = {k: v for k, v in event.items() if k != "delta"}
            event["text"] = self.released_by_part.get(part, "")
        else:
            self._replace_released_texts(event)
        await self._emit_response_event(event)

    def _part_stream(self, part: tuple[Any, Any, Any]) -> GuardedStream:
        stream = self.streams_by_part.get(part)
        if stream is None:
            stream = self.streams_by_part[part] = GuardedStream(self.guard)
        return stream

    def _replace_released_texts(self, event: dict[str, Any]) -> None:
        """Done and completed events repeat the whole text: give them the released text."""
        released = {(item_id, content_index): text for (item_id, _, content_index), text
                    in self.released_by_part.items()}
        if isinstance(event.get("part"), dict) and "text" in event["part"]:
            event["part"]["text"] = released.get((event.get("item_id"), event.get("content_index")),
                                                 event["part"]["text"])
        items = [event["item"]] if isinstance(event.get("item"), dict) else []
        if isinstance(event.get("response"), dict) and isinstance(event["response"].get("output"), list):
            items += [i for i in event["response"]["output"] if isinstance(i, dict)]
        for item in items:
            for index, content in enumerate(item.get("content") or []):
                if isinstance(content, dict) and (item.get("id"), index) in released:
                    content["text"] = released[(item.get("id"), index)]

    async def _incomplete(self) -> None:
        """End a Responses stream the way that API reports a filtered answer, and stop the app."""
        response = {**self.response_object, "status": "incomplete",
                    "incomplete_details": {"reason": "content_filter"}}
        await self._emit_response_event({"type": "response.incomplete", "response": response})
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        self.stopped.set()
        raise _Stopped

    async def _emit_response_event(self, event: dict[str, Any]) -> None:
        event["sequence_number"] = self.sequence
        self.sequence += 1
        await self._emit(encode_data(_dumps(event), event=event["type"]))

    async def _chat_chunk(self, chunk: dict[str, Any], event: Event) -> None:
        keep: list[dict[str, Any]] = []
        for choice in chunk["choices"]:
            if not isinstance(choice, dict):
                keep.append(choice)
                continue
            index = choice.get("index", 0)
            if not isinstance(index, int):  # malformed: still guarded, as choice 0
                index = 0
            stream = self.streams.get(index) or self.streams.setdefault(index, GuardedStream(self.guard))
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else None
            holder, key = (delta, "content") if delta is not None else (choice, "text")
            content = holder.get(key)
            if isinstance(content, str) and content:
                release = await stream.feed(content)
                if release.blocked:
                    await self._block(chunk, index)  # raises _Stopped
                holder[key] = release.text
            if choice.get("finish_reason") is not None:
                await self._flush_choice(chunk, index, holder, key)
            if _carries_something(choice, holder, key):
                keep.append(choice)
        if keep:
            await self._emit(encode_data(_dumps({**chunk, "choices": keep})))

    async def _flush_choice(self, chunk: dict[str, Any], index: int, holder: dict[str, Any], key: str) -> None:
        """Before a choice's finish_reason, send what its stream still holds, in a chunk of its
        own: clients drop content that shares a chunk with the finish_reason."""
        release = await self.streams[index].finish()
        if release.blocked:
            await self._block(chunk, index)  # raises _Stopped
        text = (holder.get(key) or "") + release.text
        if key in holder:
            holder[key] = ""
        if text:
            await self._emit(encode_data(_dumps(_content_chunk(chunk, index, key, text))))

    async def _finish_streams(self) -> None:
        """The body ended (or [DONE] came) with choices still holding text: release it."""
        for index, stream in list(self.streams.items()):
            if stream.finished:
                continue
            release = await stream.finish()
            if release.text:
                template = {"object": "chat.completion.chunk", "choices": []}
                await self._emit(encode_data(_dumps(_content_chunk(template, index, "content", release.text))))

    async def _block(self, chunk: dict[str, Any], index: int) -> None:
        """End the stream as clients expect: an empty delta with finish_reason content_filter,
        the usage chunk if one was asked for, then [DONE]; and stop the app. (The app's usage is
        never reached once it is stopped: the usage chunk carries zeros, so that clients waiting
        for one finish normally.)"""
        delta_key = "delta" if any(isinstance(c, dict) and "delta" in c for c in chunk["choices"]) else None
        choice: dict[str, Any] = {"index": index, "finish_reason": "content_filter"}
        if delta_key:
            choice["delta"] = {}
        else:
            choice["text"] = ""
        await self._emit(encode_data(_dumps({**chunk, "choices": [choice]})))
        if self._wants_usage():
            usage = {k: v for k, v in chunk.items() if k in ("id", "object", "created", "model")}
            usage.update(choices=[], usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
            await self._emit(encode_data(json.dumps(usage)))
        await self._emit(encode_data("[DONE]"))
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        self.stopped.set()
        raise _Stopped

    def _wants_usage(self) -> bool:
        try:
            request = json.loads(self.request_body or b"{}")
        except ValueError:
            return False
        options = request.get("stream_options") if isinstance(request, dict) else None
        return isinstance(options, dict) and bool(options.get("include_usage"))

    async def _emit(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})


def _carries_something(choice: dict[str, Any], holder: dict[str, Any], key: str) -> bool:
    """Does a choice still say anything once its held-back content is taken out?"""
    if holder.get(key):
        return True
    if choice.get("finish_reason") is not None or choice.get("logprobs"):
        return True
    delta = choice.get("delta")
    return isinstance(delta, dict) and any(k != "content" and v is not None for k, v in delta.items())


def _content_chunk(chunk: dict[str, Any], index: int, key: str, text: str) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "finish_reason": None}
    if key == "content":
        choice["delta"] = {"content": text}
    else:
        choice["text"] = text
    return {**chunk, "choices": [choice]}


def _answer_fields(payload: Any) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """Where answer texts sit: (choice, holder, key) for choices[].message.content (chat),
    choices[].text (legacy completions) and output[].content[].text (Responses API, whose
    `choice` is the response itself)."""
    fields: list[tuple[dict[str, Any], dict[str, Any], str]] = []
    if isinstance(payload, dict) and payload.get("object") == "response" and isinstance(payload.get("output"), list):
        for item in payload["output"]:
            for content in (item.get("content") or []) if isinstance(item, dict) else []:
                if isinstance(content, dict) and content.get("type") == "output_text" \
                        and isinstance(content.get("text"), str):
                    fields.append((payload, content, "text"))
        return fields
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
        return fields
    for choice in payload["choices"]:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            fields.append((choice, message, "content"))
        elif isinstance(choice.get("text"), str):
            fields.append((choice, choice, "text"))
    return fields


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
