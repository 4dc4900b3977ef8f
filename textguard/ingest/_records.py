"""Files of records, one document each: JSON Lines (also gzip- or zstd-compressed), CSV and TSV,
Parquet. All are read as streams (a line, a CSV row, a Parquet batch at a time), so that a
file of many gigabytes costs no more memory than its largest record.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

from textguard.ingest._text import EncodingError, decoded_lines

__all__ = ["Counted", "csv_records", "jsonl_records", "parquet_records"]

_PARQUET_ROWS = 256  # rows per batch read: records may hold whole books


class Counted(io.RawIOBase):
    """A file whose bytes read so far are counted (the progress of a compressed stream)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        read = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        self.count += read or 0
        return int(read or 0)

    def close(self) -> None:
        self.raw.close()
        super().close()


def _opened(path: Path, counted: Counted) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return cast(IO[bytes], gzip.GzipFile(fileobj=io.BufferedReader(counted), mode="rb"))
    if name.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(io.BufferedReader(counted)))
    return io.BufferedReader(counted)


def jsonl_records(path: Path, counted: Counted) -> Iterator[tuple[str, Any]]:
    """(where, record) per non-blank line; a line that is not JSON gives (where, ValueError)."""
    with _opened(path, counted) as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
            except UnicodeDecodeError as exc:
                yield where, ValueError(f"not UTF-8 ({exc.reason})")
            except json.JSONDecodeError as exc:
                yield where, ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})")


def csv_records(path: Path, counted: Counted, encoding: str | None) -> tuple[str, Iterator[tuple[str, Any]]]:
    """The file's encoding, and (where, row as a dict) per row; the first row names the fields."""
    handle = _opened(path, counted)
    try:
        name, lines = decoded_lines(handle, encoding)
    except BaseException:
        handle.close()
        raise

    def rows() -> Iterator[tuple[str, Any]]:
        csv.field_size_limit(sys.maxsize)  # a field may hold a whole book
        delimiter = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
        with handle:
            reader = csv.DictReader(lines, delimiter=delimiter)
            try:
                for number, row in enumerate(reader, start=1):
                    yield f"{path}:row {number}", row
            except csv.Error as exc:
                raise EncodingError(f"malformed CSV near line {reader.line_num}: {exc}") from exc

    return name, rows()


def parquet_records(path: Path) -> Iterator[tuple[str, Any, float]]:
    """(where, row as a dict, share of the file read) per row, a batch of rows at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("reading Parquet needs pyarrow: pip install 'textguard[parquet]'") from exc
    with pq.ParquetFile(str(path)) as parquet:
        groups = max(parquet.num_row_groups, 1)
        row = 0
        for group in range(parquet.num_row_groups):
            for batch in parquet.iter_batches(batch_size=_PARQUET_ROWS, row_groups=[group]):
                for record in batch.to_pylist():
                    row += 1
                    yield f"{path}:row {row}", record, (group + 1) / groups
