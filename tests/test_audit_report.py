"""`textguard audit report` and its admin endpoint: one work's or one author's flagged answers,
per day and per work, from an audit log of known verdicts (real checks, written with explicit
times), never with protected text in it."""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.helpers import AFTER, BEFORE, run, to_document
from tests.support.redis_admin import admin_client
from tests.support.servers import serve
from textguard import Corpus, Guard, Settings
from textguard.audit import entry_fields, stream_key
from textguard.audit_report import AuditQuery, report
from textguard.policy import Verdict
from textguard.serve.server import create_app

ADMIN_TOKEN = "audit-report-admin-token-0123"
DAY_1, DAY_2 = datetime.date(2026, 3, 1), datetime.date(2026, 3, 2)


def _at(day: datetime.date, hour: int) -> int:
    """Milliseconds since the epoch at `hour` o'clock of `day`, local time."""
    return int(datetime.datetime(day.year, day.month, day.day, hour).astimezone().timestamp() * 1000)


@pytest.fixture(scope="module")
def logged(base_settings: Settings, corpus_records: list[dict]) -> Iterator[tuple[Settings, dict[str, dict], list]]:
    """An index of three works (two of one author) and a log of eight verdicts over two days:
    A rewritten twice and blocked once, B rewritten once, C rewritten once, one answer copying
    A and C, one allowed and one skipped; one entry in the older format (no author logged)."""
    by_author: dict[str, list[dict]] = {}
    for record in corpus_records:
        if len(record["text"]) > 3000 and record["author"]:
            by_author.setdefault(record["author"], []).append(record)
    two = next(records for records in by_author.values() if len({r["work"] for r in records}) >= 2)
    a, b = two[0], next(r for r in two if r["work"] != two[0]["work"])
    c = next(records[0] for author, records in by_author.items() if author != a["author"])
    works = {"A": a, "B": b, "C": c}
    settings = base_settings.replace(index=f"audit-report-{uuid.uuid4().hex[:8]}", admin_token=ADMIN_TOKEN,
                                     audit_text=True)
    with Corpus(settings) as corpus:
        corpus.add(to_document(r) for r in works.values())

    def copy(record: dict, at: int, chars: int = 120) -> str:
        return record["text"][at:at + chars]

    plan = [  # (time, answer, route)
        (_at(DAY_1, 9), BEFORE + copy(a, 1000) + AFTER, "/v1/chat/completions"),
        (_at(DAY_1, 10), BEFORE + copy(a, 2000) + AFTER, "/v1/chat/completions"),
        (_at(DAY_1, 11), BEFORE + copy(c, 1000) + AFTER, "/v1/responses"),
        (_at(DAY_1, 12), "今天天气很好，我们去公园散步吧。" * 8, "/v1/chat/completions"),
        (_at(DAY_2, 9), copy(a, 100, 900), "/v1/chat/completions"),
        (_at(DAY_2, 10), BEFORE + copy(b, 1500) + AFTER, "/v1/chat/completions"),
        (_at(DAY_2, 11), BEFORE + copy(a, 2500) + "我再引一段：" + copy(c, 2000) + AFTER * 3, "/v1/messages"),
    ]
    guard = Guard(settings)
    client = admin_client(settings)
    verdicts: list[Verdict] = []
    try:
        for number, (millis, answer, route) in enumerate(plan):
            verdict = guard.check_sync(answer, fail_mode="raise")
            verdicts.append(verdict)
            fields = entry_fields(verdict, route, f"req-{number}", answer)  # with the text: audit_text
            if number == 5:  # written before authors were logged
                spans = json.loads(fields["spans"])
                fields["spans"] = json.dumps([{k: v for k, v in s.items() if k != "author"} for s in spans])
            client.xadd(stream_key(settings.index), fields, id=f"{millis}-0")
        skipped = Verdict.unchecked("……", "redis")
        client.xadd(stream_key(settings.index), entry_fields(skipped, "/v1/chat/completions", "req-x"),
                    id=f"{_at(DAY_2, 12)}-0")
    finally:
        guard.close()
    assert [v.verdict for v in verdicts] == ["rewrite", "rewrite", "rewrite", "allow", "block", "rewrite", "rewrite"]
    yield settings, works, plan


def test_a_work_per_day_and_in_all(logged: tuple[Settings, dict[str, dict], list]) -> None:
    settings, works, _ = logged
    a = works["A"]
    result = report(settings, AuditQuery(work=a["work"]))
    assert result["answers"] == {"flagged": 4, "rewritten": 3, "blocked": 1}
    days = {d["date"]: d for d in result["per_day"]}
    assert (days[DAY_1.isoformat()]["rewritten"], days[DAY_1.isoformat()]["blocked"]) == (2, 0)
    assert (days[DAY_2.isoformat()]["rewritten"], days[DAY_2.isoformat()]["blocked"]) == (1, 1)
    assert result["copied_chars"] == sum(d["copied_chars"] for d in result["per_day"])
    assert result["copied_chars"] >= 3 * 100 + 800  # three copies of 120 and one of 900 characters
    assert result["routes"] == {"/v1/chat/completions": 3, "/v1/messages": 1}
    assert [w["work"] for w in result["per_work"]] == [a["work"]]

    second_day = report(settings, AuditQuery(work=a["work"], since=datetime.datetime(2026, 3, 2).timestamp()))
    assert second_day["answers"] == {"flagged": 2, "rewritten": 1, "blocked": 1}


def test_an_author_takes_every_work_also_from_entries_that_did_not_log_authors(
        logged: tuple[Settings, dict[str, dict], list]) -> None:
    settings, works, _ = logged
    result = report(settings, AuditQuery(author=works["A"]["author"]))
    assert {w["work"] for w in result["per_work"]} == {works["A"]["work"], works["B"]["work"]}
    assert result["answers"]["flagged"] == 5  # A's four, and B's one from the older entry
    other = report(settings, AuditQuery(author=works["C"]["author"]))
    assert other["answers"] == {"flagged": 2, "rewritten": 2, "blocked": 0}


def test_the_cli_and_the_admin_endpoint_give_it_without_protected_text(
        logged: tuple[Settings, dict[str, dict], list], tmp_path: Path) -> None:
    settings, works, plan = logged
    author = works["A"]["author"]
    as_json = run(settings, "audit", "report", "--author", author, "--json")
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    as_csv = run(settings, "audit", "report", "--author", author, "--csv").stdout
    page = tmp_path / "report.html"
    assert run(settings, "audit", "report", "--author", author, "--html", str(page)).returncode == 0
    html = page.read_text(encoding="utf-8")
    assert as_csv.splitlines()[0] == "date,work,flagged,rewritten,blocked,copied_chars"
    assert f"<strong>{result['answers']['flagged']:,}</strong>" in html and works["B"]["work"] in html
    copies = [answer[len(BEFORE):len(BEFORE) + 40] for _, answer, _ in plan if answer.startswith(BEFORE)]
    for output in (as_json.stdout, as_csv, html):
        assert not any(copied in output for copied in copies)  # the log holds them (audit_text); reports never

    with serve(create_app(settings), lifespan="on") as url:
        endpoint = url + "/v1/textguard/audit/report"
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        served = httpx2.get(endpoint, params={"author": author}, headers=admin, timeout=30)
        both = httpx2.get(endpoint, params={"author": author, "work": "x"}, headers=admin, timeout=30)
        anyone = httpx2.get(endpoint, params={"author": author}, timeout=30)
    assert served.status_code == 200 and served.json()["per_work"] == result["per_work"]
    assert both.status_code == 400 and "one of them" in both.json()["error"]["message"]
    assert anyone.status_code == 401

    assert run(settings, "audit", "report", "--work", "x", "--since", "soon").returncode != 0
