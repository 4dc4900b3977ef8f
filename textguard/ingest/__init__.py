"""Reading a corpus from the files people have: text in the encodings Chinese text circulates in,
e-books and documents, folders of them, and large files of records.

    sources, problems, ignored = find_sources([Path("books/")], ReadOptions())
    with Corpus(settings) as corpus:
        report, inventory = add_files(corpus, [Path("books/")])
    print(inventory.summary())

A run never stops at a bad file: what cannot be read is a `Problem` in the inventory, and the
rest is indexed. A run that is interrupted and started again redoes nothing already indexed
(an unchanged document is recognised by its digest before any work is spent on it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textguard.corpus import AddReport, Corpus, Document, FieldNames
from textguard.ingest._sources import FORMATS, Problem, ReadOptions, Source, find_sources
from textguard.ingest._text import EncodingError, decode_text, detect_encoding

__all__ = [
    "FORMATS", "EncodingError", "FieldNames", "Inventory", "Problem", "ReadOptions", "Source", "add_files",
    "decode_text", "detect_encoding", "find_sources", "input_bytes", "read_sources",
]

_CHARS_PER_BYTE = {"txt": 0.4, "markdown": 0.4, "html": 0.2, "csv": 0.4, "jsonl": 0.4, "epub": 0.6,
                   "docx": 0.6, "pdf": 0.1, "parquet": 1.0}
"""Rough characters per byte of each format (Chinese text), to size a new index before reading."""
_COMPRESSION = 3  # about what gzip and zstd make of Chinese JSON Lines


@dataclass
class Inventory:
    """What a run read: files by format and encoding, documents, characters, and problems."""

    files: Counter[str] = field(default_factory=Counter)  # "format" or "format encoding" -> files
    documents: int = 0
    characters: int = 0
    public_domain: int = 0  # documents marked public domain
    problems: list[Problem] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # files of no format read, passed over in folders

    def to_dict(self) -> dict[str, Any]:
        return {"files": dict(sorted(self.files.items())), "documents": self.documents,
                "characters": self.characters, "public_domain": self.public_domain,
                "problems": [{"where": p.where, "reason": p.reason} for p in self.problems],
                "ignored": [str(path) for path in self.ignored]}

    def summary(self) -> str:
        """A few lines for a person: the files, what they held, and every problem."""
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.files.items())) or "none"
        lines = [f"files: {sum(self.files.values())} ({kinds})" + (f"; {len(self.ignored)} other files ignored"
                                                                    if self.ignored else ""),
                 f"documents: {self.documents:,} ({self.characters:,} characters"
                 + (f"; {self.public_domain:,} public domain)" if self.public_domain else ")")]
        if self.problems:
            lines.append(f"skipped ({len(self.problems)}):")
            lines += [f"  {p.where}: {p.reason}" for p in self.problems]
        return "\n".join(lines)


def read_sources(sources: Sequence[Source], inventory: Inventory,
                 progress: Callable[[int], object] | None = None) -> Iterator[Document]:
    """The documents of `sources`, in order; counted, with their problems, in `inventory`.
    `progress` gets the input bytes read since it was last called."""
    reported = 0
    done = 0
    for source in sources:
        for item in source.read():
            if isinstance(item, Problem):
                inventory.problems.append(item)
                continue
            inventory.documents += 1
            inventory.characters += len(item.text)
            inventory.public_domain += item.public_domain
            if progress is not None:
                progress(done + source.bytes_read - reported)
                reported = done + source.bytes_read
            yield item
        inventory.files[source.format + (f" {source.encoding}" if source.encoding and source.format in
                                          ("txt", "markdown", "html", "csv") else "")] += 1
        done += source.size
        if progress is not None:
            progress(done - reported)
            reported = done


def add_files(corpus: Corpus | None, paths: Sequence[Path], options: ReadOptions | None = None, *,
              progress: Callable[[int], object] | None = None, workers: int = 1) -> tuple[AddReport, Inventory]:
    """Index every document of `paths` (files and folders); with `corpus` None, only read them
    (a dry run: the inventory, nothing written). `progress` counts input bytes."""
    sources, problems, ignored = find_sources(paths, options or ReadOptions())
    inventory = Inventory(problems=list(problems), ignored=ignored)
    documents = read_sources(sources, inventory, progress)
    if corpus is None:
        for _ in documents:
            pass
        return AddReport(), inventory
    expected = int(sum(source.size * _CHARS_PER_BYTE[source.format]
                       * (_COMPRESSION if source.path.suffix.lower() in (".gz", ".zst") else 1) for source in sources))
    return corpus.add(documents, workers=workers, expected_chars=expected), inventory


def input_bytes(paths: Sequence[Path], options: ReadOptions | None = None) -> int:
    """The bytes a run over `paths` reads: the total of its progress."""
    return sum(source.size for source in find_sources(paths, options or ReadOptions())[0])
