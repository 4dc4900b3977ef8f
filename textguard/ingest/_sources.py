"""Input files: which formats are read, how a folder is walked, and one reader per format.

Every reader yields Documents, and a `Problem` for what it cannot read (a record, a page, or
the whole file); it never stops the run. A folder is walked recursively in name order: hidden
files are passed over, and so are files of no format textguard reads (counted as ignored).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textguard.corpus import Document, FieldNames, document_from_record
from textguard.errors import CorpusInputError
from textguard.ingest._books import docx_document, epub_chapters, pdf_pages
from textguard.ingest._markup import decode_markup, html_text, html_title, markdown_text
from textguard.ingest._records import Counted, csv_records, jsonl_records, parquet_records
from textguard.ingest._text import decode_text

__all__ = ["FORMATS", "Problem", "ReadOptions", "Source", "find_sources"]

FORMATS = {".txt": "txt", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html",
           ".xhtml": "html", ".epub": "epub", ".docx": "docx", ".pdf": "pdf", ".jsonl": "jsonl",
           ".ndjson": "jsonl", ".jsonl.gz": "jsonl", ".jsonl.zst": "jsonl", ".ndjson.gz": "jsonl",
           ".ndjson.zst": "jsonl", ".csv": "csv", ".tsv": "csv", ".csv.gz": "csv", ".tsv.gz": "csv",
           ".parquet": "parquet"}
"""File name endings read, and the format each is read as."""
_RECORD_FORMATS = frozenset({"jsonl", "csv", "parquet"})


@dataclass(frozen=True, slots=True)
class ReadOptions:
    encoding: str | None = None  # forced for text, CSV and HTML files (default: detected per file)
    include: tuple[str, ...] = ()  # globs a walked file must match (relative to the folder given)
    exclude: tuple[str, ...] = ()  # globs a walked file must not match
    fields: FieldNames = field(default_factory=FieldNames)  # record fields, for JSONL, CSV and Parquet
    public_domain: bool = False  # every document read is public domain


@dataclass(frozen=True, slots=True)
class Problem:
    """Something not indexed, and why: a file, a record or a page."""

    where: str
    reason: str


class Source:
    """One input file: its format, the encoding it was read in, how much of it has been read."""

    def __init__(self, path: Path, format: str, base_id: str, options: ReadOptions) -> None:
        self.path = path
        self.format = format
        self.base_id = base_id  # the id of a one-document file, and the prefix of a book's chapters
        self.options = options
        self.size = path.stat().st_size
        self.encoding: str | None = None
        self.bytes_read = 0

    def read(self) -> Iterator[Document | Problem]:
        """The file's documents; a Problem for each part that cannot be read."""
        try:
            yield from getattr(self, "_" + self.format)()
        except CorpusInputError as exc:
            yield Problem(str(self.path), str(exc).removeprefix(f"{self.path}: "))
        except ImportError as exc:
            yield Problem(str(self.path), str(exc))
        except (OSError, ValueError, KeyError, EOFError) as exc:  # unreadable, corrupt or not what it says
            yield Problem(str(self.path), _reason(exc))
        except Exception as exc:  # a parser's own errors (lxml, zip, pdf): the file is skipped, the run goes on
            yield Problem(str(self.path), f"cannot read it ({type(exc).__name__}: {_reason(exc)})")
        self.bytes_read = self.size

    def _document(self, text: str, meta: dict[str, str], doc_id: str | None = None, **extra: Any) -> Document:
        return Document(doc_id=doc_id or self.base_id, text=text, title=meta.get("title") or self.path.stem,
                        author=meta.get("author", ""), work=meta.get("work", ""), extra=extra,
                        public_domain=self.options.public_domain)

    def _txt(self) -> Iterator[Document | Problem]:
        text, self.encoding = decode_text(self.path.read_bytes(), self.options.encoding)
        yield from self._one(text, {})

    def _markdown(self) -> Iterator[Document | Problem]:
        source, self.encoding = decode_text(self.path.read_bytes(), self.options.encoding)
        yield from self._one(markdown_text(source), {})

    def _html(self) -> Iterator[Document | Problem]:
        markup, self.encoding = decode_markup(self.path.read_bytes(), self.options.encoding)
        yield from self._one(html_text(markup), {"title": html_title(markup)})

    def _docx(self) -> Iterator[Document | Problem]:
        meta, text = docx_document(self.path)
        yield from self._one(text, {**meta, "work": meta["title"]})

    def _epub(self) -> Iterator[Document | Problem]:
        meta, chapters = epub_chapters(self.path)
        found = False
        for number, title, text in chapters:
            if isinstance(text, Exception):
                yield Problem(f"{self.path} {number}", f"cannot read this chapter ({_reason(text)})")
                continue
            found = True
            yield self._document(text, {"title": title, "author": meta["author"],
                                        "work": meta["title"] or self.path.stem}, f"{self.base_id}#{number}")
        if not found:
            yield Problem(str(self.path), "no chapter with text in it")

    def _pdf(self) -> Iterator[Document | Problem]:
        meta, pages = pdf_pages(self.path)
        blank = [number for number, text in enumerate(pages, start=1) if not text]
        if len(blank) == len(pages):
            yield Problem(str(self.path), "no text layer (a scanned document? run OCR on it first)")
            return
        for number in blank:
            yield Problem(f"{self.path} page {number}", "no text layer on this page (left out)")
        yield self._document("\n\n".join(text for text in pages if text),
                             {**meta, "work": meta["title"]}, pages=len(pages))

    def _one(self, text: str, meta: dict[str, str]) -> Iterator[Document | Problem]:
        if text.strip():
            yield self._document(text, meta)
        else:
            yield Problem(str(self.path), "no text in it")

    def _jsonl(self) -> Iterator[Document | Problem]:
        self.encoding = "utf-8"
        with self.path.open("rb") as raw:
            counted = Counted(raw)
            for where, record in jsonl_records(self.path, counted):
                self.bytes_read = counted.count
                yield self._record(where, record)

    def _csv(self) -> Iterator[Document | Problem]:
        with self.path.open("rb") as raw:
            counted = Counted(raw)
            self.encoding, rows = csv_records(self.path, counted, self.options.encoding)
            for where, record in rows:
                self.bytes_read = counted.count
                yield self._record(where, _typed({k: v for k, v in record.items() if k is not None and v != ""}))

    def _parquet(self) -> Iterator[Document | Problem]:
        for where, record, share in parquet_records(self.path):
            self.bytes_read = int(share * self.size)
            yield self._record(where, record)

    def _record(self, where: str, record: Any) -> Document | Problem:
        if isinstance(record, ValueError):
            return Problem(where, str(record))
        try:
            return document_from_record(record, where, self.options.fields, self.options.public_domain)
        except CorpusInputError as exc:
            return Problem(where, str(exc).removeprefix(f"{where}: "))


def find_sources(paths: Sequence[Path], options: ReadOptions) -> tuple[list[Source], list[Problem], list[Path]]:
    """The input files of `paths` (files, or folders walked recursively): the sources to read,
    the problems found already (a path that does not exist, a file of no format read), and
    the files a walk passed over."""
    sources: list[Source] = []
    problems: list[Problem] = []
    ignored: list[Path] = []
    named: dict[str, Path] = {}  # the id of a one-document file, and the file that has it

    def add(source: Source) -> None:
        if source.format in _RECORD_FORMATS:  # their ids come from their records
            sources.append(source)
        elif source.base_id in named:
            problems.append(Problem(str(source.path), f"its id {source.base_id!r} is also that of "
                                                      f"{named[source.base_id]}; rename one of them"))
        else:
            named[source.base_id] = source.path
            sources.append(source)

    for path in paths:
        if path.is_dir():
            readable = 0
            for found in sorted(p for p in path.rglob("*") if p.is_file()):
                relative = found.relative_to(path)
                if any(part.startswith(".") for part in relative.parts) or not _wanted(relative, options):
                    continue
                format = _format(found)
                if format is None:
                    ignored.append(found)
                else:
                    readable += 1
                    add(Source(found, format, _strip_suffix(relative).as_posix(), options))
            if not readable:
                problems.append(Problem(str(path), "no file of a format textguard reads in this folder"))
        elif path.is_file():
            format = _format(path)
            if format is None:
                problems.append(Problem(str(path), f"unsupported file type ({path.suffix or 'none'}); "
                                                   f"read are: {', '.join(sorted(FORMATS))}"))
            else:
                add(Source(path, format, _strip_suffix(Path(path.name)).as_posix(), options))
        else:
            problems.append(Problem(str(path), "no such file or folder"))
    return sources, problems, ignored


def _wanted(relative: Path, options: ReadOptions) -> bool:
    """Whether a walked file passes --include and --exclude, matched on its path in the folder
    or its name, case-blind as the formats are (BOOK.EPUB is an EPUB)."""
    path, name = relative.as_posix().lower(), relative.name.lower()

    def matches(glob: str) -> bool:
        return fnmatch.fnmatchcase(path, glob.lower()) or fnmatch.fnmatchcase(name, glob.lower())

    if options.include and not any(matches(g) for g in options.include):
        return False
    return not any(matches(g) for g in options.exclude)


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row with the terms that are not strings made what they are."""
    flag = str(row.get("public_domain", "")).strip().lower()
    if flag in ("true", "1", "yes", "false", "0", "no"):
        row["public_domain"] = flag in ("true", "1", "yes")
    limit = str(row.get("quote_chars", "")).strip()
    if limit.isdigit():
        row["quote_chars"] = int(limit)
    return row


def _format(path: Path) -> str | None:
    name = path.name.lower()
    return next((FORMATS[end] for end in sorted(FORMATS, key=len, reverse=True) if name.endswith(end)), None)


def _strip_suffix(path: Path) -> Path:
    name = path.name
    lowered = name.lower()
    for end in sorted(FORMATS, key=len, reverse=True):
        if lowered.endswith(end):
            return path.with_name(name[: len(name) - len(end)])
    return path


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read it ({exc.strerror})"
    return str(exc) or type(exc).__name__


