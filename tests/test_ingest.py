"""Corpora as people have them: Chinese encodings, e-books and documents, folders, compressed and
columnar record files, a run that skips what it cannot read, and a public-domain base.

Every fixture file is written here with the real library of its format (ebooklib, python-docx,
reportlab, pyarrow, zstandard), from the shared corpus text; each is indexed and then found by a
check naming the right document.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
from pathlib import Path

import httpx2
import opencc
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from tests.support.documents import write_docx, write_epub, write_pdf
from tests.support.helpers import BACK, FRONT, longest_shared_run, run
from tests.support.servers import serve
from textguard import Corpus, Document, Guard, Settings
from textguard.corpus import FieldNames
from textguard.ingest import Inventory, ReadOptions, add_files
from textguard.serve.server import create_app
from textguard.stream import GuardedStream

RARE = "𠮷野家的䶮字"  # outside the Basic Multilingual Plane, and a CJK Extension A character


def _long(records: list[dict], count: int, minimum: int = 2500) -> list[dict]:
    return [r for r in records if len(r["text"]) >= minimum][:count]


def _answer(text: str, at: int = 400, chars: int = 300) -> str:
    return FRONT + text[at:at + chars] + BACK


def _found(settings: Settings, answer: str) -> list[tuple[str, str, str, str]]:
    """(doc_id, title, author, work) of every span a check of `answer` flags."""
    guard = Guard(settings)
    try:
        verdict = guard.check_sync(answer, fail_mode="raise")
    finally:
        guard.close()
    return [(m.doc_id, m.title, m.author, m.work) for m in verdict.matches]


def _index(settings: Settings, paths: list[Path], options: ReadOptions | None = None) -> Inventory:
    with Corpus(settings) as corpus:
        _, inventory = add_files(corpus, paths, options)
    return inventory


def test_text_files_in_chinese_encodings_are_read_and_found(settings: Settings, tmp_path: Path,
                                                            corpus_records: list[dict]) -> None:
    works = _long(corpus_records, 4)
    traditional = opencc.OpenCC("s2t").convert(works[1]["text"])
    files = {"gb.txt": (works[0]["text"] + RARE).encode("gb18030"),
             "big5.txt": traditional.encode("big5hkscs", "ignore"),
             "utf16.txt": works[2]["text"].encode("utf-16"),
             "bom.txt": works[3]["text"].encode("utf-8-sig")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    inventory = _index(settings, [tmp_path])
    assert dict(inventory.files) == {"txt gb18030": 1, "txt big5": 1, "txt utf-16": 1, "txt utf-8-sig": 1}
    assert not inventory.problems
    for name, work in zip(files, works, strict=True):
        stem = name.removesuffix(".txt")
        assert _found(settings, _answer(work["text"])) == [(stem, stem, "", "")]
    with Corpus(settings) as corpus:
        stored = {meta["id"]: meta for meta in corpus.list()}
    assert stored["gb"]["chars"] == len(works[0]["text"] + RARE)  # 𠮷 and 䶮 came through as one character each


def test_an_encoding_can_be_forced_and_a_wrong_one_is_an_error_not_mojibake(settings: Settings, tmp_path: Path,
                                                                            corpus_records: list[dict]) -> None:
    work = _long(corpus_records, 1)[0]
    path = tmp_path / "gbk.txt"
    path.write_bytes(work["text"].encode("gbk"))
    wrong = _index(settings, [path], ReadOptions(encoding="utf-8"))
    assert wrong.documents == 0
    assert [p.reason.split(" (")[0] for p in wrong.problems] == ["not valid utf-8"]
    forced = _index(settings, [path], ReadOptions(encoding="gb18030"))
    assert forced.documents == 1 and dict(forced.files) == {"txt gb18030": 1}
    assert _found(settings, _answer(work["text"]))[0][0] == "gbk"


def test_documents_epub_docx_html_markdown_pdf_are_read_with_their_metadata(
        settings: Settings, tmp_path: Path, corpus_records: list[dict]) -> None:
    works = _long(corpus_records, 7)
    chapters = [("第一章 雨", works[0]["text"]), ("第二章 风", works[1]["text"])]
    write_epub(tmp_path / "book.epub", "雨季集", "张三", chapters)
    write_docx(tmp_path / "essay.docx", "故园", "李四", works[2]["text"])
    (tmp_path / "page.html").write_text(
        f"<html><head><meta charset='utf-8'><title>网页题目</title><style>body {{color: red}}</style></head>"
        f"<body><script>document.write('不是正文')</script><p>{works[3]['text']}</p></body></html>", "utf-8")
    (tmp_path / "notes.md").write_text("# 笔记\n\n" + works[4]["text"].replace("\n\n", "\n\n> "), "utf-8")
    write_pdf(tmp_path / "print.pdf", "印本", "王五", works[5]["text"][:3000])
    write_pdf(tmp_path / "scan.pdf", "扫描本", "王五", None)
    inventory = _index(settings, [tmp_path])
    assert dict(inventory.files) == {"epub": 1, "docx": 1, "html utf-8": 1, "markdown utf-8": 1, "pdf": 2}
    assert [(p.where, p.reason.split(" (")[0]) for p in inventory.problems] == [
        (str(tmp_path / "scan.pdf"), "no text layer")]
    assert _found(settings, _answer(works[0]["text"])) == [("book#001", "第一章 雨", "张三", "雨季集")]
    assert _found(settings, _answer(works[1]["text"])) == [("book#002", "第二章 风", "张三", "雨季集")]
    assert _found(settings, _answer(works[2]["text"])) == [("essay", "故园", "李四", "故园")]
    assert _found(settings, _answer(works[3]["text"])) == [("page", "网页题目", "", "")]
    assert _found(settings, _answer(works[4]["text"])) == [("notes", "notes", "", "")]
    assert _found(settings, _answer(works[5]["text"], at=1000)) == [("print", "印本", "王五", "印本")]
    with Corpus(settings) as corpus:
        texts = {meta["id"]: meta for meta in corpus.list()}
    assert set(texts) == {"book#001", "book#002", "essay", "page", "notes", "print"}
    guard = Guard(settings)
    try:
        held = guard.check_sync("不是正文" * 10 + "document.write", fail_mode="raise")  # the script was dropped
    finally:
        guard.close()
    assert held.verdict == "allow"


def test_collections_folders_compressed_jsonl_csv_and_parquet(settings: Settings, tmp_path: Path,
                                                               corpus_records: list[dict]) -> None:
    works = _long(corpus_records, 6)
    shelf = tmp_path / "shelf"
    (shelf / "deep" / "deeper").mkdir(parents=True)
    with gzip.open(shelf / "a.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "gz-1", "text": works[0]["text"], "title": "甲"}, ensure_ascii=False) + "\n")
    lines = json.dumps({"id": "zst-1", "text": works[1]["text"]}, ensure_ascii=False) + "\n"
    (shelf / "deep" / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    with (shelf / "deep" / "deeper" / "c.csv").open("w", encoding="gb18030", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["编号", "正文", "书名", "年份", "public_domain", "quote_chars"])
        writer.writerow(["csv-1", works[2]["text"], "丙书", "1936", "false", "40"])
    pq.write_table(pa.table({"编号": ["pq-1", "pq-2"], "正文": [works[3]["text"], works[4]["text"]],
                             "书名": ["丁书", "戊书"]}), str(shelf / "d.parquet"), row_group_size=1)
    (shelf / "skip.txt").write_text(works[5]["text"], "utf-8")
    (shelf / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    (shelf / ".hidden.txt").write_text("隐藏", "utf-8")
    fields = FieldNames(id="编号", text="正文", work="书名")
    jsonl = _index(settings, [shelf], ReadOptions(include=("*.jsonl.*",)))
    assert (jsonl.documents, dict(jsonl.files)) == (2, {"jsonl": 2})
    tables = _index(settings, [shelf], ReadOptions(fields=fields, exclude=("*.jsonl.*", "skip.*")))
    assert (tables.documents, dict(tables.files)) == (3, {"csv gb18030": 1, "parquet": 1})
    assert [path.name for path in tables.ignored] == ["cover.jpg"] and not tables.problems
    assert _found(settings, _answer(works[0]["text"]))[0][:2] == ("gz-1", "甲")
    assert _found(settings, _answer(works[1]["text"]))[0][0] == "zst-1"
    assert _found(settings, _answer(works[2]["text"])) == [("csv-1", "", "", "丙书")]
    assert _found(settings, _answer(works[4]["text"])) == [("pq-2", "", "", "戊书")]
    assert not _found(settings, _answer(works[5]["text"]))  # excluded
    with Corpus(settings) as corpus:
        listed = list(corpus.list())
    extra = {meta["id"]: meta.get("extra") for meta in listed}
    assert extra["csv-1"] == {"年份": "1936"}
    assert {m["id"]: m.get("quote_chars") for m in listed}["csv-1"] == 40  # a CSV cell made a number


def test_a_run_skips_bad_files_reports_them_and_redoes_nothing_when_run_again(
        settings: Settings, tmp_path: Path, corpus_records: list[dict]) -> None:
    works = _long(corpus_records, 3)
    for number, work in enumerate(works):
        (tmp_path / f"work{number}.txt").write_text(work["text"], "utf-8")
    (tmp_path / "broken.epub").write_bytes(b"PK\x03\x04 not really a zip")
    lines = '{"id": "ok", "text": "一二三四五六七八九十"}\n{"id": "bad", "text": 5}\nnot json\n'
    (tmp_path / "lines.jsonl").write_text(lines, "utf-8")
    dry = run(settings, "corpus", "add", "--dry-run", "--json", "--quiet", str(tmp_path))
    assert dry.returncode == 1
    inventory = json.loads(dry.stdout)["inventory"]
    assert (inventory["documents"], sum(inventory["files"].values())) == (4, 5)
    assert sorted(Path(p["where"]).name for p in inventory["problems"]) == ["broken.epub", "lines.jsonl:2",
                                                                            "lines.jsonl:3"]
    assert json.loads(run(settings, "corpus", "stats", "--json").stdout)["documents"] == 0  # the dry run wrote nothing
    first = run(settings, "corpus", "add", "--quiet", str(tmp_path))
    assert first.returncode == 1
    assert "skipped (3):" in first.stdout and "broken.epub" in first.stdout and "added 4," in first.stdout
    readable = [str(tmp_path / name) for name in ("work0.txt", "work1.txt", "work2.txt", "lines.jsonl")]
    again = run(settings, "corpus", "add", "--quiet", "--json", *readable)
    counts = json.loads(again.stdout)
    assert (counts["added"], counts["replaced"], counts["unchanged"]) == (0, 0, 4)
    missing = run(settings, "corpus", "add", "--quiet", str(tmp_path / "nothing-here"), str(tmp_path / "cover.jpg"))
    assert missing.returncode == 1 and "no such file or folder" in missing.stdout
    (tmp_path / "twin").mkdir()
    (tmp_path / "twin" / "work0.md").write_text(works[1]["text"], "utf-8")  # the same id as work0.txt
    twins = run(settings, "corpus", "add", "--quiet", "--json", str(tmp_path / "work0.txt"), str(tmp_path / "twin"))
    assert [p["where"] for p in json.loads(twins.stdout)["inventory"]["problems"]] == [
        str(tmp_path / "twin" / "work0.md")]


def _quoting(protected: str, public: str) -> str:
    """A protected essay that quotes the public-domain passage in its middle."""
    middle = len(protected) // 2
    return protected[:middle] + "古人说得好：“" + public + "”" + protected[middle:]


def test_public_domain_text_is_never_flagged_but_the_work_around_a_quotation_is(
        settings: Settings, tmp_path: Path, corpus_records: list[dict]) -> None:
    classical = next(r for r in corpus_records if r["id"].startswith("classical/") and len(r["text"]) > 3000)
    modern = _long([r for r in corpus_records if not r["id"].startswith("classical/")], 1, 4000)[0]
    passage = classical["text"][1000:1200]
    essay = _quoting(modern["text"], passage)
    (tmp_path / "essay.jsonl").write_text(json.dumps({"id": "essay", "text": essay, "title": "随笔"},
                                                     ensure_ascii=False) + "\n", "utf-8")
    (tmp_path / "classic.jsonl").write_text(json.dumps({"id": "classic", "text": classical["text"], "title": "古书"},
                                                       ensure_ascii=False) + "\n", "utf-8")
    quotation = FRONT + passage + BACK
    around = FRONT + essay[len(modern["text"]) // 2 - 150: len(modern["text"]) // 2 + 230] + BACK  # own text + quote
    assert run(settings, "corpus", "add", "--quiet", str(tmp_path / "essay.jsonl")).returncode == 0
    assert [m[0] for m in _found(settings, quotation)] == ["essay"]  # before: the quotation is a copy of the essay

    added = run(settings, "corpus", "add", "--quiet", "--public-domain", str(tmp_path / "classic.jsonl"))
    assert added.returncode == 0 and "1 public domain" in added.stdout
    assert _found(settings, quotation) == []
    assert {m[0] for m in _found(settings, around)} == {"essay"}  # the essay's own text either side
    guard = Guard(settings)
    try:
        verdict = guard.check_sync(around, fail_mode="raise")
    finally:
        guard.close()
    quoted = around.index(passage)
    assert all(m.end <= quoted + 2 or m.start >= quoted + len(passage) - 2 for m in verdict.matches)  # not the quote

    listed = run(settings, "corpus", "list").stdout.splitlines()
    assert [line.split("\t")[0] for line in listed if line.endswith("public domain")] == ["classic"]
    stats = json.loads(run(settings, "corpus", "stats", "--json").stdout)
    assert (stats["documents"], stats["public_domain_documents"]) == (2, 1)
    assert run(settings, "corpus", "remove", "classic").returncode == 0
    assert [m[0] for m in _found(settings, quotation)] == ["essay"]  # the flag is back
    assert json.loads(run(settings, "corpus", "stats", "--json").stdout)["public_domain_documents"] == 0


def test_the_admin_api_adds_public_domain_documents(settings: Settings, corpus_records: list[dict]) -> None:
    classical = next(r for r in corpus_records if r["id"].startswith("classical/") and len(r["text"]) > 3000)
    token = "admin-token-for-public-domain-0123"
    admin = settings.replace(admin_token=token)
    headers = {"Authorization": f"Bearer {token}"}
    with serve(create_app(admin), lifespan="on") as url:
        bad = httpx2.post(url + "/v1/textguard/corpus/documents", headers=headers, timeout=30,
                          json={"documents": [{"id": "x", "text": "文字"}], "public_domain": "yes"})
        assert bad.status_code == 400 and "public_domain" in bad.json()["error"]["message"]
        added = httpx2.post(url + "/v1/textguard/corpus/documents", headers=headers, timeout=60,
                            json={"documents": [{"id": "classic", "text": classical["text"]}], "public_domain": True})
        assert added.status_code == 200 and added.json()["added"] == 1
        stats = httpx2.get(url + "/v1/textguard/corpus/stats", headers=headers, timeout=30).json()
        checked = httpx2.post(url + "/v1/textguard/check", timeout=30,
                              json={"text": FRONT + classical["text"][500:800] + BACK}).json()
    assert stats["public_domain_documents"] == 1
    assert checked["verdict"] == "allow" and checked["matches"] == []


def test_a_stream_quoting_public_domain_text_passes_and_one_copying_the_work_does_not(
        settings: Settings, corpus_records: list[dict]) -> None:
    classical = next(r for r in corpus_records if r["id"].startswith("classical/") and len(r["text"]) > 3000)
    modern = _long([r for r in corpus_records if not r["id"].startswith("classical/")], 1, 4000)[0]
    passage = classical["text"][1000:1200]
    essay = _quoting(modern["text"], passage)
    with Corpus(settings) as corpus:
        corpus.add([Document("essay", essay, "随笔"), Document("classic", classical["text"], public_domain=True)])
    middle = len(modern["text"]) // 2

    async def streamed(text: str) -> str:
        guard = Guard(settings)
        try:
            stream = GuardedStream(guard)
            released = [(await stream.feed(text[i:i + 3])).text for i in range(0, len(text), 3)]
            released.append((await stream.finish()).text)
            assert stream.skipped is None
            return "".join(released)
        finally:
            await guard.aclose()

    quotation = FRONT + passage + BACK
    assert asyncio.run(streamed(quotation)) == quotation
    copying = FRONT + essay[middle - 300:middle] + BACK  # the essay's own text, just before its quotation
    released = asyncio.run(streamed(copying))
    assert "出自《随笔》" in released and longest_shared_run(released, essay) <= settings.quote_chars
