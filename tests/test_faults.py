"""Faults of Redis while answers are guarded: a real redis-server process stopped mid-stream and
started again, paused (CLIENT PAUSE) and slowed (DEBUG SLEEP), under a real uvicorn. In every
case the request ends promptly, the skip is counted, fail mode closed lets no copy out, and the
same guard recovers when Redis is back. (Upstream faults and vanishing clients: test_proxy.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.chat import ask, collect
from tests.support.helpers import AFTER, BEFORE, longest_shared_run, to_document
from tests.support.llm_app import PAUSE, Recorder, create_app
from tests.support.redis_process import RedisProcess
from tests.support.servers import serve
from textguard import Corpus, Guard, Settings
from textguard.serve.middleware import TextGuardMiddleware


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("faulty-redis"))
    server.start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def faulty(redis_server: RedisProcess, corpus_records: list[dict], tmp_path_factory: pytest.TempPathFactory,
           ) -> Settings:
    settings = Settings(redis_url=redis_server.url, home=Path(tmp_path_factory.mktemp("faulty-home")),
                        index="faults", redis_timeout_s=0.3)
    with Corpus(settings) as corpus:
        corpus.add(to_document(r) for r in corpus_records if len(r["text"]) > 3000)
    return settings


@pytest.fixture
def running(redis_server: RedisProcess) -> Iterator[RedisProcess]:
    """The server, started again after the test if the test stopped it."""
    yield redis_server
    if redis_server.process is None:
        redis_server.start()
    redis_server.client().execute_command("CLIENT", "UNPAUSE")


def guarded(settings: Settings, mode: str, recorder: Recorder) -> tuple[Guard, Any]:
    guard = Guard(settings.replace(fail_mode=mode))
    return guard, serve(TextGuardMiddleware(create_app(recorder, delay=0.001), guard=guard))


def paused_stream(url: str, text: str, recorder: Recorder) -> tuple[threading.Thread, dict[str, Any]]:
    """A stream of `text` read in a thread, once the model has reached the PAUSE in it; the
    outcome (text, finish reasons) is filled in when the reader ends."""
    outcome: dict[str, Any] = {}

    def read() -> None:
        outcome["text"], outcome["reasons"], _ = collect(ask(url, text, stream=True))

    reader = threading.Thread(target=read)
    reader.start()
    assert recorder.paused.wait(10), "the stream did not reach its pause"
    return reader, outcome


def copy_is_rewritten(url: str, copied: str) -> bool:
    return "出自《" in ask(url, BEFORE + copied + AFTER).choices[0].message.content


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_stopped_mid_stream_then_back(faulty: Settings, running: RedisProcess, record: dict,
                                            negative_records: list[dict], mode: str) -> None:
    recorder = Recorder()
    guard, server = guarded(faulty, mode, recorder)
    clean, copied = negative_records[9]["text"][:200], record["text"][1000:1400]
    with server as url:
        reader, outcome = paused_stream(url, clean + PAUSE + copied + AFTER, recorder)
        running.stop()
        started = time.monotonic()
        recorder.release.set()
        reader.join(30)
        assert not reader.is_alive(), "the guarded stream hung with Redis down"
        assert time.monotonic() - started < 15
        assert guard.skipped["redis"] + guard.skipped["timeout"] >= 1
        if mode == "closed":
            assert outcome["reasons"] == ["content_filter"]
            assert longest_shared_run(outcome["text"], copied) <= 50, "a copy got out with fail mode closed"
        else:
            assert outcome["reasons"] == ["stop"] and outcome["text"] == clean + copied + AFTER

        running.start()
        assert copy_is_rewritten(url, copied[:120]), "the guard did not recover when Redis came back"
    guard.close()


def test_a_stream_waits_out_a_slow_redis_and_lets_no_copy_out(faulty: Settings, running: RedisProcess,
                                                              record: dict, negative_records: list[dict]) -> None:
    """Failing open, a Redis that is slow (busy for longer than its socket timeout), not gone, is
    asked again while the stream's text stays held: the copy is replaced and nothing is skipped."""
    recorder = Recorder()
    guard, server = guarded(faulty, "open", recorder)
    clean, copied = negative_records[9]["text"][:200], record["text"][1000:1200]  # under half the answer
    with server as url:
        reader, outcome = paused_stream(url, clean + PAUSE + copied + AFTER, recorder)
        sleeper = threading.Thread(target=lambda: running.client().execute_command("DEBUG", "SLEEP", "1.5"))
        sleeper.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _debug_sleeping(running):  # wait until Redis sleeps
            time.sleep(0.01)
        recorder.release.set()
        reader.join(30)
        sleeper.join(10)
    assert not reader.is_alive()
    assert outcome["reasons"] == ["stop"] and outcome["text"].startswith(clean) and outcome["text"].endswith(AFTER)
    assert f"出自《{record['work']}》" in outcome["text"] and longest_shared_run(outcome["text"], copied) <= 50
    assert not guard.skipped, guard.skipped
    guard.close()


@pytest.mark.parametrize("fault", ["pause", "sleep"])
@pytest.mark.parametrize("ceiling_ms", [5000, 300])
def test_a_paused_or_slow_redis_is_waited_for_up_to_the_ceiling(faulty: Settings, running: RedisProcess,
                                                                 record: dict, fault: str, ceiling_ms: int) -> None:
    """A Redis paused (CLIENT PAUSE, 1.5 s) or busy (DEBUG SLEEP, 1.5 s): the answer is held and
    checked once Redis answers, within the ceiling; past a shorter ceiling the fail mode decides
    (closed: nothing unchecked goes out), promptly."""
    recorder = Recorder()
    guard, server = guarded(faulty.replace(check_ceiling_ms=ceiling_ms), "closed", recorder)
    copied = record["text"][2000:2120]
    with server as url:
        assert copy_is_rewritten(url, copied)  # connections are open and warm
        admin = running.client()
        sleeper = None
        if fault == "pause":
            admin.execute_command("CLIENT", "PAUSE", "1500")
        else:
            sleeper = threading.Thread(target=lambda: running.client().execute_command("DEBUG", "SLEEP", "1.5"))
            sleeper.start()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not _debug_sleeping(running):  # wait until Redis sleeps
                time.sleep(0.01)
        started = time.monotonic()
        response = httpx2.post(url + "/v1/chat/completions", timeout=30,
                               json={"messages": [{"role": "user", "content": BEFORE + copied + AFTER}]})
        elapsed = time.monotonic() - started
        content = response.json()["choices"][0]["message"]["content"]
        if ceiling_ms > 1500:  # waited for, and checked
            assert elapsed < 4.0, f"a check waited {elapsed:.2f} s for a Redis paused 1.5 s"
            assert "x-textguard-skipped" not in response.headers and f"出自《{record['work']}》" in content
            assert not guard.skipped
        else:  # the ceiling passed: closed lets nothing unchecked out
            assert elapsed < 1.2, f"a check waited {elapsed:.2f} s past a ceiling of {ceiling_ms} ms"
            assert response.headers["x-textguard-skipped"] in ("timeout", "redis")
            assert response.json()["choices"][0]["finish_reason"] == "content_filter"
        if fault == "pause":
            admin.execute_command("CLIENT", "UNPAUSE")
        elif sleeper is not None:
            sleeper.join(10)
        assert copy_is_rewritten(url, copied), "the guard did not recover"
    guard.close()


def _debug_sleeping(server: RedisProcess) -> bool:
    """Is the server busy (not answering a PING within 50 ms)?"""
    try:
        server.client(socket_timeout=0.05).ping()
    except Exception:
        return True
    return False
