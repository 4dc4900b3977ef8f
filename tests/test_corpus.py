"""Corpus maintenance against a real Redis: takedown, re-adding, crashes, parameter mismatches."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from tests.support.helpers import to_document
from tests.support.redis_admin import command_calls, index_keys
from textguard import Corpus, Document, Guard, IndexMismatchError, Settings, StoreUnavailableError
from textguard._redis import connect_async
from textguard.normalise import normalise
from textguard.sketching import TextSketcher
from textguard.store import POSTING_DTYPE, IndexReader, StagedDocument, choose_bucket_bits


def _copy_of(record: dict, chars: int = 200) -> str:
    norm = normalise(record["text"])
    begin, end = norm.original_span(100, 100 + chars)
    return "请看这一段：" + record["text"][begin:end] + "以上。"


def _postings_of(client: redis.Redis, settings: Settings, number: int) -> int:
    """How many band postings of document `number` remain anywhere in the index."""
    found = 0
    for key in index_keys(client, settings):
        if b":b" in key and client.type(key) == b"hash":
            for value in client.hvals(key):
                found += int((np.frombuffer(value, POSTING_DTYPE)["n"] == number).sum())
    return found


def test_add_list_stats(settings: Settings, corpus_records: list[dict]) -> None:
    records = corpus_records[:5]
    with Corpus(settings) as corpus:
        report = corpus.add(to_document(r) for r in records)
        assert (report.added, report.replaced, report.unchanged) == (5, 0, 0)
        listed = list(corpus.list())
        stats = corpus.stats()
    assert sorted(m["id"] for m in listed) == sorted(r["id"] for r in records)
    assert {m["id"]: m["chars"] for m in listed} == {r["id"]: len(r["text"]) for r in records}
    assert stats["documents"] == 5
    assert stats["characters"] == sum(len(r["text"]) for r in records)
    assert stats["windows"] > 0 and stats["redis_bytes"] > 0
    assert stats["bytes_per_char"] == pytest.approx(stats["redis_bytes"] / stats["characters"], rel=1e-3)


def test_readding_is_idempotent_and_replacing_leaves_no_trace(settings: Settings, raw_redis: redis.Redis,
                                                              corpus_records: list[dict]) -> None:
    first, second = corpus_records[3], corpus_records[40]
    guard = Guard(settings)
    with Corpus(settings) as corpus:
        corpus.add([to_document(first)])
        stats = corpus.stats()
        keys = sorted(index_keys(raw_redis, settings))
        assert corpus.add([to_document(first)]).unchanged == 1
        assert corpus.stats() == stats and sorted(index_keys(raw_redis, settings)) == keys
        old_number = int(raw_redis.hget(f"{{textguard:v1:{settings.index}}}:docs", first["id"]))
        # same id, new text: the new text is protected, the old is gone without a trace
        report = corpus.add([Document(first["id"], second["text"], "t", "a", "w")])
        assert report.replaced == 1
        assert corpus.stats()["characters"] == len(second["text"])
    assert guard.check_sync(_copy_of(second), fail_mode="raise").verdict != "allow"
    assert guard.check_sync(_copy_of(first), fail_mode="raise").verdict == "allow"
    assert _postings_of(raw_redis, settings, old_number) == 0
    assert not raw_redis.exists(f"textguard:v1:{settings.index}:d:{old_number}")
    guard.close()


def test_takedown_leaves_nothing(settings: Settings, raw_redis: redis.Redis, corpus_records: list[dict]) -> None:
    keep, drop = corpus_records[1], corpus_records[2]
    guard = Guard(settings)
    with Corpus(settings) as corpus:
        corpus.add([to_document(keep)])
        keys_with_keep_only = set(index_keys(raw_redis, settings))
        values_before = {k: raw_redis.dump(k) for k in keys_with_keep_only if b":b" in k}
        corpus.add([to_document(drop)])
        number = int(raw_redis.hget(f"{{textguard:v1:{settings.index}}}:docs", drop["id"]))
        assert guard.check_sync(_copy_of(drop), fail_mode="raise").verdict != "allow"
        assert corpus.remove([drop["id"], "no-such-id"]) == ["no-such-id"]
        assert [m["id"] for m in corpus.list()] == [keep["id"]]
        assert corpus.stats()["characters"] == len(keep["text"])
    assert guard.check_sync(_copy_of(drop), fail_mode="raise").verdict == "allow"
    assert guard.check_sync(_copy_of(keep), fail_mode="raise").verdict != "allow"
    assert _postings_of(raw_redis, settings, number) == 0
    remaining = set(index_keys(raw_redis, settings))
    assert not any(f":d:{number}".encode() in k for k in remaining)
    # band hashes hold exactly what they held before the dropped document came and went
    assert {k for k in remaining if b":b" in k} == set(values_before)
    assert all(raw_redis.hgetall(k) == _restore(raw_redis, v) for k, v in values_before.items())
    guard.close()


def _restore(client: redis.Redis, dumped: bytes) -> dict:
    client.restore("textguard-test-scratch", 0, dumped, replace=True)
    try:
        return client.hgetall("textguard-test-scratch")
    finally:
        client.delete("textguard-test-scratch")


def test_interrupted_write_is_invisible_then_purged(settings: Settings, raw_redis: redis.Redis,
                                                    corpus_records: list[dict]) -> None:
    record = corpus_records[7]
    corpus = Corpus(settings)
    corpus._prepare()
    writer, sketcher = corpus._writer, corpus._sketcher
    writer.lease_seconds = 0  # this writer "dies" right after writing: its lease is over at once
    doc = to_document(record)
    (number,) = writer.begin([(doc.doc_id, doc.meta()["sha256"])])
    assert isinstance(number, int)
    norm = normalise(record["text"])
    runs, anchors = sketcher.sketch(norm)
    writer.write([StagedDocument(doc.doc_id, number, doc.meta(), doc.text, runs.keys, norm.offsets[anchors])], 6)
    assert _postings_of(raw_redis, settings, number) > 0
    guard = Guard(settings)
    assert guard.check_sync(_copy_of(record), fail_mode="raise").verdict == "allow"  # not committed: invisible
    assert list(Corpus(settings).list()) == []  # a new writer recovers first
    assert _postings_of(raw_redis, settings, number) == 0
    assert not raw_redis.exists(f"textguard:v1:{settings.index}:d:{number}")
    assert corpus.stats()["pending"] == 0
    guard.close()


def test_killed_ingest_leaves_only_whole_documents(settings: Settings, raw_redis: redis.Redis,
                                                   corpus_records: list[dict], tmp_path: Path) -> None:
    source = tmp_path / "big.jsonl"
    with source.open("w", encoding="utf-8") as handle:
        for record in corpus_records:
            handle.write(json.dumps({k: record[k] for k in ("id", "text", "title", "author", "work")},
                                    ensure_ascii=False) + "\n")
    env = {**os.environ, "TEXTGUARD_HOME": str(settings.home), "TEXTGUARD_INDEX": settings.index}
    if settings.redis_url:
        env["TEXTGUARD_REDIS_URL"] = settings.redis_url
    process = subprocess.Popen([sys.executable, "-m", "textguard", "corpus", "add", str(source)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seq_key = f"{{textguard:v1:{settings.index}}}:seq"
    deadline = time.monotonic() + 60
    while int(raw_redis.get(seq_key) or 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling Redis state, not timing: kill once the first batch is under way
    process.send_signal(signal.SIGKILL)
    process.wait()
    started = int(raw_redis.get(seq_key) or 0)
    assert started > 0
    # whatever the kill interrupted is pending; expire the dead writer's leases and recover
    pending_key = f"{{textguard:v1:{settings.index}}}:pending"
    for number, raw in raw_redis.hgetall(pending_key).items():
        raw_redis.hset(pending_key, number, json.dumps({**json.loads(raw), "lease": 0}))
    with Corpus(settings) as corpus:
        listed = {m["id"] for m in corpus.list()}
        live = {int(n) for n in raw_redis.hvals(f"{{textguard:v1:{settings.index}}}:docs")}
        assert corpus.stats()["pending"] == 0
    for number in range(1, started + 1):
        if number not in live:
            assert _postings_of(raw_redis, settings, number) == 0
            assert not raw_redis.exists(f"textguard:v1:{settings.index}:d:{number}")
    guard = Guard(settings)
    by_id = {r["id"]: r for r in corpus_records}
    for doc_id in list(listed)[:10]:
        assert guard.check_sync(_copy_of(by_id[doc_id]), fail_mode="raise").verdict != "allow"
    guard.close()
    # and the file can simply be added again to finish the job
    with Corpus(settings) as corpus:
        corpus.add(to_document(r) for r in corpus_records)
        assert corpus.stats()["documents"] == len({r["id"] for r in corpus_records})


def test_other_parameters_are_refused(settings: Settings, corpus_records: list[dict]) -> None:
    with Corpus(settings) as corpus:
        corpus.add([to_document(corpus_records[0])])
    other = settings.replace(window_shingles=settings.window_shingles + 4)
    with pytest.raises(IndexMismatchError, match="window"), Corpus(other) as corpus:
        corpus.add([to_document(corpus_records[1])])
    guard = Guard(other)
    with pytest.raises(IndexMismatchError, match="window"):
        guard.check_sync("任何文字都一样")
    guard.close()


def test_a_writer_whose_lease_was_taken_over_cannot_commit(settings: Settings, raw_redis: redis.Redis,
                                                           corpus_records: list[dict]) -> None:
    """A writer that outlives its lease finds its document purged by another writer: its commit
    is refused (never a live document with part of its postings gone)."""
    record = corpus_records[9]
    slow = Corpus(settings)
    slow._prepare()
    slow._writer.lease_seconds = 0
    doc = to_document(record)
    (number,) = slow._writer.begin([(doc.doc_id, doc.meta()["sha256"])])
    assert isinstance(number, int)
    norm = normalise(doc.text)
    runs, anchors = slow._sketcher.sketch(norm)
    staged = StagedDocument(doc.doc_id, number, doc.meta(), doc.text, runs.keys, norm.offsets[anchors])
    slow._writer.write([staged], settings.max_postings)
    with Corpus(settings) as other:
        other._prepare()  # recovers: claims the expired lease and purges what the slow writer wrote
    assert _postings_of(raw_redis, settings, number) == 0
    with pytest.raises(StoreUnavailableError, match="lease"):
        slow._writer.commit([staged])
    assert _postings_of(raw_redis, settings, number) == 0
    with Corpus(settings) as corpus:
        assert list(corpus.list()) == [] and corpus.stats()["pending"] == 0
    slow.close()


def test_bucket_bits_follow_the_corpus_and_the_small_hash_limit(settings: Settings, raw_redis: redis.Redis,
                                                               corpus_records: list[dict]) -> None:
    assert choose_bucket_bits(10_000_000, 512) == 16
    assert choose_bucket_bits(100_000_000, 512) == 19  # 0.3 entries per char, 64 per bucket
    assert choose_bucket_bits(100_000_000, 64) == 20  # at most half the server's limit
    assert choose_bucket_bits(10**12, 512) == 24
    limit = int(raw_redis.config_get("hash-max-ziplist-entries")["hash-max-ziplist-entries"])
    guard = Guard(settings)  # started before the index exists: it must learn the bits chosen
    assert guard.check_sync(_copy_of(corpus_records[5]), fail_mode="raise").verdict == "allow"
    with Corpus(settings) as corpus:
        corpus.add([to_document(corpus_records[5])], expected_chars=400_000_000)
        stats = corpus.stats()
    assert stats["bucket_bits"] == choose_bucket_bits(400_000_000, limit) > 16
    assert stats["small_hash_limit"] == limit
    assert guard.check_sync(_copy_of(corpus_records[5]), fail_mode="raise").verdict != "allow"
    guard.close()
    with pytest.raises(IndexMismatchError, match="bucket_bits"), Corpus(settings.replace(bucket_bits=16)) as c:
        c.add([to_document(corpus_records[6])])


def test_a_guard_reads_afresh_text_it_cached_once_the_index_is_built_anew(
        settings: Settings, raw_redis: redis.Redis, corpus_records: list[dict]) -> None:
    """Checks keep stored text chunks by document number; an index deleted and built again
    hands out the same numbers to other documents, and the guard must not show the old text."""
    first, second = [r for r in corpus_records if len(r["text"]) > 3000][:2]
    guard = Guard(settings)
    try:
        for record in (first, second):
            for key in index_keys(raw_redis, settings):
                raw_redis.delete(key)
            with Corpus(settings) as corpus:
                corpus.add([to_document(record)])
            copied = record["text"][1000:1400]
            verdict = guard.check_sync("我来背一段给你听：" + copied + "就是这样。")
            assert [m.doc_id for m in verdict.matches] == [record["id"]]
            match = verdict.matches[0]
            assert record["text"][match.source_start:match.source_end] in copied
    finally:
        guard.close()


def test_a_withdrawn_work_does_not_match_from_text_a_guard_holds(
    settings: Settings, corpus_records: list[dict]
) -> None:
    """A guard keeps the stored text it verified against, and verifies later candidates in it
    without asking Redis; what it finds there must still be live. Here the work is withdrawn
    but not yet purged (its postings still hit), as between the two steps of a takedown."""
    record = corpus_records[0]
    copied = _copy_of(record, 300)
    guard = Guard(settings)
    try:
        with Corpus(settings) as corpus:
            corpus.add([to_document(record)])
            assert [m.doc_id for m in guard.check_sync(copied).matches] == [record["id"]]
            assert corpus._writer.withdraw(record["id"]) is not None  # the takedown's first step alone
            verdict = guard.check_sync(copied)
            assert (verdict.verdict, verdict.matches) == ("allow", ())
    finally:
        guard.close()


def test_a_guard_holding_a_key_filter_finds_a_work_added_after_it_read_the_filter(
    settings: Settings, corpus_records: list[dict]
) -> None:
    """The filter a guard read at start-up knows nothing of works added later; the lookup's
    reply shows it out of date, and the keys it held back are looked up after all."""
    first, later = corpus_records[0], corpus_records[1]

    async def scenario() -> None:
        guard = Guard(settings)
        try:
            with Corpus(settings) as corpus:
                corpus.add([to_document(first)])
                await guard.start()  # reads the filter: it holds the keys of `first` only
                assert [m.doc_id for m in (await guard.check(_copy_of(first, 300))).matches] == [first["id"]]
                corpus.add([to_document(later)])
                before = command_calls(await guard.redis.info("commandstats"), "evalsha")
                verdict = await guard.check(_copy_of(later, 300))
                after = command_calls(await guard.redis.info("commandstats"), "evalsha")
                assert after - before == 2  # the filtered lookup, then the keys it held back
                assert [m.doc_id for m in verdict.matches] == [later["id"]]
        finally:
            await guard.aclose()

    asyncio.run(scenario())


def test_the_key_filter_holds_every_stored_key_and_spares_redis_the_others(
    indexed: Settings, corpus_records: list[dict], negative_records: list[dict]
) -> None:
    sketcher = TextSketcher(indexed)
    stored = np.concatenate([sketcher.sketch(normalise(r["text"]))[0].keys for r in corpus_records])
    answers = [r["text"][:1000] for r in negative_records[:20]]
    unrelated = np.unique(np.concatenate([sketcher.sketch(normalise(t))[0].keys for t in answers]))

    async def scenario() -> None:
        reader = IndexReader(connect_async(indexed), sketcher.layout)
        guard = Guard(indexed)
        try:
            assert await reader.ensure_compatible()
            await reader.refresh_filter()
            membership = reader.key_filter.current
            assert membership is not None
            assert membership.may_contain(*sketcher.layout.filter_slots(stored)).all()
            assert membership.may_contain(*sketcher.layout.filter_slots(unrelated)).mean() < 0.25
            await guard.start()
            hget_before = command_calls(await guard.redis.info("commandstats"), "hget")
            for answer in answers:
                await guard.check(answer, fail_mode="raise")
            hgets = command_calls(await guard.redis.info("commandstats"), "hget") - hget_before
            assert hgets < len(unrelated) / 4  # the keys no work holds were not asked for
            long = [r for r in corpus_records if len(normalise(r["text"]).text) > 500][:10]
            copies = [await guard.check(_copy_of(r, 300), fail_mode="raise") for r in long]
            assert [v.matches[0].doc_id for v in copies] == [r["id"] for r in long]
        finally:
            await reader.aclose()
            await guard.aclose()

    asyncio.run(scenario())
