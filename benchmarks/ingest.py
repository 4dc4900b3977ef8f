"""Corpus ingest per input format, and the memory a large compressed corpus costs to read.

    python -m benchmarks.ingest [--quick] [--chars N] [--compressed-mb MB]

1. The same text (the first N characters of the modern novels, as chapters) is written in every
   format `corpus add` reads, then for each format, in this one process: reading alone (text
   out of the files, characters per second) and a whole `corpus add` into a fresh embedded
   index (reading, segmenting, sketching, writing). jieba's own segmentation of that text, timed
   in the same run, is the baseline: ingest runs at a fraction of it, since segmenting is only
   one of the steps. Each figure is the median of three runs.
2. A JSON Lines file gzip-compressed to `--compressed-mb` megabytes (chapters of the whole shared
   corpus repeated under new ids) is read through `ingest.read_sources` in a process of its own;
   its peak resident memory is printed beside that of a process that only imports textguard, and
   beside the file's size.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import opencc
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from benchmarks import DATA, read_jsonl, require_data
from benchmarks._harness import parse_quick, scratch_index
from tests.support.documents import write_docx, write_epub, write_pdf
from textguard import Corpus, Document
from textguard.ingest import Inventory, ReadOptions, find_sources, read_sources
from textguard.segment import get_segmenter

ROUNDS = 3
PDF_CHARS = 300_000  # a PDF is written a line at a time: its sample is smaller, its rate is per character all the same


def chapters(limit: int) -> list[Document]:
    """Chapters of the modern novels, up to `limit` characters in all."""
    taken: list[Document] = []
    total = 0
    for record in read_jsonl(DATA / "corpus_modern_pd_cn_only.jsonl"):
        if total >= limit:
            break
        taken.append(Document(record["id"].replace("/", "-"), record["text"], record["title"], record["author"],
                              record["work"]))
        total += len(record["text"])
    return taken


def write_formats(docs: list[Document], folder: Path) -> dict[str, Path]:
    """The chapters in every format read, one folder (or file) per format."""
    made: dict[str, Path] = {}

    def one_per_chapter(name: str, write: Callable[[Path, Document], None], suffix: str) -> None:
        target = folder / name
        target.mkdir()
        for doc in docs:
            write(target / f"{doc.doc_id}{suffix}", doc)
        made[name] = target

    traditional = opencc.OpenCC("s2t")
    one_per_chapter("txt utf-8", lambda p, d: p.write_text(d.text, "utf-8"), ".txt")
    one_per_chapter("txt gb18030", lambda p, d: p.write_bytes(d.text.encode("gb18030")), ".txt")
    one_per_chapter("txt big5", lambda p, d: p.write_bytes(traditional.convert(d.text).encode("big5hkscs", "replace")),
                    ".txt")
    one_per_chapter("markdown", lambda p, d: p.write_text(f"# {d.title}\n\n{d.text}", "utf-8"), ".md")
    one_per_chapter("html", lambda p, d: p.write_text(
        f"<html><head><meta charset='utf-8'><title>{d.title}</title></head><body>"
        + "".join(f"<p>{para}</p>" for para in d.text.split("\n\n")) + "</body></html>", "utf-8"), ".html")
    one_per_chapter("docx", lambda p, d: write_docx(p, d.title, d.author, d.text), ".docx")
    write_epub(folder / "book.epub", "基准", "", [(d.title, d.text) for d in docs])
    made["epub"] = folder / "book.epub"
    write_pdf(folder / "print.pdf", "基准", "", "".join(d.text for d in docs)[:PDF_CHARS])
    made["pdf"] = folder / "print.pdf"
    records = [{"id": d.doc_id, "text": d.text, "title": d.title, "author": d.author, "work": d.work} for d in docs]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    (folder / "all.jsonl").write_text(lines, "utf-8")
    made["jsonl"] = folder / "all.jsonl"
    with gzip.open(folder / "all.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(lines)
    made["jsonl.gz"] = folder / "all.jsonl.gz"
    (folder / "all.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    made["jsonl.zst"] = folder / "all.jsonl.zst"
    with (folder / "all.csv").open("w", encoding="gb18030", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    made["csv gb18030"] = folder / "all.csv"
    pq.write_table(pa.Table.from_pylist(records), str(folder / "all.parquet"), row_group_size=64)
    made["parquet"] = folder / "all.parquet"
    return made


def median_rate(chars: int, timed: Callable[[], object]) -> float:
    """Characters per second, the median of ROUNDS runs of `timed`."""
    seconds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        timed()
        seconds.append(time.perf_counter() - started)
    return chars / statistics.median(seconds)


def measure_formats(docs: list[Document]) -> None:
    text = "".join(doc.text for doc in docs)
    segmenter = get_segmenter()
    jieba = median_rate(len(text), lambda: [segmenter.tokens(doc.text) for doc in docs])
    print(f"jieba (jieba-rs) segmentation alone: {jieba / 1e6:.2f} M chars/s over {len(text):,} characters\n")
    print(f"{'format':<14}{'chars':>12}{'read M/s':>11}{'ingest M/s':>12}{'ingest / jieba':>16}")
    with tempfile.TemporaryDirectory(prefix="textguard-ingest-") as folder:
        made = write_formats(docs, Path(folder))
        for name, path in made.items():
            sources, problems, _ = find_sources([path], ReadOptions())
            inventory = Inventory()
            chars = sum(len(doc.text) for doc in read_sources(sources, inventory))
            assert not problems and not inventory.problems, (name, problems, inventory.problems)
            read = median_rate(chars, lambda path=path: _read_all(path))
            ingest = chars / statistics.median(_index_seconds(path) for _ in range(ROUNDS))
            print(f"{name:<14}{chars:>12,}{read / 1e6:>11.2f}{ingest / 1e6:>12.3f}{ingest / jieba:>16.3f}",
                  flush=True)


def _read_all(path: Path) -> int:
    return sum(1 for _ in read_sources(find_sources([path], ReadOptions())[0], Inventory()))


def _index_seconds(path: Path) -> float:
    """Seconds of one `corpus add` of `path` into a fresh index (its Redis started beforehand)."""
    with scratch_index("ingest", snapshots=False) as (settings, _), Corpus(settings) as corpus:
        started = time.perf_counter()
        corpus.add(read_sources(find_sources([path], ReadOptions())[0], Inventory()))
        return time.perf_counter() - started


def big_jsonl(path: Path, compressed_bytes: int) -> tuple[int, int]:
    """A gzip JSON Lines file of about `compressed_bytes`: the shared corpus's chapters repeated
    under new ids. Returns (records, characters)."""
    corpus = [r for name in ("corpus_classical_novels.jsonl", "corpus_modern_pd.jsonl",
                             "corpus_modern_pd_cn_only.jsonl") for r in read_jsonl(DATA / name)]
    records = chars = 0
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as handle:
        while raw.tell() < compressed_bytes:
            for record in corpus:
                line = json.dumps({"id": f"{record['id']}#{records}", "text": record["text"], "work": record["work"]},
                                  ensure_ascii=False) + "\n"
                handle.write(line.encode())
                records += 1
                chars += len(record["text"])
            handle.flush()
    return records, chars


def peak_memory(script: str) -> tuple[float, float]:
    """(peak resident MB, seconds) of a Python process running `script`. The peak is the kernel's
    VmHWM: ru_maxrss would carry over this (large) process's own peak into the child it forks."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script + "\nimport re\n"
                           "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"],
                          capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    return int(done.stdout.split()[-1]) / 1024, time.perf_counter() - started


def measure_memory(compressed_mb: float) -> None:
    with tempfile.TemporaryDirectory(prefix="textguard-bigjsonl-") as folder:
        path = Path(folder) / "big.jsonl.gz"
        records, chars = big_jsonl(path, int(compressed_mb * 1e6))
        size = path.stat().st_size
        baseline, _ = peak_memory("import textguard.ingest")
        read = ("from pathlib import Path\n"
                "from textguard.ingest import Inventory, ReadOptions, find_sources, read_sources\n"
                "inventory = Inventory()\n"
                f"for _ in read_sources(find_sources([Path({str(path)!r})], ReadOptions())[0], inventory): pass\n"
                "assert not inventory.problems")
        peak, seconds = peak_memory(read)
        print(f"\nreading {size / 1e6:,.0f} MB of gzip JSON Lines ({records:,} records, "
              f"{chars / 1e9:.2f} G characters, {chars / seconds / 1e6:.2f} M chars/s):")
        print(f"  peak resident memory {peak:,.0f} MB; a process that only imports textguard.ingest: {baseline:,.0f} MB"
              f" ({peak - baseline:+,.0f} MB)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, help="characters of text per format (default 2,000,000)")
    parser.add_argument("--compressed-mb", type=float, help="size of the compressed JSON Lines file (default 1000)")
    args = parse_quick(parser, argv, {"chars": 2_000_000, "compressed_mb": 1000.0},
                       {"chars": 200_000, "compressed_mb": 20.0}, "200,000 characters and a 20 MB file")
    require_data()
    measure_formats(chapters(args.chars))
    measure_memory(args.compressed_mb)


if __name__ == "__main__":
    main()
