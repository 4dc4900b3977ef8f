"""Throughput of offline scans, beside the single-check loop, in one run on the shared data.

    python -m benchmarks.scan [--answers 10000] [--chars 500] [--batch 64] [--corpus-fraction 1.0]

Builds answers of about 500 characters from real chat answers (llm_answers_zh) with corpus
passages mixed in: 60% with none, 20% with a passage of 60-300 characters, 10% with a short
quotation (20-45), 10% mostly one passage. Indexes the shared corpus (all of it by default)
into a fresh embedded Redis in a temporary directory, then runs over the same answers:

  1. baseline: `await Guard.check(answer)` one answer at a time, what a script would write;
  2. `Guard.check_many` in batches (the batched core path alone, no files, no metrics);
  3. the scan runner (`textguard scan`: reading JSON Lines, checks, metrics, writing results)
     with 1 and with 2 worker processes.

Prints answers per second, CPU seconds (this process, worker processes, redis-server) and the
ratio of each to the baseline. The verdict counts must agree across all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import redis

from benchmarks import require_data
from benchmarks._harness import (
    CpuMeter,
    corpus_passage,
    fraction,
    index_corpus,
    load_answers,
    load_corpus,
    redis_cpu,
    scratch_index,
)
from textguard import Document, Guard, Settings
from textguard.normalise import normalise
from textguard.scan import ScanOptions, read_results, run_scan

SEED = 20240607
TARGET_PER_WORKER = 500.0  # answers per second


@dataclass(frozen=True, slots=True)
class Measure:
    name: str
    workers: int
    seconds: float
    cpu: float  # this process and its worker processes
    redis_cpu: float
    verdicts: Counter[str]


def build_answers(documents: Sequence[Document], count: int, chars: int) -> list[str]:
    """Real chat answers run together to `chars` characters, with corpus passages mixed in."""
    chats = load_answers()
    rng = random.Random(SEED)
    long_documents = [d for d in documents if len(d.text) > chars + 100]
    seen: set[str] = set()
    answers: list[str] = []
    while len(answers) < count:
        first = rng.randrange(len(chats))
        text = "\n\n".join(itertools.islice(itertools.cycle(chats), first, first + 1 + 2 * chars // 200))
        skip = rng.randrange(max(1, len(text) - 2 * chars))  # start anywhere: no two answers alike
        text = text[skip:skip + chars]
        if len(text) < chars or text in seen:
            continue
        seen.add(text)
        kind = len(answers) % 10
        if kind < 6:
            answers.append(text[:chars])
            continue
        size = {6: rng.randint(60, 300), 7: rng.randint(60, 300), 8: rng.randint(20, 45), 9: chars - 60}[kind]
        passage = corpus_passage(long_documents, rng, size, min_document=0)  # any of long_documents
        head = rng.randrange(0, chars - size + 1)
        answers.append(text[:head] + passage + text[head:chars - size])
    return answers


def warm_up(settings: Settings, answers: Sequence[str]) -> None:
    """Segment and sketch every answer once and check a few, so that no measure pays for
    first-time costs (jieba's dictionary, the token-hash cache, Redis script loading) that
    the one before it paid."""
    guard = Guard(settings)
    for answer in answers:
        guard.sketcher.sketch(normalise(answer))
    guard.check_sync(answers[0])
    guard.close()
    asyncio.run(single_loop(settings, answers[:100]))


async def single_loop(settings: Settings, answers: Sequence[str]) -> Counter[str]:
    guard = Guard(settings)
    try:
        return Counter([(await guard.check(a, fail_mode="raise")).verdict for a in answers])
    finally:
        await guard.aclose()


async def batched(settings: Settings, answers: Sequence[str], batch: int) -> Counter[str]:
    guard = Guard(settings)
    verdicts: Counter[str] = Counter()
    try:
        for start in range(0, len(answers), batch):
            verdicts.update(v.verdict for v in await guard.check_many(answers[start:start + batch], fail_mode="raise"))
    finally:
        await guard.aclose()
    return verdicts


def scan_runner(settings: Settings, source: Path, out: Path, workers: int, batch: int) -> Counter[str]:
    out.unlink(missing_ok=True)
    run_scan(settings, ScanOptions(str(source), out, workers=workers, batch=batch))
    return Counter(r["verdict"] for r in read_results(out))


def measure(name: str, workers: int, client: redis.Redis, run: object) -> Measure:
    meter = CpuMeter(partial(redis_cpu, client))
    verdicts = run() if callable(run) else Counter()
    spent = meter.stop()
    print(f"  {name}: {spent.wall:.1f} s", file=sys.stderr)
    return Measure(name, workers, spent.wall, spent.process, spent.server, verdicts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=10_000)
    parser.add_argument("--chars", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--corpus-fraction", type=fraction, default=1.0)
    args = parser.parse_args(argv)
    require_data()
    with scratch_index("scanbench") as (settings, client):
        home = settings.home
        documents = load_corpus(args.corpus_fraction)
        total = sum(len(d.text) for d in documents)
        # expected_chars=0: the index is not sized for the corpus (smallest buckets and key filter), as
        # when the published figures were measured
        _, indexing = index_corpus(settings, documents, expected_chars=0)
        answers = build_answers(documents, args.answers, args.chars)
        source = home / "answers.jsonl"
        source.write_text("".join(json.dumps({"id": i, "output": a}, ensure_ascii=False) + "\n"
                                  for i, a in enumerate(answers)), encoding="utf-8")
        warm_up(settings, answers)
        print("measuring", file=sys.stderr)
        clean = [a for i, a in enumerate(answers) if i % 10 < 6]
        copied = [a for i, a in enumerate(answers) if i % 10 >= 6]
        results = [
            measure("single-check loop (baseline)", 1, client, lambda: asyncio.run(single_loop(settings, answers))),
            measure(f"Guard.check_many, batches of {args.batch}", 1, client,
                    lambda: asyncio.run(batched(settings, answers, args.batch))),
            measure(f"  of which {len(clean):,} clean answers", 1, client,
                    lambda: asyncio.run(batched(settings, clean, args.batch))),
            measure(f"  of which {len(copied):,} with corpus text", 1, client,
                    lambda: asyncio.run(batched(settings, copied, args.batch))),
            measure("scan runner, 1 worker", 1, client,
                    lambda: scan_runner(settings, source, home / "out1.jsonl", 1, args.batch)),
            measure("scan runner, 2 workers", 2, client,
                    lambda: scan_runner(settings, source, home / "out2.jsonl", 2, args.batch)),
        ]
        report(results, args, len(documents), total, indexing, client)


def report(results: Sequence[Measure], args: argparse.Namespace, documents: int, chars: int, indexing: float,
           client: redis.Redis) -> None:
    print(f"textguard scan benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
          f"Redis {client.info('server')['redis_version']} (embedded, unix socket)")
    print(f"corpus: {documents:,} documents, {chars:,} characters, indexed in {indexing:.1f} s")
    print(f"answers: {args.answers:,} of {args.chars} characters; batches of {args.batch}")
    baseline = results[0]
    rate0 = args.answers / baseline.seconds
    print(f"\n{'run':<38}{'answers/s':>10}{'per worker':>11}{'vs base':>9}{'CPU s':>8}{'redis CPU s':>12}"
          f"{'CPU ms/answer':>15}  verdicts")
    for m in results:
        count = sum(m.verdicts.values())
        rate = count / m.seconds
        per_answer = 1000 * (m.cpu + m.redis_cpu) / count
        verdicts = " ".join(f"{k} {m.verdicts[k]}" for k in ("allow", "rewrite", "block"))
        print(f"{m.name:<38}{rate:>10.0f}{rate / m.workers:>11.0f}{rate / rate0:>8.2f}x{m.cpu:>8.1f}"
              f"{m.redis_cpu:>12.1f}{per_answer:>15.2f}  {verdicts}")
    whole = [m for m in results if sum(m.verdicts.values()) == args.answers]
    agree = all(m.verdicts == baseline.verdicts for m in whole)
    parts = [m for m in results if m not in whole]
    agree &= sum((m.verdicts for m in parts), Counter()) == baseline.verdicts
    best = max(args.answers / m.seconds / m.workers for m in results if m.name.startswith("scan runner"))
    print(f"\nverdicts agree across runs: {agree}")
    cpu_bound = args.answers / max(m.cpu + m.redis_cpu for m in results if m.name == "scan runner, 1 worker")
    print(f"CPU-bound rate of one worker (answers per CPU second, redis-server included): {cpu_bound:.0f}")
    print(f"target >= {TARGET_PER_WORKER:.0f} answers/s per worker: "
          f"{'met' if best >= TARGET_PER_WORKER else 'NOT met'} (best {best:.0f})")
    print(f"load average after the runs: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
