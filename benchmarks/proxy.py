"""What the guarded proxy adds: `textguard proxy` in front of a model server, against calling the
model directly, in one run on the shared data.

    python -m benchmarks.proxy [--corpus-fraction 1.0] [--requests 300] [--concurrency 16]
                               [--duration 15] [--quick]

Four processes on 127.0.0.1: the embedded Redis holding the shared corpus, the fake OpenAI-compatible
model of the tests (it answers with the user's message, so the answer is chosen here) under uvicorn,
`textguard proxy --upstream` in front of it, and this client (httpx2 on asyncio). Answers are
non-streaming chat completions of about 1,000 characters: real chat answers (clean, passed) and the
same with a 300-character corpus passage (rewritten). A second proxy with guarding switched off
separates what relaying costs from what checking costs. Printed: (1) one request at a time, the three
targets in turn, so all see the same noise: latency p50/p99, the latency the guarded proxy adds, and
each proxy's CPU per request; (2) requests per second at a fixed concurrency for each, and the ratio
to direct. Most of its time goes to indexing the corpus; --quick indexes a tenth of it and runs shorter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx2
import psutil

from benchmarks._harness import (
    MIXED_CHARS,
    chat_request,
    fake_model_process,
    fraction,
    index_corpus,
    load_corpus,
    mixed_answers,
    p50,
    p99,
    parse_quick,
    scratch_index,
)
from tests.support.servers import spawn

TARGET_ADDED_P50_MS = 5.0
WARMUP = 20


@dataclass(frozen=True, slots=True)
class Options:
    corpus_fraction: float
    requests: int
    concurrency: int
    duration: float


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--corpus-fraction", type=fraction, help="share of each corpus file to index (default 1.0)")
    parser.add_argument("--requests", type=int, help="sequential requests per target (default 300)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients for throughput (default 16)")
    parser.add_argument("--duration", type=float, help="seconds of each throughput run (default 15)")
    full = {"corpus_fraction": 1.0, "requests": 300, "duration": 15.0}
    quick = {"corpus_fraction": 0.1, "requests": 100, "duration": 5.0}
    args = parse_quick(parser, argv, full, quick, "a tenth of the corpus, 100 requests, 5 s runs")
    if args.requests < 10 or args.concurrency < 1:
        parser.error("--requests >= 10, --concurrency >= 1")
    return Options(args.corpus_fraction, args.requests, args.concurrency, args.duration)


async def one(client: httpx2.AsyncClient, url: str, text: str) -> float:
    started = time.perf_counter()
    response = await client.post(url + "/v1/chat/completions", json=chat_request(text))
    response.raise_for_status()
    response.json()
    return (time.perf_counter() - started) * 1000


Latencies = dict[str, dict[str, list[float]]]  # target -> flavour -> milliseconds


async def sequential(targets: dict[str, str], texts: Sequence[tuple[str, str]],
                     processes: dict[str, psutil.Process]) -> tuple[Latencies, dict[str, float]]:
    """Latency per request for each target in turn (the order rotates from request to request,
    so every target sees the same noise), and each proxy's CPU milliseconds per request."""
    samples: Latencies = {name: {} for name in targets}
    order = list(targets.items())
    async with httpx2.AsyncClient(timeout=30, trust_env=False) as client:
        for _, text in texts[:WARMUP]:
            for _, url in order:
                await one(client, url, text)
        before = {name: process.cpu_times() for name, process in processes.items()}
        for index, (flavour, text) in enumerate(texts):
            for name, url in order[index % len(order):] + order[:index % len(order)]:
                samples[name].setdefault(flavour, []).append(await one(client, url, text))
        after = {name: process.cpu_times() for name, process in processes.items()}
    cpu = {name: (after[name].user + after[name].system - before[name].user - before[name].system) * 1000 / len(texts)
           for name in processes}
    return samples, cpu


async def throughput(url: str, texts: Sequence[tuple[str, str]], concurrency: int, duration: float) -> float:
    done = 0
    stop_at = time.perf_counter() + duration

    async def worker(number: int) -> None:
        nonlocal done
        index = number
        async with httpx2.AsyncClient(timeout=30, trust_env=False) as client:
            while time.perf_counter() < stop_at:
                await one(client, url, texts[index % len(texts)][1])
                done += 1
                index += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return done / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    with scratch_index("bench") as (settings, _):
        documents = load_corpus(options.corpus_fraction)
        _, seconds = index_corpus(settings, documents)
        chars = sum(len(d.text) for d in documents)
        print(f"textguard proxy benchmark · {platform.python_implementation()} {platform.python_version()} · "
              f"{os.cpu_count()} cores · corpus {len(documents):,} documents, {chars:,} chars "
              f"(indexed in {seconds:.0f} s)\n")
        texts = mixed_answers(options.requests, documents)
        env = {"TEXTGUARD_HOME": str(settings.home), "TEXTGUARD_INDEX": settings.index}
        unguarded = {**env, "TEXTGUARD_GUARD_PATHS": "/guard-nothing"}
        with fake_model_process() as model_url, \
                spawn(["proxy", "--upstream", model_url, "--port", "0"], env) as (guarded, proxied_url), \
                spawn(["proxy", "--upstream", model_url, "--port", "0"], unguarded) as (relay, relayed_url):
            targets = {"direct": model_url, "relayed": relayed_url, "proxied": proxied_url}
            processes = {"relayed": psutil.Process(relay.pid), "proxied": psutil.Process(guarded.pid)}
            latency, cpu_ms = asyncio.run(sequential(targets, texts, processes))
            rates = {name: asyncio.run(throughput(url, texts, options.concurrency, options.duration))
                     for name, url in targets.items()}
    report(latency, cpu_ms, rates, options)


def report(latency: Latencies, cpu_ms: dict[str, float], rates: dict[str, float], options: Options) -> None:
    print(f"1. One request at a time ({options.requests} per target, ~{MIXED_CHARS:,}-char answers; "
          "direct to the model, through the proxy with guarding off (relayed) and on (proxied), in turn)\n")
    print(f"   {'answers':<8} {'direct p50/p99':>15} {'relayed p50/p99':>16} {'proxied p50/p99':>16}"
          f" {'added p50/p99':>14} {'ratio p50':>9}   (ms)")
    added_p50 = {}
    for flavour in ("clean", "copied"):
        direct, relayed, proxied = (latency[name][flavour] for name in ("direct", "relayed", "proxied"))
        added = [p - d for p, d in zip(proxied, direct, strict=True)]
        added_p50[flavour] = p50(added)
        cells = [f"{p50(s):>6.2f} / {p99(s):<6.2f}" for s in (direct, relayed, proxied, added)]
        print(f"   {flavour:<8} {cells[0]:>15} {cells[1]:>16} {cells[2]:>16} {cells[3]:>14} "
              f"{p50(proxied) / p50(direct):>8.2f}x")
    print(f"\n   proxy CPU per request: {cpu_ms['relayed']:.2f} ms relaying alone, {cpu_ms['proxied']:.2f} ms "
          "relaying and guarding")
    worst = max(added_p50.values())
    verdict = "met" if worst < TARGET_ADDED_P50_MS else "NOT met"
    print(f"   target: added p50 < {TARGET_ADDED_P50_MS:.0f} ms on a 1,000-char answer: {verdict} ({worst:.2f} ms)\n")
    print(f"2. Throughput, {options.concurrency} concurrent clients, {options.duration:.0f} s each "
          f"(client, model, proxy and Redis share {os.cpu_count()} cores)\n")
    for name, rate in rates.items():
        print(f"   {name:<8} {rate:>8.1f} requests/s ({rate / rates['direct']:.2f}x of direct)")


if __name__ == "__main__":
    main()
