"""Batched checks (`Guard.check_many`): the verdicts of single checks, in two round trips."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis

from textguard import CheckSkipped, Guard, Settings, Verdict
from textguard.normalise import normalise
from textguard.store import _batched


def mixed_answers(corpus_records: list[dict], negative_records: list[dict], count: int) -> list[str]:
    """Answers of ~500 characters: copies of several lengths (some sharing a document) and negatives."""
    rng = random.Random(5)
    long_docs = [r for r in corpus_records if len(r["text"]) > 3000]
    answers = []
    for i in range(count):
        filler = negative_records[(7 * i) % len(negative_records)]["text"][:500]
        if i % 3 == 2:
            answers.append(filler)
            continue
        doc = long_docs[i % 6] if i % 4 == 0 else rng.choice(long_docs)
        size = rng.choice([30, 80, 200, 450])
        start = rng.randrange(len(doc["text"]) - size)
        head = rng.randrange(0, 200)
        answers.append(filler[:head] + doc["text"][start:start + size] + filler[head:head + 300])
    return answers


async def _singles_and_batch(settings: Settings, texts: list[str]) -> tuple[list[Verdict], list[Verdict]]:
    guard = Guard(settings)
    try:
        singles = [await guard.check(text, fail_mode="raise") for text in texts]
        batch = await guard.check_many(texts, fail_mode="raise")
    finally:
        await guard.aclose()
    return singles, batch


def test_check_many_gives_the_verdicts_of_single_checks(indexed: Settings, corpus_records: list[dict],
                                                        negative_records: list[dict]) -> None:
    texts = [*mixed_answers(corpus_records, negative_records, 60), "", "短。", "😀" * 40]
    singles, batch = asyncio.run(_singles_and_batch(indexed, texts))
    assert [v.verdict for v in batch] == [v.verdict for v in singles]
    assert [v.matches for v in batch] == [v.matches for v in singles]
    assert [v.quotations for v in batch] == [v.quotations for v in singles]
    assert [v.text for v in batch] == [v.text for v in singles]
    kinds = {v.verdict for v in batch}
    assert kinds == {"allow", "rewrite", "block"}, "the mix should exercise every verdict"


def test_lookups_cut_into_several_scripts_give_the_same_verdicts(
        indexed: Settings, corpus_records: list[dict], negative_records: list[dict], raw_redis: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    texts = mixed_answers(corpus_records, negative_records, 30)
    singles, whole = asyncio.run(_singles_and_batch(indexed, texts))
    monkeypatch.setattr(_batched, "SCRIPT_KEYS", 100)
    before = _calls(raw_redis, "evalsha")
    _, cut = asyncio.run(_singles_and_batch(indexed, texts))
    assert _calls(raw_redis, "evalsha") - before > len(texts) + 3  # 30 single lookups, then several scripts
    assert [(v.verdict, v.matches) for v in cut] == [(v.verdict, v.matches) for v in whole] == [
        (v.verdict, v.matches) for v in singles]


def test_check_many_makes_one_lookup_round_trip(indexed: Settings, raw_redis: redis.Redis,
                                                corpus_records: list[dict], negative_records: list[dict]) -> None:
    texts = mixed_answers(corpus_records, negative_records, 40)

    async def main() -> int:
        guard = Guard(indexed)
        try:
            await guard.check_many(texts[:2])  # loads the lookup script
            before = _calls(raw_redis, "evalsha")
            await guard.check_many(texts)
            return _calls(raw_redis, "evalsha") - before
        finally:
            await guard.aclose()

    assert asyncio.run(main()) == 1


def test_concurrent_checks_keep_their_own_verdicts(indexed: Settings, corpus_records: list[dict],
                                                    negative_records: list[dict]) -> None:
    """Requests checked at once on one Guard (as a busy server does: one pool, one text cache)
    get the verdicts they get one by one."""
    texts = mixed_answers(corpus_records, negative_records, 40)

    async def main() -> tuple[list[Verdict], list[Verdict]]:
        guard = Guard(indexed)
        try:
            singles = [await guard.check(text, fail_mode="raise") for text in texts]
            together = await asyncio.gather(*(guard.check(text, fail_mode="raise") for text in texts))
            return singles, list(together)
        finally:
            await guard.aclose()

    singles, together = asyncio.run(main())
    assert [(v.verdict, v.matches, v.text) for v in together] == [(v.verdict, v.matches, v.text) for v in singles]
    assert {v.verdict for v in together} == {"allow", "rewrite", "block"}


def _calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_check_many_skips_every_text_when_redis_is_down(settings: Settings) -> None:
    down = settings.replace(redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.2)

    async def main() -> tuple[list[Verdict], Guard]:
        guard = Guard(down)
        verdicts = await guard.check_many(["一段回答", "另一段回答"], fail_mode="closed")
        with pytest.raises(CheckSkipped):
            await guard.check_many(["一段回答"], fail_mode="raise")
        await guard.aclose()
        return verdicts, guard

    verdicts, guard = asyncio.run(main())
    assert [(v.verdict, v.skipped) for v in verdicts] == [("block", "redis")] * 2
    assert guard.skipped["redis"] == 3


def test_source_passages_read_stored_text(indexed: Settings, corpus_records: list[dict]) -> None:
    record = next(r for r in corpus_records if len(r["text"]) > 9000)

    async def main() -> list:
        guard = Guard(indexed)
        try:
            return await guard.source_passages([(record["id"], 4000, 4200), (record["id"], 8100, 8300),
                                                (record["id"], -50, 30), ("no-such-document", 0, 10)])
        finally:
            await guard.aclose()

    first, second, clipped, missing = asyncio.run(main())
    assert (first.start, first.text) == (4000, record["text"][4000:4200])
    assert (second.start, second.text) == (8100, record["text"][8100:8300])
    assert (clipped.start, clipped.text) == (0, record["text"][:30])
    assert first.meta["id"] == record["id"] and missing is None
    for passage in (first, second, clipped):  # the normal form comes from the chunks' (4000-4200 spans two)
        expected = normalise(passage.text)
        assert expected.text and passage.normal.text == expected.text
        assert passage.normal.offsets.tolist() == expected.offsets.tolist()
