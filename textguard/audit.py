"""The audit log: one Redis Stream entry per verdict that did something (or per check, if asked).

Compliance asks "what did the guard do, when, to which request, citing which work": each entry
holds the time, request id, route, verdict, why a check was skipped, and per span the document,
offsets and scores. The protected text itself is not written unless `audit_text` is set (then
the flagged spans of the answer are). The stream is capped (`audit_max_entries`, trimmed
approximately, which Redis does cheaply) and lives beside, not inside, the index's keys.
Writing never fails a request: a Redis error is logged and counted.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from textguard import telemetry
from textguard._redis import REDIS_ERRORS, AsyncClient, SyncClient, as_str
from textguard.policy import Verdict, work_name
from textguard.settings import Settings

__all__ = ["AuditEntry", "AuditLog", "AuditReader", "stream_key", "write_entries"]

logger = logging.getLogger(__name__)


def stream_key(index: str) -> str:
    return f"textguard:audit:{index}"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry as read back: its stream id (milliseconds-sequence) and its fields."""

    entry_id: str
    fields: dict[str, Any]

    @property
    def time(self) -> float:
        return int(self.entry_id.split("-")[0]) / 1000

    def to_dict(self) -> dict[str, Any]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.time)) + f".{int(self.time * 1000) % 1000:03d}Z"
        return {"id": self.entry_id, "time": stamp, **self.fields}


def entry_fields(verdict: Verdict, route: str, request_id: str, text: str | None = None) -> dict[str, str]:
    """The stream fields for one verdict; `text` (the checked text) only if it may be logged."""
    spans = []
    for match in verdict.matches:
        span: dict[str, Any] = {"doc_id": match.doc_id, "work": work_name(match), "author": match.author,
                                "start": match.start, "end": match.end, "chars": match.chars,
                                "source_start": match.source_start,
                                "source_end": match.source_end, "verbatim_chars": match.verbatim_chars,
                                "similarity": round(match.similarity, 4)}
        if text is not None:
            span["text"] = text[match.start:match.end]
        spans.append(span)
    return {"request_id": request_id, "route": route, "verdict": verdict.verdict,
            "skipped": verdict.skipped or "", "checked_chars": str(verdict.checked_chars),
            "doc_ids": json.dumps(sorted({m.doc_id for m in verdict.matches}), ensure_ascii=False),
            "spans": json.dumps(spans, ensure_ascii=False), "elapsed_ms": f"{verdict.elapsed_ms:.3f}",
            "rewrite_style": verdict.rewrite_style or "", "paraphrase_failure": verdict.paraphrase_failure or ""}


class AuditLog:
    """The writing side, on the request path's asyncio client."""

    def __init__(self, client: AsyncClient, settings: Settings) -> None:
        self._client = client
        self._key = stream_key(settings.index)
        self._mode = settings.audit
        self._max_entries = settings.audit_max_entries
        self._with_text = settings.audit_text

    def wants(self, verdict: Verdict) -> bool:
        flagged = verdict.verdict != "allow" or verdict.skipped is not None
        return self._mode == "all" or (self._mode == "flagged" and flagged)

    async def record(self, verdict: Verdict, route: str, text: str) -> None:
        if not self.wants(verdict):
            return
        fields = entry_fields(verdict, route, telemetry.request_id.get(), text if self._with_text else None)
        try:
            await self._client.xadd(self._key, fields, maxlen=self._max_entries, approximate=True)  # type: ignore[arg-type]
        except (*REDIS_ERRORS, OSError) as exc:
            telemetry.REDIS_ERRORS.inc()
            logger.warning("could not write the audit entry for a %s verdict: %s", verdict.verdict, exc)


class AuditReader:
    """The reading side, for `textguard audit tail` and `textguard audit export`."""

    def __init__(self, client: SyncClient, index: str) -> None:
        self._client = client
        self._key = stream_key(index)

    def latest(self, count: int) -> list[AuditEntry]:
        """The last `count` entries, oldest first."""
        entries: Any = self._client.xrevrange(self._key, count=count)
        return [_entry(i, f) for i, f in reversed(entries)]

    def oldest(self) -> AuditEntry | None:
        """The first entry the (capped) log still holds."""
        entries: Any = self._client.xrange(self._key, count=1)
        return _entry(*entries[0]) if entries else None

    def follow(self, after: str = "$", block_ms: int = 1000) -> Iterator[AuditEntry]:
        """New entries as they are written, until the caller stops iterating."""
        last = after
        while True:
            replies: Any = self._client.xread({self._key: last}, block=block_ms, count=100)
            for _, entries in replies or []:
                for entry_id, fields in entries:
                    entry = _entry(entry_id, fields)
                    last = entry.entry_id
                    yield entry

    def between(self, since: float | None = None, until: float | None = None,
                batch: int = 1000) -> Iterator[AuditEntry]:
        """Entries written between two times (seconds since the epoch), oldest first."""
        low = str(int(since * 1000)) if since is not None else "-"
        high = str(int(until * 1000)) if until is not None else "+"
        while True:
            entries: Any = self._client.xrange(self._key, min=low, max=high, count=batch)
            for entry_id, fields in entries:
                yield _entry(entry_id, fields)
            if len(entries) < batch:
                return
            low = "(" + as_str(entries[-1][0])

    def length(self) -> int:
        return int(self._client.xlen(self._key))


def _entry(entry_id: bytes | str, fields: dict[Any, Any]) -> AuditEntry:
    decoded = {as_str(k): as_str(v) for k, v in fields.items()}
    parsed: dict[str, Any] = dict(decoded)
    for key in ("doc_ids", "spans"):
        if key in parsed:
            parsed[key] = json.loads(parsed[key])
    if "checked_chars" in parsed:
        parsed["checked_chars"] = int(parsed["checked_chars"])
    if "elapsed_ms" in parsed:
        parsed["elapsed_ms"] = float(parsed["elapsed_ms"])
    return AuditEntry(as_str(entry_id), parsed)


_CSV_COLUMNS = ("id", "time", "request_id", "route", "verdict", "skipped", "checked_chars", "doc_ids", "spans",
                "elapsed_ms", "rewrite_style", "paraphrase_failure")


def write_entries(entries: Iterator[AuditEntry], out: TextIO, form: str) -> int:
    """Write entries as JSON lines or CSV (lists as JSON in their cells); returns how many."""
    count = 0
    writer = csv.DictWriter(out, _CSV_COLUMNS, extrasaction="ignore") if form == "csv" else None
    if writer is not None:
        writer.writeheader()
    for entry in entries:
        row = entry.to_dict()
        if writer is None:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v
                             for k, v in row.items()})
        count += 1
    return count
