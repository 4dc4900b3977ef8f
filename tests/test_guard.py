"""Guard behaviour when a check cannot run, and its synchronous and asynchronous faces."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.support.redis_admin import admin_client, command_calls
from textguard import CheckSkipped, Guard, Settings
from textguard._redis import SyncClient, connect_async
from textguard.guard import SKIP_LOG_INTERVAL_S


def test_unreachable_redis_fails_open_or_closed_and_counts(settings: Settings) -> None:
    down = settings.replace(redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.2)
    guard = Guard(down)
    opened = guard.check_sync("一段回答", fail_mode="open")
    assert (opened.verdict, opened.text, opened.skipped) == ("allow", "一段回答", "redis")
    closed = guard.check_sync("一段回答", fail_mode="closed")
    assert closed.verdict == "block" and closed.skipped == "redis" and "一段回答" not in closed.text
    with pytest.raises(CheckSkipped):
        guard.check_sync("一段回答", fail_mode="raise")
    assert guard.skipped["redis"] == 3
    assert Guard(down.replace(fail_mode="closed")).check_sync("x").verdict == "block"
    guard.close()


def test_spent_budget_is_a_skip(indexed: Settings) -> None:
    guard = Guard(indexed)
    verdict = guard.check_sync("这是一段足够长的回答，" * 50, budget_ms=0.0, fail_mode="open")
    assert verdict.skipped == "timeout" and verdict.verdict == "allow"
    assert guard.skipped["timeout"] == 1
    guard.close()


def connections_received(client: SyncClient) -> int:
    """How many connections the Redis server (every node of a cluster) has accepted so far."""
    stats: Any = client.info("stats")
    nodes = stats.values() if "total_connections_received" not in stats else [stats]
    return sum(int(node["total_connections_received"]) for node in nodes)


def test_checks_over_budget_are_skipped_without_dropping_connections(indexed: Settings,
                                                                     corpus_records: list[dict]) -> None:
    """A check whose budget is spent before a Redis round trip (by its CPU work, or waiting for
    the processor under load) is skipped without starting it. Cancelled in the middle of one
    instead, redis-py would drop the connection, and the next check would pay for a new one;
    and through redis-py's own write, the budget was not noticed at all (the check went on)."""
    copied = corpus_records[0]["text"][:3000]

    async def over_budget_then_normal() -> list[str | None]:
        guard = Guard(indexed)
        admin = admin_client(indexed)
        try:
            assert (await guard.check(copied, fail_mode="raise")).verdict == "block"  # connected and warm
            before = connections_received(admin)
            skips = []
            for _ in range(20):
                skips.append((await guard.check(copied, budget_ms=0.0, fail_mode="open")).skipped)
                assert (await guard.check(copied, fail_mode="raise")).verdict == "block"
            assert connections_received(admin) - before <= 3  # this test's own, and the pool growing by one
            return skips
        finally:
            admin.close()
            await guard.aclose()

    assert asyncio.run(over_budget_then_normal()) == ["timeout"] * 20


def test_a_spent_timeout_stops_a_redis_command(tmp_path: Path) -> None:
    """redis-py writes each command through asyncio.wait_for, which on Python 3.11 drops a
    cancellation that arrives as the write completes; our connections to one Redis server (here
    the embedded one) write without it."""

    async def ping_with_no_time_left() -> bool:
        client = connect_async(Settings(home=tmp_path))
        try:
            await client.ping()
            async with asyncio.timeout(0):
                await client.ping()
            return False
        except TimeoutError:
            return True
        finally:
            await client.aclose()

    assert asyncio.run(ping_with_no_time_left())


def test_a_flood_of_skips_is_counted_in_full_and_logged_in_summary(indexed: Settings,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard(indexed)

    async def flood() -> None:
        for _ in range(50):
            await guard.check("这是一段足够长的回答，" * 5, budget_ms=0.0, fail_mode="open")
        guard._skip_log._last["timeout"] -= SKIP_LOG_INTERVAL_S  # as if the interval had passed
        await guard.check("这是一段足够长的回答，" * 5, budget_ms=0.0, fail_mode="open")
        await guard.aclose()

    with caplog.at_level(logging.WARNING, logger="textguard.guard"):
        asyncio.run(flood())
    lines = [r.getMessage() for r in caplog.records if "check skipped" in r.getMessage()]
    assert guard.skipped["timeout"] == 51
    assert len(lines) == 2 and "(and 49 more since the last report)" in lines[1], lines


def test_async_checks_run_concurrently_on_one_guard(indexed: Settings, corpus_records: list[dict]) -> None:
    texts = [r["text"][:600] for r in corpus_records[:8]] + ["无关的文字，说点别的。" * 20] * 4

    async def main() -> list[str]:
        guard = Guard(indexed)
        try:
            verdicts = await asyncio.gather(*(guard.check(t, fail_mode="raise") for t in texts))
        finally:
            await guard.aclose()
        return [v.verdict for v in verdicts]

    verdicts = asyncio.run(main())
    assert all(v != "allow" for v in verdicts[:8]) and verdicts[8:] == ["allow"] * 4


def test_more_concurrent_checks_than_pooled_connections_all_run(indexed: Settings, corpus_records: list[dict]) -> None:
    """A burst beyond the pool's 64 connections waits for connections instead of skipping."""
    copied = "我背一段给你听：" + corpus_records[0]["text"][500:700] + "就是这样。"

    async def burst() -> tuple[str, list[str]]:
        guard = Guard(indexed)
        try:
            alone = await guard.check(copied, fail_mode="raise")
            verdicts = await asyncio.gather(*(guard.check(copied, fail_mode="raise") for _ in range(150)))
            return alone.verdict, [v.verdict for v in verdicts]
        finally:
            await guard.aclose()

    alone, together = asyncio.run(burst())
    assert alone != "allow" and together == [alone] * 150


def hmget_calls(client: SyncClient) -> int:
    return command_calls(client.info("commandstats"), "hmget")


def test_candidates_verified_in_vain_before_are_verified_again_without_a_fetch(
        indexed: Settings, negative_records: list[dict]) -> None:
    """Clean answers share common phrases with a few stored works by chance; verifying such a
    candidate needs its text, which the guard keeps. Found nothing in it, the check has nothing
    to confirm with Redis either: the only round trip left is the lookup."""
    answers = [r["text"][:1500] for r in negative_records[:60]]
    guard = Guard(indexed)
    admin = admin_client(indexed)
    try:
        before = hmget_calls(admin)
        first = [guard.check_sync(text, fail_mode="raise") for text in answers]
        between = hmget_calls(admin)
        again = [guard.check_sync(text, fail_mode="raise") for text in answers]
        assert between > before  # some chance candidates were fetched and verified...
        assert hmget_calls(admin) == between  # ...and none needed Redis the second time
        assert [v.verdict for v in again] == [v.verdict for v in first]
    finally:
        admin.close()
        guard.close()
