"""`textguard scan`: verdicts and metrics of a generated file, resuming, bad lines, shards, workers."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.helpers import BACK, FRONT, piece, records_longer_than, run, write_jsonl
from textguard import Settings
from textguard.normalise import normalise
from textguard.scan import Malformed, ScanError, ScanOptions, read_items, read_results, run_scan
from textguard.summary import summarise


def mixed(corpus_records: list[dict], negative_records: list[dict], count: int) -> list[dict]:
    """Answers with a copy (every third), a short quotation (every fifth) or nothing copied."""
    docs = records_longer_than(corpus_records, 4000)
    answers = []
    for i in range(count):
        filler = negative_records[i % len(negative_records)]["text"][:400]
        if i % 3 == 0:
            text = FRONT + piece(docs[i % len(docs)], 120, at=(i % 7) / 7) + BACK + filler
        elif i % 5 == 0:
            text = FRONT + piece(docs[i % len(docs)], 20) + BACK + filler
        else:
            text = filler
        answers.append({"id": f"a{i:03d}", "output": text})
    return answers


def scan(settings: Settings, options: ScanOptions) -> tuple[list[dict], list[Malformed]]:
    malformed: list[Malformed] = []
    run_scan(settings, options, on_malformed=malformed.append)
    return list(read_results(options.out)), malformed


def test_verdicts_and_metrics_of_a_generated_file(indexed: Settings, corpus_records: list[dict],
                                                  negative_records: list[dict], tmp_path: Path) -> None:
    copy_doc, block_doc, quote_doc = records_longer_than(corpus_records, 4000)[:3]
    copied = piece(copy_doc, 200)
    filler = negative_records[-1]["text"][:400]
    answer = FRONT + copied + BACK + filler
    answers = [
        {"id": "copy", "output": answer},
        {"id": "block", "output": "原文如下：" + piece(block_doc, 700)},
        {"id": "quote", "output": FRONT + piece(quote_doc, 30) + BACK},
        *({"id": f"negative-{i}", "output": r["text"][:500]} for i, r in enumerate(negative_records[:12])),
    ]
    options = ScanOptions(str(write_jsonl(tmp_path / "in.jsonl", answers)), tmp_path / "out.jsonl")
    results, malformed = scan(indexed, options)
    by_id = {r["id"]: r for r in results}
    assert [r["id"] for r in results] == [a["id"] for a in answers] and not malformed

    record = by_id["copy"]
    assert record["verdict"] == "rewrite"
    (match,) = record["matches"]
    assert (match["start"], match["end"]) == (len(FRONT), len(FRONT) + len(copied))
    assert copy_doc["text"][match["source_start"]:match["source_end"]] == copied
    assert {"doc_id", "title", "author", "work", "start", "end", "source_start", "source_end",
            "verbatim_chars", "similarity"} <= set(match)
    # By hand: the answer has n normalised characters, 200 of them the copy; the source passage
    # the metrics compare with is the copied stretch itself (200 characters, one run of the answer).
    n = len(normalise(answer).text)
    assert n == len(normalise(FRONT + BACK + filler).text) + 200
    assert record["metrics"] == {"answer_chars": n, "coverage": round(200 / n, 4), "longest_run": 200, "lcs": 200,
                                 "rouge_l": round(2 * 200 / (n + 200), 4), "acs": 200, "reference_chars": 200,
                                 "doc_id": copy_doc["id"]}
    (source,) = record["sources"]
    assert source["doc_id"] == copy_doc["id"] and source["work"] == copy_doc["work"]
    assert copy_doc["text"][source["start"]:source["start"] + len(source["text"])] == source["text"]
    assert copied in source["text"] and record["answer"] == answer

    assert by_id["block"]["verdict"] == "block" and by_id["block"]["metrics"]["longest_run"] == 700
    quote = by_id["quote"]
    assert quote["verdict"] == "allow" and quote["matches"] == [] and len(quote["quotations"]) == 1
    assert quote["metrics"]["longest_run"] == 30 and quote["metrics"]["coverage"] > 0
    for i in range(12):
        negative = by_id[f"negative-{i}"]
        assert negative["verdict"] == "allow" and negative["metrics"]["longest_run"] < 13
        assert "answer" not in negative or not negative["matches"]

    summary = summarise(results, quote_chars=indexed.quote_chars)
    assert summary["answers"] == 15 and summary["verdicts"] == {"allow": 13, "rewrite": 1, "block": 1}
    assert summary["rates"] == {"rewrite": round(1 / 15, 4), "block": round(1 / 15, 4), "flagged": round(2 / 15, 4)}
    buckets = {b["label"]: b["answers"] for b in summary["longest_run"]["buckets"]}
    assert buckets["200–499"] == 1 and buckets["≥500"] == 1 and buckets["25–49"] == 1
    assert sum(buckets.values()) == 15 and summary["longest_run"]["max"] == 700
    top = summary["works"][0]
    assert top["work"] == (block_doc["work"] or block_doc["title"]) and top["copied_chars"] == 700


def test_resume_after_a_killed_run_scans_each_answer_once(indexed: Settings, corpus_records: list[dict],
                                                          negative_records: list[dict], tmp_path: Path) -> None:
    answers = mixed(corpus_records, negative_records, 300)
    source, out = write_jsonl(tmp_path / "in.jsonl", answers), tmp_path / "out.jsonl"
    env = {**os.environ, "TEXTGUARD_HOME": str(indexed.home), "TEXTGUARD_INDEX": indexed.index}
    first = subprocess.Popen([sys.executable, "-m", "textguard", "scan", str(source), "--out", str(out),
                              "--batch", "4", "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_bytes().count(b"\n") >= 8):  # a few batches written
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.stderr else ""
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    done_before = out.read_bytes().count(b"\n")
    with out.open("ab") as handle:
        handle.write(b'{"id": "a299", "verdict": "al')  # a line torn by the kill
    assert done_before < len(answers), "the first run finished before it could be stopped"

    second = run(indexed, "scan", str(source), "--out", str(out), "--json", "--quiet")
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["run"]["resumed"] == done_before and summary["run"]["scanned"] == len(answers) - done_before
    ids = [r["id"] for r in read_results(out)]
    assert sorted(ids) == sorted(a["id"] for a in answers) and len(ids) == len(set(ids))
    assert summary["answers"] == len(answers)
    assert json.loads((tmp_path / "out.summary.json").read_text(encoding="utf-8")) == summary


def test_malformed_lines_are_reported_counted_and_skipped(indexed: Settings, tmp_path: Path) -> None:
    good = [json.dumps({"id": i, "output": f"第{i}个回答，说点别的。"}, ensure_ascii=False).encode() for i in range(4)]
    lines = [good[0], b"{not json", good[1], b"[1, 2]", "{\"id\": 7, \"text\": \"字段不对\"}".encode(), good[2],
             b"\xff\xfe bad bytes", "{\"id\": [1], \"output\": \"坏编号\"}".encode(), b"", good[3]]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    result = run(indexed, "scan", str(source), "--out", str(tmp_path / "out.jsonl"), "--json")
    assert result.returncode == 0, result.stderr
    for number, reason in ((2, "invalid JSON"), (4, "JSON object"), (5, "'output'"), (7, "not UTF-8"), (8, "'id'")):
        assert f"{source}:{number}: " in result.stderr and reason in result.stderr, (number, result.stderr)
    summary = json.loads(result.stdout)
    assert summary["run"]["malformed"] == 5 and summary["run"]["malformed_lines"] == [2, 4, 5, 7, 8]
    assert [r["id"] for r in read_results(tmp_path / "out.jsonl")] == [0, 1, 2, 3]
    assert summary["answers"] == 4


def test_shards_together_cover_the_file_exactly_once(indexed: Settings, corpus_records: list[dict],
                                                     negative_records: list[dict], tmp_path: Path) -> None:
    answers = [json.dumps(a, ensure_ascii=False) for a in mixed(corpus_records, negative_records, 40)]
    answers[9] = "{broken"
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(answers) + "\n", encoding="utf-8")
    seen: list[str] = []
    malformed = 0
    for shard in (1, 2, 3):
        options = ScanOptions(str(source), tmp_path / f"out{shard}.jsonl", shard=(shard, 3))
        results, bad = scan(indexed, options)
        assert all((r["line"] - shard) % 3 == 0 for r in results)
        seen += [r["id"] for r in results]
        malformed += len(bad)
    assert sorted(seen) == sorted(f"a{i:03d}" for i in range(40) if i != 9) and malformed == 1


def test_workers_and_batch_sizes_give_the_same_results(indexed: Settings, corpus_records: list[dict],
                                             negative_records: list[dict], tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", mixed(corpus_records, negative_records, 60))
    one, _ = scan(indexed, ScanOptions(str(source), tmp_path / "one.jsonl", batch=8))
    two, _ = scan(indexed, ScanOptions(str(source), tmp_path / "two.jsonl", batch=8, workers=2))
    singly, _ = scan(indexed, ScanOptions(str(source), tmp_path / "singly.jsonl", batch=1))  # many batches in flight
    for other in (two, singly):
        assert [r["id"] for r in other] == [r["id"] for r in one]
        assert [(r["verdict"], r["matches"], r["metrics"]) for r in other] == [
            (r["verdict"], r["matches"], r["metrics"]) for r in one]
    assert {r["verdict"] for r in one} == {"allow", "rewrite"}


def test_plain_text_and_standard_input(indexed: Settings, corpus_records: list[dict], tmp_path: Path) -> None:
    document = records_longer_than(corpus_records, 4000)[0]
    copied = (FRONT + piece(document, 90) + BACK + FRONT).replace("\n", "")  # one line
    text_file = tmp_path / "answers.txt"
    text_file.write_text(f"第一个回答，与原文无关。\n\n{copied}\n", encoding="utf-8")
    results, _ = scan(indexed, ScanOptions(str(text_file), tmp_path / "out.jsonl"))
    assert [(r["id"], r["line"], r["verdict"]) for r in results] == [(1, 1, "allow"), (3, 3, "rewrite")]

    options = ScanOptions("-", tmp_path / "stdin.jsonl", text_field="answer")
    stdin = io.BytesIO(("\n" + json.dumps({"id": "s", "answer": copied}, ensure_ascii=False) + "\n").encode())
    assert [item.id for item in read_items(options, stdin) if not isinstance(item, Malformed)] == ["s"]
    piped = run(indexed, "scan", "-", "--out", str(tmp_path / "piped.jsonl"), "--quiet", stdin=copied + "\n")
    assert piped.returncode == 0 and "rewrite 1" in piped.stdout, piped.stderr


def test_unusable_arguments_are_one_line_errors(indexed: Settings, tmp_path: Path) -> None:
    missing = run(indexed, "scan", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl"))
    assert missing.returncode == 1 and missing.stderr.strip().startswith("textguard: error:")
    assert "cannot read" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    with pytest.raises(ScanError, match="shard"):
        ScanOptions("x", tmp_path / "o.jsonl", shard=(4, 3))
    assert run(indexed, "scan", "x", "--out", "o", "--shard", "0/2").returncode == 2
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "output": "一个回答"}])
    down = run(indexed, "scan", str(source), "--out", str(tmp_path / "o.jsonl"),
               extra_env={"TEXTGUARD_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert down.returncode == 1 and len(down.stderr.strip().splitlines()) == 1 and "redis" in down.stderr
