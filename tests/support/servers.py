"""Real uvicorn servers on 127.0.0.1, run in a thread for the duration of a test."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

import uvicorn


@contextlib.contextmanager
def serve(app: Any, lifespan: str = "off") -> Iterator[str]:
    """Serve `app` on a free port of 127.0.0.1; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan=lifespan)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:  # wait for the condition "listening", bounded
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def spawn(args: list[str], env: dict[str, str],
          ready: str = "listening on ") -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run `python -m textguard ARGS` as a process of its own until it prints a line containing
    `ready` and a URL; yields the process and that URL, and stops it (SIGINT) afterwards.

    Its log (stderr) goes to a file, not a pipe: a pipe nobody reads fills up under a flood of
    log lines and then blocks the process in the middle of its work."""
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen([sys.executable, "-m", "textguard", *args], env={**os.environ, **env},
                                   stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            url = _wait_for_line(process, ready, log, deadline=time.monotonic() + 60)
            yield process, url
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            assert process.stdout is not None
            process.stdout.close()


def read_until(process: subprocess.Popen[str], text: str, timeout: float = 60) -> str:
    """What `process` prints (stdout) up to and including the first line holding `text`. (Read
    in a thread: select() cannot see lines already in the text stream's buffer.)"""
    assert process.stdout is not None
    stdout = process.stdout
    seen: list[str] = []

    def read() -> None:
        for line in stdout:
            seen.append(line)
            if text in line:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive() or not seen or text not in seen[-1]:
        raise RuntimeError(f"no line with {text!r} from {process.args}; got {''.join(seen)!r}")
    return "".join(seen)


def _wait_for_line(process: subprocess.Popen[str], ready: str, log: IO[str], deadline: float) -> str:
    assert process.stdout is not None
    seen = []
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        line = process.stdout.readline()
        if not line:  # the process ended
            break
        seen.append(line)
        if ready in line:
            return re.search(r"http://[0-9.]+:[0-9]+", line.split(ready, 1)[1]).group(0)  # type: ignore[union-attr]
    process.kill()
    process.wait()
    log.seek(0)
    stderr = log.read()
    raise RuntimeError(f"textguard {process.args} did not get ready; stdout: {''.join(seen)!r}; "
                       f"stderr: {stderr[-2000:]}")


@contextlib.contextmanager
def program(args: list[str], env: dict[str, str], ready_url: str, timeout: float = 120) -> Iterator[None]:
    """Run another program (a real LiteLLM proxy, say) until `ready_url` answers 200, and stop it
    afterwards; its output goes to a file, shown if it never gets ready."""
    import httpx2

    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(args, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if httpx2.get(ready_url, timeout=2).status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"{args[0]} did not get ready: {log.read()[-3000:]}")
                time.sleep(0.2)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
