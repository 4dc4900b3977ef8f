"""The streaming guard: the leakage bound, and clean answers passing unchanged."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.helpers import AFTER, BEFORE, longest_shared_run
from tests.support.redis_admin import command_calls
from textguard import Guard, Settings
from textguard.policy import Verdict
from textguard.stream import GuardedStream


async def stream_through(guard: Guard, text: str, cuts: list[int]) -> tuple[str, bool]:
    stream = GuardedStream(guard)
    released: list[str] = []
    position = 0
    for cut in [*sorted(set(cuts)), len(text)]:
        if cut <= position:
            continue
        release = await stream.feed(text[position:cut])
        released.append(release.text)
        position = cut
        if release.blocked:
            return "".join(released), True
    final = await stream.finish()
    released.append(final.text)
    return "".join(released), final.blocked


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_released_stream_never_holds_more_than_q_of_a_work(indexed: Settings, corpus_records: list[dict],
                                                           negative_records: list[dict], data: st.DataObject) -> None:
    """One passage, or two of different works back to back (the second starts while the first,
    already flagged, is still being replaced)."""
    long_records = [r for r in corpus_records if len(r["text"]) > 3000]
    first = data.draw(st.sampled_from(long_records))
    others = [r for r in long_records if r["work"] != first["work"]]
    records = [first, *data.draw(st.lists(st.sampled_from(others), max_size=1))]
    host = data.draw(st.sampled_from([r["text"] for r in negative_records if 200 < len(r["text"]) < 1500]))
    passages = []
    for record in records:
        length = data.draw(st.integers(20, 600))
        start = data.draw(st.integers(0, len(record["text"]) - length))
        passages.append(record["text"][start:start + length])
    at = data.draw(st.integers(0, len(host)))
    text = host[:at] + "".join(passages) + host[at:]
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=len(text) // 2))

    async def run() -> tuple[str, bool]:
        # Failing open, as by default: a check that overruns its budget on a busy machine keeps
        # its text held rather than passing it.
        guard = Guard(indexed.replace(fail_mode="open"))
        try:
            return await stream_through(guard, text, cuts)
        finally:
            await guard.aclose()

    released, _ = asyncio.run(run())
    for passage in passages:
        assert longest_shared_run(released, passage) <= indexed.quote_chars


def test_clean_answers_pass_unchanged_whatever_the_chunking(indexed: Settings, negative_records: list[dict]) -> None:
    async def run() -> None:
        guard = Guard(indexed)
        try:
            for index, record in enumerate(negative_records[:40]):
                text = record["text"]
                step = 1 + index % 7
                released, blocked = await stream_through(guard, text, list(range(0, len(text), step)))
                assert (released, blocked) == (text, False)
        finally:
            await guard.aclose()

    asyncio.run(run())


def test_copy_is_replaced_by_the_notice_and_the_answer_goes_on(indexed: Settings,
                                                                corpus_records: list[dict]) -> None:
    record = next(r for r in corpus_records if len(r["text"]) > 3000)
    copied = record["text"][1000:1100]

    async def run() -> tuple[str, bool]:
        guard = Guard(indexed)
        try:
            return await stream_through(guard, BEFORE + copied + AFTER, list(range(0, 500, 2)))
        finally:
            await guard.aclose()

    released, blocked = asyncio.run(run())
    assert not blocked
    assert released.startswith(BEFORE) and released.endswith(AFTER)
    assert f"出自《{record['work']}》" in released
    assert longest_shared_run(released, copied) <= indexed.quote_chars


COPIED_ANSWER_BEFORE = "我来回答这个问题，先说说背景，再看原文的一段话，最后谈谈我的看法。这段话是这样写的："


def test_a_check_past_its_budget_keeps_the_text_held(indexed: Settings, corpus_records: list[dict]) -> None:
    """With a budget every check overruns, the stream waits for each check instead of releasing
    unchecked text: the copy is still replaced, nothing is skipped, and the waits are counted."""
    record = next(r for r in corpus_records if len(r["text"]) > 3000)
    copied = record["text"][2000:2300]

    async def run() -> tuple[str, GuardedStream, Guard]:
        guard = Guard(indexed.replace(check_timeout_ms=0.0, fail_mode="open"))
        try:
            stream = GuardedStream(guard)
            text = COPIED_ANSWER_BEFORE + copied
            released = [(await stream.feed(text[i:i + 3])).text for i in range(0, len(text), 3)]
            released.append((await stream.finish()).text)
            return "".join(released), stream, guard
        finally:
            await guard.aclose()

    released, stream, guard = asyncio.run(run())
    assert f"出自《{record['work']}》" in released
    assert longest_shared_run(released, copied) <= indexed.quote_chars
    assert not guard.skipped and stream.skipped is None
    assert len(stream.waits_ms) >= 5 and all(wait > 0 for wait in stream.waits_ms)


def test_past_the_ceiling_the_fail_mode_decides(indexed: Settings, corpus_records: list[dict]) -> None:
    record = next(r for r in corpus_records if len(r["text"]) > 3000)
    text = COPIED_ANSWER_BEFORE + record["text"][2000:2300]

    async def run(fail_mode: str) -> tuple[str, bool, Guard]:
        guard = Guard(indexed.replace(check_timeout_ms=0.0, check_ceiling_ms=0.0, fail_mode=fail_mode))
        try:
            released, blocked = await stream_through(guard, text, list(range(0, len(text), 3)))
            return released, blocked, guard
        finally:
            await guard.aclose()

    released, blocked, guard = asyncio.run(run("open"))
    assert (released, blocked) == (text, False) and guard.skipped["timeout"] > 0
    released, blocked, guard = asyncio.run(run("closed"))
    assert blocked and longest_shared_run(released, text) < 60 and guard.skipped["timeout"] == 1


def test_a_stream_asks_redis_only_what_it_has_not_learned(indexed: Settings, corpus_records: list[dict],
                                                          negative_records: list[dict]) -> None:
    """Once a lookup of the stream found the key filter current, checks whose new keys the filter
    turns away make no round trip; and a work found live stays live for the stream (which is
    checked against the corpus as of its start), so a copy running on costs no more reads of it."""
    record = next(r for r in corpus_records if len(r["text"]) > 3000)
    host = next(r["text"] for r in negative_records if 600 < len(r["text"]) < 1500)

    async def run(text: str) -> tuple[str, int, dict[str, int]]:
        guard = Guard(indexed)
        try:
            await guard.start()
            checks = 0
            attempt = guard.attempt

            async def counted(*args: Any, **kwargs: Any) -> Verdict:
                nonlocal checks
                checks += 1
                return await attempt(*args, **kwargs)

            guard.attempt = counted  # type: ignore[method-assign]
            stream = GuardedStream(guard)
            before = await guard.redis.info("commandstats")
            released = [(await stream.feed(text[i:i + 2])).text for i in range(0, len(text), 2)]
            released.append((await stream.finish()).text)
            after = await guard.redis.info("commandstats")
            calls = {name: command_calls(after, name) - command_calls(before, name) for name in ("evalsha", "hmget")}
            return "".join(released), checks, calls
        finally:
            await guard.aclose()

    released, checks, calls = asyncio.run(run(host))
    assert released == host and checks > 30
    assert calls["evalsha"] < checks / 3, (calls, checks)  # lookups only for keys the filter lets through
    released, checks, calls = asyncio.run(run(host[:300] + record["text"][1000:1400] + host[300:]))
    assert f"出自《{record['work']}》" in released and released.startswith(host[:300]) and released.endswith(host[300:])
    assert calls["hmget"] <= 4, (calls, checks)  # the work's text fetched, and found live, once or twice
