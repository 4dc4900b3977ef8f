"""Stage 4: the index in Redis, in a layout of our own.

Keys, all under `textguard:v1:<index>` (the format version is part of the name):

    {…}:meta          JSON of the sketch parameters; an index refuses other parameters
    {…}:docs          hash  document id -> internal number (committed documents)
    {…}:live          hash  internal number -> document id (what lookups may return)
    {…}:pending       hash  internal number -> JSON (writes in flight, or to be purged)
    {…}:stats, :seq   counters
    …:{sN}:b<B>       hash  band key (5 bytes) -> postings (8 bytes each: number, offset)
    …:d:<number>      hash  "meta" -> JSON, "t<i>" -> zlib(GB18030) of 4,096-character chunks

The control keys share one hash tag, so that commit and removal are single atomic scripts even
on Redis Cluster; band buckets carry a shard tag so that lookups can be grouped per shard. Band
entries are packed into 2**bucket_bits small hashes, which Redis stores as compact listpacks
(about 18 bytes an entry). Nothing is pickled: postings are fixed-width integers.

A document becomes visible only when its commit script puts it in `live`; until then its text
and postings are invisible, and a writer that dies leaves a `pending` record with a lease, from
which any later writer purges what it wrote.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import redis.asyncio as aredis

from textguard.errors import IndexMismatchError, StoreUnavailableError
from textguard.sketch import SketchParams

FORMAT_VERSION = 1
CHUNK_CHARS = 4096
FIELD_BYTES = 5
POSTING = struct.Struct(">II")  # internal document number, original character offset
SHARDS = 64
TEXT_ENCODING = "gb18030"  # a complete Unicode encoding, two bytes for common Chinese

# KEYS: bucket key per entry. ARGV: fields blob, postings blob, cap. Appends each posting to
# its field unless present or the field already holds `cap` postings. Returns entries added.
_ADD_POSTINGS = """
local fields, postings, cap = ARGV[1], ARGV[2], tonumber(ARGV[3])
local added = 0
for i, key in ipairs(KEYS) do
  local field = string.sub(fields, (i - 1) * 5 + 1, i * 5)
  local posting = string.sub(postings, (i - 1) * 8 + 1, i * 8)
  local current = redis.call('HGET', key, field)
  if not current then
    redis.call('HSET', key, field, posting)
    added = added + 1
  elseif #current < cap * 8 then
    local seen = false
    for j = 1, #current, 8 do
      if string.sub(current, j, j + 7) == posting then seen = true break end
    end
    if not seen then
      redis.call('HSET', key, field, current .. posting)
      added = added + 1
    end
  end
end
return added
"""

# KEYS: bucket key per entry. ARGV: fields blob, 4-byte document number. Drops that document's
# postings; removes fields left empty. Returns entries removed.
_REMOVE_POSTINGS = """
local fields, number = ARGV[1], ARGV[2]
local removed = 0
for i, key in ipairs(KEYS) do
  local field = string.sub(fields, (i - 1) * 5 + 1, i * 5)
  local current = redis.call('HGET', key, field)
  if current then
    local kept = {}
    for j = 1, #current, 8 do
      local posting = string.sub(current, j, j + 7)
      if string.sub(posting, 1, 4) == number then removed = removed + 1 else kept[#kept + 1] = posting end
    end
    if #kept == 0 then redis.call('HDEL', key, field) else redis.call('HSET', key, field, table.concat(kept)) end
  end
end
return removed
"""

# ARGV: key prefix, buckets (4 bytes each), fields blob. One reply per lookup (nil when
# absent). Key names are built here rather than sent: a check looks up hundreds of them.
_LOOKUP = """
local prefix, buckets, fields = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 1, #buckets / 4 do
  local bucket = struct.unpack('>I4', buckets, (i - 1) * 4 + 1)
  local key = prefix .. '{s' .. (bucket % %(shards)d) .. '}:b' .. bucket
  out[i] = redis.call('HGET', key, string.sub(fields, (i - 1) * 5 + 1, i * 5)) or false
end
return out
""".replace("%(shards)d", str(SHARDS))

# KEYS: docs, live, pending, stats. ARGV: id, number, chars, entries. Makes `number` the live
# version of `id`; the version it replaces is queued in pending for purging. Returns it or nil.
_COMMIT = """
local docs, live, pending, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, number = ARGV[1], ARGV[2]
local old = redis.call('HGET', docs, id)
redis.call('HSET', docs, id, number)
redis.call('HSET', live, number, id)
redis.call('HDEL', pending, number)
redis.call('HINCRBY', stats, 'characters', ARGV[3])
redis.call('HINCRBY', stats, 'entries', ARGV[4])
if old and old ~= number then
  redis.call('HDEL', live, old)
  redis.call('HSET', pending, old, cjson.encode({id = id, lease = 0, committed = true}))
  return old
end
return false
"""

# KEYS: docs, live, pending. ARGV: id. Takes `id` out of service at once; returns its number.
_WITHDRAW = """
local number = redis.call('HGET', KEYS[1], ARGV[1])
if not number then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], number)
redis.call('HSET', KEYS[3], number, cjson.encode({id = ARGV[1], lease = 0, committed = true}))
return number
"""


@dataclass(frozen=True, slots=True)
class Posting:
    """One lookup hit: the checked text's run `run` met document `number` at `offset`."""

    run: int
    number: int
    offset: int


@dataclass(frozen=True, slots=True)
class StagedDocument:
    """A document prepared for writing: its number, metadata, text and band runs."""

    doc_id: str
    number: int
    meta: dict[str, Any]
    text: str
    band_keys: np.ndarray
    offsets: np.ndarray  # original character offset of each run's anchor


@dataclass(frozen=True, slots=True)
class DocumentRegion:
    """A stretch of a stored document's original text, with the document's metadata."""

    number: int
    meta: dict[str, Any]
    start: int  # original offset of text[0] in the document
    text: str

    def cut(self, start: int, end: int) -> DocumentRegion:
        """The part of this region between original offsets `start` and `end` (clipped)."""
        begin = min(max(start - self.start, 0), len(self.text))
        stop = min(max(end - self.start, begin), len(self.text))
        return DocumentRegion(self.number, self.meta, self.start + begin, self.text[begin:stop])


class Layout:
    """Key names and the packing of band keys; shared by the reading and the writing side."""

    def __init__(self, index: str, params: SketchParams, bucket_bits: int,
                 extra: dict[str, Any] | None = None) -> None:
        self.base = f"textguard:v{FORMAT_VERSION}:{index}"
        control = "{" + self.base + "}"
        self.meta = f"{control}:meta"
        self.docs = f"{control}:docs"
        self.live = f"{control}:live"
        self.pending = f"{control}:pending"
        self.stats = f"{control}:stats"
        self.seq = f"{control}:seq"
        self.params = params
        self.bucket_bits = bucket_bits
        self._extra = extra or {}
        self._bucket_mask = np.uint64((1 << bucket_bits) - 1)
        self._bucket_prefix = f"{self.base}:" + "{s%d}" + ":b%d"

    def record(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "bucket_bits": self.bucket_bits, **self.params.as_record(), **self._extra}

    def document(self, number: int) -> str:
        return f"{self.base}:d:{number}"

    def packed(self, band_keys: np.ndarray) -> tuple[np.ndarray, bytes]:
        """Bucket numbers and the packed 5-byte fields for `band_keys`."""
        keys = band_keys.astype(np.uint64)
        fields = (keys >> np.uint64(self.bucket_bits)).astype(">u8").tobytes()
        # keep the low FIELD_BYTES bytes of each big-endian 8-byte value
        packed = np.frombuffer(fields, dtype=np.uint8).reshape(-1, 8)[:, 8 - FIELD_BYTES:].tobytes()
        return (keys & self._bucket_mask).astype(np.uint32), packed

    def entries(self, band_keys: np.ndarray) -> tuple[list[str], bytes]:
        """Bucket key names and the packed 5-byte fields for `band_keys`."""
        buckets, packed = self.packed(band_keys)
        return [self._bucket_prefix % (b % SHARDS, b) for b in buckets.tolist()], packed

    def check(self, stored: str | bytes | None) -> None:
        """Refuse an index built with other parameters (their hashes would never match)."""
        if stored is None:
            return
        found = json.loads(stored)
        expected = self.record()
        differing = sorted(k for k in expected.keys() | found.keys() if found.get(k) != expected.get(k))
        if differing:
            detail = ", ".join(f"{k}: index has {found.get(k)!r}, settings say {expected.get(k)!r}"
                               for k in differing)
            raise IndexMismatchError(
                f"index {self.base!r} was built with other parameters ({detail}); "
                "use the settings it was built with, another --index name, or rebuild it")


def pack_text(text: str) -> list[bytes]:
    return [zlib.compress(text[i:i + CHUNK_CHARS].encode(TEXT_ENCODING), 6)
            for i in range(0, len(text), CHUNK_CHARS)] or [zlib.compress(b"")]


def _unpack_chunk(blob: bytes) -> str:
    return zlib.decompress(blob).decode(TEXT_ENCODING)


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class IndexReader:
    """The request path: at most two pipelined round trips per check, no writes."""

    def __init__(self, client: aredis.Redis, layout: Layout) -> None:
        self._client = client
        self._layout = layout
        self._lookup = client.register_script(_LOOKUP)
        self._checked = False

    async def ensure_compatible(self) -> None:
        if not self._checked:
            self._layout.check(await self._client.get(self._layout.meta))
            self._checked = True

    async def lookup(self, band_keys: np.ndarray) -> list[Posting]:
        """Postings of every band key (one script call: one round trip)."""
        if len(band_keys) == 0:
            return []
        buckets, fields = self._layout.packed(band_keys)
        replies = await self._lookup(keys=[], args=[self._layout.base + ":", buckets.astype(">u4").tobytes(), fields])
        hits: list[Posting] = []
        for run, reply in enumerate(replies):
            if reply:
                for number, offset in POSTING.iter_unpack(reply):
                    hits.append(Posting(run, number, offset))
        return hits

    async def regions(self, wanted: dict[int, list[tuple[int, int]]]) -> list[DocumentRegion]:
        """Text around the wanted original offsets of live documents (one round trip)."""
        numbers = sorted(wanted)
        pipe = self._client.pipeline(transaction=False)
        pipe.hmget(self._layout.live, [str(n) for n in numbers])
        chunk_lists: list[list[int]] = []
        for number in numbers:
            chunks = chunk_numbers(wanted[number])
            chunk_lists.append(chunks)
            pipe.hmget(self._layout.document(number), ["meta", *(f"t{c}" for c in chunks)])
        live, *documents = await pipe.execute()
        regions: list[DocumentRegion] = []
        for number, is_live, chunks, values in zip(numbers, live, chunk_lists, documents, strict=True):
            if is_live is None or values[0] is None:
                continue  # not committed, or withdrawn since the lookup
            meta = json.loads(values[0])
            # consecutive chunks form one region; a gap starts another
            current: list[str] = []
            region_start = previous = -2
            for chunk, blob in zip(chunks, values[1:], strict=True):
                if blob is None:
                    continue
                if chunk != previous + 1 and current:
                    regions.append(DocumentRegion(number, meta, region_start * CHUNK_CHARS, "".join(current)))
                    current = []
                if not current:
                    region_start = chunk
                current.append(_unpack_chunk(blob))
                previous = chunk
            if current:
                regions.append(DocumentRegion(number, meta, region_start * CHUNK_CHARS, "".join(current)))
        return regions

    async def passages(self, spans: Sequence[tuple[str, int, int]]) -> list[DocumentRegion | None]:
        """Stored text of each (document id, start, end), original offsets clipped to the
        document; None where the document is not (or no longer) indexed. Two round trips in all."""
        if not spans:
            return []
        ids = sorted({doc_id for doc_id, _, _ in spans})
        numbers = {doc_id: int(n) for doc_id, n in zip(ids, await self._client.hmget(self._layout.docs, ids),
                                                           strict=True) if n is not None}
        wanted: dict[int, list[tuple[int, int]]] = {}
        for doc_id, start, end in spans:
            if doc_id in numbers:
                wanted.setdefault(numbers[doc_id], []).append((start, end))
        by_number: dict[int, list[DocumentRegion]] = {}
        for region in await self.regions(wanted) if wanted else []:
            by_number.setdefault(region.number, []).append(region)
        found: list[DocumentRegion | None] = []
        for doc_id, start, end in spans:
            regions = by_number.get(numbers.get(doc_id, -1), [])
            found.append(next((r.cut(start, end) for r in regions
                               if r.start <= max(start, 0) < r.start + max(len(r.text), 1)), None))
        return found


def chunk_numbers(ranges: Iterable[tuple[int, int]]) -> list[int]:
    """The text chunks holding the original offsets [start, end) of each range, in order."""
    return sorted({c for start, end in ranges
                   for c in range(max(start, 0) // CHUNK_CHARS, max(end - 1, 0) // CHUNK_CHARS + 1)})


def cut_regions(fetched: Sequence[DocumentRegion], wanted: dict[int, list[tuple[int, int]]]) -> list[DocumentRegion]:
    """The regions `IndexReader.regions(wanted)` returns, cut out of regions fetched for a
    superset of `wanted` (so that many readers' fetches can share one round trip)."""
    by_number: dict[int, list[DocumentRegion]] = {}
    for region in fetched:
        by_number.setdefault(region.number, []).append(region)
    regions: list[DocumentRegion] = []
    for number in sorted(wanted):
        chunks = chunk_numbers(wanted[number])
        for region in by_number.get(number, []):
            first = region.start // CHUNK_CHARS
            inside = [c for c in chunks if first <= c < first + -(-len(region.text) // CHUNK_CHARS)]
            run: list[int] = []
            for chunk in [*inside, None]:
                if run and (chunk is None or chunk != run[-1] + 1):
                    regions.append(region.cut(run[0] * CHUNK_CHARS, (run[-1] + 1) * CHUNK_CHARS))
                    run = []
                if chunk is not None:
                    run.append(chunk)
    return regions


class IndexWriter:
    """Corpus maintenance: atomic per document, safe with several writer processes."""

    def __init__(self, client: redis.Redis, layout: Layout, lease_seconds: float = 120.0) -> None:
        self._client = client
        self._layout = layout
        self.lease_seconds = lease_seconds
        self._add = client.register_script(_ADD_POSTINGS)
        self._remove = client.register_script(_REMOVE_POSTINGS)
        self._commit = client.register_script(_COMMIT)
        self._withdraw = client.register_script(_WITHDRAW)

    def ensure_meta(self) -> None:
        """Create the index record, or refuse an index built with other parameters."""
        record = json.dumps(self._layout.record(), sort_keys=True)
        try:
            self._client.set(self._layout.meta, record, nx=True)
            self._layout.check(self._client.get(self._layout.meta))
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"Redis error: {exc}") from exc

    def stored_digests(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """Content digest of the live version of each of `doc_ids` that is indexed."""
        numbers = self._client.hmget(self._layout.docs, list(doc_ids)) if doc_ids else []
        present = [(doc_id, int(n)) for doc_id, n in zip(doc_ids, numbers, strict=True) if n is not None]
        metas = self.metas([n for _, n in present])
        return {doc_id: meta["sha256"] for (doc_id, _), meta in zip(present, metas, strict=True) if meta}

    def begin(self, doc_ids: Sequence[str]) -> list[int]:
        """Reserve numbers for new versions of `doc_ids`, leased to this writer."""
        last = int(self._client.incrby(self._layout.seq, len(doc_ids)))
        numbers = list(range(last - len(doc_ids) + 1, last + 1))
        lease = time.time() + self.lease_seconds
        self._client.hset(self._layout.pending, mapping={
            str(n): json.dumps({"id": doc_id, "lease": lease}) for n, doc_id in zip(numbers, doc_ids, strict=True)})
        return numbers

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
        postings = np.empty(len(band_keys), dtype=[("n", ">u4"), ("o", ">u4")])
        postings["n"] = np.repeat([d.number for d in documents], [len(d.band_keys) for d in documents])
        postings["o"] = np.concatenate([d.offsets for d in documents])
        names, fields = self._layout.entries(band_keys)
        for group in self._groups(names):
            self._add(keys=[names[i] for i in group],
                      args=[_take(fields, group, FIELD_BYTES), postings[group].tobytes(), max_postings])

    def commit(self, documents: Sequence[StagedDocument]) -> list[int | None]:
        """Make each document the live version of its id; returns the numbers they replaced."""
        pipe = self._client.pipeline(transaction=False)
        keys = [self._layout.docs, self._layout.live, self._layout.pending, self._layout.stats]
        for doc in documents:
            self._commit(keys=keys, args=[doc.doc_id, doc.number, len(doc.text), distinct(doc.band_keys)],
                         client=pipe)
        return [int(old) if old else None for old in pipe.execute()]

    def withdraw(self, doc_id: str) -> int | None:
        """Take `doc_id` out of service atomically; its data is purged by `purge`."""
        number = self._withdraw(keys=[self._layout.docs, self._layout.live, self._layout.pending], args=[doc_id])
        return int(number) if number else None

    def stored_text(self, number: int) -> tuple[dict[str, Any], str] | None:
        values: dict[bytes, bytes] = self._client.hgetall(self._layout.document(number))  # type: ignore[assignment]
        if not values:
            return None
        meta = json.loads(values.pop(b"meta"))
        chunks = sorted((int(k[1:]), v) for k, v in values.items())
        return meta, "".join(_unpack_chunk(v) for _, v in chunks)

    def purge(self, number: int, band_keys: np.ndarray | None, characters: int, committed: bool) -> None:
        """Delete every trace of document `number` (its band keys come from its stored text).

        Postings go first and the pending record last, so a purge cut short is resumed by the
        next writer's recovery.
        """
        if band_keys is not None and len(band_keys):
            names, fields = self._layout.entries(band_keys)
            tag = struct.pack(">I", number)
            for group in self._groups(names):
                self._remove(keys=[names[i] for i in group], args=[_take(fields, group, FIELD_BYTES), tag])
        self._client.delete(self._layout.document(number))
        pipe = self._client.pipeline(transaction=True)  # control keys share a slot
        if committed and band_keys is not None:
            pipe.hincrby(self._layout.stats, "entries", -distinct(band_keys))
            pipe.hincrby(self._layout.stats, "characters", -characters)
        pipe.hdel(self._layout.pending, str(number))
        pipe.execute()

    @staticmethod
    def _groups(names: list[str], limit: int = 8192) -> Iterable[list[int]]:
        """Indices of `names` cut into script-sized batches. (A single Redis runs a script over
        keys of any slot; on a cluster these would be grouped by shard tag.)"""
        for start in range(0, len(names), limit):
            yield list(range(start, min(start + limit, len(names))))

    def expired_pending(self) -> Iterator[tuple[int, bool]]:
        """Pending numbers whose writer is gone (lease over): (number, was it committed)."""
        now = time.time()
        for number, raw in self._client.hgetall(self._layout.pending).items():
            record = json.loads(raw)
            if record["lease"] <= now:
                yield int(number), bool(record.get("committed"))

    def pending_count(self) -> int:
        return int(self._client.hlen(self._layout.pending))

    def documents(self) -> Iterator[tuple[str, int]]:
        for doc_id, number in self._client.hscan_iter(self._layout.docs, count=1000):
            yield _decode(doc_id), int(number)

    def metas(self, numbers: Sequence[int]) -> list[dict[str, Any] | None]:
        pipe = self._client.pipeline(transaction=False)
        for number in numbers:
            pipe.hget(self._layout.document(number), "meta")
        return [json.loads(m) if m else None for m in pipe.execute()]

    def counters(self) -> dict[str, int]:
        raw = self._client.hgetall(self._layout.stats)
        counters = {_decode(k): int(v) for k, v in raw.items()}
        counters["documents"] = int(self._client.hlen(self._layout.docs))
        return counters

    def memory_bytes(self) -> int:
        """Bytes Redis spends on this index (MEMORY USAGE summed over its keys)."""
        total = 0
        for batch in _batches(self._client.scan_iter(match=self._layout.base + "*", count=2000), 500):
            pipe = self._client.pipeline(transaction=False)
            for key in batch:
                pipe.memory_usage(key, samples=0)
            total += sum(v or 0 for v in pipe.execute())
        for batch in _batches(self._client.scan_iter(match="[{]" + self._layout.base + "}*", count=2000), 500):
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


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
