"""The summary of a scan: verdict rates with 95% intervals, the longest-run distribution, the
works and authors most copied, whether the sample is large enough to defend, the settings and
index the run used, and for probes the literal-copying rate; as JSON (`scan --json`) and as
lines for a terminal.

Rates of answers are Wilson intervals (`stats.wilson`), the mean copied share a normal
interval: figures an auditor can be given with how sure they are, and reproduced from the
settings and index recorded beside them.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from textguard import __version__
from textguard.copying import LITERAL_ROUGE_L
from textguard.corpus import Corpus
from textguard.scan import Record, RunCounts
from textguard.settings import Settings
from textguard.stats import mean_interval, percent, wilson

__all__ = ["LONGEST_RUN_EDGES", "format_summary", "provenance", "summarise", "work_of"]

LONGEST_RUN_EDGES = (1, 13, 25, 50, 100, 200, 500)
"""Bucket edges of the longest-run distribution (normalised characters)."""
_MALFORMED_KEPT = 100  # malformed line numbers listed in the summary
_TOP_WORKS = 20


def summarise(records: Iterable[Record], counts: RunCounts | None = None, *, quote_chars: int,
              min_answers: int = 1000) -> dict[str, Any]:
    """Totals over result records: verdict rates and their intervals, the longest-run
    distribution, most-copied works and authors, the sample against `min_answers`, and for
    probes (records with reference metrics) the literal-copying rate."""
    verdicts: Counter[str] = Counter()
    longest: list[int] = []
    coverages: list[float] = []
    works: dict[str, dict[str, Any]] = {}
    authors: dict[str, dict[str, Any]] = {}
    probes: list[dict[str, Any]] = []
    for record in records:
        verdicts[record["verdict"]] += 1
        longest.append(int(record["metrics"]["longest_run"]))
        coverages.append(float(record["metrics"]["coverage"]))
        for m in record["matches"]:
            work = works.setdefault(work_of(m), {"work": work_of(m), "author": m["author"], "answers": 0,
                                                 "copied_chars": 0})
            work["copied_chars"] += m["chars"]
            author = authors.setdefault(m["author"], {"author": m["author"], "answers": 0, "copied_chars": 0,
                                                      "works": set()})
            author["copied_chars"] += m["chars"]
            author["works"].add(work_of(m))
        for name in {work_of(m) for m in record["matches"]}:
            works[name]["answers"] += 1
        for name in {m["author"] for m in record["matches"]}:
            authors[name]["answers"] += 1
        if "reference_metrics" in record:
            probes.append(record["reference_metrics"])
    answers = sum(verdicts.values())
    runs = np.asarray(longest or [0])
    flagged = verdicts["rewrite"] + verdicts["block"]
    over_quote = int((runs >= quote_chars).sum()) if longest else 0
    summary: dict[str, Any] = {
        "answers": answers,
        "verdicts": {kind: verdicts[kind] for kind in ("allow", "rewrite", "block")},
        "rates": {kind: _rate(verdicts[kind], answers) for kind in ("rewrite", "block")}
        | {"flagged": _rate(verdicts["rewrite"] + verdicts["block"], answers)},
        "longest_run": {
            "buckets": _buckets(longest, quote_chars),
            "p50": int(np.percentile(runs, 50)), "p90": int(np.percentile(runs, 90)),
            "p99": int(np.percentile(runs, 99)), "max": int(runs.max()),
            "at_least_quote_chars": over_quote, "quote_chars": quote_chars},
        "coverage_mean": round(float(np.mean(coverages)), 4) if coverages else 0.0,
        "intervals": {"flagged": wilson(flagged, answers).to_dict(),
                      "at_least_quote_chars": wilson(over_quote, answers).to_dict(),
                      "coverage_mean": mean_interval(coverages).to_dict(), "confidence": 0.95},
        "sample": {"answers": answers, "minimum": min_answers, "meets_minimum": answers >= min_answers},
        "works": [{**w, "rate": wilson(w["answers"], answers).to_dict()} for w in sorted(
            works.values(), key=lambda w: (-w["copied_chars"], -w["answers"], w["work"]))[:_TOP_WORKS]],
        "authors": [{**a, "works": len(a["works"]), "rate": wilson(a["answers"], answers).to_dict()}
                    for a in sorted(authors.values(), key=lambda a: (-a["copied_chars"], -a["answers"],
                                                                     a["author"]))[:_TOP_WORKS]],
    }
    if probes:
        literal = sum(1 for p in probes if p["literal_copy"])
        summary["probes"] = {
            "answers": len(probes), "literal_copies": literal, "literal_copy_rate": _rate(literal, len(probes)),
            "rouge_l_threshold": LITERAL_ROUGE_L,
            "rouge_l_mean": round(float(np.mean([p["rouge_l"] for p in probes])), 4),
            "longest_run_mean": round(float(np.mean([p["longest_run"] for p in probes])), 2)}
    if counts is not None:
        summary["run"] = {"scanned": counts.scanned, "resumed": counts.resumed, "malformed": len(counts.malformed),
                          "malformed_lines": [m.line for m in counts.malformed[:_MALFORMED_KEPT]]}
    return summary


def provenance(settings: Settings) -> dict[str, Any]:
    """What a run's figures depend on, to reproduce them: textguard's version, the settings that
    decide verdicts, and the index as it stood (its parameters and size)."""
    deciding = ("index", "threshold", "num_perm", "window_shingles", "shingle_tokens", "seed", "max_postings",
                "quote_chars", "mosaic_chars", "block_ratio", "block_chars")
    with Corpus(settings) as corpus:
        stats = corpus.stats()
    index = {key: stats[key] for key in ("documents", "public_domain_documents", "characters", "windows",
                                         "parameters")}
    index["fingerprint"] = hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()[:16]
    return {"textguard": __version__, "settings": {name: getattr(settings, name) for name in deciding},
            "index": index}


def work_of(match: dict[str, Any]) -> str:
    """`policy.work_name` of a match read back from a result line."""
    return str(match["work"] or match["title"] or match["doc_id"])


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _buckets(longest: Sequence[int], quote_chars: int) -> list[dict[str, Any]]:
    edges = sorted({*LONGEST_RUN_EDGES, quote_chars})
    counts = Counter(int(np.searchsorted(edges, value, side="right")) for value in longest)
    buckets = [{"label": "0", "from": 0, "to": 0, "answers": counts[0]}]
    for i, low in enumerate(edges):
        high = edges[i + 1] - 1 if i + 1 < len(edges) else None
        label = f"{low}–{high}" if high is not None else f"≥{low}"
        buckets.append({"label": label, "from": low, "to": high, "answers": counts[i + 1]})
    return buckets


def _interval(interval: dict[str, float]) -> str:
    return f"{percent(interval['estimate'])} [{percent(interval['low'])}, {percent(interval['high'])}]"


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few lines for a terminal."""
    s = summary
    lines = [f"answers: {s['answers']:,}  allow {s['verdicts']['allow']:,}  rewrite {s['verdicts']['rewrite']:,} "
             f"({s['rates']['rewrite']:.1%})  block {s['verdicts']['block']:,} ({s['rates']['block']:.1%})"]
    intervals, sample = s["intervals"], s["sample"]
    lines.append(f"flagged {_interval(intervals['flagged'])}; run >= {s['longest_run']['quote_chars']} chars "
                 f"{_interval(intervals['at_least_quote_chars'])}; mean copied share "
                 f"{_interval(intervals['coverage_mean'])} (95% intervals)")
    if not sample["meets_minimum"]:
        lines.append(f"sample: {sample['answers']:,} answers, fewer than the {sample['minimum']:,} these rates "
                     "should rest on")
    if "run" in s:
        run = s["run"]
        lines.append(f"this run: scanned {run['scanned']:,}, already done {run['resumed']:,}, "
                     f"malformed lines {run['malformed']:,}")
    runs = s["longest_run"]
    lines.append(f"longest verbatim run (chars): p50 {runs['p50']}, p90 {runs['p90']}, p99 {runs['p99']}, "
                 f"max {runs['max']}; {runs['at_least_quote_chars']:,} answers at or above {runs['quote_chars']}")
    lines.append("  " + "  ".join(f"{b['label']}: {b['answers']:,}" for b in runs["buckets"]))
    if s["works"]:
        lines.append("most copied works:")
        lines.extend(f"  《{w['work']}》 {w['author']}: {w['copied_chars']:,} chars in {w['answers']:,} answers "
                     f"({_interval(w['rate'])})" for w in s["works"][:10])
    if "probes" in s:
        p = s["probes"]
        lines.append(f"probes: {p['answers']:,} answers with a reference; literal copies (ROUGE-L >= "
                     f"{p['rouge_l_threshold']}) {p['literal_copies']:,} ({p['literal_copy_rate']:.1%}); "
                     f"mean ROUGE-L {p['rouge_l_mean']:.3f}")
    return "\n".join(lines)
