"""What the guarded proxy adds: `textguard proxy` in front of a model server, against calling the
model directly, in one run on the shared data.

    python benchmarks/proxy.py [--corpus-fraction 1.0] [--requests 300] [--concurrency 16]
                               [--duration 15] [--quick]

Four processes on 127.0.0.1: the embedded Redis holding the shared corpus (13.2 M characters by
default), the fake OpenAI-compatible model of the tests (it answers with the user's message, so the
answer is chosen here) under uvicorn, `textguard proxy --upstream` in front of it, and this client
(httpx2 on asyncio). Answers are non-streaming chat completions of about 1,000 characters: real
chat answers (clean, passed) and the same with a 300-character corpus passage (rewritten).
A second proxy with guarding switched off separates what relaying costs from what checking costs.
Printed: (1) one request at a time, the three targets in turn, so all see the same noise:
latency p50/p99, the latency the guarded proxy adds, and each proxy's CPU per request; (2)
requests per second at a fixed concurrency for each, and the ratio to direct. Takes about 2 minutes (most of
it indexing the corpus); --quick indexes a tenth of it and runs shorter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx2
import numpy as np
import psutil

from textguard import Settings

BENCHMARKS = Path(__file__).resolve().parent
TESTS = BENCHMARKS.parent / "tests"
sys.path[:0] = [str(BENCHMARKS), str(TESTS)]  # the corpus and answer loaders, the process runner: reused
from servers import spawn  # noqa: E402
from stream import build_index, load_corpus, with_passage  # noqa: E402

SEED = 20241202
ANSWER_CHARS = 1000
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
    parser.add_argument("--corpus-fraction", type=float, help="share of each corpus file to index (default 1.0)")
    parser.add_argument("--requests", type=int, help="sequential requests per target (default 300)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients for throughput (default 16)")
    parser.add_argument("--duration", type=float, help="seconds of each throughput run (default 15)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the corpus, 100 requests, 5 s runs")
    args = parser.parse_args(argv)
    quick = {"corpus_fraction": 0.1, "requests": 100, "duration": 5.0}
    full = {"corpus_fraction": 1.0, "requests": 300, "duration": 15.0}
    chosen = quick if args.quick else full
    values = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in chosen.items()}
    if not 0 < values["corpus_fraction"] <= 1 or values["requests"] < 10 or args.concurrency < 1:
        parser.error("--corpus-fraction in (0, 1], --requests >= 10, --concurrency >= 1")
    return Options(concurrency=args.concurrency, **values)


def answers(count: int, documents: Sequence[object]) -> list[tuple[str, str]]:
    """(flavour, text): ~1,000-character chat answers, half of them with a corpus passage inside."""
    with (BENCHMARKS.parents[1] / "shared" / "data" / "llm_answers_zh.jsonl").open(encoding="utf-8") as handle:
        texts = [r["text"] for r in map(json.loads, handle) if r.get("cjk_ratio", 0) >= 0.5 and len(r["text"]) > 200]
    rng = random.Random(SEED)
    result = []
    for index in range(count):
        text = ""
        while len(text) < ANSWER_CHARS:
            text += rng.choice(texts) + "\n\n"
        text = text[:ANSWER_CHARS]
        if index % 2:
            text = with_passage(text[:700], documents, rng)  # type: ignore[arg-type]
        result.append(("copied" if index % 2 else "clean", text))
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_model() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "llm_app:default_app", "--app-dir",
                                str(TESTS), "--port", str(port), "--log-level", "warning", "--no-access-log"])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait for the condition "answers", bounded
        try:
            httpx2.get(url + "/v1/other", timeout=1)
            return process, url
        except httpx2.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the fake model did not start")


async def one(client: httpx2.AsyncClient, url: str, text: str) -> float:
    started = time.perf_counter()
    response = await client.post(url + "/v1/chat/completions",
                                 json={"model": "fake", "messages": [{"role": "user", "content": text}]})
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


def pct(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(samples, q))


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    with tempfile.TemporaryDirectory(prefix="textguard-proxy-bench-") as home:
        settings = Settings(home=Path(home), index="bench")
        documents = load_corpus(options.corpus_fraction)
        seconds = build_index(settings, documents)
        chars = sum(len(d.text) for d in documents)
        print(f"textguard proxy benchmark · {platform.python_implementation()} {platform.python_version()} · "
              f"{os.cpu_count()} cores · corpus {len(documents):,} documents, {chars:,} chars "
              f"(indexed in {seconds:.0f} s)\n")
        texts = answers(options.requests, documents)
        model, model_url = start_model()
        env = {"TEXTGUARD_HOME": home, "TEXTGUARD_INDEX": "bench"}
        unguarded = {**env, "TEXTGUARD_GUARD_PATHS": "/guard-nothing"}
        try:
            with spawn(["proxy", "--upstream", model_url, "--port", "0"], env) as (guarded, proxied_url), \
                    spawn(["proxy", "--upstream", model_url, "--port", "0"], unguarded) as (relay, relayed_url):
                targets = {"direct": model_url, "relayed": relayed_url, "proxied": proxied_url}
                processes = {"relayed": psutil.Process(relay.pid), "proxied": psutil.Process(guarded.pid)}
                latency, cpu_ms = asyncio.run(sequential(targets, texts, processes))
                rates = {name: asyncio.run(throughput(url, texts, options.concurrency, options.duration))
                         for name, url in targets.items()}
        finally:
            model.terminate()
            model.wait(timeout=10)
    report(latency, cpu_ms, rates, options)


def report(latency: Latencies, cpu_ms: dict[str, float], rates: dict[str, float], options: Options) -> None:
    print(f"1. One request at a time ({options.requests} per target, ~{ANSWER_CHARS:,}-char answers; "
          "direct to the model, through the proxy with guarding off (relayed) and on (proxied), in turn)\n")
    print(f"   {'answers':<8} {'direct p50/p99':>15} {'relayed p50/p99':>16} {'proxied p50/p99':>16}"
          f" {'added p50/p99':>14} {'ratio p50':>9}   (ms)")
    added_p50 = {}
    for flavour in ("clean", "copied"):
        direct, relayed, proxied = (latency[name][flavour] for name in ("direct", "relayed", "proxied"))
        added = [p - d for p, d in zip(proxied, direct, strict=True)]
        added_p50[flavour] = pct(added, 50)
        cells = [f"{pct(s, 50):>6.2f} / {pct(s, 99):<6.2f}" for s in (direct, relayed, proxied, added)]
        print(f"   {flavour:<8} {cells[0]:>15} {cells[1]:>16} {cells[2]:>16} {cells[3]:>14} "
              f"{pct(proxied, 50) / pct(direct, 50):>8.2f}x")
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
