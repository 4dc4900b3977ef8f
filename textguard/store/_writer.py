"""`IndexWriter`: corpus maintenance, atomic per document, safe with several writer processes."""

from __future__ import annotations

import json
import struct
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from textguard._iterate import batched
from textguard._redis import SyncClient, as_str, unavailable_on_error
from textguard.errors import StoreUnavailableError
from textguard.store._chunks import pack_text, unpack_text
from textguard.store._cluster import queue_evalsha
from textguard.store._format import ENTRIES_PER_CHAR, FIELD_BYTES, POSTING_DTYPE, SHARDS, DocumentMeta, StagedDocument
from textguard.store._layout import Layout, by_shard, choose_bucket_bits, small_hash_limit
from textguard.store._membership import choose_filter_bits
from textguard.store._scripts import ADD_POSTINGS, BEGIN, CLAIM, COMMIT, REMOVE_POSTINGS, WITHDRAW

__all__ = ["IndexWriter"]


class IndexWriter:
    """Corpus maintenance: atomic per document, safe with several writer processes."""

    def __init__(self, client: SyncClient, layout: Layout, lease_seconds: float = 120.0) -> None:
        self._client = client
        self._layout = layout
        self.lease_seconds = lease_seconds
        self.token = uuid.uuid4().hex  # names this writer in the leases it holds
        self._add = client.register_script(ADD_POSTINGS)
        self._remove = client.register_script(REMOVE_POSTINGS)
        self._commit = client.register_script(COMMIT)
        self._withdraw = client.register_script(WITHDRAW)
        self._claim = client.register_script(CLAIM)
        self._begin = client.register_script(BEGIN)

    def ensure_meta(self, expected_chars: int = 0) -> None:
        """Create the index record, or refuse an index built with other parameters.

        A new index without explicit bucket_bits gets them from `expected_chars` (what is about
        to be added) and the server's small-hash limit.
        """
        with unavailable_on_error():
            stored = self._client.get(self._layout.meta)
            if stored is None:
                if self._layout.bucket_bits is None:
                    self._layout.bucket_bits = choose_bucket_bits(expected_chars, small_hash_limit(self._client))
                self._layout.filter_bits = choose_filter_bits(expected_chars * ENTRIES_PER_CHAR, SHARDS)
                if self._client.set(self._layout.meta, json.dumps(self._layout.record(), sort_keys=True), nx=True):
                    self._allocate_filter()
                stored = self._client.get(self._layout.meta)  # another writer may have been first
            self._client.set(self._layout.nonce, uuid.uuid4().hex, nx=True)  # (an index from before nonces gets one)
        if stored is None:
            raise StoreUnavailableError(f"the index record {self._layout.meta!r} vanished as it was written")
        self._layout.adopt(stored)

    def _allocate_filter(self) -> None:
        """Create the filter's bit strings at their full size: grown bit by bit, Redis would
        reserve up to twice the memory they need."""
        assert self._layout.filter_bits is not None
        zeros = bytes((1 << self._layout.filter_bits) // 8)
        pipe = self._client.pipeline(transaction=False)
        for key in self._layout.filter_keys():
            pipe.set(key, zeros, nx=True)
        pipe.execute()

    def stored_digests(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """Content digest of the live version of each of `doc_ids` that is indexed."""
        numbers = self._client.hmget(self._layout.docs, list(doc_ids)) if doc_ids else []
        present = [(doc_id, int(n)) for doc_id, n in zip(doc_ids, numbers, strict=True) if n is not None]
        metas = self.metas([n for _, n in present])
        return {doc_id: meta["sha256"] for (doc_id, _), meta in zip(present, metas, strict=True) if meta}

    def begin(self, versions: Sequence[tuple[str, str]]) -> list[int | Literal["busy", "unchanged"]]:
        """Reserve numbers for new versions (id, content digest), leased to this writer; "busy" for
        a version another writer is writing now (wait for its commit, or its lease to run out),
        "unchanged" for one already committed."""
        last = int(self._client.incrby(self._layout.seq, len(versions)))
        numbers = list(range(last - len(versions) + 1, last + 1))
        now = time.time()
        states = self._begin(keys=[self._layout.pending, self._layout.versions],
                             args=[now, now + self.lease_seconds, self.token,
                                   *(v for (doc_id, digest), n in zip(versions, numbers, strict=True)
                                     for v in (doc_id, n, digest))])
        return [n if state == 1 else "busy" if state == 0 else "unchanged"
                for n, state in zip(numbers, states, strict=True)]

    def write(self, documents: Sequence[StagedDocument], max_postings: int) -> None:
        """Store the text and postings of uncommitted documents."""
        pipe = self._client.pipeline(transaction=False)
        for doc in documents:
            chunks = pack_text(doc.text)
            pipe.hset(self._layout.document(doc.number),
                      mapping={"meta": json.dumps(doc.meta, ensure_ascii=False),
                               **{f"t{i}": blob for i, blob in enumerate(chunks)}})
        pipe.execute()
        band_keys = np.concatenate([d.band_keys for d in documents])
        postings = np.empty(len(band_keys), dtype=POSTING_DTYPE)
        postings["n"] = np.repeat([d.number for d in documents], [len(d.band_keys) for d in documents])
        postings["o"] = np.concatenate([d.offsets for d in documents])
        buckets, names, fields = self._layout.entries(band_keys)
        calls: list[tuple[Sequence[str], Sequence[Any]]] = []
        positions = None if self._layout.filter_bits is None else self._layout.filter_slots(band_keys)[1]
        filter_keys = self._layout.filter_keys()
        for group in self._groups(buckets):
            keys = [names[i] for i in group]
            args: list[Any] = [_take(fields, group, FIELD_BYTES), postings[group].tobytes(), max_postings]
            if positions is not None:
                keys.append(filter_keys[int(buckets[group[0]]) % SHARDS])
                args.append(positions[group].astype(">u4").tobytes())
            calls.append((keys, args))
        self._pipelined(self._add, calls)

    def commit(self, documents: Sequence[StagedDocument]) -> list[int | None]:
        """Make each document the live version of its id; returns the numbers they replaced.

        Raises StoreUnavailableError, committing none of them, if this writer's lease on any was
        taken over (it outlived `lease_seconds` and another writer is purging what it wrote).
        """
        keys = [self._layout.docs, self._layout.live, self._layout.pending, self._layout.stats, self._layout.versions]
        replies = self._pipelined(self._commit, [
            (keys, [doc.doc_id, doc.number, len(doc.text), distinct(doc.band_keys), self.token,
                    "1" if doc.meta.get("public_domain") else "0"])
            for doc in documents])
        lost = [doc.doc_id for doc, reply in zip(documents, replies, strict=True) if reply == -1]
        if lost:
            raise StoreUnavailableError(
                f"the lease on {len(lost)} document(s) ({', '.join(lost[:3])}…) ran out before they were committed; "
                "add them again")
        return [int(old) if old else None for old in replies]

    def _pipelined(self, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        """Run `script` once per call in one pipeline (one round trip per node), reloading it once
        if a server forgot it (a restarted node). Every script here can safely run twice."""
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            for keys, args in calls:
                queue_evalsha(pipe, script, keys, args)
            try:
                return list(pipe.execute())
            except NoScriptError:
                if attempt:
                    raise
                self._client.script_load(script.script)
        raise AssertionError("unreachable")

    def withdraw(self, doc_id: str) -> int | None:
        """Take `doc_id` out of service atomically; its data is purged by `purge`."""
        layout = self._layout
        number = self._withdraw(keys=[layout.docs, layout.live, layout.pending, layout.versions], args=[doc_id])
        return int(number) if number else None

    def stored_text(self, number: int) -> tuple[DocumentMeta, str] | None:
        values: dict[bytes, bytes] = self._client.hgetall(self._layout.document(number))  # type: ignore[assignment]
        if not values:
            return None
        meta = json.loads(values.pop(b"meta"))
        chunks = sorted((int(k[1:]), v) for k, v in values.items())
        return meta, "".join(unpack_text(v) for _, v in chunks)

    def purge(self, number: int, band_keys: np.ndarray | None, characters: int, committed: bool,
              public_domain: bool = False) -> None:
        """Delete every trace of document `number` (its band keys come from its stored text).

        Postings go first and the pending record last, so a purge cut short is resumed by the
        next writer's recovery.
        """
        if band_keys is not None and len(band_keys):
            buckets, names, fields = self._layout.entries(band_keys)
            tag = struct.pack(">I", number)
            self._pipelined(self._remove, [([names[i] for i in group], [_take(fields, group, FIELD_BYTES), tag])
                                           for group in self._groups(buckets)])
        self._client.delete(self._layout.document(number))
        pipe = self._client.pipeline(transaction=True)  # control keys share a slot
        if committed and band_keys is not None:
            pipe.hincrby(self._layout.stats, "entries", -distinct(band_keys))
            pipe.hincrby(self._layout.stats, "characters", -characters)
            if public_domain:
                pipe.hincrby(self._layout.stats, "public_domain", -1)
        pipe.hdel(self._layout.pending, str(number))
        pipe.execute()

    @staticmethod
    def _groups(buckets: np.ndarray, limit: int = 8192) -> Iterator[list[int]]:
        """Indices of `buckets` by shard tag (one slot each, as a cluster requires of one
        script call's keys), cut into script-sized batches."""
        for group in by_shard(buckets):
            for start in range(0, len(group), limit):
                yield group[start:start + limit].tolist()

    def claim_expired(self) -> Iterator[tuple[int, bool]]:
        """Pending numbers whose writer is gone (lease over), each claimed by this writer so that
        no other purges it at the same time: (number, was it committed)."""
        now = time.time()
        for number, raw in self._client.hgetall(self._layout.pending).items():
            if json.loads(raw)["lease"] > now:
                continue
            claimed = self._claim(keys=[self._layout.pending, self._layout.versions],
                                  args=[number, now, time.time() + self.lease_seconds, self.token])
            if claimed:
                yield int(number), bool(json.loads(claimed).get("committed"))

    def pending_count(self) -> int:
        return int(self._client.hlen(self._layout.pending))

    def documents(self) -> Iterator[tuple[str, int]]:
        for doc_id, number in self._client.hscan_iter(self._layout.docs, count=1000):
            yield as_str(doc_id), int(number)

    def metas(self, numbers: Sequence[int]) -> list[DocumentMeta | None]:
        pipe = self._client.pipeline(transaction=False)
        for number in numbers:
            pipe.hget(self._layout.document(number), "meta")
        return [json.loads(m) if m else None for m in pipe.execute()]

    def counters(self) -> dict[str, int]:
        raw = self._client.hgetall(self._layout.stats)
        counters = {as_str(k): int(v) for k, v in raw.items()}
        counters["documents"] = int(self._client.hlen(self._layout.docs))
        return counters

    def keys(self) -> Iterator[bytes]:
        """Every key of the index (by SCAN, which never holds Redis for long)."""
        for pattern in self._layout.key_patterns():
            yield from self._client.scan_iter(match=pattern, count=2000)

    def memory_bytes(self) -> int:
        """Bytes Redis spends on this index (MEMORY USAGE summed over its keys)."""
        total = 0
        for batch in batched(self.keys(), 500):
            pipe = self._client.pipeline(transaction=False)
            for key in batch:
                pipe.memory_usage(key, samples=0)
            total += sum(v or 0 for v in pipe.execute())
        return total


def distinct(band_keys: np.ndarray) -> int:
    """Band entries a document holds: its distinct band keys."""
    return len(np.unique(band_keys))


def _take(blob: bytes, indices: list[int], width: int) -> bytes:
    view = np.frombuffer(blob, dtype=np.uint8).reshape(-1, width)
    return view[indices].tobytes()

