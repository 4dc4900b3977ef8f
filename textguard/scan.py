"""Offline scans: check every answer of a file of model outputs, with copying metrics, in parallel.

Before a model ships, or when past answers are audited, a file of answers is checked against
the index: one result line per answer (verdict, matches, metrics), then a summary. Checks go
in batches (`Guard.check_many`: two Redis round trips per batch, not per answer), batches go
to worker processes, and results are written in input order and flushed per batch, so a scan
that is stopped resumes where it was: a rerun with the same output skips the ids it holds.
A malformed input line is reported and counted, never fatal. `shard=(i, n)` takes every n-th
line from the i-th, so n machines sharing one Redis split a file exactly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import IO, Any, Literal

from textguard._iterate import batched
from textguard.copying import LITERAL_ROUGE_L, MIN_RUN, compare, compare_normalised, coverage
from textguard.detect import Match
from textguard.errors import TextGuardError
from textguard.guard import Guard
from textguard.normalise import Normalised, normalise
from textguard.policy import Verdict
from textguard.settings import Settings
from textguard.store import DocumentRegion

__all__ = [
    "BatchScanner", "Item", "Malformed", "Record", "RunCounts", "ScanError", "ScanOptions", "count_lines",
    "ensure_ready", "read_items", "read_results", "run_scan",
]

logger = logging.getLogger(__name__)

CONTEXT_CHARS = 60
"""Source text kept on each side of the copied stretch, for showing it in the report."""
REDIS_TIMEOUT_S = 30.0
"""Socket timeout of a scan's reads: a batch's replies are large, and no one waits on one answer,
so a slow reply (a busy server) should not stop a scan the way it fails a request fast."""
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")

InputFormat = Literal["auto", "jsonl", "text"]
Record = dict[str, Any]  # one result line


class ScanError(TextGuardError):
    """The scan cannot go on: its input or output cannot be used (one bad line is only skipped),
    or a worker's check failed."""


@dataclass(frozen=True, slots=True)
class ScanOptions:
    source: str  # a path, or "-" for standard input
    out: Path
    text_field: str = "output"
    id_field: str = "id"
    reference_field: str | None = None
    input_format: InputFormat = "auto"
    workers: int = 1
    shard: tuple[int, int] = (1, 1)  # (i, n), 1 <= i <= n
    batch: int = 64
    min_run: int = MIN_RUN

    def __post_init__(self) -> None:
        index, count = self.shard
        if not 1 <= index <= count:
            raise ScanError(f"shard {index}/{count}: expected I/N with 1 <= I <= N")
        if self.workers < 1 or self.batch < 1:
            raise ScanError("workers and batch must be at least 1")


@dataclass(frozen=True, slots=True)
class Item:
    """One answer to check: where it stood, its id, its text and (for probes) the true text."""

    line: int
    id: str | int
    text: str
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class Malformed:
    line: int
    reason: str


@dataclass
class RunCounts:
    """What this run did, beside the results in the output file."""

    scanned: int = 0
    resumed: int = 0  # already in the output file, skipped
    malformed: list[Malformed] = field(default_factory=list)


# ---------------------------------------------------------------- reading

def read_items(options: ScanOptions, stdin: IO[bytes] | None = None) -> Iterator[Item | Malformed]:
    """The answers of the input (this shard's lines), and a Malformed for each bad line.
    An input that cannot be opened raises here, not on the first item."""
    if options.source == "-":
        return _items(options, stdin or sys.stdin.buffer, "")
    handle = _open(options.source)
    return _closing(handle, _items(options, handle, Path(options.source).suffix.lower()))


def _open(source: str) -> IO[bytes]:
    try:
        return Path(source).open("rb")
    except OSError as exc:
        raise ScanError(f"{source}: cannot read ({exc.strerror})") from exc


def _closing(handle: IO[bytes], items: Iterator[Item | Malformed]) -> Iterator[Item | Malformed]:
    with handle:
        yield from items


def count_lines(options: ScanOptions) -> int | None:
    """Lines of this shard (for a progress bar's total); None for standard input."""
    if options.source == "-":
        return None
    with _open(options.source) as handle:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    index, count = options.shard
    return max(0, (lines - index) // count + 1) if lines >= index else 0


def _items(options: ScanOptions, handle: IO[bytes], suffix: str) -> Iterator[Item | Malformed]:
    lines: Iterator[tuple[int, bytes]] = enumerate(handle, start=1)
    first: list[tuple[int, bytes]] = []
    form = options.input_format
    if form == "auto":
        if suffix in _JSON_SUFFIXES:
            form = "jsonl"
        elif suffix == ".txt":
            form = "text"
        else:  # standard input or another name: the first non-blank line decides
            for number, raw in lines:
                first.append((number, raw))
                if raw.strip():
                    break
            form = "jsonl" if first and first[-1][1].lstrip().startswith(b"{") else "text"
    if form == "text" and options.reference_field:
        raise ScanError("a reference field needs JSON Lines input")
    index, count = options.shard
    parse = _json_item if form == "jsonl" else _text_item
    for number, raw in chain(first, lines):
        if (number - index) % count or not raw.strip():
            continue
        try:
            yield parse(options, number, raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield Malformed(number, f"not UTF-8 ({exc.reason} at byte {exc.start})")
        except _BadLine as exc:
            yield Malformed(number, str(exc))


class _BadLine(Exception):
    pass


def _text_item(options: ScanOptions, number: int, line: str) -> Item:
    return Item(number, number, line.rstrip("\r\n"))


def _json_item(options: ScanOptions, number: int, line: str) -> Item:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _BadLine(f"invalid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(record, dict):
        raise _BadLine("expected a JSON object")
    text = record.get(options.text_field)
    if not isinstance(text, str):
        raise _BadLine(f"no '{options.text_field}' field (a string); choose the field with --text-field")
    item_id = record.get(options.id_field, number)
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise _BadLine(f"'{options.id_field}' must be a string or an integer")
    reference = None
    if options.reference_field:
        reference = record.get(options.reference_field)
        if not isinstance(reference, str):
            raise _BadLine(f"no '{options.reference_field}' field (a string)")
    return Item(number, item_id, text, reference)


# ---------------------------------------------------------------- results

def result_key(item_id: Any) -> str:
    """How an id is remembered for resuming (1 and "1" stay apart)."""
    return json.dumps(item_id, ensure_ascii=False)


def read_results(path: Path) -> Iterator[Record]:
    """The result records of an output file (a torn last line is left out)."""
    if not path.exists():
        return
    with path.open("rb") as handle:
        for raw in handle:
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and "id" in record:
                yield record


def prepare_output(path: Path) -> set[str]:
    """Ids already in the output file; a last line cut short by a stopped run is removed."""
    if not path.exists():
        return set()
    try:
        with path.open("rb+") as handle:
            data = handle.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                handle.truncate(end)
    except OSError as exc:
        raise ScanError(f"{path}: cannot update ({exc.strerror})") from exc
    return {result_key(record["id"]) for record in read_results(path)}


LANES = 2
"""Batches a scanner works on at once: while one waits on Redis, the other computes."""


class BatchScanner:
    """Checks batches of answers and builds their result records (one per worker process)."""

    def __init__(self, settings: Settings, min_run: int = MIN_RUN) -> None:
        self._guard = Guard(settings.replace(redis_timeout_s=max(settings.redis_timeout_s, REDIS_TIMEOUT_S)))
        self._min_run = min_run
        self._loop = asyncio.new_event_loop()

    def scan(self, batches: Iterable[Sequence[Item]]) -> Iterator[list[Record]]:
        """The records of each batch, in order. `LANES` batches are in flight at a time: a
        check spends a fifth of its time waiting on Redis, which is running on another core."""
        pending: deque[asyncio.Task[list[Record]]] = deque()
        try:
            for items in batches:
                pending.append(self._loop.create_task(self._scan(items)))
                if len(pending) >= LANES:
                    yield self._loop.run_until_complete(pending.popleft())
            while pending:
                yield self._loop.run_until_complete(pending.popleft())
        finally:
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def scan_batch(self, items: Sequence[Item]) -> list[Record]:
        """The records of one batch, checked now (for a caller that hands out the batches): in
        `LANES` parts at once, as `scan` keeps batches in flight."""
        size = -(-len(items) // LANES) or 1
        parts = [items[i:i + size] for i in range(0, len(items), size)]

        async def lanes() -> list[list[Record]]:
            return await asyncio.gather(*(self._scan(part) for part in parts))

        return [record for part in self._loop.run_until_complete(lanes()) for record in part]

    async def _scan(self, items: Sequence[Item]) -> list[Record]:
        normalised = [normalise(item.text) for item in items]
        verdicts = await self._guard.check_many([item.text for item in items], fail_mode="raise",
                                                normalised=normalised)
        stretches = [_stretches(verdict) for verdict in verdicts]
        wanted = [(doc_id, start - CONTEXT_CHARS, end + CONTEXT_CHARS)
                  for found in stretches for doc_id, (start, end) in found.items()]
        passages = iter(await self._guard.source_passages(wanted) if wanted else [])
        return [self._record(item, normal, verdict, {doc_id: (start, end, next(passages))
                                                     for doc_id, (start, end) in found.items()})
                for item, normal, verdict, found in zip(items, normalised, verdicts, stretches, strict=True)]

    def _record(self, item: Item, normalised: Normalised, verdict: Verdict,
                sources: dict[str, tuple[int, int, DocumentRegion | None]]) -> Record:
        found = [*verdict.matches, *verdict.quotations]
        record: Record = {
            "id": item.id, "line": item.line, "verdict": verdict.verdict, "checked_chars": verdict.checked_chars,
            "matches": [_match_record(m) for m in verdict.matches],
            "quotations": [_match_record(m) for m in verdict.quotations]}
        metrics: dict[str, Any] = {"answer_chars": len(normalised.text),
                                   "coverage": round(coverage(normalised, [(m.start, m.end) for m in found]), 4),
                                   "longest_run": 0, "lcs": 0, "rouge_l": 0.0, "acs": 0, "reference_chars": 0,
                                   "doc_id": None}
        shown = []
        for doc_id, (start, end, region) in sources.items():  # best-matching document first
            if region is None:
                continue  # taken down since the check
            comparison = compare_normalised(normalised.text, region.cut(start, end).normal.text, self._min_run)
            if metrics["doc_id"] is None:
                metrics.update({**comparison.to_dict(), "doc_id": doc_id})
            metrics["longest_run"] = max(metrics["longest_run"], comparison.longest_run)
            shown.append({"doc_id": doc_id, "title": region.meta.get("title", ""),
                          "author": region.meta.get("author", ""), "work": region.meta.get("work", ""),
                          "start": region.start, "text": region.text})
        record["metrics"] = metrics
        if item.reference is not None:
            probe = compare(item.text, item.reference, self._min_run).to_dict()
            probe.pop("answer_chars")
            record["reference_metrics"] = {**probe, "literal_copy": probe["rouge_l"] >= LITERAL_ROUGE_L}
        if found:
            record["answer"] = item.text
            record["sources"] = shown
        return record

    def close(self) -> None:
        self._loop.run_until_complete(self._guard.aclose())
        self._loop.close()


def _match_record(match: Match) -> dict[str, Any]:
    """The fields of `check --json`, and the normalised characters the span holds."""
    return {**match.to_dict(), "chars": match.chars}


def _stretches(verdict: Verdict) -> dict[str, tuple[int, int]]:
    """Per document found, the source stretch its matches span; most matched characters first."""
    by_doc: dict[str, list[Match]] = {}
    for match in (*verdict.matches, *verdict.quotations):
        by_doc.setdefault(match.doc_id, []).append(match)
    ranked = sorted(by_doc.items(), key=lambda item: -sum(m.chars for m in item[1]))
    return {doc_id: (min(m.source_start for m in matches), max(m.source_end for m in matches))
            for doc_id, matches in ranked}


# ---------------------------------------------------------------- running

_worker: BatchScanner | None = None


def _start_worker(settings: Settings, min_run: int) -> None:
    global _worker
    _worker = BatchScanner(settings, min_run)


def _scan_in_worker(batches: list[list[Item]]) -> list[list[Record]]:
    assert _worker is not None
    try:
        return list(_worker.scan(batches))
    except TextGuardError as exc:  # (re-raised in the parent; a plain message survives pickling)
        raise ScanError(str(exc)) from None


def _in_process(settings: Settings, options: ScanOptions, batches: Iterator[list[Item]]) -> Iterator[list[Record]]:
    scanner = BatchScanner(settings, options.min_run)
    try:
        yield from scanner.scan(batches)
    finally:
        scanner.close()


def _in_workers(settings: Settings, options: ScanOptions, batches: Iterator[list[Item]]) -> Iterator[list[Record]]:
    """Results in input order, with at most two tasks (of `LANES` batches) per worker in flight
    (bounded memory)."""
    # spawn, not fork: the parent runs threads (progress bar, Redis client) that a fork would copy mid-state
    pool = ProcessPoolExecutor(options.workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(settings, options.min_run))
    pending: deque[Future[list[list[Record]]]] = deque()
    tasks = iter(lambda: list(islice(batches, LANES)), [])
    try:
        for task in tasks:
            pending.append(pool.submit(_scan_in_worker, task))
            if len(pending) >= 2 * options.workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_scan(settings: Settings, options: ScanOptions, *, stdin: IO[bytes] | None = None,
             progress: Callable[[int], object] | None = None,
             on_malformed: Callable[[Malformed], object] | None = None) -> RunCounts:
    """Scan `options.source` into `options.out` (appending to what a stopped run left there)."""
    guard = ensure_ready(settings)  # and keep an embedded Redis up while workers come and go
    try:
        return _run(settings, options, stdin, progress, on_malformed)
    finally:
        guard.close()


def ensure_ready(settings: Settings) -> Guard:
    """A Guard that has reached the index: raises at once on an unreachable Redis or an index
    built with other parameters, rather than in the first batch of a long scan."""
    guard = Guard(settings)
    try:
        guard.check_sync("", fail_mode="raise")
    except BaseException:
        guard.close()
        raise
    return guard


def _run(settings: Settings, options: ScanOptions, stdin: IO[bytes] | None,
         progress: Callable[[int], object] | None, on_malformed: Callable[[Malformed], object] | None) -> RunCounts:
    counts = RunCounts()
    entries = read_items(options, stdin)
    done = prepare_output(options.out)

    def fresh() -> Iterator[Item]:
        for entry in entries:
            if isinstance(entry, Malformed):
                counts.malformed.append(entry)
                if progress is not None:
                    progress(1)
                if on_malformed is not None:
                    on_malformed(entry)
                else:
                    logger.warning("%s:%d: %s; skipped", options.source, entry.line, entry.reason)
            elif result_key(entry.id) in done:
                counts.resumed += 1
                if progress is not None:
                    progress(1)
            else:
                yield entry

    execute = _in_process if options.workers == 1 else _in_workers
    try:
        out = options.out.open("a", encoding="utf-8")
    except OSError as exc:
        raise ScanError(f"{options.out}: cannot write ({exc.strerror})") from exc
    with out:
        for records in execute(settings, options, batched(fresh(), options.batch)):
            out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            out.flush()
            counts.scanned += len(records)
            if progress is not None:
                progress(len(records))
    return counts
