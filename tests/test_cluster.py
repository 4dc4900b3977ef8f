"""textguard on a real 3-node Redis Cluster: the same results as one Redis, writers in several
processes at once, and a node restarted while checks run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.helpers import copied_answer, run, to_document
from tests.support.redis_admin import admin_client, band_content, index_keys, uncapped
from tests.support.redis_cluster import LocalCluster
from textguard import CheckSkipped, ConfigError, Corpus, Guard, Settings
from textguard._redis import parse_cluster_url
from textguard.ingest import add_files


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for r in records:
            handle.write(json.dumps({k: r[k] for k in ("id", "text", "title", "author", "work")},
                                    ensure_ascii=False) + "\n")
    return path


def _comparable(stats: dict) -> dict:
    return {k: stats[k] for k in ("documents", "characters", "windows", "pending", "bucket_bits")}


def _verdicts(settings: Settings, texts: list[str]) -> list[dict]:
    guard = Guard(settings)
    try:
        return [{k: v for k, v in guard.check_sync(t, fail_mode="raise").to_dict().items() if k != "elapsed_ms"}
                for t in texts]
    finally:
        guard.close()


def test_cluster_url() -> None:
    nodes, options = parse_cluster_url("rediss+cluster://ann:p%40ss@10.0.0.1:7000,[::1]:7001,h:7002/?ssl_cert_reqs=none")
    assert nodes == [("10.0.0.1", 7000), ("::1", 7001), ("h", 7002)]
    assert options == {"username": "ann", "password": "p@ss", "ssl": True, "ssl_cert_reqs": "none"}
    assert parse_cluster_url("redis+cluster://h:1") == ([("h", 1)], {})
    for bad in ("redis+cluster://h", "redis+cluster://h:1,:2", "redis+cluster://h:1/3"):
        with pytest.raises(ConfigError):
            parse_cluster_url(bad)


def test_cluster_gives_the_results_of_one_redis(settings: Settings, cluster_settings: Settings,
                                                corpus_records: list[dict], negative_records: list[dict],
                                                raw_redis, tmp_path: Path) -> None:
    """The CLI with two writer processes into the cluster, the API with one into a single Redis:
    the same documents, counters, band entries, verdicts, and the same after a takedown."""
    source = _write_jsonl(tmp_path / "works.jsonl", corpus_records)
    added = run(cluster_settings, "corpus", "add", "--quiet", "--workers", "2", str(source))
    assert added.returncode == 0, added.stderr
    assert f"added {len(corpus_records)}," in added.stdout
    with Corpus(settings) as corpus:
        add_files(corpus, [source])
        single_stats = corpus.stats()
    cluster_stats = json.loads(run(cluster_settings, "corpus", "stats", "--json").stdout)
    assert _comparable(cluster_stats) == _comparable(single_stats)
    assert cluster_stats["redis_bytes"] == pytest.approx(single_stats["redis_bytes"], rel=0.1)
    listed = [json.loads(line) for line in run(cluster_settings, "corpus", "list", "--json").stdout.splitlines()]
    with Corpus(settings) as corpus:
        assert listed == list(corpus.list())

    cluster_client = admin_client(cluster_settings)
    content, reference = band_content(cluster_client, cluster_settings), band_content(raw_redis, settings)
    assert content.keys() == reference.keys()
    stable = uncapped(reference, settings.max_postings)
    assert uncapped(content, settings.max_postings) == stable
    nodes_holding = {cluster_client.get_node_from_key(k).name for k in index_keys(cluster_client, cluster_settings)}
    assert len(nodes_holding) == 3  # the index is spread over every node

    long_enough = [r for r in corpus_records if len(r["text"]) > 1000]
    copies = [copied_answer(r, 120) for r in long_enough[::5]]
    clean = [r["text"][:1000] for r in negative_records[:10]]
    on_cluster = _verdicts(cluster_settings, copies + clean)
    assert on_cluster == _verdicts(settings, copies + clean)
    assert all(v["verdict"] != "allow" for v in on_cluster[:len(copies)])
    checked = json.loads(run(cluster_settings, "check", "--json", stdin=copies[0]).stdout)
    assert {k: v for k, v in checked.items() if k != "elapsed_ms"} == on_cluster[0]

    taken_down = [r["id"] for r in long_enough[::5][:3]]
    assert run(cluster_settings, "corpus", "remove", *taken_down).returncode == 0
    with Corpus(settings) as corpus:
        corpus.remove(taken_down)
        single_stats = corpus.stats()
    assert _comparable(json.loads(run(cluster_settings, "corpus", "stats", "--json").stdout)) == \
        _comparable(single_stats)
    content, reference = band_content(cluster_client, cluster_settings), band_content(raw_redis, settings)
    assert content.keys() == reference.keys()
    assert {k: content[k] for k in stable if k in content} == {k: reference[k] for k in stable if k in reference}
    assert not {doc for postings in content.values() for doc, _ in postings} & {*taken_down, "<not live"}
    after = _verdicts(cluster_settings, copies[:3])
    assert [v["verdict"] for v in after] == ["allow"] * 3
    assert after == _verdicts(settings, copies[:3])
    cluster_client.close()


def test_concurrent_writers_leave_a_consistent_index(settings: Settings, cluster_settings: Settings,
                                                    corpus_records: list[dict], raw_redis,
                                                    tmp_path: Path) -> None:
    """Three `corpus add --workers 2` at once over overlapping files: the index equals one
    writer's, and nothing of the versions they replaced in each other remains."""
    thirds = len(corpus_records) // 3
    files = [_write_jsonl(tmp_path / f"part{i}.jsonl", corpus_records[i * thirds // 2:i * thirds // 2 + 2 * thirds])
             for i in range(3)]
    covered = {r["id"] for i in range(3) for r in corpus_records[i * thirds // 2:i * thirds // 2 + 2 * thirds]}
    env = {"TEXTGUARD_HOME": str(cluster_settings.home), "TEXTGUARD_INDEX": cluster_settings.index,
           "TEXTGUARD_REDIS_URL": cluster_settings.redis_url or ""}
    writers = [subprocess.Popen([sys.executable, "-m", "textguard", "corpus", "add", "--quiet", "--workers", "2",
                                 str(path)], env={**os.environ, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for path in files]
    for writer in writers:
        _, stderr = writer.communicate(timeout=300)
        assert writer.returncode == 0, stderr
    with Corpus(settings) as corpus:
        corpus.add(to_document(r) for r in corpus_records if r["id"] in covered)
        reference_stats = corpus.stats()
    with Corpus(cluster_settings) as corpus:
        stats = corpus.stats()
    assert _comparable(stats) == _comparable(reference_stats)
    assert stats["documents"] == len(covered) and stats["pending"] == 0

    client = admin_client(cluster_settings)
    content, reference = band_content(client, cluster_settings), band_content(raw_redis, settings)
    assert not [v for v in content.values() if any(doc.startswith("<not live") for doc, _ in v)]
    assert content.keys() == reference.keys()
    assert uncapped(content, settings.max_postings) == uncapped(reference, settings.max_postings)
    live = {int(n) for n in client.hvals(f"{{textguard:v1:{cluster_settings.index}}}:docs")}
    texts = {int(k.rsplit(b":", 1)[1]) for k in index_keys(client, cluster_settings) if b":d:" in k}
    assert texts == live
    client.close()


def test_node_restarted_mid_check(cluster_settings: Settings, redis_cluster: LocalCluster,
                                  corpus_records: list[dict]) -> None:
    """While a node is down and comes back, every check either gives the right verdict or is
    skipped with a clean error (never an 'allow' for a copy); afterwards all are right again."""
    records = corpus_records[:12]
    with Corpus(cluster_settings) as corpus:
        corpus.add(to_document(r) for r in records)
    copy, clean = copied_answer(records[4], 150), "今天天气很好，我们一起去公园散步，然后回家做饭，晚上看一部电影。" * 8
    guard = Guard(cluster_settings)
    assert guard.check_sync(copy, fail_mode="raise").verdict != "allow"
    outcomes: list[str] = []
    stop = threading.Event()

    def keep_checking() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            for text, copied in ((copy, True), (clean, False)):
                try:
                    verdict = guard.check_sync(text, fail_mode="raise", budget_ms=2000)
                except CheckSkipped as exc:
                    outcomes.append(f"skipped:{exc.reason}")
                else:
                    outcomes.append("right" if (verdict.verdict != "allow") == copied else "WRONG")

    checker = threading.Thread(target=keep_checking)
    checker.start()
    node = redis_cluster.nodes[1]
    try:
        while len(outcomes) < 4:  # checks are running
            time.sleep(0.01)
        node.stop()  # saves its data first: the node comes back with what it held
        down_at = len(outcomes)
        while not any(o.startswith("skipped") for o in outcomes[down_at:]) and checker.is_alive():
            time.sleep(0.01)
        failed = run(cluster_settings, "check", "--json", stdin=copy)
        assert failed.returncode == 1 and failed.stderr.startswith("textguard: error:")
        assert len(failed.stderr.strip().splitlines()) == 1
    finally:
        if node.process is None:
            node.start()
        redis_cluster.wait_ok()
    back_at = len(outcomes)
    while len(outcomes) < back_at + 20 and checker.is_alive():
        time.sleep(0.01)
    stop.set()
    checker.join()
    assert "WRONG" not in outcomes
    assert any(o.startswith("skipped") for o in outcomes)
    # once the cluster is whole again, checks find the copy again
    assert [guard.check_sync(t, fail_mode="raise").verdict != "allow" for t in (copy, clean)] == [True, False]
    guard.close()
