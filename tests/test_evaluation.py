"""Evaluation runs a compliance team can sign: `textguard scan` gives its rates with 95%
intervals, the sample against its minimum, the settings and index it used, and with
`--baseline` a paired comparison with another model's scan of the same inputs; the report
writes CSV and JSON beside the HTML."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.support.helpers import BACK, FRONT, piece, records_longer_than, run, write_jsonl
from textguard import Settings
from textguard.stats import mcnemar, wilson

ANSWERS = 120


@pytest.fixture(scope="module")
def two_models(indexed: Settings, corpus_records: list[dict], negative_records: list[dict],
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    """The same 120 prompts answered by two models: A copies in answers 0-29, B (the baseline)
    in answers 0-9 and 100-104; every other answer is clean in both."""
    docs = records_longer_than(corpus_records, 4000)[:6]
    folder = tmp_path_factory.mktemp("evaluation")

    def answers(copies: set[int]) -> list[dict]:
        return [{"id": f"p{i:03d}", "output": FRONT + piece(docs[i % 6], 120, at=(i % 7) / 7) + BACK
                 if i in copies else negative_records[i]["text"][:300]} for i in range(ANSWERS)]

    a = write_jsonl(folder / "a.jsonl", answers(set(range(30))))
    b = write_jsonl(folder / "b.jsonl", answers(set(range(10)) | set(range(100, 105))))
    return a, b, docs


def test_scan_with_a_baseline_compares_answer_by_answer(indexed: Settings, two_models: tuple[Path, Path, list[dict]],
                                                        tmp_path: Path) -> None:
    a, b, docs = two_models
    baseline = tmp_path / "b.out.jsonl"
    assert run(indexed, "scan", str(b), "--out", str(baseline), "--quiet").returncode == 0
    report = tmp_path / "a.html"
    done = run(indexed, "scan", str(a), "--out", str(tmp_path / "a.out.jsonl"), "--baseline", str(baseline),
               "--report", str(report), "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)

    assert summary["verdicts"]["allow"] == ANSWERS - 30
    assert summary["intervals"]["flagged"] == wilson(30, ANSWERS).to_dict()
    assert summary["sample"] == {"answers": ANSWERS, "minimum": 1000, "meets_minimum": False}
    provenance = summary["provenance"]
    assert provenance["settings"]["quote_chars"] == indexed.quote_chars
    assert provenance["settings"]["index"] == indexed.index
    assert provenance["index"]["documents"] > 0 and len(provenance["index"]["fingerprint"]) == 16
    authors = {author["author"]: author for author in summary["authors"]}
    assert sum(w["answers"] for w in summary["works"]) >= 30 and set(authors) >= {d["author"] for d in docs}

    comparison = summary["comparison"]
    assert comparison["paired_answers"] == ANSWERS and comparison["only_in_run"] == 0
    assert comparison["checked_alike"] == {"known": True, "differences": []}  # from b.out.summary.json
    flagged = comparison["flagged"]
    assert (flagged["only_run"], flagged["only_baseline"]) == (20, 5)  # answers 10-29, and 100-104
    assert flagged["difference"]["estimate"] == float(f"{15 / ANSWERS:.4g}")
    assert flagged["difference"]["low"] < 15 / ANSWERS < flagged["difference"]["high"]
    assert flagged["p_value"] == float(f"{mcnemar(20, 5)[0]:.4g}") and flagged["p_value"] < 0.05
    moved = comparison["works_moved"]
    assert moved and moved[0]["difference"] > 0 and sum(w["difference"] for w in moved) == 20 - 5

    written = {path.name for path in tmp_path.iterdir()}
    assert {"a.html", "a.json", "a.works.csv", "a.authors.csv", "a.comparison.csv"} <= written
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == summary
    with (tmp_path / "a.works.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["work"] for row in rows] == [w["work"] for w in summary["works"]]
    assert {"rate", "rate_low", "rate_high", "answers", "copied_chars"} <= set(rows[0])
    assert float(rows[0]["rate_low"]) <= float(rows[0]["rate"]) <= float(rows[0]["rate_high"])


def test_the_text_summary_says_what_the_comparison_found(indexed: Settings, two_models: tuple[Path, Path, list[dict]],
                                                          tmp_path: Path) -> None:
    """Also that the baseline was checked with another Q (its summary says so)."""
    a, b, _ = two_models
    other_q = {"TEXTGUARD_QUOTE_CHARS": str(indexed.quote_chars + 10)}
    assert run(indexed, "scan", str(b), "--out", str(tmp_path / "b.out.jsonl"), "--quiet",
               extra_env=other_q).returncode == 0
    done = run(indexed, "scan", str(a), "--out", str(tmp_path / "a.out.jsonl"), "--quiet", "--min-answers", "100",
               "--baseline", str(tmp_path / "b.out.jsonl"))
    assert done.returncode == 0, done.stderr
    assert "this run copies more than the baseline" in done.stdout
    assert "95% intervals" in done.stdout and "fewer than" not in done.stdout  # 120 answers meet a minimum of 100
    assert "warning: the baseline was checked with other quote_chars" in done.stdout


@pytest.mark.parametrize("problem", ["missing", "not_results", "other_inputs"])
def test_a_baseline_that_cannot_be_compared_is_a_clear_error(problem: str, indexed: Settings,
                                                            two_models: tuple[Path, Path, list[dict]],
                                                            tmp_path: Path) -> None:
    a, _, _ = two_models
    baseline = tmp_path / "baseline.jsonl"
    if problem == "not_results":
        write_jsonl(baseline, [{"id": "p000", "output": "一个回答"}])
    elif problem == "other_inputs":
        write_jsonl(baseline, [{"id": "elsewhere", "verdict": "allow", "matches": [],
                                "metrics": {"longest_run": 0, "coverage": 0.0}}])
    out = tmp_path / "a.out.jsonl"
    done = run(indexed, "scan", str(a), "--out", str(out), "--baseline", str(baseline), "--quiet")
    assert done.returncode != 0 and str(baseline) in done.stderr
    assert {"missing": "no such results file", "not_results": "not a result of textguard scan",
            "other_inputs": "no answer shares an id"}[problem] in done.stderr
    # a missing or unusable baseline is found before any scanning; ids in common only after it,
    # and then the summary is written all the same
    assert out.exists() == (problem == "other_inputs")
    assert (tmp_path / "a.out.summary.json").exists() == (problem == "other_inputs")


def test_a_report_that_would_overwrite_the_results_is_refused(indexed: Settings,
                                                              two_models: tuple[Path, Path, list[dict]],
                                                              tmp_path: Path) -> None:
    a, _, _ = two_models
    out = tmp_path / "run.json"  # the report's summary would be run.json too
    done = run(indexed, "scan", str(a), "--out", str(out), "--report", str(tmp_path / "run.html"), "--quiet")
    assert done.returncode != 0 and "which this scan reads or writes" in done.stderr and not out.exists()
    assert run(indexed, "scan", str(a), "--out", str(out), "--min-answers", "0").returncode != 0
