"""`Forwarder`: the reverse proxy's core, a pure ASGI app that relays requests to the upstream.

One `_Exchange` per request. The request body streams to the upstream as it arrives and the
answer streams back (TextGuardMiddleware, wrapped around the app, guards it on the way). The
shared upstream client keeps no cookies, so one caller's session never leaks into another's.
Failures become OpenAI-style errors: 502 when the upstream cannot be reached or breaks, 504 when
it is too slow, and, once a stream has begun, a final `error` event that clients raise on. When
the client goes away (or the guard ends a blocked stream) the upstream response is closed, so the
upstream sees its generation cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx2
from starlette.datastructures import Headers

from textguard._asgi import Message, Receive, Scope, Send
from textguard.serve._http import error_body, send_error
from textguard.settings import Settings

__all__ = ["Forwarder"]

logger = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are never relayed; `host`
# names the proxy, not the upstream.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                         b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"host"})
_CLIENT_DEFAULTS = ("accept", "accept-encoding", "user-agent")  # headers only the caller may set


class Forwarder:
    """Relay every request it is given to `settings.upstream_url` (a base URL; a trailing /v1 is
    allowed). `open()` and `aclose()` bracket its life (the app's lifespan)."""

    def __init__(self, settings: Settings) -> None:
        if not settings.upstream_url:
            raise ValueError("Forwarder needs settings.upstream_url")
        root = settings.upstream_url.rstrip("/")
        self.upstream = root[:-3] if root.endswith("/v1") else root
        self.settings = settings
        self._client: httpx2.AsyncClient | None = None

    async def open(self) -> None:
        s = self.settings
        timeout = httpx2.Timeout(connect=s.upstream_connect_timeout_s, read=s.upstream_read_timeout_s,
                                 write=s.upstream_read_timeout_s, pool=s.upstream_connect_timeout_s)
        no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        self._client = httpx2.AsyncClient(timeout=timeout, cookies=no_cookies, follow_redirects=False,
                                          trust_env=False, limits=httpx2.Limits(max_connections=1000,
                                                                                max_keepalive_connections=100))
        for name in _CLIENT_DEFAULTS:
            del self._client.headers[name]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx2.AsyncClient:
        if self._client is None:
            raise RuntimeError("Forwarder used before open() (is the app's lifespan running?)")
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await _Exchange(self, scope, receive, send).run()


class _Exchange:
    """One request relayed and its answer relayed back."""

    def __init__(self, forwarder: Forwarder, scope: Scope, receive: Receive, send: Send) -> None:
        self.forwarder = forwarder
        self.scope = scope
        self.receive = receive
        self.send = send
        self.disconnected = False
        self.body_sent = asyncio.Event()
        self.answer_handed_on = False  # the last message of the answer has gone to send()

    async def run(self) -> None:
        """Relay, and stop (closing the upstream request) as soon as the client is gone."""
        exchange = asyncio.ensure_future(self._exchange())
        watch = asyncio.ensure_future(self._wait_for_disconnect())
        try:
            await asyncio.wait({exchange, watch}, return_when=asyncio.FIRST_COMPLETED)
            if self.answer_handed_on and not exchange.done():
                # Once a whole answer is out, servers report every receive() as a disconnect.
                # What the send still does then (the guard's audit write) is not cut short:
                # cancelling it would lose the entry and the Redis connection it was using.
                await asyncio.wait({exchange})
        finally:
            for task in (exchange, watch):
                task.cancel()
            await asyncio.gather(exchange, watch, return_exceptions=True)
        if not exchange.cancelled() and (error := exchange.exception()) is not None:
            raise error

    async def _exchange(self) -> None:
        try:
            response = await self.forwarder.client.send(self._request(), stream=True)
        except _ClientGone:
            return
        except httpx2.TimeoutException as exc:
            await self._fail(504, f"the upstream model server did not answer in time ({type(exc).__name__})",
                             "upstream_timeout")
            return
        except httpx2.TransportError as exc:
            await self._fail(502, f"cannot reach the upstream model server ({type(exc).__name__}: {exc})",
                             "upstream_unreachable")
            return
        try:
            if _is_json(response):
                await self._relay_whole(response)
            else:
                await self._relay_stream(response)
        finally:
            await response.aclose()

    def _request(self) -> httpx2.Request:
        scope = self.scope
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        url = self.forwarder.upstream + path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP and not self._is_admin(k, v)]
        given = Headers(scope=scope)
        has_body = scope["method"] not in ("GET", "HEAD", "OPTIONS", "DELETE") or (
            "content-length" in given or "transfer-encoding" in given)
        if not has_body:
            self.body_sent.set()
        return self.forwarder.client.build_request(scope["method"], url, headers=headers,
                                                   content=self._body() if has_body else None)

    def _is_admin(self, name: bytes, value: bytes) -> bool:
        """The admin token is for textguard alone: never hand it to the upstream."""
        token = self.forwarder.settings.admin_token
        return bool(token) and name.lower() == b"authorization" and hmac.compare_digest(
            value.strip(), b"Bearer " + (token or "").encode())

    async def _body(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise _ClientGone
            yield message.get("body", b"")
            if not message.get("more_body", False):
                self.body_sent.set()
                return

    async def _fail(self, status: int, message: str, code: str) -> None:
        logger.warning("upstream %s %s: %s", self.scope["method"], self.scope["path"], message)
        if not self.disconnected:
            await send_error(self.send, status, message, code)

    def _start(self, response: httpx2.Response) -> Message:
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
        return {"type": "http.response.start", "status": response.status_code, "headers": headers}

    async def _relay_whole(self, response: httpx2.Response) -> None:
        """JSON answers are read whole first: the client cannot use half of one, and an upstream
        that breaks midway still gets a clean 502."""
        try:
            body = b"".join([chunk async for chunk in response.aiter_raw()])
        except httpx2.TimeoutException:
            await self._fail(504, "the upstream model server stopped answering", "upstream_timeout")
            return
        except httpx2.TransportError as exc:
            await self._fail(502, f"the upstream model server broke off its answer ({type(exc).__name__})",
                             "upstream_broken")
            return
        await self.send(self._start(response))
        self.answer_handed_on = True
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _relay_stream(self, response: httpx2.Response) -> None:
        event_stream = response.headers.get("content-type", "").startswith("text/event-stream")
        try:
            await self.send(self._start(response))
            async for chunk in response.aiter_raw():
                await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError:  # the client went away (or the guard ended the stream): stop relaying
            return
        except (httpx2.TransportError, httpx2.StreamError) as exc:
            logger.warning("upstream broke off a streamed answer to %s: %s", self.scope["path"], type(exc).__name__)
            if not event_stream:
                raise  # nothing in-band can say so: the connection is dropped, which clients notice
            error = error_body(502, "the upstream model server broke off its answer", "upstream_broken")
            await self._send_final(b"data: " + error + b"\n\n")
            return
        await self._send_final(b"")

    async def _send_final(self, body: bytes) -> None:
        self.answer_handed_on = True
        with contextlib.suppress(OSError):  # the client is gone: nothing to finish
            await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _wait_for_disconnect(self) -> None:
        await self.body_sent.wait()  # until then the request body is being read from receive()
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return


class _ClientGone(Exception):
    """The client disconnected while its request body was still being relayed."""


def _is_json(response: httpx2.Response) -> bool:
    return response.headers.get("content-type", "").startswith("application/json")
