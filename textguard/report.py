"""The HTML report of a scan: one self-contained file that people read (in Chinese).

Everything is inside the file (styles, script, data; a Content-Security-Policy forbids any
fetch), so it can be mailed or archived with an audit. The summary and the chart are rendered
here; the table of flagged answers is rendered by the page from embedded JSON, one page of rows
at a time, so a report of a large scan stays quick to open, sort and filter. Model output is
untrusted text: it is only ever inserted as text, never as markup.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from textguard.errors import TextGuardError

__all__ = ["ReportError", "render", "write_report"]

_VERDICT_NAMES = {"allow": "放行", "rewrite": "改写", "block": "拦截"}
_CHART_WIDTH, _CHART_HEIGHT, _BAR_GAP = 720, 240, 8


class ReportError(TextGuardError):
    pass


def rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows: answers rewritten or blocked, and probes judged literal copies."""
    table = []
    for record in records:
        literal = bool(record.get("reference_metrics", {}).get("literal_copy"))
        if record["verdict"] == "allow" and not literal:
            continue
        metrics = record["metrics"]
        matches = [{**m, "kind": "copied"} for m in record["matches"]] + \
                  [{**m, "kind": "quotation"} for m in record.get("quotations", [])]
        best = next((s for s in record.get("sources", []) if s["doc_id"] == metrics.get("doc_id")), None)
        table.append({
            "id": str(record["id"]), "line": record.get("line"), "verdict": record["verdict"],
            "longest": metrics["longest_run"], "coverage": metrics["coverage"], "rouge": metrics["rouge_l"],
            "acs": metrics["acs"], "work": (best or {}).get("work", ""), "author": (best or {}).get("author", ""),
            "title": (best or {}).get("title", ""), "literal": literal,
            "reference": record.get("reference_metrics"), "answer": record.get("answer", ""),
            "matches": matches, "sources": record.get("sources", [])})
    return table


def render(records: Iterable[dict[str, Any]], summary: dict[str, Any], source: str = "") -> str:
    """The report as one HTML document."""
    template = files("textguard").joinpath("report.html").read_text(encoding="utf-8")
    data = json.dumps({"rows": rows(records), "verdictNames": _VERDICT_NAMES}, ensure_ascii=False)
    # inside <script>, "</" would end the element and "<!--" would change how it is parsed
    data = data.replace("</", "<\\/").replace("<!--", "<\\!--")
    generated = datetime.now(UTC).astimezone().strftime("%Y-%m-%d %H:%M")
    parts = {
        "__SOURCE__": html.escape(source or "（标准输入）"),
        "__GENERATED__": html.escape(generated),
        "__SUMMARY__": _summary_html(summary),
        "__CHART__": _chart_svg(summary["longest_run"]),
        "__WORKS__": _works_html(summary["works"]),
        "__PROBES__": _probes_html(summary.get("probes")),
        "__DATA__": data,
    }
    for marker, value in parts.items():
        template = template.replace(marker, value)
    return template


def write_report(path: Path, records: Iterable[dict[str, Any]], summary: dict[str, Any], source: str = "") -> None:
    try:
        path.write_text(render(records, summary, source), encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{path}: cannot write the report ({exc.strerror})") from exc


def _summary_html(summary: dict[str, Any]) -> str:
    verdicts, rates = summary["verdicts"], summary["rates"]
    cards = [("扫描回答", f"{summary['answers']:,}"), ("放行", f"{verdicts['allow']:,}"),
             ("改写", f"{verdicts['rewrite']:,}（{rates['rewrite']:.1%}）"),
             ("拦截", f"{verdicts['block']:,}（{rates['block']:.1%}）"),
             ("平均复制覆盖率", f"{summary['coverage_mean']:.1%}"),
             (f"最长连续相同 ≥ {summary['longest_run']['quote_chars']} 字",
              f"{summary['longest_run']['at_least_quote_chars']:,}")]
    if "run" in summary:
        cards.append(("格式错误（已跳过）", f"{summary['run']['malformed']:,}"))
    return "".join(f'<div class="card"><div class="label">{html.escape(label)}</div>'
                   f'<div class="value">{html.escape(value)}</div></div>' for label, value in cards)


def _chart_svg(longest: dict[str, Any]) -> str:
    """Bars of the longest-run distribution; runs at or above the quotation limit in red."""
    buckets = longest["buckets"]
    peak = max((b["answers"] for b in buckets), default=0) or 1
    left, bottom, top = 48, 40, 20
    width = (_CHART_WIDTH - left - 10) / len(buckets)
    plot = _CHART_HEIGHT - bottom - top
    parts = [f'<svg id="chart" viewBox="0 0 {_CHART_WIDTH} {_CHART_HEIGHT}" role="img" '
             f'aria-label="最长逐字复制长度分布" xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{left}" y1="{top + plot}" x2="{_CHART_WIDTH - 10}" y2="{top + plot}" class="axis"/>']
    for i, bucket in enumerate(buckets):
        height = plot * bucket["answers"] / peak
        x = left + i * width + _BAR_GAP / 2
        over = bucket["from"] >= longest["quote_chars"]
        label = html.escape(bucket["label"])
        parts.append(f'<rect class="bar{" over" if over else ""}" data-bucket="{label}" '
                     f'data-answers="{bucket["answers"]}" x="{x:.1f}" y="{top + plot - height:.1f}" '
                     f'width="{width - _BAR_GAP:.1f}" height="{height:.1f}"><title>{label} 字：'
                     f'{bucket["answers"]:,} 条回答</title></rect>')
        parts.append(f'<text x="{x + (width - _BAR_GAP) / 2:.1f}" y="{top + plot - height - 4:.1f}" '
                     f'class="count">{bucket["answers"]:,}</text>')
        parts.append(f'<text x="{x + (width - _BAR_GAP) / 2:.1f}" y="{top + plot + 16}" class="tick">{label}</text>')
    parts.append(f'<text x="{_CHART_WIDTH / 2}" y="{_CHART_HEIGHT - 4}" class="caption">'
                 f'每条回答与受保护作品最长的逐字相同片段（字）</text></svg>')
    return "".join(parts)


def _works_html(works: list[dict[str, Any]]) -> str:
    if not works:
        return '<p class="empty">没有回答被判定为复制受保护作品。</p>'
    body = "".join(f"<tr><td>《{html.escape(w['work'])}》</td><td>{html.escape(w['author'])}</td>"
                   f"<td class=\"num\">{w['answers']:,}</td><td class=\"num\">{w['copied_chars']:,}</td></tr>"
                   for w in works)
    return ('<table class="works"><thead><tr><th>作品</th><th>作者</th><th>涉及回答</th><th>复制字数</th>'
            f"</tr></thead><tbody>{body}</tbody></table>")


def _probes_html(probes: dict[str, Any] | None) -> str:
    if not probes:
        return ""
    return (f'<section id="probes"><h2>记忆探针</h2><p>共 {probes["answers"]:,} 条续写，其中 '
            f'<strong>{probes["literal_copies"]:,}</strong> 条与原文续写的 ROUGE-L（按字计）≥ '
            f'{probes["rouge_l_threshold"]}，判为逐字复制（{probes["literal_copy_rate"]:.1%}）；'
            f'平均 ROUGE-L {probes["rouge_l_mean"]:.3f}，平均最长连续相同 {probes["longest_run_mean"]:.1f} 字。</p>'
            "</section>")
