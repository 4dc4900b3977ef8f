"""Speed of textguard, side by side with what it must beat, in one run on the shared data.

    python -m benchmarks.speed [--corpus-fraction 1.0] [--repeats 200] [--stock-items 50000]
                               [--stock-repeats 20] [--quick] [--profile]

Prints one report: (1) ingest throughput and Redis bytes per corpus character, (2) check latency
for clean and copied answers of 200, 1,000 and 4,000 characters beside jieba alone (the floor:
every check must segment) and beside datasketch's stock MinHashLSH on Redis fed one MinHash per
window (what a user of the library would build), (3) where a 1,000-character check spends its
time. Everything runs against a fresh embedded Redis in a temporary directory (shut down at the
end), with the settings textguard would load: its defaults unless TEXTGUARD_* variables or a
textguard.toml say otherwise. The data are read in place from ../shared/data.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import inspect
import itertools
import os
import platform
import pstats
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import jieba
import numpy as np
import redis
import xxhash
from datasketch import MinHash, MinHashLSH

from benchmarks import require_data
from benchmarks._harness import (
    corpus_passage,
    fraction,
    index_corpus,
    load_answers,
    load_corpus,
    p50,
    p99,
    parse_quick,
    scratch_index,
)
from textguard import Corpus, Document, Guard, Settings
from textguard._redis import connect_async, embedded_socket
from textguard.detect import Detector
from textguard.normalise import Normalised, normalise
from textguard.segment import Segmenter
from textguard.sketch import SCHEME, Sketcher, SketchParams, shingle_bytes, shingle_hash
from textguard.sketching import TextSketcher
from textguard.store import IndexReader

LENGTHS = (200, 1000, 4000)
COPIED_SHARE = 0.4  # of a copied answer's length, taken from one corpus document
TEXTS_PER_CASE = 10  # distinct texts per (length, flavour); timed calls cycle through them
WARMUP_ROUNDS = 2  # untimed passes over a case's texts before timing it
STOCK_BASENAME = b"speedbench_stock"
INDEX = "speed"
SEED = 20240601
TARGET_BYTES_PER_CHAR = 10.0
TARGET_JIEBA_RATIO = 1.4  # textguard p50 / jieba p50, at 1,000 chars
TARGET_STOCK_RATIO = 50.0  # stock p50 / textguard p50
PROFILE_LINES = 25
FULL = {"corpus_fraction": 1.0, "repeats": 200, "stock_items": 50_000, "stock_repeats": 20}
QUICK = {"corpus_fraction": 0.1, "repeats": 50, "stock_items": 10_000, "stock_repeats": 5}


@dataclass(frozen=True, slots=True)
class Options:
    corpus_fraction: float
    repeats: int
    stock_items: int
    stock_repeats: int
    profile: bool


def parse_options(argv: Sequence[str] | None = None) -> Options:
    """Command-line options; `--quick` lowers the defaults, explicit flags still win."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus-fraction", type=fraction, help="share of each corpus file to index (default 1.0)")
    parser.add_argument("--repeats", type=int, help="timed calls per textguard/jieba case (default 200)")
    parser.add_argument("--stock-items", type=int, help="windows indexed into the stock MinHashLSH (default 50,000)")
    parser.add_argument("--stock-repeats", type=int, help="timed queries per stock case (default 20; they are slow)")
    parser.add_argument("--profile", action="store_true", help="also print cProfile of 1,000-char clean checks")
    args = parse_quick(parser, argv, FULL, QUICK, "corpus fraction 0.1, fewer repeats, smaller stock index")
    if min(args.repeats, args.stock_items, args.stock_repeats) < 1:
        parser.error("counts must be at least 1")
    return Options(**{name: getattr(args, name) for name in FULL}, profile=args.profile)


# ---------------------------------------------------------------- data

def clean_texts(answers: Sequence[str], length: int, count: int) -> list[str]:
    """`count` texts of exactly `length` chars, each starting at a different answer and
    continuing into the following ones when one answer is too short."""
    step = len(answers) // count
    texts = []
    for i in range(count):
        pieces: list[str] = []
        for answer in itertools.islice(itertools.cycle(answers), i * step, None):
            pieces.append(answer)
            if sum(map(len, pieces)) + 2 * len(pieces) >= length:
                break
        texts.append("\n\n".join(pieces)[:length])
    return texts


def copied_texts(clean: Sequence[str], sources: Sequence[Document], rng: random.Random) -> list[str]:
    """Each clean text with a corpus passage of COPIED_SHARE of its length pasted in, length kept.

    The passage goes after the first 30% of the answer, as a model would quote mid-answer.
    """
    texts = []
    for text in clean:
        size = round(COPIED_SHARE * len(text))
        passage = corpus_passage(sources, rng, size, min_document=size + 100)
        head = round(0.3 * len(text))
        texts.append(text[:head] + passage + text[head:len(text) - size])
    return texts


# ---------------------------------------------------------------- timing helpers

def time_calls(call: Callable[[str], object], texts: Sequence[str], repeats: int) -> list[float]:
    """Milliseconds per call, cycling through `texts`, after WARMUP_ROUNDS untimed passes over them."""
    for text in list(texts) * WARMUP_ROUNDS:
        call(text)
    samples = []
    for text in itertools.islice(itertools.cycle(texts), repeats):
        started = time.perf_counter()
        call(text)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def time_async_calls(call: Callable[[str], Awaitable[object]], texts: Sequence[str],
                           repeats: int) -> list[float]:
    """`time_calls` for coroutines: wall time around each awaited call."""
    for text in list(texts) * WARMUP_ROUNDS:
        await call(text)
    samples = []
    for text in itertools.islice(itertools.cycle(texts), repeats):
        started = time.perf_counter()
        await call(text)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def settle(client: redis.Redis) -> None:
    """Write the snapshot the embedded Redis owes for the writes so far, and flush it to disk:
    its background save and the kernel's writeback would otherwise run during the timings."""
    while True:
        while client.info("persistence")["rdb_bgsave_in_progress"]:
            time.sleep(0.1)
        try:
            client.save()
            break
        except redis.ResponseError:
            if not client.info("persistence")["rdb_bgsave_in_progress"]:
                raise  # not the race with a background save that started in between
    os.sync()


def redis_memory(client: redis.Redis, pattern: bytes) -> tuple[int, int]:
    """(keys, bytes) that Redis spends on keys matching `pattern` (MEMORY USAGE, exact)."""
    keys = 0
    total = 0
    iterator = client.scan_iter(match=pattern, count=2000)
    while batch := list(itertools.islice(iterator, 1000)):
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
        total += sum(v or 0 for v in pipe.execute())
        keys += len(batch)
    return keys, total


# ---------------------------------------------------------------- 1. ingest

@dataclass(frozen=True, slots=True)
class IngestResult:
    documents: int
    characters: int
    seconds: float
    stats: dict[str, Any]


def ingest(settings: Settings, documents: Sequence[Document]) -> IngestResult:
    """Index the corpus into the fresh embedded Redis, the way `textguard corpus add` does."""
    report, seconds = index_corpus(settings, documents, desc="ingest")
    with Corpus(settings) as corpus:
        stats = corpus.stats()
    return IngestResult(len(documents), report.characters, seconds, stats)


# ---------------------------------------------------------------- 2. latency: the stock baseline

def window_starts(count: int, width: int, stride: int) -> range:
    """Start of each window of `width` shingles at `stride`; a shorter text is one window, as in textguard."""
    if count <= width:
        return range(min(count, 1))
    return range(0, count - width + 1, stride)


@dataclass(frozen=True, slots=True)
class StockBuild:
    windows: int
    documents: list[Document]  # fully indexed, so passages copied from them are findable
    chars: int
    seconds: float
    redis_keys: int
    redis_bytes: int


class StockLSH:
    """datasketch's MinHashLSH with its own Redis storage, used as its documentation shows.

    Same sketch as textguard (num_perm, bands x rows, window, shingles, seed, affine32) over the
    same tokens; the hash of a shingle is xxh32 of its bytes, the cheapest `hashfunc` a user
    could pick, so that the baseline's time is not inflated by a slow hash.
    """

    def __init__(self, redis_config: dict[str, Any], params: SketchParams) -> None:
        self.params = params
        self.lsh = MinHashLSH(threshold=params.threshold, num_perm=params.num_perm, storage_config={
            "type": "redis", "basename": STOCK_BASENAME, "redis": redis_config})
        if (self.lsh.b, self.lsh.r) != (params.bands, params.rows):
            raise SystemExit(f"stock LSH chose b={self.lsh.b}, r={self.lsh.r}; textguard uses "
                             f"b={params.bands}, r={params.rows}: the comparison would be unfair")
        self.template = MinHash(num_perm=params.num_perm, seed=params.seed, hashfunc=xxhash.xxh32_intdigest,
                                scheme=SCHEME)

    def minhashes(self, tokens: Sequence[str], stride: int, template: MinHash | None = None) -> Iterator[MinHash]:
        """One MinHash per window (template copy + update_batch: the fastest way datasketch offers)."""
        shingles = shingle_bytes(tokens, self.params.shingle)
        for start in window_starts(len(shingles), self.params.window, stride):
            minhash = (template or self.template).copy()
            minhash.update_batch(shingles[start:start + self.params.window])
            yield minhash

    def build(self, documents: Sequence[Document], segmenter: Segmenter, cap: int, client: redis.Redis) -> StockBuild:
        """Index windows at stride = window, in corpus order, until `cap` windows are in; `client`
        measures the memory the index takes."""
        todo: list[tuple[Document, list[str]]] = []
        planned = 0
        for doc in documents:
            tokens = segmenter.tokens(normalise(doc.text).text)[0]
            count = len(window_starts(len(tokens) - self.params.shingle + 1, self.params.window, self.params.window))
            if planned + count > cap:
                break
            todo.append((doc, tokens))
            planned += count
        started = time.perf_counter()
        with self.lsh.insertion_session() as session:
            for doc, tokens in todo:
                for number, minhash in enumerate(self.minhashes(tokens, self.params.window)):
                    session.insert(f"{doc.doc_id}/{number}", minhash, check_duplication=False)
        seconds = time.perf_counter() - started
        keys, used = redis_memory(client, STOCK_BASENAME + b"*")
        return StockBuild(planned, [doc for doc, _ in todo], sum(len(d.text) for d, _ in todo), seconds, keys, used)

    def query(self, tokens: Sequence[str], stride: int) -> int:
        """Candidates of every window of `tokens` (what a stock user would do for one answer)."""
        return sum(len(self.lsh.query(minhash)) for minhash in self.minhashes(tokens, stride))

    def check_same_sketch(self, sketcher: Sketcher, tokens: Sequence[str]) -> None:
        """Refuse to compare unless stock MinHash objects (with textguard's shingle hash) reproduce
        textguard's window signatures bit for bit: then both sides sketch the same windows."""
        template = MinHash(num_perm=self.params.num_perm, seed=self.params.seed, hashfunc=shingle_hash, scheme=SCHEME)
        stock = np.array([m.hashvalues for m in self.minhashes(tokens, 1, template)], dtype=np.uint32)
        ours = sketcher.signatures(tokens)
        if not np.array_equal(stock, ours):
            raise SystemExit("stock MinHash and textguard signatures differ: the stock baseline is misconfigured")


# ---------------------------------------------------------------- 2. latency: cases and timings

@dataclass(frozen=True, slots=True)
class Case:
    length: int
    flavour: str  # "clean" or "copied"
    texts: list[str]


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    textguard: list[float]
    jieba: list[float]
    segment: list[float]
    stock_naive: list[float]  # every window, stride 1
    stock_strided: list[float]  # stride = window
    verdicts: Counter[str]
    stock_candidates: float  # per query text, stride 1


def build_cases(answers: Sequence[str], sources: Sequence[Document]) -> list[Case]:
    rng = random.Random(SEED)
    cases = []
    for length in LENGTHS:
        clean = clean_texts(answers, length, TEXTS_PER_CASE)
        cases.append(Case(length, "clean", clean))
        cases.append(Case(length, "copied", copied_texts(clean, sources, rng)))
    return cases


async def measure_case(case: Case, guard: Guard, stock: StockLSH, options: Options) -> CaseResult:
    segmenter = guard.sketcher.segmenter
    verdicts = Counter[str]([(await guard.check(text)).verdict for text in case.texts])
    checks = await time_async_calls(guard.check, case.texts, options.repeats)
    lcut = time_calls(jieba.lcut, case.texts, options.repeats)
    normalised = {text: normalise(text).text for text in case.texts}
    segment = time_calls(lambda text: segmenter.tokens(normalised[text]), case.texts, options.repeats)
    tokens = {text: segmenter.tokens(normalised[text])[0] for text in case.texts}
    candidates = sum(stock.query(tokens[text], 1) for text in case.texts) / len(case.texts)
    window = stock.params.window
    naive = time_calls(lambda text: stock.query(tokens[text], 1), case.texts, options.stock_repeats)
    strided = time_calls(lambda text: stock.query(tokens[text], window), case.texts, options.stock_repeats)
    return CaseResult(case, checks, lcut, segment, naive, strided, verdicts, candidates)


# ---------------------------------------------------------------- 3. breakdown

class Stages:
    """Seconds spent per stage during the current call, collected into per-call samples (ms)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.current: defaultdict[str, float] = defaultdict(float)
        self.samples: dict[str, list[float]] = {name: [] for name in (*names, "total")}

    def add(self, stage: str, seconds: float) -> None:
        self.current[stage] += seconds

    def close_call(self, total_seconds: float) -> None:
        """Record the call just made; a stage it did not reach (no hits: no fetch) counts as 0."""
        self.current["total"] = total_seconds
        for stage, values in self.samples.items():
            values.append(self.current[stage] * 1000)
        self.current.clear()


class Probe:
    """Stands in for an object and times every call of some of its methods (sync or async), so
    that the stages inside `Detector.find` are timed without touching textguard's code."""

    def __init__(self, target: object, stages: Stages, methods: dict[str, str]) -> None:
        self._target, self._stages, self._methods = target, stages, methods

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        stage = self._methods.get(name)
        if stage is None:
            return value
        if inspect.iscoroutinefunction(value):
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await value(*args, **kwargs)
                finally:
                    self._stages.add(stage, time.perf_counter() - started)
            return timed_async

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self._stages.add(stage, time.perf_counter() - started)
        return timed


class TimedDetector(Detector):
    """A Detector that also times its CPU preparation (segment, sketch, key dedup)."""

    def __init__(self, sketcher: TextSketcher, reader: IndexReader, stages: Stages) -> None:
        super().__init__(sketcher, reader)
        self._stages = stages

    def prepare(self, normalised: Normalised) -> tuple[np.ndarray, np.ndarray]:
        started = time.perf_counter()
        try:
            return super().prepare(normalised)
        finally:
            self._stages.add("prepare", time.perf_counter() - started)


async def breakdown(settings: Settings, texts: Sequence[str], repeats: int) -> dict[str, list[float]]:
    """Per-stage milliseconds of `Detector.find` over `repeats` calls cycling through `texts`."""
    stages = Stages(("normalise", "prepare", "segment", "sketch", "lookup", "fetch"))
    sketcher = TextSketcher(settings)
    sketcher.segmenter = cast(Segmenter, Probe(sketcher.segmenter, stages, {"tokens": "segment"}))
    sketcher.minhash = cast(Sketcher, Probe(sketcher.minhash, stages, {"band_runs": "sketch"}))
    client = connect_async(settings)
    reader = Probe(IndexReader(client, sketcher.layout), stages, {"lookup": "lookup", "regions": "fetch"})
    detector = TimedDetector(sketcher, cast(IndexReader, reader), stages)
    try:
        for text in itertools.islice(itertools.cycle(texts), len(texts) * WARMUP_ROUNDS + repeats):
            started = time.perf_counter()
            normalised = normalise(text)
            stages.add("normalise", time.perf_counter() - started)
            await detector.find(normalised)
            stages.close_call(time.perf_counter() - started)
    finally:
        await client.aclose()
    samples = {stage: values[len(texts) * WARMUP_ROUNDS:] for stage, values in stages.samples.items()}
    prepare = np.array(samples.pop("prepare"))
    samples["dedup"] = list(prepare - np.array(samples["segment"]) - np.array(samples["sketch"]))
    samples["align"] = list(np.array(samples["total"]) - np.array(samples["normalise"]) - prepare
                            - np.array(samples["lookup"]) - np.array(samples["fetch"]))
    return samples


# ---------------------------------------------------------------- profile

async def profile_checks(guard: Guard, texts: Sequence[str], repeats: int) -> pstats.Stats:
    """cProfile of `repeats` checks cycling through `texts` (after the warm-up the others had)."""
    for text in list(texts) * WARMUP_ROUNDS:
        await guard.check(text)
    profiler = cProfile.Profile()
    profiler.enable()
    for text in itertools.islice(itertools.cycle(texts), repeats):
        await guard.check(text)
    profiler.disable()
    return pstats.Stats(profiler, stream=sys.stdout)


# ---------------------------------------------------------------- report

def ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_header(settings: Settings, params: SketchParams, redis_version: str) -> None:
    """Machine, software and sketch parameters: the numbers below mean little without them."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    print(f"textguard speed benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    print(f"machine: nproc {len(os.sched_getaffinity(0))} ({cpu}), {platform.platform()}, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"software: Python {platform.python_version()}, redis-server {redis_version} (embedded), "
          f"datasketch {version('datasketch')}, jieba {version('jieba')}, redis-py {version('redis')}")
    print(f"sketch: num_perm={params.num_perm}, bands={params.bands} x rows={params.rows}, "
          f"window={params.window} shingles of {params.shingle} tokens, threshold={params.threshold}, "
          f"bucket_bits={settings.bucket_bits or 'auto'}")


def print_ingest(result: IngestResult, fraction: float) -> None:
    stats = result.stats
    print(f"\n1. Ingest (corpus fraction {fraction:g}: {result.documents:,} documents, {result.characters:,} chars; "
          "one process, embedded Redis with its default snapshots)")
    print(f"   wall time                      {result.seconds:10.1f} s")
    print(f"   throughput                     {result.characters / result.seconds:10,.0f} chars/s")
    print(f"   Redis bytes                    {stats['redis_bytes']:10,}")
    print(f"   Redis bytes per corpus char    {stats['bytes_per_char']:10.2f}   (text included; target <= "
          f"{TARGET_BYTES_PER_CHAR:g}: {mark(stats['bytes_per_char'] <= TARGET_BYTES_PER_CHAR)})")
    print(f"   band entries                   {stats['windows']:10,}   "
          f"({stats['windows'] / max(stats['characters'], 1):.3f} per char)")


def print_latency(results: Sequence[CaseResult], stock: StockBuild, options: Options, params: SketchParams) -> None:
    print(f"\n2. Check latency, ms (textguard, jieba and segment: {options.repeats} calls; stock: "
          f"{options.stock_repeats} calls; each case cycles through {TEXTS_PER_CASE} texts)")
    header = (f"   {'text':<13}{'tg p50':>8}{'tg p99':>8}{'jieba':>8}{'tg seg':>8}{'tg/jieba':>9}"
              f"{'stock s=1':>11}{'stock s=W':>11}{'s=1/tg':>8}{'s=W/tg':>8}  {'verdicts':<22}{'stock cand.':>11}")
    print(header)
    for r in results:
        tg = p50(r.textguard)
        verdicts = " ".join(f"{k} {v}" for k, v in sorted(r.verdicts.items()))
        print(f"   {f'{r.case.length:,} {r.case.flavour}':<13}{ms(tg):>8}{ms(p99(r.textguard)):>8}"
              f"{ms(p50(r.jieba)):>8}{ms(p50(r.segment)):>8}{tg / p50(r.jieba):>9.2f}"
              f"{ms(p50(r.stock_naive)):>11}{ms(p50(r.stock_strided)):>11}"
              f"{p50(r.stock_naive) / tg:>8.1f}{p50(r.stock_strided) / tg:>8.1f}  {verdicts:<22}"
              f"{r.stock_candidates:>11.1f}")
    print("   tg = textguard `await guard.check(text)` (normalise, segment, sketch, lookup, verify, policy);")
    print("   jieba = `jieba.lcut(text)` (HMM on); tg seg = textguard's `segmenter.tokens` on the normalised text;")
    print(f"   stock = datasketch MinHashLSH (Redis storage, same server, b={params.bands}, r={params.rows}): "
          "MinHash per window (template copy + update_batch, xxh32) + `lsh.query` per window,")
    print(f"   s=1 every window, s=W every {params.window}th window only (a cheaper, weaker search); both exclude "
          "normalise and segment, which textguard's time includes.")
    print(f"   stock index: {stock.windows:,} windows at stride {params.window} (capped at --stock-items "
          f"{options.stock_items:,}) from {len(stock.documents):,} documents, {stock.chars:,} chars; built in "
          f"{stock.seconds:.1f} s; {stock.redis_keys:,} Redis keys, {stock.redis_bytes:,} bytes "
          f"({stock.redis_bytes / max(stock.windows, 1):,.0f} per window, "
          f"{stock.redis_bytes / max(stock.chars, 1):.1f} per char covered, text not included)")
    print("   copied passages come from documents in the stock index, so both sides can find them.")
    by_key = {(r.case.length, r.case.flavour): r for r in results}
    for flavour in ("clean", "copied"):
        r = by_key[(1000, flavour)]
        ratio = p50(r.textguard) / p50(r.jieba)
        print(f"   target textguard/jieba <= {TARGET_JIEBA_RATIO:g} at 1,000 chars, {flavour}: {ratio:.2f} "
              f"{mark(ratio <= TARGET_JIEBA_RATIO)}")
    worst = min(p50(r.stock_naive) / p50(r.textguard) for r in results)
    print(f"   target stock(s=1)/textguard >= {TARGET_STOCK_RATIO:g} in every case: lowest {worst:.1f} "
          f"{mark(worst >= TARGET_STOCK_RATIO)}")


BREAKDOWN_ROWS = (
    ("normalise", "normalise"),
    ("segment", "segment (jieba, HMM off)"),
    ("sketch", "sketch (band runs)"),
    ("dedup", "band keys deduplicated"),
    ("lookup", "lookup (1 Redis round trip)"),
    ("fetch", "verify: fetch documents"),
    ("align", "verify: align + resolve"),
    ("total", "normalise + Detector.find"),
)


def print_breakdown(breakdowns: dict[str, dict[str, list[float]]], results: Sequence[CaseResult],
                    repeats: int) -> None:
    flavours = list(breakdowns)
    print(f"\n3. Where a 1,000-char check spends its time (median ms over {repeats} checks)")
    print(f"   {'stage':<28}" + "".join(f"{f:>10}" for f in flavours))
    for stage, label in BREAKDOWN_ROWS:
        print(f"   {label:<28}" + "".join(f"{ms(p50(breakdowns[f][stage])):>10}" for f in flavours))
    checks = {r.case.flavour: p50(r.textguard) for r in results if r.case.length == 1000}
    print(f"   {'guard.check p50 (from 2.)':<28}" + "".join(f"{ms(checks[f]):>10}" for f in flavours))
    print("   align = total - the stages above (grouping, alignment, span resolution).")


# ---------------------------------------------------------------- main

async def measure(settings: Settings, cases: Sequence[Case], stock: StockLSH,
                  options: Options) -> tuple[list[CaseResult], dict[str, dict[str, list[float]]], pstats.Stats | None]:
    """Sections 2 and 3 (and the profile) on one event loop, with one Guard as an app would hold it."""
    guard = Guard(settings)
    try:
        results = []
        for case in cases:
            print(f"timing {case.length} {case.flavour}", file=sys.stderr)
            results.append(await measure_case(case, guard, stock, options))
        breakdowns = {case.flavour: await breakdown(settings, case.texts, options.repeats)
                      for case in cases if case.length == 1000}
        profile = None
        if options.profile:
            clean = next(c for c in cases if c.length == 1000 and c.flavour == "clean")
            profile = await profile_checks(guard, clean.texts, options.repeats)
    finally:
        await guard.aclose()
    return results, breakdowns, profile


def run(options: Options, settings: Settings, client: redis.Redis) -> None:
    """Every section, printed as soon as it is measured; `client` is connected to the embedded Redis."""
    sketcher = TextSketcher(settings)
    jieba.initialize()
    print_header(settings, sketcher.params, str(client.info("server")["redis_version"]))

    # The stock index only takes a prefix of the corpus; interleaving the corpus files lets that
    # prefix (and the copied passages drawn from it) cover classical and modern prose alike.
    documents = load_corpus(options.corpus_fraction, interleave=True)
    print(f"ingesting {len(documents):,} documents into {settings.home}", file=sys.stderr)
    print_ingest(ingest(settings, documents), options.corpus_fraction)

    stock = StockLSH({"unix_socket_path": embedded_socket(settings.home)}, sketcher.params)
    print(f"building the stock index ({options.stock_items:,} windows)", file=sys.stderr)
    stock_build = stock.build(documents, sketcher.segmenter, options.stock_items, client)
    cases = build_cases(load_answers(), stock_build.documents)
    copied_1000 = next(c for c in cases if c.length == 1000 and c.flavour == "copied")
    stock.check_same_sketch(sketcher.minhash, sketcher.segmenter.tokens(normalise(copied_1000.texts[0]).text)[0])
    settle(client)

    results, breakdowns, profile = asyncio.run(measure(settings, cases, stock, options))
    print_latency(results, stock_build, options, sketcher.params)
    print_breakdown(breakdowns, results, options.repeats)
    print(f"\nload average after the timings: {os.getloadavg()[0]:.2f}")
    if profile is not None:
        print(f"\nProfile: {options.repeats} checks of 1,000-char clean answers")
        for order in ("cumulative", "tottime"):
            print(f"top {PROFILE_LINES} by {order} time:")
            profile.strip_dirs().sort_stats(order).print_stats(PROFILE_LINES)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    require_data()
    # Settings from the environment or textguard.toml apply (to benchmark tuned parameters), but
    # the index always lives in this run's own embedded Redis.
    with scratch_index(INDEX) as (settings, client):
        run(options, settings, client)


if __name__ == "__main__":
    main()
