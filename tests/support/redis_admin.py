"""A test's own look at Redis, apart from the clients under test: what textguard stored there
(an index's keys, its band entries, the audit stream) and which commands it sent."""

from __future__ import annotations

from typing import Any

import numpy as np

from textguard import Settings
from textguard._redis import SyncClient, connect_sync
from textguard.audit import AuditReader
from textguard.sketching import TextSketcher
from textguard.store import POSTING_DTYPE, Layout


def admin_client(settings: Settings) -> SyncClient:
    """A client of the Redis (or cluster) of `settings` for the test itself: it connects as
    textguard does, so a test sees the server the code under test uses."""
    return connect_sync(settings)


def audit_reader(settings: Settings) -> AuditReader:
    """The audit log of the index of `settings`, read as `textguard audit` reads it."""
    return AuditReader(admin_client(settings), settings.index)


def command_calls(stats: Any, name: str) -> int:
    """Calls of Redis command `name` so far, from the reply to INFO commandstats."""
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


def index_layout(settings: Settings) -> Layout:
    """The key names textguard gives the index of `settings` (taken from it, not repeated here)."""
    return TextSketcher(settings).layout


def index_keys(client: SyncClient, settings: Settings) -> list[bytes]:
    """Every key of the index of `settings`, found by the SCAN patterns the store itself uses."""
    return [key for pattern in index_layout(settings).key_patterns()
            for key in client.scan_iter(match=pattern, count=5000)]


def band_content(client: SyncClient,
                 settings: Settings) -> dict[tuple[bytes, bytes], frozenset[tuple[str, int]]]:
    """Every band entry of an index: (bucket key without the index name, field) -> its postings as
    (document id, offset), so that indexes of other names and internal numbers can be compared."""
    layout = index_layout(settings)
    live = {int(n): i.decode() for n, i in client.hgetall(layout.live).items()}
    content = {}
    base = f"{layout.base}:".encode()
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
