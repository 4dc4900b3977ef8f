"""What guarding a stream costs: TextGuardMiddleware against the bare model, in one run on the shared data.

    python -m benchmarks.stream [--corpus-fraction 1.0] [--streams 400] [--tokens-per-second 30]
                                [--duration 20] [--quick] [--profile]

Two real uvicorn servers on 127.0.0.1 run in this process, each in a thread of its own: the fake
OpenAI-compatible model of the tests (it streams the user's message back, 2 characters, about one
token, per chunk), bare and wrapped by TextGuardMiddleware over a fresh embedded Redis that holds
the shared corpus. The client (httpx2 on asyncio) runs in a process of its own, so as not to take
the servers' GIL; Redis is a process of its own too. Answers are real chat answers of 500-1,500
characters (clean) and the same kind with a 300-character corpus passage inside (copied).
Printed: (1) one stream at a time as fast as the model goes: time to first token, total time, CPU
per token; (2) paced streams: the delay of each released chunk, split into the deliberate
hold-back and what the guard adds beyond it; (3) the largest number of concurrent paced streams
for which the guarded server stays within 50 ms (p99) of the bare one. A chunk's production
time is when the model handed it on (see `Tap`); which chunk released which text comes from
replaying the answer through GuardedStream.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import itertools
import json
import math
import multiprocessing
import os
import platform
import pstats
import random
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import httpx2
import redis

from benchmarks import require_data
from benchmarks._harness import (
    PASSAGE_CHARS,
    STREAMED_CHARS,
    CpuMeter,
    CpuSpent,
    chat_request,
    delta_text,
    fraction,
    index_corpus,
    load_answers,
    load_corpus,
    p50,
    p99,
    parse_quick,
    redis_cpu,
    scratch_index,
    with_passage,
)
from tests.support.llm_app import Recorder, create_app
from tests.support.servers import serve
from textguard import Document, Guard, Settings
from textguard.serve.middleware import ASGIApp, Message, Receive, Scope, Send, TextGuardMiddleware
from textguard.stream import GuardedStream

INDEX = "stream"
SEED = 20240601
CHAT_PATH = "/v1/chat/completions"
CHUNK_CHARS = 2  # characters per model chunk: about one token of Chinese
PREAMBLE = 2  # llm_app sends a role chunk and a keep-alive before the content chunks...
TRAILER = 3  # ...and a finish chunk, [DONE] and the closing empty body after them
STREAM_HEADER = b"x-bench-stream"
PACE_HEADER = b"x-bench-pace"
POOL = 24  # answers per flavour
COPIED_EVERY = 10  # under concurrency, every 10th stream carries a copied passage
LADDER = (50, 100, 200, 300, 400)
WARMUP_STREAMS = 2
STAGGER_S = 1.0  # concurrent streams start spread over this long, not in one burst
SETTLE_S = 1.0  # pause after a run, for the servers to finish the streams cut at its end
TARGET_GUARD_US = 50.0  # CPU the guard may add per streamed token
TARGET_BEYOND_P99_MS = 50.0  # p99 delay beyond the hold-back the guard may add over the bare server
TARGET_STREAMS = 200
MIN_PACE_SHARE = 0.95  # under load the guarded model must keep this share of the bare model's pace
PROFILE_STREAMS = 4  # per flavour
PROFILE_LINES = 30
FULL = {"corpus_fraction": 1.0, "duration": 20.0, "fast_streams": 24}
QUICK = {"corpus_fraction": 0.1, "duration": 8.0, "fast_streams": 8}

Schedule = dict[int, tuple[int, int]]  # released chars so far -> (chunk that released them, original end offset)


@dataclass(frozen=True, slots=True)
class Options:
    corpus_fraction: float
    streams: int
    tokens_per_second: float
    duration: float
    fast_streams: int
    profile: bool


def parse_options(argv: Sequence[str] | None = None) -> Options:
    """Command-line options; `--quick` lowers the defaults, explicit flags still win."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--corpus-fraction", type=fraction, help="share of each corpus file to index (default 1.0)")
    parser.add_argument("--streams", type=int, default=LADDER[-1], help="most concurrent streams to try (default 400)")
    parser.add_argument("--tokens-per-second", type=float, default=30.0, help="pace of paced streams (default 30)")
    parser.add_argument("--duration", type=float, help="seconds per paced run (default 20)")
    parser.add_argument("--profile", action="store_true", help="also profile the guarded app on fast streams")
    args = parse_quick(parser, argv, FULL, QUICK, "corpus fraction 0.1, 8 s runs, fewer fast streams")
    if args.duration <= STAGGER_S:
        parser.error(f"--duration must exceed {STAGGER_S} s")
    if args.streams < 1 or args.tokens_per_second <= 0:
        parser.error("--streams and --tokens-per-second must be positive")
    return Options(**{name: getattr(args, name) for name in FULL}, streams=args.streams,
                   tokens_per_second=args.tokens_per_second, profile=args.profile)


# ---------------------------------------------------------------- answers and when their text is released

@dataclass(frozen=True, slots=True)
class Answer:
    flavour: str  # "clean" or "copied"
    text: str
    plain: Schedule  # the bare server releases each chunk as it comes
    guarded: Schedule  # replayed through GuardedStream

    @property
    def chunks(self) -> int:
        return math.ceil(len(self.text) / CHUNK_CHARS)


def plain_schedule(text: str) -> Schedule:
    schedule: Schedule = {}
    for index in range(math.ceil(len(text) / CHUNK_CHARS)):
        end = min((index + 1) * CHUNK_CHARS, len(text))
        schedule[end] = (index, end)
    return schedule


async def guarded_schedule(guard: Guard, text: str) -> Schedule:
    """Replay the model's chunks through the guard's own GuardedStream, with the same settings and index.

    Which chunk releases which text follows from the hold-back and the check step, not from timing:
    knowing it separates the deliberate hold-back of a released chunk from the time the guard took.
    Chunk `chunks` stands for the finish chunk, whose arrival releases the tail.
    """
    stream = GuardedStream(guard)
    schedule: Schedule = {}
    released = 0
    pieces = [text[i:i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]
    for index, piece in enumerate(pieces):
        release = await stream.feed(piece)
        if release.text:
            released += len(release.text)
            schedule[released] = (index, stream._released)  # original offset reached: no public accessor
    release = await stream.finish()
    if release.text:
        schedule[released + len(release.text)] = (len(pieces), len(text))
    return schedule


async def make_answers(settings: Settings, documents: Sequence[Document]) -> list[Answer]:
    rng = random.Random(SEED)
    texts = load_answers(2 * POOL, STREAMED_CHARS)
    flavoured = [("clean", t) for t in texts[:POOL]]
    flavoured += [("copied", with_passage(t, documents, rng)) for t in texts[POOL:]]
    guard = Guard(settings)
    try:
        return [Answer(flavour, text, plain_schedule(text), await guarded_schedule(guard, text))
                for flavour, text in flavoured]
    finally:
        await guard.aclose()


# ---------------------------------------------------------------- servers

class Tap:
    """The fake model as both servers run it: a fast and a paced instance, picked per request by a
    header, with the time of each body message it hands on (to uvicorn, or to the guard) recorded
    per stream: when the model produced each chunk.

    The pace alone (start + k/rate) would not tell: asyncio.sleep overshoots by about a millisecond
    a chunk, and the fake model sleeps only after each send returned, so its clock drifts in both
    servers. A real engine, unlike it, goes on generating while the server is busy.
    """

    def __init__(self, fast: ASGIApp, paced: ASGIApp) -> None:
        self.apps = {b"fast": fast, b"paced": paced}
        self.sends: dict[str, list[float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        times: list[float] = []
        self.sends[headers[STREAM_HEADER].decode()] = times

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.body":
                times.append(time.perf_counter())
            await send(message)

        await self.apps[headers[PACE_HEADER]](scope, receive, timed)


@dataclass(frozen=True, slots=True)
class Server:
    name: str
    url: str
    tap: Tap
    guard: Guard | None  # the middleware's: its count of skipped checks

    def schedule(self, answer: Answer) -> Schedule:
        return answer.guarded if self.guard else answer.plain

    def skipped(self) -> int:
        return sum(self.guard.skipped.values()) if self.guard else 0


def model_tap(rate: float) -> Tap:
    return Tap(create_app(Recorder(), chunk_chars=CHUNK_CHARS, delay=0.0),
               create_app(Recorder(), chunk_chars=CHUNK_CHARS, delay=1.0 / rate))


# ---------------------------------------------------------------- the client

@dataclass(slots=True)
class Trace:
    """One stream as the client saw it."""

    stream_id: str
    answer: Answer
    sent: float = 0.0
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, content chars so far) per event
    content: list[str] = field(default_factory=list)
    done: bool = False
    ended: float | None = None
    error: str | None = None

    def ttft(self) -> float:
        return (self.arrivals[0][0] - self.sent) * 1000

    def total(self) -> float:
        assert self.ended is not None
        return (self.ended - self.sent) * 1000


def parse_event(event: bytes) -> tuple[str, bool]:
    """The content one SSE event carries, and whether it is the closing [DONE]."""
    content = ""
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return "", True
        content += delta_text(json.loads(data))
    return content, False


async def run_stream(client: httpx2.AsyncClient, url: str, trace: Trace, pace: bytes) -> None:
    """Stream one answer, timing each content event when its bytes arrive; fills `trace` as it goes,
    so that a stream cut at the end of a run keeps what it received."""
    body = chat_request(trace.answer.text, stream=True)
    headers = {STREAM_HEADER.decode(): trace.stream_id, PACE_HEADER.decode(): pace.decode()}
    buffer = b""
    received = 0
    trace.sent = time.perf_counter()
    try:
        async with client.stream("POST", url + CHAT_PATH, json=body, headers=headers) as response:
            response.raise_for_status()
            async for data in response.aiter_raw():
                arrived = time.perf_counter()
                *events, buffer = (buffer + data).split(b"\n\n")
                for event in events:
                    content, done = parse_event(event)
                    trace.done |= done
                    if content:
                        received += len(content)
                        trace.content.append(content)
                        trace.arrivals.append((arrived, received))
    except (httpx2.HTTPError, OSError, ValueError) as exc:
        trace.error = f"{type(exc).__name__}: {exc}"
    trace.ended = time.perf_counter()


def check_layout(server: Server, trace: Trace) -> None:
    """The chunk timings are read by position: refuse to go on if llm_app's event layout changed."""
    sends = server.tap.sends[trace.stream_id]
    if not trace.done or len(sends) != PREAMBLE + trace.answer.chunks + TRAILER:
        raise SystemExit(f"llm_app sent {len(sends)} body messages for {trace.answer.chunks} chunks; expected "
                         f"{PREAMBLE} before and {TRAILER} after them: update PREAMBLE/TRAILER")


# ---------------------------------------------------------------- 1. one fast stream at a time

@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU seconds over `wall` seconds: the servers' process (the guard's included), the client, Redis."""

    wall: float
    servers: float
    client: float
    redis: float

    @classmethod
    def of(cls, spent: CpuSpent, client_process: float) -> CpuUse:
        """From a CpuMeter of the servers' process and Redis, and the CPU seconds the client process used."""
        return cls(spent.wall, spent.process, client_process, spent.server)


@dataclass(frozen=True, slots=True)
class FastResult:
    traces: list[Trace]
    cpu: CpuUse

    @property
    def tokens(self) -> int:
        return sum(t.answer.chunks for t in self.traces)


def total_cpu(uses: Sequence[CpuUse]) -> CpuUse:
    return CpuUse(*(sum(values) for values in zip(*((u.wall, u.servers, u.client, u.redis) for u in uses),
                                                  strict=True)))


_client_loop: asyncio.AbstractEventLoop | None = None  # the client process's, kept between its fast streams
_fast_client: httpx2.AsyncClient | None = None


def fast_stream_process(url: str, trace: Trace) -> tuple[Trace, float]:
    """One unpaced stream from the client process, with the CPU seconds it took there. The loop and
    its connection stay open between calls, as a client's would between requests."""
    global _client_loop, _fast_client
    if _client_loop is None or _fast_client is None:
        _client_loop, _fast_client = asyncio.new_event_loop(), httpx2.AsyncClient(timeout=60)
    started = time.process_time()
    _client_loop.run_until_complete(run_stream(_fast_client, url, trace, b"fast"))
    return trace, time.process_time() - started


async def fast_streams(servers: Sequence[Server], answers: Sequence[Answer], rig: Rig) -> dict[str, FastResult]:
    """Stream `answers` one at a time, unpaced, after warm-up streams (jieba, Redis pool, caches). The
    servers take turns stream by stream, so that a change in the machine's speed (this is a VM with
    neighbours) weighs on both alike. The client is a process of its own: in the servers' process it
    would take their GIL at every hand-off, which a guard's Redis round trips make many of (run it as a
    thread of that process to see the guard's CPU per token rise)."""
    loop = asyncio.get_running_loop()
    traces: dict[str, list[Trace]] = {s.name: [] for s in servers}
    uses: dict[str, list[CpuUse]] = {s.name: [] for s in servers}

    async def stream(server: Server, trace: Trace) -> tuple[Trace, CpuUse]:
        meter = rig.meter()
        trace, client_cpu = await loop.run_in_executor(rig.clients, fast_stream_process, server.url, trace)
        return trace, CpuUse.of(meter.stop(), client_cpu)

    for server in servers:
        for number, answer in enumerate(answers[:WARMUP_STREAMS]):
            warmup, _ = await stream(server, Trace(f"warmup-{number}", answer))
            check_layout(server, warmup)
    for number, answer in enumerate(answers):
        for server in servers:
            trace, use = await stream(server, Trace(f"fast-{answer.flavour}-{number}", answer))
            uses[server.name].append(use)
            traces[server.name].append(trace)
    failed = [t.error for name in traces for t in traces[name] if not t.done]
    if failed:
        raise SystemExit(f"fast streams failed: {failed[:3]}")
    return {name: FastResult(traces[name], total_cpu(uses[name])) for name in traces}


# ---------------------------------------------------------------- 2 and 3. paced streams

@dataclass(slots=True)
class Delays:
    """Per released chunk (ms): `total` = arrival - the model's send of the chunk that held the
    text's last char; `holdback` = the model's send of the chunk that released it (by the replay)
    - the same; `beyond` = arrival - the model's send of the releasing chunk, the guard's own
    delay; `pace` = arrival - when an exact pace would have produced that char."""

    total: list[float] = field(default_factory=list)
    holdback: list[float] = field(default_factory=list)
    beyond: list[float] = field(default_factory=list)
    pace: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # tokens/s the model kept, per stream
    off_schedule: int = 0  # released chunks the replay did not predict (a check skipped or differing)


def add_trace(delays: Delays, trace: Trace, sends: list[float], schedule: Schedule, rate: float) -> None:
    chunk_sends = sends[PREAMBLE:PREAMBLE + trace.answer.chunks + 1]  # the content chunks, then the finish chunk
    for arrived, released in trace.arrivals:
        point = schedule.get(released)
        if point is None or point[0] >= len(chunk_sends):
            delays.off_schedule += 1
            continue
        releasing, end = point
        produced = chunk_sends[(end - 1) // CHUNK_CHARS]
        delays.total.append((arrived - produced) * 1000)
        delays.holdback.append((chunk_sends[releasing] - produced) * 1000)
        delays.beyond.append((arrived - chunk_sends[releasing]) * 1000)
        delays.pace.append((arrived - chunk_sends[0] - ((end - 1) // CHUNK_CHARS) / rate) * 1000)
    content = chunk_sends[:trace.answer.chunks]
    if len(content) > 1:
        delays.rates.append((len(content) - 1) / (content[-1] - content[0]))


def collect_delays(server: Server, traces: Sequence[Trace], rate: float, flavour: str | None) -> Delays:
    """Delays of the streams of one flavour (None: all) of a run."""
    delays = Delays()
    for trace in traces:
        if trace.stream_id in server.tap.sends and flavour in (None, trace.answer.flavour):
            add_trace(delays, trace, server.tap.sends[trace.stream_id], server.schedule(trace.answer), rate)
    return delays


@dataclass(frozen=True, slots=True)
class LoadResult:
    server: Server
    streams: int  # lanes: concurrent streams
    traces: list[Trace]
    delays: dict[str | None, Delays]  # by flavour; None: all streams
    cpu: CpuUse
    skipped: int

    def errors(self) -> list[str]:
        return [t.error for t in self.traces if t.error]


async def client_load(url: str, lanes: Sequence[Sequence[Answer]], options: Options) -> list[Trace]:
    """One stream per lane at a time, each paced at tokens_per_second, lanes cycling through their
    answers, for `duration` seconds; streams still running then are cut (their chunks so far count)."""
    traces: list[Trace] = []
    per_lane = math.ceil(options.duration * options.tokens_per_second * CHUNK_CHARS / STREAMED_CHARS[0]) + 1
    limits = httpx2.Limits(max_connections=len(lanes), max_keepalive_connections=len(lanes))

    async def lane(client: httpx2.AsyncClient, number: int, answers: Sequence[Answer]) -> None:
        await asyncio.sleep(STAGGER_S * number / len(lanes))
        for turn, answer in zip(range(per_lane), itertools.cycle(answers), strict=False):
            trace = Trace(f"{number}-{turn}", answer)
            traces.append(trace)
            await run_stream(client, url, trace, b"paced")
            if trace.error:
                return

    async with httpx2.AsyncClient(limits=limits, timeout=options.duration + 30) as client:
        try:
            async with asyncio.timeout(options.duration), asyncio.TaskGroup() as group:
                for number, answers in enumerate(lanes):
                    group.create_task(lane(client, number, answers))
        except TimeoutError:
            pass  # the end of the run, not a failure
    return traces


def client_process(url: str, lanes: Sequence[Sequence[Answer]], options: Options) -> tuple[list[Trace], float]:
    """`client_load` in a process of its own, so that the client does not take the servers' GIL; with its
    CPU seconds. Its perf_counter is the servers' (CLOCK_MONOTONIC, system-wide on Linux)."""
    started = time.process_time()
    traces = asyncio.run(client_load(url, lanes, options))
    return traces, time.process_time() - started


async def paced_load(server: Server, lanes: Sequence[Sequence[Answer]], options: Options, rig: Rig) -> LoadResult:
    """Paced streams from the client process against `server`, with the delays of their released chunks."""
    server.tap.sends.clear()
    skipped = server.skipped()
    meter = rig.meter()
    traces, client_cpu = await asyncio.get_running_loop().run_in_executor(
        rig.clients, client_process, server.url, lanes, options)
    cpu = CpuUse.of(meter.stop(), client_cpu)
    await asyncio.sleep(SETTLE_S)
    delays = {f: collect_delays(server, traces, options.tokens_per_second, f) for f in (None, "clean", "copied")}
    return LoadResult(server, len(lanes), traces, delays, cpu, server.skipped() - skipped)


def load_lanes(answers: Sequence[Answer], streams: int) -> list[list[Answer]]:
    """Every COPIED_EVERY-th lane answers with copied passages; each lane starts at a different answer,
    so that concurrent streams are not in lockstep."""
    pools = {flavour: [a for a in answers if a.flavour == flavour] for flavour in ("clean", "copied")}
    lanes = []
    for number in range(streams):
        pool = pools["copied" if number % COPIED_EVERY == COPIED_EVERY - 1 else "clean"]
        start = number % len(pool)
        lanes.append(pool[start:] + pool[:start])
    return lanes


@dataclass(frozen=True, slots=True)
class Step:
    """One concurrency level: the bare and the guarded server under the same load."""

    plain: LoadResult
    guarded: LoadResult

    def excess_ms(self) -> float:
        """p99 delay beyond the hold-back, guarded minus bare."""
        return p99(self.guarded.delays[None].beyond) - p99(self.plain.delays[None].beyond)

    def pace_share(self) -> float:
        return p50(self.guarded.delays[None].rates) / p50(self.plain.delays[None].rates)

    def failures(self) -> list[str]:
        reasons = []
        if self.excess_ms() >= TARGET_BEYOND_P99_MS:
            reasons.append(f"p99 +{self.excess_ms():.0f} ms")
        if self.pace_share() < MIN_PACE_SHARE:
            reasons.append(f"model slowed to {self.pace_share():.0%} of the bare pace")
        if self.guarded.skipped:
            reasons.append(f"{self.guarded.skipped} checks skipped (failed open)")
        if self.plain.errors() or self.guarded.errors():
            reasons.append(f"{len(self.plain.errors()) + len(self.guarded.errors())} stream errors")
        return reasons


def ladder(limit: int) -> list[int]:
    return sorted({n for n in LADDER if n < limit} | {limit})


# ---------------------------------------------------------------- profile

async def drive(app: ASGIApp, answer: Answer) -> None:
    """One streamed request straight through an ASGI app, without server or socket, so that a profile
    shows the guard and the model rather than uvicorn and the client."""
    body = json.dumps(chat_request(answer.text, stream=True))
    finished = asyncio.Event()
    requests: list[Message] = [{"type": "http.request", "body": body.encode(), "more_body": False}]

    async def receive() -> Message:
        if requests:
            return requests.pop()
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            finished.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": CHAT_PATH, "raw_path": CHAT_PATH.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)


async def drive_all(middleware: TextGuardMiddleware, answers: Sequence[Answer]) -> None:
    for answer in answers:
        await drive(middleware, answer)
    await middleware.guard.aclose()


def profile_guarded(settings: Settings, answers: Sequence[Answer]) -> pstats.Stats:
    """CPU profile (thread time) of the guarded app serving fast streams one at a time. The profiler wraps
    the whole event loop: enabled inside a coroutine, cProfile miscounts the frames of suspended ones."""
    middleware = TextGuardMiddleware(create_app(Recorder(), chunk_chars=CHUNK_CHARS), settings=settings)
    picked = [a for a in answers if a.flavour == "clean"][:PROFILE_STREAMS] + \
        [a for a in answers if a.flavour == "copied"][:PROFILE_STREAMS]
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        asyncio.run(drive_all(middleware, picked))
    finally:
        profiler.disable()
    return pstats.Stats(profiler, stream=sys.stdout)


# ---------------------------------------------------------------- report

def pair(samples: Sequence[float]) -> str:
    return f"{p50(samples):7.1f} / {p99(samples):7.1f}"


def share(part: float, whole: float) -> str:
    return f"{100 * part / whole:4.0f}%"


def print_header(settings: Settings, documents: Sequence[Document], seconds: float, options: Options) -> None:
    chars = sum(len(d.text) for d in documents)
    print(f"textguard stream benchmark: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{platform.machine()}")
    print(f"corpus: {len(documents):,} documents, {chars / 1e6:.1f} M chars indexed in {seconds:.1f} s "
          f"(fraction {options.corpus_fraction}); answers: {POOL} clean "
          f"({STREAMED_CHARS[0]:,}-{STREAMED_CHARS[1]:,} chars) and {POOL} copied (+{PASSAGE_CHARS}-char corpus "
          f"passage); {CHUNK_CHARS} chars per model chunk (about 1 token)")
    print(f"settings: quote_chars {settings.quote_chars}, stream_holdback_chars {settings.stream_holdback_chars}, "
          f"stream_check_chars {settings.stream_check_chars}, check_timeout_ms {settings.check_timeout_ms:g}, "
          f"fail_mode {settings.fail_mode}")
    print(f"both uvicorn servers (and the guard) run in this process, sharing its GIL, on {os.cpu_count()} CPUs "
          "with Redis and the client (processes of their own); gc.freeze() after start-up, as README recommends")


def print_fast(plain: dict[str, FastResult], guarded: dict[str, FastResult], notice: str, count: int) -> None:
    print(f"\n1. One stream at a time, as fast as the model goes ({count} streams per flavour and server after "
          f"{WARMUP_STREAMS} warm-up streams each; the servers take turns; medians)")
    print(f"  {'':40}{'unguarded':>10}{'guarded':>10}{'ratio':>10}")
    for flavour in plain:
        for label, metric in (("time to first token, ms", Trace.ttft), ("total time, ms", Trace.total)):
            bare, guard = (p50([metric(t) for t in r[flavour].traces]) for r in (plain, guarded))
            print(f"  {flavour + ' ' + label:40}{bare:10.1f}{guard:10.1f}{guard / bare:9.1f}x")
    marked = {f: sum(notice in "".join(t.content) for t in guarded[f].traces) for f in guarded}
    print("  answers carrying the notice (guarded): " + ", ".join(f"{f} {n}/{count}" for f, n in marked.items()))
    print(f"  CPU per streamed token, us{'':14}{'unguarded':>10}{'guarded':>10}{'guard':>10}")
    rows = [(f"server process, {f}", "servers", [f]) for f in plain]
    rows += [("server process, all", "servers", list(plain)), ("Redis server (own process)", "redis", list(plain)),
             ("client (own process)", "client", list(plain))]
    for label, attribute, flavours in rows:
        bare, guard = (sum(getattr(r[f].cpu, attribute) for f in flavours) / sum(r[f].tokens for f in flavours) * 1e6
                       for r in (plain, guarded))
        verdict = "PASS" if guard - bare < TARGET_GUARD_US else "FAIL"
        target = f"   target < {TARGET_GUARD_US:g}: {verdict}" if label == "server process, all" else ""
        print(f"  {label:40}{bare:10.1f}{guard:10.1f}{guard - bare:+10.1f}{target}")
    print("  (the guard's cost is the guarded - unguarded column)")


def print_paced(results: dict[str, LoadResult], settings: Settings, options: Options) -> None:
    rate = options.tokens_per_second
    print(f"\n2. Paced streams: {rate:g} tokens/s, one clean and one copied stream at a time on each server "
          f"({options.duration:g} s per server); delay of each released chunk, ms, p50 / p99")
    print(f"  {'':17}{'events':>7}{'delay':>19}{'hold-back':>19}{'beyond hold-back':>19}{'vs exact pace':>19}"
          f"{'tok/s':>7}")
    for flavour in ("clean", "copied"):
        plain, guarded = (results[s].delays[flavour] for s in ("unguarded", "guarded"))
        for name, d in (("unguarded", plain), ("guarded", guarded)):
            print(f"  {flavour:7}{name:10}{len(d.total):7}{pair(d.total):>19}{pair(d.holdback):>19}"
                  f"{pair(d.beyond):>19}{pair(d.pace):>19}{p50(d.rates):7.1f}")
        diffs = [p(guarded.beyond) - p(plain.beyond) for p in (p50, p99)]
        totals = [p(guarded.total) - p(plain.total) for p in (p50, p99)]
        print(f"  {flavour:7}{'guarded - unguarded':24}{totals[0]:+8.1f} / {totals[1]:+7.1f}{'':19}"
              f"{diffs[0]:+8.1f} / {diffs[1]:+7.1f}   (off the replayed schedule: {guarded.off_schedule})")
    tokens = [chars / CHUNK_CHARS for chars in (settings.stream_holdback_chars,
                                               settings.stream_holdback_chars + settings.stream_check_chars)]
    print(f"  hold-back by design: text goes out only after a check (every {settings.stream_check_chars} new "
          f"normalised chars) and never the last {settings.stream_holdback_chars}: ~{tokens[0]:.0f}-{tokens[1]:.0f} "
          f"tokens = {1000 * tokens[0] / rate:.0f}-{1000 * tokens[1] / rate:.0f} ms at {rate:g} tokens/s, more "
          "where punctuation (not counted) or a growing quotation holds text")
    print("  'vs exact pace' counts the fake model's own drift (asyncio.sleep overshoot, waiting on sends); "
          "'delay' is measured from the model's actual send of each chunk")


def print_step_header(options: Options) -> None:
    print(f"\n3. Concurrent paced streams ({options.tokens_per_second:g} tokens/s each, {options.duration:g} s per "
          f"run, started over the first {STAGGER_S:g} s; 1 stream in {COPIED_EVERY} copied); delays in ms; "
          "CPU in % of one core: the servers' process, the client process, Redis")
    print(f"  {'N':>5} {'server':10}{'streams':>8}{'events':>8}{'delay p50/p99':>19}{'beyond hold-back':>19}"
          f"{'tok/s':>7}{'skipped':>8}{'errors':>7}{'servers':>9}{'client':>8}{'Redis':>7}")


def print_step(step: Step) -> None:
    for result in (step.plain, step.guarded):
        d = result.delays[None]
        cpu = result.cpu
        print(f"  {result.streams:5} {result.server.name:10}{len(result.traces):8}{len(d.total):8}{pair(d.total):>19}"
              f"{pair(d.beyond):>19}{p50(d.rates):7.1f}{result.skipped:8}{len(result.errors()):7}"
              f"{share(cpu.servers, cpu.wall):>9}{share(cpu.client, cpu.wall):>8}{share(cpu.redis, cpu.wall):>7}")
    failures = step.failures()
    print(f"  {'':6}-> p99 beyond hold-back {step.excess_ms():+.1f} ms over unguarded, model pace "
          f"{step.pace_share():.0%} of unguarded: {'FAIL (' + '; '.join(failures) + ')' if failures else 'pass'}",
          flush=True)


def print_profile(stats: pstats.Stats) -> None:
    print(f"\nProfile: TextGuardMiddleware around the fake model, driven in-process (no server, no client), CPU "
          f"time; {PROFILE_STREAMS} clean + {PROFILE_STREAMS} copied fast streams one at a time")
    stats.strip_dirs().sort_stats("cumulative").print_stats(PROFILE_LINES)
    stats.sort_stats("tottime").print_stats(PROFILE_LINES // 2)


# ---------------------------------------------------------------- run

@dataclass(frozen=True, slots=True)
class Rig:
    """What the measurements need besides the servers: Redis (for its CPU use) and the client process."""

    redis_client: redis.Redis
    clients: ProcessPoolExecutor

    def meter(self) -> CpuMeter:
        return CpuMeter(partial(redis_cpu, self.redis_client))


async def measure(plain: Server, guarded: Server, answers: list[Answer], settings: Settings, options: Options,
                  rig: Rig) -> None:
    by_flavour = {f: [a for a in answers if a.flavour == f] for f in ("clean", "copied")}
    fast: dict[str, dict[str, FastResult]] = {"unguarded": {}, "guarded": {}}
    for flavour, pool in by_flavour.items():
        picked = list(itertools.islice(itertools.cycle(pool), options.fast_streams))
        for name, result in (await fast_streams((plain, guarded), picked, rig)).items():
            fast[name][flavour] = result
    print_fast(fast["unguarded"], fast["guarded"], settings.notice.split("{", 1)[0], options.fast_streams)

    paced = {server.name: await paced_load(server, list(by_flavour.values()), options, rig)
             for server in (plain, guarded)}
    print_paced(paced, settings, options)

    print_step_header(options)
    passed = 0
    for streams in ladder(options.streams):
        lanes = load_lanes(answers, streams)
        step = Step(await paced_load(plain, lanes, options, rig), await paced_load(guarded, lanes, options, rig))
        print_step(step)
        if step.failures():
            break
        passed = streams
    verdict = "PASS" if passed >= TARGET_STREAMS else "FAIL"
    print(f"  largest N within {TARGET_BEYOND_P99_MS:g} ms (p99 beyond hold-back) of unguarded: {passed} "
          f"(target >= {TARGET_STREAMS}: {verdict})")


def run(options: Options, settings: Settings, redis_client: redis.Redis) -> None:
    started = time.perf_counter()
    documents = load_corpus(options.corpus_fraction)
    _, seconds = index_corpus(settings, documents)
    answers = asyncio.run(make_answers(settings, documents))
    print_header(settings, documents, seconds, options)
    plain_tap, guarded_tap = model_tap(options.tokens_per_second), model_tap(options.tokens_per_second)
    middleware = TextGuardMiddleware(guarded_tap, settings=settings)
    with serve(plain_tap) as plain_url, serve(middleware) as guarded_url, \
            ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as clients:
        clients.submit(time.process_time).result()  # start the client process (imports) before timing anything
        gc.freeze()  # start-up done: as README asks of a server process with the guard in it
        plain = Server("unguarded", plain_url, plain_tap, None)
        guarded = Server("guarded", guarded_url, guarded_tap, middleware.guard)
        asyncio.run(measure(plain, guarded, answers, settings, options, Rig(redis_client, clients)))
    if options.profile:
        print_profile(profile_guarded(settings, answers))
    print(f"\nrun time {time.perf_counter() - started:.0f} s")


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    require_data()
    with scratch_index(INDEX, external_ok=True, snapshots=False) as (settings, redis_client):
        run(options, settings, redis_client)


if __name__ == "__main__":
    main()
