"""`textguard.ray.CheckBatches` as a step of a Ray Data pipeline, on a local Ray instance (two
CPUs, started here) against the tests' Redis: the verdicts are the scan's, in each batch
format, and bad input is a clear error."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import ray

from tests.support.helpers import BACK, FRONT, piece, records_longer_than
from textguard import Settings
from textguard.ray import COLUMNS, CheckBatches
from textguard.scan import BatchScanner, Item


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def answers(corpus_records: list[dict], negative_records: list[dict]) -> list[dict]:
    docs = records_longer_than(corpus_records, 4000)[:4]
    copied = [{"id": i, "output": FRONT + piece(docs[i % 4], 150, at=i / 12) + BACK} for i in range(12)]
    clean = [{"id": 100 + i, "output": r["text"][:400]} for i, r in enumerate(negative_records[:12])]
    return copied + clean + [{"id": 200, "output": None}]  # a failed generation: no answer


def test_map_batches_adds_the_scans_verdicts_and_metrics(local_ray: None, indexed: Settings,
                                                         answers: list[dict]) -> None:
    rows = (ray.data.from_items(answers)
            .map_batches(CheckBatches, compute=ray.data.ActorPoolStrategy(size=1), batch_size=8,
                         fn_constructor_kwargs={"settings": indexed})
            .take_all())
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(answers) and all(set(COLUMNS) <= set(row) for row in rows)
    scanner = BatchScanner(indexed)
    try:
        expected = scanner.scan_batch([Item(i, a["id"], a["output"] or "") for i, a in enumerate(answers)])
    finally:
        scanner.close()
    for record in expected:
        row = by_id[record["id"]]
        assert row["verdict"] == record["verdict"]
        assert row["longest_run"] == record["metrics"]["longest_run"]
        assert json.loads(row["matches"]) == record["matches"]
        assert row["copied_chars"] == sum(m["chars"] for m in record["matches"])
    assert all(by_id[i]["verdict"] != "allow" and len(by_id[i]["works"]) >= 1 for i in range(12))
    assert all(by_id[100 + i]["verdict"] == "allow" and len(by_id[100 + i]["works"]) == 0 for i in range(12))
    assert by_id[200]["verdict"] == "allow"


@pytest.mark.parametrize("batch_format", ["pandas", "pyarrow"])
def test_other_batch_formats_a_named_column_and_settings_as_values(batch_format: str, local_ray: None,
                                                                  indexed: Settings, answers: list[dict]) -> None:
    renamed = [{"id": a["id"], "answer": a["output"]} for a in answers[:6] + answers[12:18]]
    values = {"index": indexed.index, "home": str(indexed.home), "redis_url": indexed.redis_url}
    rows = (ray.data.from_items(renamed)
            .map_batches(CheckBatches, compute=ray.data.ActorPoolStrategy(size=1), batch_format=batch_format,
                         fn_constructor_kwargs={"text_column": "answer", "settings": values})
            .take_all())
    verdicts = {row["id"]: row["verdict"] for row in rows}
    assert [verdicts[a["id"]] != "allow" for a in renamed] == [True] * 6 + [False] * 6


def test_a_missing_column_is_a_clear_error(local_ray: None, indexed: Settings, answers: list[dict]) -> None:
    dataset = ray.data.from_items([{"id": 1, "text": "你好"}])
    with pytest.raises(Exception, match="no column 'output' in the batch"):
        dataset.map_batches(CheckBatches, compute=ray.data.ActorPoolStrategy(size=1),
                            fn_constructor_kwargs={"settings": indexed}).take_all()
