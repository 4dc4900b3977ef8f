"""The command line, run as a real process: exit codes, JSON shapes, errors on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.helpers import copied_answer, run
from textguard import Settings
from textguard.normalise import normalise


@pytest.fixture
def corpus_file(tmp_path: Path, corpus_records: list[dict]) -> Path:
    path = tmp_path / "works.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for record in corpus_records[:4]:
            handle.write(json.dumps({"id": record["id"], "text": record["text"], "title": record["title"],
                                     "author": record["author"], "work": record["work"], "genre": "x"},
                                    ensure_ascii=False) + "\n")
    return path


def test_corpus_commands_and_check_json(settings: Settings, corpus_file: Path, corpus_records: list[dict],
                                        tmp_path: Path) -> None:
    txt = tmp_path / "一篇散文.txt"
    txt.write_text(corpus_records[10]["text"], encoding="utf-8")
    added = run(settings, "corpus", "add", "--quiet", str(corpus_file), str(txt))
    assert added.returncode == 0, added.stderr
    assert "added 5" in added.stdout
    again = run(settings, "corpus", "add", "--quiet", str(corpus_file))
    assert "unchanged 4" in again.stdout

    listing = run(settings, "corpus", "list", "--json")
    ids = {json.loads(line)["id"] for line in listing.stdout.splitlines()}
    assert ids == {r["id"] for r in corpus_records[:4]} | {"一篇散文"}
    assert json.loads(listing.stdout.splitlines()[0]).get("extra", {}).get("genre") in ("x", None)

    stats = json.loads(run(settings, "corpus", "stats", "--json").stdout)
    assert {"documents", "characters", "windows", "redis_bytes", "bytes_per_char"} <= set(stats)
    assert stats["documents"] == 5

    answer = copied_answer(corpus_records[0], 60)
    checked = run(settings, "check", "--json", "-", stdin=answer)
    assert checked.returncode == 0, checked.stderr
    verdict = json.loads(checked.stdout)
    assert list(verdict) == ["verdict", "text", "checked_chars", "matches", "elapsed_ms"]
    assert verdict["verdict"] == "rewrite" and verdict["checked_chars"] == len(answer)
    (match,) = verdict["matches"]
    assert match["doc_id"] == corpus_records[0]["id"]
    assert normalise(answer[match["start"]:match["end"]]).text == normalise(
        corpus_records[0]["text"][match["source_start"]:match["source_end"]]).text

    file_input = tmp_path / "answer.txt"
    file_input.write_text(answer, encoding="utf-8")
    human = run(settings, "check", str(file_input))
    assert human.returncode == 0 and "verdict: rewrite" in human.stdout and corpus_records[0]["work"] in human.stdout

    removed = run(settings, "corpus", "remove", corpus_records[0]["id"])
    assert removed.returncode == 0
    assert json.loads(run(settings, "check", "--json", "-", stdin=answer).stdout)["verdict"] == "allow"
    missing = run(settings, "corpus", "remove", "no-such-id")
    assert missing.returncode == 1 and "no-such-id" in missing.stderr


def test_a_bad_jsonl_line_is_reported_and_skipped(settings: Settings, tmp_path: Path,
                                                 corpus_records: list[dict]) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"id": "a", "text": corpus_records[0]["text"]}, ensure_ascii=False)
    path.write_text(good + "\n" + good.replace('"a"', '"b"') + "\n{not json\n", encoding="utf-8")
    result = run(settings, "corpus", "add", "--quiet", str(path))
    assert result.returncode == 1
    assert f"{path}:3: invalid JSON" in result.stdout and "skipped (1):" in result.stdout
    assert sorted(run(settings, "corpus", "list").stdout.split()[::2]) == ["a", "b"]


@pytest.mark.parametrize(("content", "message"), [
    ("{\"id\": \"a\"}\n", "'text'"),
    ("{\"text\": \"abc\"}\n", "'id'"),
    ("[1, 2]\n", "JSON object"),
])
def test_invalid_records_are_named(settings: Settings, tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(content, encoding="utf-8")
    result = run(settings, "corpus", "add", str(path))
    assert result.returncode == 1 and message in result.stdout and f"{path}:1" in result.stdout


def test_unreadable_inputs(settings: Settings, tmp_path: Path) -> None:
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("中文文本".encode("gbk"))
    read = run(settings, "corpus", "add", "--dry-run", "--json", str(gbk))
    assert read.returncode == 0 and json.loads(read.stdout)["inventory"]["files"] == {"txt gb18030": 1}
    missing = run(settings, "corpus", "add", str(tmp_path / "missing.jsonl"))
    assert missing.returncode == 1 and "no such file or folder" in missing.stdout
    (tmp_path / "empty").mkdir()
    assert run(settings, "corpus", "add", str(tmp_path / "empty")).returncode == 1
    assert run(settings, "check", str(tmp_path / "missing.txt")).returncode == 1


def test_unreachable_redis_is_one_clear_line(settings: Settings) -> None:
    env = {"TEXTGUARD_REDIS_URL": "redis://127.0.0.1:1/0"}
    for args in (["check", "-"], ["corpus", "stats"]):
        result = run(settings, *args, stdin="一些文字", extra_env=env)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("textguard: error:"), result.stderr


def test_index_built_with_other_parameters_is_refused(settings: Settings, corpus_file: Path) -> None:
    assert run(settings, "corpus", "add", "--quiet", str(corpus_file)).returncode == 0
    result = run(settings, "check", "-", stdin="一些文字", extra_env={"TEXTGUARD_WINDOW_SHINGLES": "30"})
    assert result.returncode == 1 and "other parameters" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_setting_is_refused(settings: Settings) -> None:
    result = run(settings, "corpus", "stats", extra_env={"TEXTGUARD_QUOTE_CHARS": "many"})
    assert result.returncode == 1 and "quote_chars" in result.stderr
