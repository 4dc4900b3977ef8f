"""Model against model: a scan's results beside a baseline scan of the same inputs (another
model, or the checkpoint before), answer by answer.

Answers are paired by id. For each pair the two outcomes are compared, so the figures are
paired ones: the difference in the share of flagged answers, and of answers with a run of Q or
more, with Newcombe's interval for paired proportions and McNemar's test; the mean difference
in copied share with its interval; and per work, how many more (or fewer) answers copy it, with
its own McNemar test, so a team sees which works moved and whether that is more than noise.
Answers in only one of the two files are counted and left out.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textguard.scan import Record, ScanError, read_results, result_key
from textguard.stats import mcnemar, mean_interval, paired_difference, percent
from textguard.summary import work_of

__all__ = ["check_baseline", "compare_runs", "format_comparison"]

_WORKS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one answer came to, as far as the comparison looks."""

    flagged: bool
    over_quote: bool
    coverage: float
    works: frozenset[str]


def check_baseline(path: Path) -> None:
    """Fail early, before a scan, on a baseline that cannot be compared with: missing, empty, or
    not the results of `textguard scan`. (Whether it shares ids with the run shows only after.)"""
    _read_baseline(path, quote_chars=1)


def _read_baseline(path: Path, *, quote_chars: int) -> tuple[dict[str, _Outcome], dict[str, str]]:
    if not path.is_file():
        raise ScanError(f"{path}: no such results file (the --out of a scan of the same inputs)")
    outcomes, authors = _outcomes(read_results(path), quote_chars, str(path))
    if not outcomes:
        raise ScanError(f"{path}: holds no results of textguard scan")
    return outcomes, authors


def _outcomes(records: Iterable[Record], quote_chars: int, source: str) -> tuple[dict[str, _Outcome], dict[str, str]]:
    """Per answer id its outcome; and the author of each work seen."""
    outcomes: dict[str, _Outcome] = {}
    authors: dict[str, str] = {}
    for record in records:
        if not {"verdict", "matches", "metrics"} <= record.keys():
            raise ScanError(f"{source}: line for id {record['id']!r} is not a result of textguard scan")
        for match in record["matches"]:
            authors.setdefault(work_of(match), match["author"])
        outcomes[result_key(record["id"])] = _Outcome(
            record["verdict"] != "allow", int(record["metrics"]["longest_run"]) >= quote_chars,
            float(record["metrics"]["coverage"]), frozenset(work_of(m) for m in record["matches"]))
    return outcomes, authors


def compare_runs(run: Iterable[Record], baseline: Path, *, quote_chars: int,
                 provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The comparison of `run` with the results file `baseline` (same inputs, another model);
    with the run's `provenance`, also whether the baseline was checked the same way."""
    theirs, their_authors = _read_baseline(baseline, quote_chars=quote_chars)
    ours, our_authors = _outcomes(run, quote_chars, "this run")
    paired = [key for key in ours if key in theirs]
    if not paired:
        raise ScanError(f"{baseline}: no answer shares an id with this run's; compare scans of the same inputs")
    pairs = [(ours[key], theirs[key]) for key in paired]
    moved_up: Counter[str] = Counter()  # answers copying the work in the run, not in the baseline
    moved_down: Counter[str] = Counter()
    run_answers: Counter[str] = Counter()
    baseline_answers: Counter[str] = Counter()
    for mine, other in pairs:
        moved_up.update(mine.works - other.works)
        moved_down.update(other.works - mine.works)
        run_answers.update(mine.works)
        baseline_answers.update(other.works)
    authors = {**their_authors, **our_authors}
    works: list[dict[str, Any]] = []
    for work in set(moved_up) | set(moved_down):
        p_value, test = mcnemar(moved_up[work], moved_down[work])
        works.append({"work": work, "author": authors.get(work, ""), "run_answers": run_answers[work],
                      "baseline_answers": baseline_answers[work], "difference": moved_up[work] - moved_down[work],
                      "p_value": float(f"{p_value:.4g}"), "test": test})
    works.sort(key=lambda w: (-abs(w["difference"]), w["p_value"], w["work"]))
    return {
        "baseline": str(baseline),
        "paired_answers": len(pairs), "only_in_run": len(ours) - len(pairs),
        "only_in_baseline": len(theirs) - len(pairs),
        "flagged": paired_difference([m.flagged for m, _ in pairs], [o.flagged for _, o in pairs]).to_dict(),
        "at_least_quote_chars": paired_difference([m.over_quote for m, _ in pairs],
                                                  [o.over_quote for _, o in pairs]).to_dict(),
        "coverage_mean": {
            "run": round(mean_interval([m.coverage for m, _ in pairs]).estimate, 4),
            "baseline": round(mean_interval([o.coverage for _, o in pairs]).estimate, 4),
            "difference": mean_interval([m.coverage - o.coverage for m, o in pairs], bounds=(-1.0, 1.0)).to_dict()},
        "works_moved": works[:_WORKS_SHOWN],
        "checked_alike": _checked_alike(provenance, baseline),
    }


def _checked_alike(provenance: dict[str, Any] | None, baseline: Path) -> dict[str, Any]:
    """Whether the baseline's summary (beside it, as `scan` writes it) records the same deciding
    settings and index as this run: a difference between two models means little if the guard
    changed between their scans."""
    summary_path = baseline.with_name(baseline.stem + ".summary.json")
    try:
        theirs = json.loads(summary_path.read_text(encoding="utf-8")).get("provenance")
    except (OSError, ValueError, AttributeError):
        theirs = None
    if provenance is None or not isinstance(theirs, dict):
        return {"known": False, "differences": []}
    ours_settings, their_settings = provenance["settings"], theirs.get("settings") or {}
    differences = [name for name in ours_settings if their_settings.get(name) != ours_settings[name]]
    if provenance["index"].get("fingerprint") != (theirs.get("index") or {}).get("fingerprint"):
        differences.append("index")
    return {"known": True, "differences": differences}


def format_comparison(comparison: dict[str, Any]) -> str:
    """The comparison as a few lines for a terminal."""
    c = comparison
    flagged = c["flagged"]
    difference = flagged["difference"]
    if flagged["p_value"] < 0.05:
        finding = "more" if difference["estimate"] > 0 else "less"
        said = f"this run copies {finding} than the baseline (McNemar p = {flagged['p_value']:.3g})"
    else:
        said = f"no difference beyond noise (McNemar p = {flagged['p_value']:.3g})"
    lines = [f"against {c['baseline']}: {c['paired_answers']:,} answers paired "
             f"({c['only_in_run']:,} only here, {c['only_in_baseline']:,} only there)"]
    alike = c["checked_alike"]
    if alike["differences"]:
        lines.append(f"  warning: the baseline was checked with other {', '.join(alike['differences'])}; "
                     "part of the difference may be the guard's, not the model's")
    elif not alike["known"]:
        lines.append("  (no summary beside the baseline: whether it was checked with the same settings and index "
                     "is not known)")
    lines.append(f"  flagged {percent(flagged['run']['estimate'])} vs {percent(flagged['baseline']['estimate'])}: "
                 f"difference {percent(difference['estimate'], True)} [{percent(difference['low'], True)}, "
                 f"{percent(difference['high'], True)}]; {said}")
    if c["works_moved"]:
        lines.append("  works that moved most (answers copying them, run vs baseline):")
        lines.extend(f"    《{w['work']}》 {w['author']}: {w['run_answers']:,} vs {w['baseline_answers']:,} "
                     f"({w['difference']:+,}, p = {w['p_value']:.3g})" for w in c["works_moved"][:10])
    return "\n".join(lines)
