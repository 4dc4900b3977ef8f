"""What the guard did about one work or one author: the answer to a rights holder's "has your
service reproduced my books, when and how much?", from the audit log.

Counts of answers flagged, rewritten and blocked, and the characters they copied, in all, per
day (local time) and per work, and which surfaces served them. Never protected text, even
where the log holds some (`audit_text`): a provider can hand the report over as it is. A span
belongs to the subject by the work or author written in the log, or, for entries written
before those were logged, by its document's metadata in the index. The log is capped
(`audit_max_entries`), so the report says from when it holds entries.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import functools
import html
import io
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from textguard import __version__
from textguard._redis import connect_sync
from textguard.audit import AuditEntry, AuditReader
from textguard.corpus import Corpus
from textguard.errors import ConfigError
from textguard.settings import Settings
from textguard.store import DocumentMeta

__all__ = ["AuditQuery", "format_report", "parse_time", "render_csv", "render_html", "report"]

_VERDICTS = {"rewrite": "rewritten", "block": "blocked"}


def parse_time(value: str | None, name: str) -> float | None:
    """An ISO 8601 time (a date alone is its midnight; no zone means local time) as epoch seconds."""
    if value is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: not an ISO 8601 time: {value!r}") from exc
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """One work or one author (not both), between two times (epoch seconds; None: open)."""

    work: str | None = None
    author: str | None = None
    since: float | None = None
    until: float | None = None

    def __post_init__(self) -> None:
        if (self.work is None) == (self.author is None):
            raise ConfigError("name a work or an author (one of them)")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ConfigError("the start of the period is after its end")

    def matches(self, work: str, author: str) -> bool:
        return work == self.work if self.work is not None else author == self.author

    def subject(self) -> dict[str, str]:
        return {"work": self.work} if self.work is not None else {"author": self.author or ""}


def report(settings: Settings, query: AuditQuery) -> dict[str, Any]:
    """The report of `query` from the audit log of `settings`' index."""
    client = connect_sync(settings)
    with contextlib.closing(client), Corpus(settings) as corpus:
        reader = AuditReader(client, settings.index)
        oldest = reader.oldest()
        documents = functools.cache(lambda: _documents(corpus.list()))  # read only for older entries
        return summarise(reader.between(query.since, query.until), query, documents,
                         oldest=oldest.time if oldest else None, settings=settings)


def _documents(metas: Iterable[DocumentMeta]) -> dict[str, tuple[str, str]]:
    """Every document of the index: id -> (work, author)."""
    return {meta["id"]: (meta.get("work") or meta.get("title") or meta["id"], meta.get("author", ""))
            for meta in metas}


def summarise(entries: Iterable[AuditEntry], query: AuditQuery, documents: Callable[[], dict[str, tuple[str, str]]],
              *, oldest: float | None, settings: Settings) -> dict[str, Any]:
    """The report's figures from `entries` (the log between the query's times); `documents`
    gives the index's works and authors, for entries that did not log them."""
    days: dict[str, Counter[str]] = defaultdict(Counter)
    works: dict[str, Counter[str]] = defaultdict(Counter)
    work_authors: dict[str, str] = {}
    seen: dict[str, list[float]] = {}
    routes: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    read = 0
    for entry in entries:
        read += 1
        kind = _VERDICTS.get(entry.fields.get("verdict", ""))
        if kind is None:
            continue
        copied: Counter[str] = Counter()  # per work of the subject, the characters this answer copied
        for span in entry.fields.get("spans", []):
            work, author = _owner(span, documents)
            if query.matches(work, author):
                copied[work] += int(span.get("chars", span["end"] - span["start"]))
                work_authors.setdefault(work, author)
        if not copied:
            continue
        day = datetime.datetime.fromtimestamp(entry.time).date().isoformat()
        routes[entry.fields.get("route", "")] += 1
        for counter in (totals, days[day]):
            counter.update({"flagged": 1, kind: 1, "copied_chars": sum(copied.values())})
        for work, chars in copied.items():
            works[work].update({"flagged": 1, kind: 1, "copied_chars": chars})
            first_last = seen.setdefault(work, [entry.time, entry.time])
            first_last[1] = entry.time
    offset = datetime.datetime.now().astimezone().strftime("%z")
    return {
        "subject": query.subject(), "index": settings.index, "textguard": __version__,
        "since": _iso(query.since), "until": _iso(query.until), "timezone": f"UTC{offset[:3]}:{offset[3:]}",
        "log_holds_from": _iso(oldest), "audit": settings.audit, "entries_read": read,
        "answers": _counts(totals), "copied_chars": totals["copied_chars"],
        "per_day": [{"date": day, **_counts(days[day]), "copied_chars": days[day]["copied_chars"]}
                    for day in sorted(days)],
        "per_work": [{"work": work, "author": work_authors[work], **_counts(works[work]),
                      "copied_chars": works[work]["copied_chars"], "first_seen": _iso(seen[work][0]),
                      "last_seen": _iso(seen[work][1])}
                     for work in sorted(works, key=lambda w: (-works[w]["copied_chars"], w))],
        "routes": dict(routes.most_common()),
    }


def _owner(span: dict[str, Any], documents: Callable[[], dict[str, tuple[str, str]]]) -> tuple[str, str]:
    """The work and author of a logged span: as logged, else (an older entry) from the index."""
    if "author" in span and span.get("work"):
        return span["work"], span["author"]
    work, author = documents().get(span["doc_id"], ("", ""))
    return span.get("work") or work or span["doc_id"], author


def _counts(counter: Counter[str]) -> dict[str, int]:
    return {"flagged": counter["flagged"], "rewritten": counter["rewritten"], "blocked": counter["blocked"]}


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds")


def format_report(result: dict[str, Any]) -> str:
    """The report as a few lines for a terminal."""
    subject = "《{work}》".format(**result["subject"]) if "work" in result["subject"] else result["subject"]["author"]
    answers = result["answers"]
    lines = [f"{subject}: {answers['flagged']:,} answers flagged ({answers['rewritten']:,} rewritten, "
             f"{answers['blocked']:,} blocked), {result['copied_chars']:,} characters copied",
             f"period: {result['since'] or 'the start of the log'} to {result['until'] or 'now'}; the log holds "
             f"entries from {result['log_holds_from'] or '(empty)'} (audit: {result['audit']})"]
    lines += [f"  {d['date']}: {d['flagged']:,} flagged, {d['rewritten']:,} rewritten, {d['blocked']:,} blocked, "
              f"{d['copied_chars']:,} chars" for d in result["per_day"]]
    if len(result["per_work"]) > 1:
        lines += [f"  《{w['work']}》: {w['flagged']:,} answers, {w['copied_chars']:,} chars"
                  for w in result["per_work"]]
    return "\n".join(lines)


def render_csv(result: dict[str, Any]) -> str:
    """One row per day, then the totals per work (a `work` column tells them apart)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["date", "work", "flagged", "rewritten", "blocked", "copied_chars"])
    for day in result["per_day"]:
        writer.writerow([day["date"], "", day["flagged"], day["rewritten"], day["blocked"], day["copied_chars"]])
    for work in result["per_work"]:
        writer.writerow(["", work["work"], work["flagged"], work["rewritten"], work["blocked"], work["copied_chars"]])
    return out.getvalue()


def render_html(result: dict[str, Any]) -> str:
    """A self-contained page (no scripts, no fetches) a provider can hand to a rights holder."""
    subject = ("《" + result["subject"]["work"] + "》") if "work" in result["subject"] else result["subject"]["author"]
    answers = result["answers"]

    def table(table_id: str, head: list[str], rows: list[list[Any]]) -> str:
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
        header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        return f'<table id="{table_id}"><thead><tr>{header}</tr></thead><tbody>{cells}</tbody></table>'

    days = table("per-day", ["日期", "被标记回答", "改写", "拦截", "复制字数"],
                 [[d["date"], d["flagged"], d["rewritten"], d["blocked"], d["copied_chars"]]
                  for d in result["per_day"]])
    works = table("per-work", ["作品", "作者", "被标记回答", "改写", "拦截", "复制字数", "首次", "最近"],
                  [[f"《{w['work']}》", w["author"], w["flagged"], w["rewritten"], w["blocked"], w["copied_chars"],
                    w["first_seen"], w["last_seen"]] for w in result["per_work"]])
    period = f"{result['since'] or '日志起点'} 至 {result['until'] or '现在'}（{result['timezone']}）"
    return f"""<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>textguard 著作权核查记录：{html.escape(subject)}</title>
<style>body {{ font-family: "Noto Sans CJK SC", "WenQuanYi Micro Hei", sans-serif; max-width: 960px;
margin: 0 auto; padding: 16px 24px; color: #222; }} table {{ border-collapse: collapse; margin: 8px 0 16px; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }} .meta {{ color: #666; }}</style>
</head><body>
<h1>著作权核查记录：{html.escape(subject)}</h1>
<p class="meta">时段：{html.escape(period)} · 审计日志自 {html.escape(result['log_holds_from'] or '（空）')} 起有记录
· 索引 {html.escape(result['index'])} · textguard {html.escape(result['textguard'])} · 本记录不含受保护作品的原文</p>
<p id="totals">被标记的回答共 <strong>{answers['flagged']:,}</strong> 条（改写 {answers['rewritten']:,} 条，拦截
{answers['blocked']:,} 条），涉及复制 <strong>{result['copied_chars']:,}</strong> 字。</p>
<h2>按日</h2>{days}<h2>按作品</h2>{works}
</body></html>
"""
