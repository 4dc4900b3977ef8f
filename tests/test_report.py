"""The HTML report, opened in headless Chromium: no console errors, no fetches, a table that
sorts, filters and pages, highlights on the right characters, and the evaluation's intervals,
authors, comparison with a baseline and provenance."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.support.helpers import BACK, FRONT, piece, records_longer_than, write_jsonl
from textguard import Settings
from textguard.comparison import compare_runs
from textguard.report import render, write_report
from textguard.scan import ScanOptions, read_results, run_scan
from textguard.summary import provenance, summarise, work_of

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _binary(*names: str) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = _binary("chromium", "chromium-browser"), _binary("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("no Chromium/chromedriver installed (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="textguard-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield session
    finally:
        session.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def scanned(indexed: Settings, corpus_records: list[dict], negative_records: list[dict],
            tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Results of a real scan: 60 copies from several works (one after characters outside the
    BMP, one blocked, one of two works), a short quotation and negatives."""
    docs = records_longer_than(corpus_records, 4000)
    answers = []
    for i in range(60):
        doc = docs[i % 5]
        text = FRONT + piece(doc, 60 + 3 * i, at=(i % 9) / 9) + BACK + negative_records[i]["text"][:300]
        answers.append({"id": f"c{i:02d}", "output": text})
    answers[0]["output"] = "😀𠀀👍🏽" + answers[0]["output"]
    answers[1]["output"] = "原文：" + piece(docs[6], 800)
    answers[2]["output"] = FRONT + piece(docs[7], 90) + "我再引另一部：" + piece(docs[8], 90, at=0.6) + BACK + \
        negative_records[70]["text"][:400]
    answers += [{"id": "quote", "output": FRONT + piece(docs[9], 25) + BACK}]
    answers += [{"id": f"n{i}", "output": r["text"][:300]} for i, r in enumerate(negative_records[80:90])]
    folder = tmp_path_factory.mktemp("report")
    options = ScanOptions(str(write_jsonl(folder / "in.jsonl", answers)), folder / "out.jsonl")
    run_scan(indexed, options)
    return list(read_results(options.out))


def open_report(browser: WebDriver, records: list[dict], path: Path) -> None:
    path.write_text(render(records, summarise(records, quote_chars=50), source="答案.jsonl"), encoding="utf-8")
    browser.get_log("browser"), browser.get_log("performance")  # drop what earlier pages logged
    browser.get(path.as_uri())
    WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#flagged tbody tr"))


def console_errors(browser: WebDriver) -> list[dict]:
    return [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]


def requested_urls(browser: WebDriver) -> list[str]:
    """What was fetched, but for the browser's own chrome:// pages and icons (which Chromium
    sometimes loads for its start page while the report opens)."""
    messages = (json.loads(entry["message"])["message"] for entry in browser.get_log("performance"))
    return [url for m in messages if m["method"] == "Network.requestWillBeSent"
            and not (url := m["params"]["request"]["url"]).startswith("chrome://")]


def column(browser: WebDriver, index: int) -> list[str]:
    return [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, f"#flagged tbody td:nth-child({index})")]


def test_report_renders_sorts_filters_and_highlights(browser: WebDriver, scanned: list[dict], tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    open_report(browser, scanned, path)
    assert console_errors(browser) == []
    assert requested_urls(browser) == [path.as_uri()], "the report must fetch nothing"
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "zh-CN"
    assert "textguard 扫描报告" in browser.title

    flagged = [r for r in scanned if r["verdict"] != "allow"]
    assert len(flagged) == 60
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart rect.bar")
    assert sum(int(b.get_attribute("data-answers")) for b in bars) == len(scanned)
    assert {b.get_attribute("data-bucket") for b in bars if "over" in b.get_attribute("class")} >= {"50–99", "≥500"}

    # default order: longest run, descending; one page of 50 rows, then the other 10
    longest = [int(v) for v in column(browser, 5)]
    assert len(longest) == 50 and longest == sorted(longest, reverse=True)
    assert longest[0] == max(r["metrics"]["longest_run"] for r in scanned)
    browser.find_element(By.ID, "next").click()
    assert len(column(browser, 1)) == 10
    browser.find_element(By.ID, "prev").click()

    header = browser.find_element(By.CSS_SELECTOR, '#flagged th[data-key="longest"]')
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    ascending = [int(v) for v in column(browser, 5)]
    assert ascending == sorted(ascending) and ascending[0] == min(r["metrics"]["longest_run"] for r in flagged)
    browser.find_element(By.CSS_SELECTOR, '#flagged th[data-key="id"]').click()
    ids = column(browser, 1)
    assert ids == sorted(ids)

    work = flagged[5]["matches"][0]["work"]
    browser.find_element(By.ID, "filter").send_keys(work)
    works = column(browser, 3)
    expected = sum(1 for r in flagged if any(m["work"] == work for m in r["matches"]))
    assert works and all(w == f"《{work}》" for w in works) and len(works) == min(expected, 50)
    browser.find_element(By.ID, "filter").clear()
    browser.execute_script("document.getElementById('filter').dispatchEvent(new Event('input'))")
    Select(browser.find_element(By.ID, "verdict")).select_by_value("block")
    assert set(column(browser, 2)) == {"拦截"}
    assert len(column(browser, 2)) == sum(1 for r in flagged if r["verdict"] == "block")
    Select(browser.find_element(By.ID, "verdict")).select_by_value("")
    assert console_errors(browser) == []

    for record in (r for r in flagged if r["id"] in ("c00", "c02")):
        browser.find_element(By.ID, "filter").clear()
        browser.find_element(By.ID, "filter").send_keys(record["id"])
        browser.find_element(By.CSS_SELECTOR, f'#flagged tbody tr[data-id="{record["id"]}"]').click()
        assert browser.find_element(By.ID, "detail").get_attribute("data-id") == record["id"]
        check_highlights(browser, record)
    assert console_errors(browser) == []


def check_highlights(browser: WebDriver, record: dict) -> None:
    """Each mark holds exactly the copied characters, and sits after exactly the text before them."""
    answer = record["answer"]
    marks = browser.find_elements(By.CSS_SELECTOR, "#detail .answer mark.copied")
    assert len(marks) == len(record["matches"]) >= 1
    for mark, match in zip(marks, record["matches"], strict=True):
        assert mark.get_attribute("textContent") == answer[match["start"]:match["end"]]
        before = browser.execute_script(
            "const r = document.createRange(); r.setStart(arguments[0].parentNode, 0); r.setEndBefore(arguments[0]);"
            " return r.toString();", mark)
        assert before == answer[:match["start"]]
    for source in record["sources"]:
        box = browser.find_element(By.CSS_SELECTOR, f'#detail .source[data-doc="{source["doc_id"]}"]')
        own = [m for m in record["matches"] if m["doc_id"] == source["doc_id"]]
        source_marks = box.find_elements(By.CSS_SELECTOR, "mark.copied")
        assert [m.get_attribute("textContent") for m in source_marks] == [
            source["text"][m["source_start"] - source["start"]:m["source_end"] - source["start"]] for m in own]
        assert source["work"] in box.text and source["doc_id"] in box.text


def test_large_report_renders_one_page_at_a_time(browser: WebDriver, scanned: list[dict], tmp_path: Path) -> None:
    template = next(r for r in scanned if r["verdict"] == "rewrite")
    records = [{**template, "id": f"big-{i:05d}",
                "metrics": {**template["metrics"], "longest_run": i % 700}} for i in range(6000)]
    open_report(browser, records, tmp_path / "big.html")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#flagged tbody tr")) == 50
    assert browser.find_element(By.ID, "page").text == "第 1 / 120 页"
    least = browser.find_element(By.ID, "min-longest")
    least.clear()
    least.send_keys("650")
    assert browser.find_element(By.ID, "count").text == "共 6000 条，显示 " + str(sum(
        1 for i in range(6000) if i % 700 >= 650)) + " 条"
    assert console_errors(browser) == []


def test_report_shows_intervals_authors_the_comparison_and_provenance(browser: WebDriver, scanned: list[dict],
                                                                      indexed: Settings, tmp_path: Path) -> None:
    """A baseline that flagged 20 fewer answers (those answers clean in it), and the settings
    and index of the run: every new section is there, and the page still fetches nothing."""
    flagged_ids = [r["id"] for r in scanned if r["verdict"] != "allow"][:20]
    baseline = [{**r, "verdict": "allow", "matches": [], "metrics": {**r["metrics"], "longest_run": 0,
                                                                    "coverage": 0.0}}
                if r["id"] in flagged_ids else r for r in scanned]
    baseline_path = write_jsonl(tmp_path / "baseline.jsonl", baseline)
    summary = summarise(scanned, quote_chars=50)
    summary["comparison"] = compare_runs(scanned, baseline_path, quote_chars=50)
    summary["provenance"] = provenance(indexed)
    path = tmp_path / "report.html"
    written = write_report(path, scanned, summary, source="答案.jsonl")
    assert [p.name for p in written] == ["report.html", "report.json", "report.works.csv", "report.authors.csv",
                                         "report.comparison.csv"]
    browser.get_log("browser"), browser.get_log("performance")
    browser.get(path.as_uri())
    WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#flagged tbody tr"))
    assert console_errors(browser) == [] and requested_urls(browser) == [path.as_uri()]

    intervals = browser.find_element(By.ID, "intervals").text
    assert "95% 置信区间" in intervals and f"{summary['intervals']['flagged']['low']:.2%}" in intervals
    assert "少于设定的最低 1,000 条" in browser.find_element(By.ID, "sample-warning").text
    authors = browser.find_elements(By.CSS_SELECTOR, "#authors-table tbody tr")
    assert len(authors) == len(summary["authors"]) >= 5
    rows = browser.find_elements(By.CSS_SELECTOR, "#comparison-table tbody tr")
    assert len(rows) == 3 and "+" in rows[0].text  # this run flagged more than the baseline
    moved = browser.find_elements(By.CSS_SELECTOR, "#moved-table tbody tr")
    works_dropped = sum(len({work_of(m) for m in r["matches"]}) for r in scanned if r["id"] in flagged_ids)
    assert moved and sum(int(row.find_elements(By.TAG_NAME, "td")[4].text) for row in moved) == works_dropped
    assert summary["provenance"]["index"]["fingerprint"] in browser.find_element(By.ID, "provenance").text
