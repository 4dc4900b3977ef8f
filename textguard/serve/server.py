"""The served app: the check API, and (given an upstream) the guarded reverse proxy.

    BodyLimit ─► TextGuardMiddleware ─► Starlette routes: check API, /v1/* ─► Forwarder ─► upstream

Redis connections, jieba and the upstream client start in the lifespan, once, not per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from textguard import telemetry
from textguard._asgi import ASGIApp
from textguard.guard import Guard
from textguard.paraphrase import Paraphraser
from textguard.serve._http import BodyLimit, RequestTooLarge
from textguard.serve.api import CheckAPI, error
from textguard.serve.middleware import TextGuardMiddleware
from textguard.serve.proxy import Forwarder
from textguard.settings import Settings

__all__ = ["Server", "create_app", "run_on_server_loop", "serve", "stop_on_signals", "uvicorn_config"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def create_app(settings: Settings, *, guard: Guard | None = None) -> ASGIApp:
    """The app for `settings`: a guarded proxy when `settings.upstream_url` is set, else the
    check API alone."""
    guard = guard or Guard(settings)
    forwarder = Forwarder(settings) if settings.upstream_url else None
    api = CheckAPI(guard, Paraphraser(guard, app=forwarder))  # the check API paraphrases through the upstream
    async def metrics(request: Request) -> Response:
        body, content_type = telemetry.exposition()
        return Response(body, media_type=content_type)

    routes = [*api.routes(), Route("/metrics", metrics, methods=["GET"])]
    if forwarder is not None:
        routes.append(Route("/v1/{path:path}", forwarder))  # an ASGI app: every method passes
        routes.append(Route("/api/{path:path}", forwarder))  # Ollama's native API

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await guard.start()
        if forwarder is not None:
            await forwarder.open()
        try:
            yield
        finally:
            if forwarder is not None:
                await forwarder.aclose()
            await api.aclose()
            await guard.aclose()

    async def too_large(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestTooLarge)
        return error(413, str(exc), "request_too_large")

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={RequestTooLarge: too_large})
    return BodyLimit(TextGuardMiddleware(app, guard=guard), settings.max_request_bytes)


def uvicorn_config(app: ASGIApp, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn settings for a served app: the upstream's own Server and Date headers pass
    through the proxy, so uvicorn adds none of its own."""
    options: dict[str, Any] = {"host": settings.host, "port": settings.port, "lifespan": "on",
                               "server_header": False, "date_header": settings.upstream_url is None,
                               "log_level": "warning", "timeout_graceful_shutdown": 5}
    options.update(overrides)
    return uvicorn.Config(app, **options)


class Server(uvicorn.Server):
    """uvicorn's server, which says where it listens once it does (`on_ready(url)`) and leaves
    signals to `stop_on_signals`, so that several servers in one process stop together."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[str], None] | None = None) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started:
            return
        # What start-up loaded (modules, jieba's dictionary, the lifespan's clients) lives as long
        # as the process. Frozen, it is no longer walked by every full collection of the garbage
        # collector, which took 20-50 ms in a textguard process (0.2 ms frozen) and stalled every
        # request in flight meanwhile.
        gc.freeze()
        if self.on_ready is not None:
            self.on_ready(self.url)

    @property
    def url(self) -> str:
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"


@contextlib.contextmanager
def stop_on_signals(servers: list[Server]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM make every server in `servers` (a list that may still
    grow) finish its requests and exit."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def run_on_server_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop where it is installed, as uvicorn itself would: each Redis and
    upstream round trip costs the proxy markedly less CPU than on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # not on Windows
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def serve(settings: Settings, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve `create_app(settings)` on settings.host:port until SIGINT or SIGTERM."""

    async def main() -> None:
        server = Server(uvicorn_config(create_app(settings), settings), on_ready=on_ready)
        with stop_on_signals([server]):
            await server.serve()

    run_on_server_loop(main())
