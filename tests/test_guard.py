"""Guard behaviour when a check cannot run, and its synchronous and asynchronous faces."""

from __future__ import annotations

import asyncio
import logging

import pytest

from textguard import CheckSkipped, Guard, Settings
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
