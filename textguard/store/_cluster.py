"""Sending script calls to the right nodes: one pipeline per node of a cluster, the nodes at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
from redis.commands.core import AsyncScript, Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["NodePipelines", "encode_command", "queue_evalsha"]


def encode_command(*parts: bytes) -> bytes:
    """One command in the Redis protocol (RESP)."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class NodePipelines:
    """Commands sent straight to the cluster nodes that own their slots: one packed pipeline per
    node, the nodes at once. The read path's alternative to redis-py's cluster pipeline, which
    spends more CPU than the lookups themselves (it derives the slot of every key of every
    command and encodes every argument again); here slots are known and commands pre-packed.

    The topology is the cluster client's. A MOVED reply refreshes it and the batch is sent once
    more; a NOSCRIPT reply (a restarted node) loads the script and likewise; any other error
    (a node down, a slot migrating) raises, and the check is skipped, never answered from part
    of the index. A node that could not be reached has the topology read again before the next
    batch (a replica may have taken its place).
    """

    def __init__(self, client: acluster.RedisCluster) -> None:
        self._client = client
        self._pools: dict[str, aredis.ConnectionPool] = {}
        self._stale = False

    async def run(self, calls: Sequence[tuple[int, bytes]], script: AsyncScript | None = None) -> list[Any]:
        """Replies to `calls` (slot, packed command), in order."""
        await self._client.initialize()
        if self._stale:
            await self._client.nodes_manager.initialize()
            self._stale = False
        for attempt in range(2):
            replies = await self._send(calls)
            errors = [r for r in replies if isinstance(r, ResponseError)]
            if not errors:
                return replies
            if attempt == 0 and all(isinstance(e, MovedError) for e in errors):
                await self._client.nodes_manager.initialize()
            elif attempt == 0 and script is not None and all(isinstance(e, NoScriptError) for e in errors):
                await self._client.script_load(script.script)
            else:
                raise errors[0]
        raise AssertionError("unreachable")

    async def _send(self, calls: Sequence[tuple[int, bytes]]) -> list[Any]:
        by_node: dict[str, tuple[acluster.ClusterNode, list[int]]] = {}
        for i, (slot, _) in enumerate(calls):
            node = self._client.nodes_manager.get_node_from_slot(slot)
            by_node.setdefault(node.name, (node, []))[1].append(i)
        replies: list[Any] = [None] * len(calls)

        async def send(node: acluster.ClusterNode, indices: list[int]) -> None:
            pool = self._pools.get(node.name)
            if pool is None:
                pool = self._pools[node.name] = aredis.ConnectionPool(max_connections=64, **node.connection_kwargs)
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                await connection.send_packed_command(b"".join(calls[i][1] for i in indices))
                for i in indices:
                    try:
                        replies[i] = await connection.read_response()
                    except ResponseError as exc:  # the reply was read whole: the connection stays in step
                        replies[i] = exc
            except (RedisConnectionError, RedisTimeoutError, OSError, asyncio.CancelledError):
                self._stale = True
                await connection.disconnect()
                raise
            finally:
                await pool.release(connection)

        outcomes = await asyncio.gather(*(send(node, indices) for node, indices in by_node.values()),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return replies

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.disconnect()
        self._pools.clear()


def queue_evalsha(pipe: Any, script: Script | AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> None:
    # cluster pipelines refuse `evalsha()` but route EVALSHA by its keys when queued directly
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
