"""HTTP pieces every served app shares: OpenAI-style errors, a request-body size limit, the
headers textguard adds, and reading and rewriting an ASGI message's headers.

Headers go through Starlette's `Headers`/`MutableHeaders`. Response header names are lowered
first: the ASGI spec asks apps for lower case, but not every app obliges.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from starlette.datastructures import Headers, MutableHeaders

from textguard._asgi import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "REQUEST_ID_HEADER",
    "REWRITE_STYLE_HEADER",
    "SKIPPED_HEADER",
    "VERDICT_HEADER",
    "BodyLimit",
    "RequestTooLarge",
    "compact_json",
    "decoder",
    "error_body",
    "is_json",
    "request_id",
    "response_headers",
    "send_error",
    "with_headers",
]

VERDICT_HEADER = "x-textguard-verdict"
SKIPPED_HEADER = "x-textguard-skipped"
REQUEST_ID_HEADER = "x-request-id"
REWRITE_STYLE_HEADER = "x-textguard-rewrite-style"  # asked for by a request; done, on a whole answer


def error_body(status: int, message: str, code: str) -> bytes:
    """An OpenAI-style error object, which the official clients turn into a typed exception."""
    kind = "invalid_request_error" if status < 500 else "upstream_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


async def send_error(send: Send, status: int, message: str, code: str,
                     headers: Mapping[str, str] | None = None) -> None:
    body = error_body(status, message, code)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def response_headers(start: Message) -> Headers:
    """The headers of an `http.response.start` message, names lowered."""
    return Headers(raw=[(name.lower(), value) for name, value in start.get("headers", [])])


def with_headers(start: Message, headers: Mapping[str, str], drop: tuple[str, ...] = ()) -> Message:
    """A copy of `start` with `headers` set (replacing any of the same name) and `drop` removed."""
    message = {**start, "headers": list(response_headers(start).raw)}
    mutable = MutableHeaders(scope=message)
    for name in drop:
        del mutable[name]
    for name, value in headers.items():
        mutable[name] = value
    return message


def compact_json(payload: Any) -> str:
    """JSON as compact as an answer's own; escaped (still valid JSON) if it holds lone
    surrogates, which an upstream may send escaped and UTF-8 cannot carry."""
    text = json.dumps(payload, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = json.dumps(payload)
    return text


def is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in ("application/json", "text/json") or media_type.endswith("+json")


def request_id(scope: Scope) -> str:
    """The caller's X-Request-ID if it is a sane one, else a new one."""
    given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
    if 0 < len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    return uuid.uuid4().hex


def decoder(encoding: str) -> Callable[[bytes], bytes]:
    """An incremental decoder for a Content-Encoding (whole bodies and streams alike)."""
    encoding = encoding.strip().lower()
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


class RequestTooLarge(Exception):
    """The request body passed the limit; the app turns this into a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


class BodyLimit:
    """Refuse request bodies over `max_bytes`: at once when Content-Length says so, otherwise
    when the body read so far passes the limit (RequestTooLarge raised from `receive`)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.max_bytes:
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await send_error(send, 413, str(RequestTooLarge(self.max_bytes)), "request_too_large")
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise RequestTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)
