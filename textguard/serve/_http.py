"""HTTP pieces every served app shares: OpenAI-style errors and a request-body size limit."""

from __future__ import annotations

import json

from textguard._asgi import ASGIApp, Message, Receive, Scope, Send


def error_body(status: int, message: str, code: str) -> bytes:
    """An OpenAI-style error object, which the official clients turn into a typed exception."""
    kind = "invalid_request_error" if status < 500 else "upstream_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


async def send_error(send: Send, status: int, message: str, code: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = error_body(status, message, code)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


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
        for name, value in scope["headers"]:
            if name.lower() == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
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
