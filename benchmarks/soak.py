"""Load and soak: many concurrent streaming and non-streaming clients against `textguard proxy`
in front of a fake model, for a bounded time, watching errors, latency, memory and leaks.

    python -m benchmarks.soak [--duration 300] [--streams 40] [--requests 8] [--corpus-fraction 1.0]
                              [--quick]

Processes on 127.0.0.1: the embedded Redis holding the shared corpus, the tests' fake model
(paced: 2 characters every 10 ms while streaming), `textguard proxy` in front of it (fail mode
closed, so that a check overrun under load blocks rather than passes), and this client.
`--streams` clients stream chat answers back to back and `--requests` clients ask for whole
ones; half of the answers carry a 300-character corpus passage. For every guarded answer the
client checks the leakage bound: no released run of the passage longer than Q normalised
characters. Printed: requests served and failed, latency p50/p99 (time to first token and
total for streams), skipped checks, the proxy's memory (RSS) sampled through the run, and the
verdict against the stated bound: RSS at the end within MEMORY_BOUND_MIB of RSS after warm-up.
The baseline beside the guarded figures is the same load sent straight to the fake model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx2
import psutil

from benchmarks._harness import (
    chat_request,
    corpus_passage,
    delta_text,
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
from tests.support.helpers import longest_shared_run
from tests.support.servers import spawn
from textguard import Document, Settings

SEED = 20240601
QUOTE_CHARS = Settings().quote_chars
MEMORY_BOUND_MIB = 64.0
SAMPLE_EVERY_S = 10.0
WARMUP_S = 10.0


@dataclass
class Tally:
    """What one target saw over a run."""

    served: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    total_ms: list[float] = field(default_factory=list)
    first_token_ms: list[float] = field(default_factory=list)
    leaks: list[int] = field(default_factory=list)  # longest released run of a passage, per copied answer


async def stream_once(client: httpx2.AsyncClient, url: str, text: str, tally: Tally) -> str:
    started = time.perf_counter()
    first = None
    pieces: list[str] = []
    async with client.stream("POST", url + "/v1/chat/completions", json=chat_request(text, stream=True)) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            content = delta_text(json.loads(line[6:]))
            if content:
                first = first or time.perf_counter()
                pieces.append(content)
    tally.total_ms.append((time.perf_counter() - started) * 1000)
    if first is not None:
        tally.first_token_ms.append((first - started) * 1000)
    return "".join(pieces)


async def ask_once(client: httpx2.AsyncClient, url: str, text: str, tally: Tally) -> str:
    started = time.perf_counter()
    response = await client.post(url + "/v1/chat/completions", json=chat_request(text))
    response.raise_for_status()
    tally.total_ms.append((time.perf_counter() - started) * 1000)
    return str(response.json()["choices"][0]["message"]["content"])


async def load(url: str, texts: Sequence[tuple[str, str, str]], options: Options, tally: Tally,
               guarded: bool) -> None:
    stop_at = time.perf_counter() + options.duration

    async def client_loop(number: int, streaming: bool) -> None:
        rng = random.Random(number)
        async with httpx2.AsyncClient(timeout=60, trust_env=False) as client:
            while time.perf_counter() < stop_at:
                flavour, text, passage = rng.choice(texts)
                kind = "stream" if streaming else "json"
                try:
                    released = await (stream_once if streaming else ask_once)(client, url, text, tally)
                except httpx2.HTTPStatusError as exc:
                    tally.errors[f"HTTP {exc.response.status_code}"] += 1
                    continue
                except (httpx2.HTTPError, ValueError) as exc:
                    tally.errors[type(exc).__name__] += 1
                    continue
                tally.served[kind] += 1
                if guarded and flavour == "copied":
                    tally.leaks.append(longest_shared_run(released, passage))

    await asyncio.gather(*(client_loop(n, True) for n in range(options.streams)),
                         *(client_loop(options.streams + n, False) for n in range(options.requests)))


async def sample_memory(process: psutil.Process, samples: list[tuple[float, float]], stop: asyncio.Event) -> None:
    started = time.perf_counter()
    while not stop.is_set():
        samples.append((time.perf_counter() - started, process.memory_info().rss / 2**20))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)
    samples.append((time.perf_counter() - started, process.memory_info().rss / 2**20))


async def guarded_run(url: str, texts: Sequence[tuple[str, str, str]], options: Options,
                      process: psutil.Process) -> tuple[Tally, list[tuple[float, float]]]:
    warm = Tally()
    await load(url, texts, Options(WARMUP_S, options.streams, options.requests, options.corpus_fraction), warm, True)
    tally, samples, stop = Tally(), [], asyncio.Event()
    sampler = asyncio.ensure_future(sample_memory(process, samples, stop))
    await load(url, texts, options, tally, True)
    stop.set()
    await sampler
    return tally, samples


@dataclass(frozen=True, slots=True)
class Options:
    duration: float
    streams: int
    requests: int
    corpus_fraction: float


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, help="seconds of the guarded run (default 300)")
    parser.add_argument("--streams", type=int, default=40, help="streaming clients (default 40)")
    parser.add_argument("--requests", type=int, default=8, help="non-streaming clients (default 8)")
    parser.add_argument("--corpus-fraction", type=fraction, help="share of the corpus to index (default 1.0)")
    args = parse_quick(parser, argv, {"duration": 300.0, "corpus_fraction": 1.0},
                       {"duration": 30.0, "corpus_fraction": 0.1}, "30 s on a tenth of the corpus")
    if args.duration <= 0 or args.streams < 0 or args.requests < 0:
        parser.error("--duration > 0, --streams and --requests >= 0")
    return Options(args.duration, args.streams, args.requests, args.corpus_fraction)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    with scratch_index("soak") as (settings, _):
        documents = load_corpus(options.corpus_fraction)
        index_corpus(settings, documents)
        texts = with_passages(mixed_answers(60, documents), documents)
        env = {"TEXTGUARD_HOME": str(settings.home), "TEXTGUARD_INDEX": settings.index,
               "TEXTGUARD_FAIL_MODE": "closed"}
        # the model's pace: 2 characters every 10 ms
        with fake_model_process(FAKE_MODEL_DELAY="0.01", FAKE_MODEL_CHUNK_CHARS="2") as model_url, \
                spawn(["proxy", "--upstream", model_url, "--port", "0"], env) as (proxy, proxy_url):
            process = psutil.Process(proxy.pid)
            bare = Tally()
            asyncio.run(load(model_url, texts, Options(min(options.duration, 30.0), options.streams,
                                                       options.requests, options.corpus_fraction), bare, False))
            tally, memory = asyncio.run(guarded_run(proxy_url, texts, options, process))
            # the checks of clients that hung up may still be running: wait for them, and say how long
            ended = time.perf_counter()
            try:
                skipped: dict[str, float] | None = _skipped(httpx2.get(proxy_url + "/metrics", timeout=120).text)
            except httpx2.HTTPError:  # still report what the run saw
                skipped = None
            drain_s = time.perf_counter() - ended
    report(options, bare, tally, memory, skipped, drain_s)


def _skipped(metrics: str) -> dict[str, float]:
    """Skipped checks by reason, from the proxy's /metrics (warm-up included)."""
    found = re.findall(r'^textguard_checks_skipped_total\{reason="([a-z_]+)"\} ([0-9.e+]+)$', metrics, re.MULTILINE)
    return {reason: float(count) for reason, count in found}


def with_passages(pool: Sequence[tuple[str, str]], documents: Sequence[Document]) -> list[tuple[str, str, str]]:
    """(flavour, answer, passage): the clean answers of `pool` as they are, and each of them
    again with a PASSAGE_CHARS corpus passage in the middle (the passage kept, to check leaks)."""
    rng = random.Random(SEED)
    result = []
    for _, text in (item for item in pool if item[0] == "clean"):
        passage = corpus_passage(documents, rng)
        result += [("clean", text, ""), ("copied", text[:350] + "\n\n" + passage + "\n\n" + text[350:700], passage)]
    return result


def report(options: Options, bare: Tally, tally: Tally, memory: list[tuple[float, float]],
           skipped: dict[str, float] | None, drain_s: float) -> None:
    print(f"textguard soak · {os.cpu_count()} cores · {options.streams} streaming + {options.requests} "
          f"non-streaming clients · {options.duration:.0f} s guarded (baseline: {min(options.duration, 30):.0f} s "
          "straight to the model)\n")
    for name, t, seconds in (("direct", bare, min(options.duration, 30.0)), ("guarded", tally, options.duration)):
        served = sum(t.served.values())
        print(f"  {name:<8} served {served:>6} ({t.served['stream']} streams, {t.served['json']} whole; "
              f"{served / seconds:.1f}/s), errors {sum(t.errors.values())} {dict(t.errors) or ''}")
        print(f"           total p50/p99 {p50(t.total_ms):.0f} / {p99(t.total_ms):.0f} ms, "
              f"first token p50/p99 {p50(t.first_token_ms):.0f} / {p99(t.first_token_ms):.0f} ms")
    worst = max(tally.leaks, default=0)
    print(f"\n  leakage: {len(tally.leaks)} guarded answers carried a passage; longest released run "
          f"{worst} normalised chars (bound Q = {QUOTE_CHARS}): {'held' if worst <= QUOTE_CHARS else 'BROKEN'}")
    if skipped is None:
        print(f"  proxy did not answer /metrics within {drain_s:.0f} s of the load stopping: FAILED")
    else:
        print(f"  skipped checks (fail mode closed: each blocked its answer): {skipped or 'none'}")
        print(f"  proxy answered /metrics {drain_s:.1f} s after the load stopped")
    print("  proxy RSS (MiB) over the run: " + ", ".join(f"{t:.0f}s {rss:.0f}" for t, rss in memory))
    growth = memory[-1][1] - memory[0][1]
    verdict = "within" if growth <= MEMORY_BOUND_MIB else "BEYOND"
    print(f"  memory growth {growth:+.1f} MiB after warm-up: {verdict} the bound of {MEMORY_BOUND_MIB:.0f} MiB")


if __name__ == "__main__":
    main()
