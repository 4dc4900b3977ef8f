"""The audit log, metrics and request ids, through the served app on a real uvicorn and the CLI."""

from __future__ import annotations

import csv
import io
import json
import logging
import re

import httpx2
import pytest

from tests.support.helpers import AFTER, BEFORE
from tests.support.llm_app import Recorder, create_app
from tests.support.redis_admin import audit_reader
from tests.support.servers import serve
from textguard import Settings
from textguard.cli import main
from textguard.serve.middleware import TextGuardMiddleware
from textguard.serve.server import create_app as create_textguard_app
from textguard.telemetry import JsonFormatter, RequestIdFilter


def chat(url: str, text: str, request_id: str, stream: bool = False) -> httpx2.Response:
    return httpx2.post(url + "/v1/chat/completions", headers={"x-request-id": request_id}, timeout=30,
                       json={"stream": stream, "messages": [{"role": "user", "content": text}]})


def entries_for(settings: Settings, request_id: str) -> list[dict]:
    return [e.to_dict() for e in audit_reader(settings).latest(1000) if e.fields["request_id"] == request_id]


def test_flagged_verdicts_are_audited_without_the_text(indexed: Settings, record: dict,
                                                      negative_records: list[dict]) -> None:
    copied = record["text"][1000:1100]
    text = BEFORE + copied + AFTER
    with serve(TextGuardMiddleware(create_app(Recorder()), settings=indexed)) as url:
        rewritten = chat(url, text, "req-rewrite-1")
        chat(url, negative_records[1]["text"], "req-clean-1")
        streamed = chat(url, record["text"][:1500], "req-stream-1", stream=True)
    assert rewritten.headers["x-request-id"] == "req-rewrite-1" and streamed.status_code == 200
    (entry,) = entries_for(indexed, "req-rewrite-1")
    assert entry["verdict"] == "rewrite" and entry["route"] == "/v1/chat/completions"
    assert entry["doc_ids"] == [record["id"]]
    (span,) = entry["spans"]
    assert text[span["start"]:span["end"]] == copied
    assert record["text"][span["source_start"]:span["source_end"]] == copied
    assert copied[:20] not in json.dumps(entry, ensure_ascii=False), "protected text was logged"
    assert entries_for(indexed, "req-clean-1") == []
    (blocked,) = entries_for(indexed, "req-stream-1")
    assert blocked["verdict"] == "block" and blocked["doc_ids"] == [record["id"]]


def test_audit_all_with_text_and_the_cli(indexed: Settings, record: dict, negative_records: list[dict],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    settings = indexed.replace(audit="all", audit_text=True)
    copied = record["text"][1000:1100]
    with serve(TextGuardMiddleware(create_app(Recorder()), settings=settings)) as url:
        chat(url, BEFORE + copied + AFTER, "req-all-1")
        chat(url, negative_records[1]["text"], "req-all-2")
    (copy_entry,) = entries_for(indexed, "req-all-1")
    assert copy_entry["spans"][0]["text"] == copied
    assert entries_for(indexed, "req-all-2")[0]["verdict"] == "allow"

    args = ["--home", str(indexed.home), "--index", indexed.index]
    if indexed.redis_url:
        args += ["--redis-url", indexed.redis_url]
    capsys.readouterr()
    assert main([*args, "audit", "tail", "-n", "2"]) == 0
    tailed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["request_id"] for e in tailed] == ["req-all-1", "req-all-2"]
    assert main([*args, "audit", "export", "--format", "csv", "--since", "2000-01-01"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {"req-all-1", "req-all-2"} <= {row["request_id"] for row in rows}
    assert json.loads(next(r for r in rows if r["request_id"] == "req-all-1")["doc_ids"]) == [record["id"]]
    assert main([*args, "audit", "export", "--since", "yesterday"]) == 1


def test_metrics_count_checks_and_skips(settings: Settings, indexed: Settings, record: dict) -> None:
    def metric(text: str, name: str, label: str = "") -> float:
        labels = "{" + label + "}" if label else ""
        found = re.search(rf"^{re.escape(name + labels)} ([0-9.e+]+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    with serve(create_textguard_app(indexed), lifespan="on") as url:
        before = httpx2.get(url + "/metrics").text
        httpx2.post(url + "/v1/textguard/check", json={"text": BEFORE + record["text"][1000:1100] + AFTER})
        after = httpx2.get(url + "/metrics").text
    assert metric(after, "textguard_checks_total", 'verdict="rewrite"') == \
        metric(before, "textguard_checks_total", 'verdict="rewrite"') + 1
    assert "textguard_check_seconds_bucket" in after

    down = settings.replace(redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.2)
    with serve(create_textguard_app(down), lifespan="on") as url:
        start = httpx2.get(url + "/metrics").text
        verdict = httpx2.post(url + "/v1/textguard/check", json={"text": "一段普通的文字。"}).json()
        metrics = httpx2.get(url + "/metrics").text
    assert verdict["skipped"] == "redis" and verdict["verdict"] == "allow"
    assert metric(metrics, "textguard_checks_skipped_total", 'reason="redis"') == \
        metric(start, "textguard_checks_skipped_total", 'reason="redis"') + 1
    assert metric(metrics, "textguard_redis_errors_total") >= metric(start, "textguard_redis_errors_total") + 1


def test_log_lines_carry_the_request_id() -> None:
    from textguard import telemetry

    record = logging.LogRecord("textguard.test", logging.WARNING, __file__, 1, "checked %s", ("x",), None)
    token = telemetry.request_id.set("req-log-1")
    try:
        RequestIdFilter().filter(record)
    finally:
        telemetry.request_id.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-log-1" and line["message"] == "checked x" and line["level"] == "warning"
