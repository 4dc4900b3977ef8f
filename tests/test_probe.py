"""`textguard probe make`, then a scan of a model's continuations with `--reference-field`."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.helpers import run
from textguard import Settings
from textguard.probe import make_probes
from textguard.scan import read_results


def test_probe_make_and_scan_round_trip(indexed: Settings, corpus_records: list[dict],
                                        negative_records: list[dict], tmp_path: Path) -> None:
    made = run(indexed, "probe", "make", "--n", "8", "--prefix-chars", "80", "--reference-chars", "120",
               "--seed", "3")
    assert made.returncode == 0, made.stderr
    probes = [json.loads(line) for line in made.stdout.splitlines()]
    assert len(probes) == 8 and len({p["id"] for p in probes}) == 8
    again = make_probes(indexed, 8, 80, 120, seed=3)
    assert [p.to_dict() for p in again] == probes, "the same seed gives the same probes"
    assert [p.to_dict() for p in make_probes(indexed, 8, 80, 120, seed=4)] != probes
    texts = {r["id"]: r for r in corpus_records}
    for probe in probes:
        document = texts[probe["doc_id"]]
        assert (probe["work"], probe["author"]) == (document["work"], document["author"])
        start, middle = probe["prefix_start"], probe["reference_start"]
        assert document["text"][start:middle] == probe["prefix"] and len(probe["prefix"]) == 80
        assert document["text"][middle:middle + 120] == probe["reference"] and len(probe["reference"]) == 120
        assert probe["prompt"].endswith(probe["prefix"]) and "续写" in probe["prompt"]

    # A "model" that has memorised every other passage and writes something else for the rest.
    answered = tmp_path / "answered.jsonl"
    with answered.open("w", encoding="utf-8") as handle:
        for i, probe in enumerate(probes):
            output = probe["reference"] if i % 2 == 0 else negative_records[i]["text"][:120]
            handle.write(json.dumps({**probe, "output": output}, ensure_ascii=False) + "\n")
    scanned = run(indexed, "scan", str(answered), "--out", str(tmp_path / "out.jsonl"), "--reference-field",
                  "reference", "--json", "--quiet")
    assert scanned.returncode == 0, scanned.stderr
    summary = json.loads(scanned.stdout)
    assert summary["probes"]["answers"] == 8 and summary["probes"]["literal_copies"] == 4
    assert summary["probes"]["literal_copy_rate"] == 0.5 and summary["probes"]["rouge_l_threshold"] == 0.8
    for i, record in enumerate(read_results(tmp_path / "out.jsonl")):
        metrics = record["reference_metrics"]
        assert metrics["literal_copy"] == (i % 2 == 0)
        if i % 2 == 0:  # the continuation itself: every measure at its maximum
            assert metrics["rouge_l"] == 1.0 and metrics["longest_run"] == metrics["reference_chars"] == metrics["lcs"]
            assert record["verdict"] != "allow"  # 120 copied characters are over the quotation limit
        else:
            assert metrics["rouge_l"] < 0.8


def test_probe_make_refuses_impossible_lengths(indexed: Settings) -> None:
    result = run(indexed, "probe", "make", "--n", "2", "--prefix-chars", "10000000")
    assert result.returncode == 1 and "no indexed document" in result.stderr
