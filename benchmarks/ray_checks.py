"""Answers per second through Ray Data (`map_batches(CheckBatches)`) beside `textguard scan`, in
one run on the shared data.

    python -m benchmarks.ray_checks [--answers 4000] [--corpus-fraction 1.0] [--quick]

Indexes the shared corpus into a fresh embedded Redis, makes about 1,000-character answers from
real chat answers (every second one with a 300-character corpus passage), writes them as JSON
Lines, then checks the same answers four ways, each timed from start to the last result
(worker processes and actors start inside the time, as they would in a real run):
`textguard scan` with 1 and 2 worker processes (the baseline: 1 worker), and a local Ray
instance's `map_batches(CheckBatches)` with 1 and 2 actors (batches of 64). Prints answers per
second and the ratio to the baseline; the verdict counts must agree across all four.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks._harness import fraction, index_corpus, load_corpus, mixed_answers, parse_quick, scratch_index
from textguard import Settings
from textguard.scan import ScanOptions, read_results, run_scan

BATCH = 64


@dataclass(frozen=True, slots=True)
class Options:
    answers: int
    corpus_fraction: float


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--answers", type=int, help="answers checked each way (default 4000)")
    parser.add_argument("--corpus-fraction", type=fraction, help="share of each corpus file to index (default 1.0)")
    args = parse_quick(parser, argv, {"answers": 4000, "corpus_fraction": 1.0},
                       {"answers": 1000, "corpus_fraction": 0.1}, "1,000 answers, a tenth of the corpus")
    if args.answers < BATCH:
        parser.error(f"--answers >= {BATCH}")
    return Options(args.answers, args.corpus_fraction)


def by_scan(settings: Settings, source: Path, folder: Path, workers: int) -> tuple[float, Counter[str]]:
    out = folder / f"scan-{workers}.jsonl"
    started = time.perf_counter()
    run_scan(settings, ScanOptions(str(source), out, workers=workers, batch=BATCH))
    seconds = time.perf_counter() - started
    return seconds, Counter(record["verdict"] for record in read_results(out))


def by_ray(settings: Settings, answers: list[dict], actors: int) -> tuple[float, Counter[str]]:
    import ray  # the optional extra: only this benchmark needs it

    from textguard.ray import CheckBatches

    started = time.perf_counter()
    rows = (ray.data.from_items(answers)
            .map_batches(CheckBatches, compute=ray.data.ActorPoolStrategy(size=actors), batch_size=BATCH,
                         num_cpus=1, fn_constructor_kwargs={"settings": settings})
            .select_columns(["verdict"])
            .take_all())
    seconds = time.perf_counter() - started
    return seconds, Counter(row["verdict"] for row in rows)


def main(argv: Sequence[str] | None = None) -> None:
    import ray

    options = parse_options(argv)
    with scratch_index("ray") as (settings, _), tempfile.TemporaryDirectory() as scratch:
        documents = load_corpus(options.corpus_fraction)
        _, seconds = index_corpus(settings, documents)
        print(f"textguard Ray Data benchmark · {platform.python_implementation()} {platform.python_version()} · "
              f"{os.cpu_count()} cores · ray {ray.__version__} · corpus {len(documents):,} documents "
              f"(indexed in {seconds:.0f} s)\n")
        answers = [{"id": i, "output": text} for i, (_, text) in enumerate(mixed_answers(options.answers, documents))]
        folder = Path(scratch)
        source = folder / "answers.jsonl"
        source.write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers), encoding="utf-8")
        results = {f"scan, {n} worker{'s' if n > 1 else ''}": by_scan(settings, source, folder, n) for n in (1, 2)}
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
        try:
            results |= {f"ray, {n} actor{'s' if n > 1 else ''}": by_ray(settings, answers, n) for n in (1, 2)}
        finally:
            ray.shutdown()
    baseline = len(answers) / results["scan, 1 worker"][0]
    print(f"{len(answers):,} answers of ~1,000 chars (half with a 300-char copy), batches of {BATCH}\n")
    print(f"   {'way':<16} {'seconds':>8} {'answers/s':>10} {'ratio':>7}   verdicts")
    for name, (seconds, verdicts) in results.items():
        rate = len(answers) / seconds
        counts = dict(sorted(verdicts.items()))
        print(f"   {name:<16} {seconds:>8.1f} {rate:>10.0f} {rate / baseline:>6.2f}x   {counts}")
    agreed = len({tuple(sorted(v.items())) for _, v in results.values()}) == 1
    print(f"\n   verdict counts agree across all four: {'yes' if agreed else 'NO'}")


if __name__ == "__main__":
    main()
