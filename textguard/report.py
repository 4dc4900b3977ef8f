"""The HTML report of a scan: one self-contained file that people read (in Chinese).

Everything is inside the file (styles, script, data; a Content-Security-Policy forbids any
fetch), so it can be mailed or archived with an audit. The summary and the chart are rendered
here; the table of flagged answers is rendered by the page from embedded JSON, one page of rows
at a time, so a report of a large scan stays quick to open, sort and filter. Model output is
untrusted text: it is only ever inserted as text, never as markup.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from textguard.errors import TextGuardError
from textguard.stats import percent

__all__ = ["ReportError", "companions", "render", "write_report"]

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
        "__INTERVALS__": _intervals_html(summary),
        "__WORKS__": _works_html(summary["works"]),
        "__AUTHORS__": _authors_html(summary["authors"]),
        "__COMPARISON__": _comparison_html(summary.get("comparison")),
        "__PROBES__": _probes_html(summary.get("probes")),
        "__PROVENANCE__": _provenance_html(summary.get("provenance")),
        "__DATA__": data,
    }
    for marker, value in parts.items():
        template = template.replace(marker, value)
    return template


def write_report(path: Path, records: Iterable[dict[str, Any]], summary: dict[str, Any],
                 source: str = "") -> list[Path]:
    """The HTML report at `path`, and beside it the summary as JSON and its tables as CSV (for
    a spreadsheet or an auditor's own tools): NAME.json, NAME.works.csv, NAME.authors.csv and,
    with a baseline, NAME.comparison.csv. Returns the paths written."""
    paths = companions(path)
    written = {path: render(records, summary, source),
               paths[0]: json.dumps(summary, ensure_ascii=False, indent=1) + "\n",
               paths[1]: _csv(summary["works"], _RATE_COLUMNS),
               paths[2]: _csv(summary["authors"], _RATE_COLUMNS)}
    if "comparison" in summary:
        written[paths[3]] = _csv(summary["comparison"]["works_moved"], {})
    for target, text in written.items():
        try:
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ReportError(f"{target}: cannot write the report ({exc.strerror})") from exc
    return list(written)


def companions(path: Path) -> list[Path]:
    """The files written beside the report at `path`: summary JSON, works, authors, comparison."""
    return [path.with_suffix(suffix) for suffix in (".json", ".works.csv", ".authors.csv", ".comparison.csv")]


_RATE_COLUMNS = {"rate": ("rate", "rate_low", "rate_high")}  # an interval becomes three columns


def _csv(rows: list[dict[str, Any]], intervals: dict[str, tuple[str, str, str]]) -> str:
    """`rows` as CSV, each interval field spread over its three columns."""
    flat = []
    for row in rows:
        cells = {key: value for key, value in row.items() if key not in intervals}
        for key, (estimate, low, high) in intervals.items():
            cells.update({estimate: row[key]["estimate"], low: row[key]["low"], high: row[key]["high"]})
        flat.append(cells)
    out = io.StringIO()
    writer = csv.DictWriter(out, list(flat[0]) if flat else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return out.getvalue()


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


def _share(interval: dict[str, float], signed: bool = False) -> str:
    """A rate and its 95% interval, as the report writes them."""
    return (f"{percent(interval['estimate'], signed)}（95% 置信区间 {percent(interval['low'], signed)} 至 "
            f"{percent(interval['high'], signed)}）")


def _intervals_html(summary: dict[str, Any]) -> str:
    intervals, sample = summary["intervals"], summary["sample"]
    lines = [f"被标记（改写或拦截）的回答占 {_share(intervals['flagged'])}；最长连续相同达到 "
             f"{summary['longest_run']['quote_chars']} 字的回答占 {_share(intervals['at_least_quote_chars'])}；"
             f"平均复制覆盖率 {_share(intervals['coverage_mean'])}。"]
    text = f'<p id="intervals">{html.escape(lines[0])}</p>'
    if not sample["meets_minimum"]:
        text += (f'<p class="warning" id="sample-warning">样本量 {sample["answers"]:,} 条，少于设定的最低 '
                 f'{sample["minimum"]:,} 条：以上比例的置信区间较宽，不宜据以下结论。</p>')
    return text


def _table(table_id: str, headers: list[str], rows: list[list[str]], numeric_from: int) -> str:
    """A table of escaped cells; columns from `numeric_from` on are numbers."""
    def cell(index: int, value: str, tag: str) -> str:
        numeric = ' class="num"' if index >= numeric_from else ""
        return f"<{tag}{numeric}>{html.escape(value)}</{tag}>"

    head = "".join(cell(i, h, "th") for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell(i, v, "td") for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f'<table class="works" id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _works_html(works: list[dict[str, Any]]) -> str:
    if not works:
        return '<p class="empty">没有回答被判定为复制受保护作品。</p>'
    return _table("works-table", ["作品", "作者", "涉及回答", "回答占比", "复制字数"],
                  [[f"《{w['work']}》", w["author"], f"{w['answers']:,}", _share(w["rate"]), f"{w['copied_chars']:,}"]
                   for w in works], numeric_from=2)


def _authors_html(authors: list[dict[str, Any]]) -> str:
    if not authors:
        return '<p class="empty">没有回答被判定为复制受保护作品。</p>'
    return _table("authors-table", ["作者", "作品数", "涉及回答", "回答占比", "复制字数"],
                  [[a["author"] or "（未署名）", f"{a['works']:,}", f"{a['answers']:,}", _share(a["rate"]),
                    f"{a['copied_chars']:,}"] for a in authors], numeric_from=1)


def _comparison_html(comparison: dict[str, Any] | None) -> str:
    if not comparison:
        return ""
    rows = []
    for key, name in (("flagged", "被标记的回答"), ("at_least_quote_chars", "连续相同达到引用上限的回答")):
        figure = comparison[key]
        rows.append([name, _share(figure["run"]), _share(figure["baseline"]), _share(figure["difference"], True),
                     f"{figure['p_value']:.3g}（{figure['only_run']:,} / {figure['only_baseline']:,}）"])
    coverage = comparison["coverage_mean"]
    rows.append(["平均复制覆盖率", f"{coverage['run']:.2%}", f"{coverage['baseline']:.2%}",
                 _share(coverage["difference"], True), "—"])
    figures = _table("comparison-table", ["指标", "本次", "基线", "差值", "McNemar p（仅本次 / 仅基线）"], rows,
                     numeric_from=1)
    moved = '<p class="empty">没有作品的涉及回答数发生变化。</p>'
    if comparison["works_moved"]:
        moved = _table("moved-table", ["作品", "作者", "本次涉及回答", "基线涉及回答", "差值", "McNemar p"],
                       [[f"《{w['work']}》", w["author"], f"{w['run_answers']:,}", f"{w['baseline_answers']:,}",
                         f"{w['difference']:+,}", f"{w['p_value']:.3g}"] for w in comparison["works_moved"]],
                       numeric_from=2)
    alike = comparison.get("checked_alike", {"known": False, "differences": []})
    if alike["differences"]:
        caution = (f'<p class="warning" id="alike-warning">基线扫描时的设置或索引与本次不同（'
                   f'{html.escape("、".join(alike["differences"]))}）：差值可能部分来自核查条件的变化，而非模型本身。</p>')
    elif not alike["known"]:
        caution = '<p class="meta">基线旁没有扫描概要，无法确认两次扫描使用相同的设置与索引。</p>'
    else:
        caution = ""
    return (f'<section id="comparison"><h2>与基线对比</h2>{caution}'
            f'<p>基线：{html.escape(comparison["baseline"])} · 配对回答 '
            f'{comparison["paired_answers"]:,} 条（仅本次 {comparison["only_in_run"]:,}，仅基线 '
            f'{comparison["only_in_baseline"]:,}，不计入）。差值为本次减基线；p &lt; 0.05 视为超出随机波动。</p>'
            f"{figures}<h3>变化最大的作品</h3>{moved}</section>")


def _provenance_html(provenance: dict[str, Any] | None) -> str:
    if not provenance:
        return ""
    index = provenance["index"]
    items = [("textguard", provenance["textguard"]), ("索引指纹", index["fingerprint"]),
             ("索引规模", f"{index['documents']:,} 篇，{index['characters']:,} 字，{index['windows']:,} 个窗口"),
             *((name, str(value)) for name, value in provenance["settings"].items())]
    rows = "".join(f"<dt>{html.escape(name)}</dt><dd>{html.escape(value)}</dd>" for name, value in items)
    return f'<section id="provenance"><h2>可复现信息</h2><dl>{rows}</dl></section>'


def _probes_html(probes: dict[str, Any] | None) -> str:
    if not probes:
        return ""
    return (f'<section id="probes"><h2>记忆探针</h2><p>共 {probes["answers"]:,} 条续写，其中 '
            f'<strong>{probes["literal_copies"]:,}</strong> 条与原文续写的 ROUGE-L（按字计）≥ '
            f'{probes["rouge_l_threshold"]}，判为逐字复制（{probes["literal_copy_rate"]:.1%}）；'
            f'平均 ROUGE-L {probes["rouge_l_mean"]:.3f}，平均最长连续相同 {probes["longest_run_mean"]:.1f} 字。</p>'
            "</section>")
