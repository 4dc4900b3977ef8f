"""Security: Redis AUTH and TLS through the URL, against real redis-server processes; no pickle in
the package. (Admin tokens over HTTP, and that the proxy never forwards them: test_proxy.)"""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_process import RedisProcess, debian_redis_server, free_port
from textguard import Corpus, Document, Guard, Settings, StoreUnavailableError

PACKAGE = Path(__file__).resolve().parent.parent / "textguard"
PASSWORD = "a-redis-password-for-tests"


def _protected(record: dict) -> Document:
    return Document(record["id"], record["text"], title=record.get("title", ""), work=record.get("work", ""))


def _finds_copy(settings: Settings, record: dict) -> bool:
    guard = Guard(settings)
    try:
        verdict = guard.check_sync("我来回答：" + record["text"][500:700] + "。以上。", fail_mode="raise")
    finally:
        guard.close()
    return [m.doc_id for m in verdict.matches] == [record["id"]]


def test_redis_auth_through_the_url(tmp_path: Path, record: dict) -> None:
    server = RedisProcess(tmp_path / "auth", extra=("--requirepass", PASSWORD))
    server.start()
    try:
        settings = Settings(redis_url=f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0", home=tmp_path, index="auth")
        with Corpus(settings) as corpus:
            corpus.add([_protected(record)])
        assert _finds_copy(settings, record)
        wrong = settings.replace(redis_url=f"redis://:wrong-password@127.0.0.1:{server.port}/0")
        with pytest.raises(StoreUnavailableError), Corpus(wrong) as corpus:
            corpus.stats()
        verdict = Guard(wrong).check_sync(record["text"][:300])
        assert verdict.skipped == "redis"
    finally:
        server.remove()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    binary = debian_redis_server()
    if binary is None:
        pytest.skip("no TLS-capable redis-server (Debian's redis-server package; .ci/run installs it)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    tls_port = free_port()
    server = RedisProcess(tmp_path / "tls", binary=binary, extra=(
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"))
    server.start()
    yield tls_port, cert
    server.remove()


def test_redis_tls_through_a_rediss_url(tls_redis: tuple[int, Path], tmp_path: Path, record: dict) -> None:
    port, cert = tls_redis
    settings = Settings(redis_url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}", home=tmp_path, index="tls")
    with Corpus(settings) as corpus:
        corpus.add([_protected(record)])
        assert corpus.stats()["documents"] == 1
    assert _finds_copy(settings, record)
    unverified = settings.replace(redis_url=f"rediss://127.0.0.1:{port}/0")  # the self-signed cert is not trusted
    with pytest.raises(StoreUnavailableError), Corpus(unverified) as corpus:
        corpus.stats()


def test_nothing_in_the_package_unpickles() -> None:
    unsafe = {"pickle", "cPickle", "dill", "shelve", "marshal", "jsonpickle"}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not unsafe & {n.split(".")[0] for n in names}, f"{path.name} imports {names}"
