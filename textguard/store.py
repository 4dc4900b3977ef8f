"""Stage 4: the index in Redis, in a layout of our own.

Keys, all under `textguard:v1:<index>` (the format version is part of the name):

    {…}:meta          JSON of the sketch parameters; an index refuses other parameters
    {…}:docs          hash  document id -> internal number (committed documents)
    {…}:live          hash  internal number -> document id (what lookups may return)
    {…}:pending       hash  internal number -> JSON (writes in flight, or to be purged)
    {…}:versions      hash  document id -> JSON (its newest version: number, digest, writer, committed)
    {…}:stats, :seq   counters (stats' `generation` counts commits: see membership.py)
    {…}:nonce         random, set when the index is created: a rebuilt index reuses numbers
    …:{sN}:b<B>       hash  band key (5 bytes) -> postings (8 bytes each: number, offset)
    …:{sN}:f          bits  the shard's part of the filter of band keys held (membership.py)
    …:d:<number>      hash  "meta" -> JSON, "t<i>" -> zlib(GB18030) of 4,096-character chunks

The control keys share one hash tag, so that commit and removal are single atomic scripts even
on Redis Cluster. Band buckets carry one of SHARDS shard tags: on a cluster, every script call
names all its keys and they share one tag (one slot), so a lookup is one script call per shard,
sent as one pipeline per node. Band entries are packed into 2**bucket_bits small hashes, which
Redis stores as compact listpacks (about 18 bytes an entry) only while each holds fewer entries
than the server's small-hash limit; a new index sizes bucket_bits from the corpus it is created
for and that limit (`choose_bucket_bits`). Nothing is pickled: postings are fixed-width integers.

A document becomes visible only when its commit script puts it in `live`; until then its text
and postings are invisible. A writer leases the numbers it writes under; one that dies leaves
`pending` records whose lease runs out, and a later writer claims each (atomically, so one
purges it) and deletes what it wrote. A writer whose lease was claimed cannot commit. Writers
that overlap never write the same version of a document twice (`versions`, checked as a number
is leased): besides the work, the second copy's postings would take places under the posting cap
that the first one's purge then frees, losing entries of other documents.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import struct
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
from redis.commands.core import AsyncScript, Script
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from textguard._redis import REDIS_ERRORS, AsyncClient, SyncClient
from textguard.errors import IndexMismatchError, StoreUnavailableError
from textguard.membership import MembershipFilter, choose_filter_bits, filter_positions
from textguard.normalise import Normalised, normalise
from textguard.sketch import SketchParams

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHUNK_CHARS = 4096
CACHED_CHUNKS = 1024
"""Decoded text chunks a reader keeps (24 KB or so each, with their normal form). A few
documents are the chance candidates of many clean answers, since they share common phrases:
over 1,000 real chat answers, 97% of the chunks checks fetched had been fetched before."""
FIELD_BYTES = 5
POSTING_DTYPE = np.dtype([("n", ">u4"), ("o", ">u4")])  # internal document number, original character offset
SHARDS = 64
TEXT_ENCODING = "gb18030"  # a complete Unicode encoding, two bytes for common Chinese
MIN_BUCKET_BITS, MAX_BUCKET_BITS = 16, 24
ENTRIES_PER_CHAR = 0.3  # band entries per corpus character, a little above the measured 0.26
TARGET_FILL = 64  # band entries per bucket a new index is sized for
FALLBACK_SMALL_HASH_LIMIT = 128  # assumed when the server will not say (CONFIG disabled)
FILTER_REFRESH_SECONDS = 1.0

# KEYS: bucket key per entry, then the shard's filter key if ARGV[4] is given. ARGV: fields
# blob, postings blob, cap, filter bit positions (4 bytes each). Sets the bits; appends each
# posting to its field unless present or the field already holds `cap` postings. Returns
# entries added.
_ADD_POSTINGS = """
local fields, postings, cap, bits = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local entries = #KEYS
if bits then
  entries = entries - 1
  for j = 1, #bits, 4 do redis.call('SETBIT', KEYS[#KEYS], struct.unpack('>I4', bits, j), 1) end
end
local added = 0
for i = 1, entries do
  local key = KEYS[i]
  local field = string.sub(fields, (i - 1) * 5 + 1, i * 5)
  local posting = string.sub(postings, (i - 1) * 8 + 1, i * 8)
  if redis.call('HSETNX', key, field, posting) == 1 then
    added = added + 1
  else
    local current = redis.call('HGET', key, field)
    if #current < cap * 8 then
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

# KEYS: bucket key per lookup (a cluster), or none. ARGV: key prefix, buckets (4 bytes each),
# fields blob, and on one Redis the nonce and stats keys. One reply per lookup (nil when
# absent), then on one Redis the index's nonce and generation. There the key names are built
# here rather than sent (a check looks up hundreds); a cluster needs them named, so that the
# call is routed to their slot and refused (not answered wrongly) while that slot migrates, and
# its nonce lives on another node.
_LOOKUP = """
local prefix, buckets, fields = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 1, #buckets / 4 do
  local key = KEYS[i]
  if not key then
    local bucket = struct.unpack('>I4', buckets, (i - 1) * 4 + 1)
    key = prefix .. '{s' .. (bucket % %(shards)d) .. '}:b' .. bucket
  end
  out[i] = redis.call('HGET', key, string.sub(fields, (i - 1) * 5 + 1, i * 5)) or false
end
if ARGV[4] then
  out[#out + 1] = redis.call('GET', ARGV[4]) or false
  out[#out + 1] = redis.call('HGET', ARGV[5], 'generation') or false
end
return out
""".replace("%(shards)d", str(SHARDS))

# KEYS: docs, live, pending, stats, versions. ARGV: id, number, chars, entries, writer. Makes `number` the
# live version of `id`; the version it replaces is queued in pending for purging. Returns it or
# nil; -1 if this writer no longer holds the lease on `number` (another writer is purging it).
_COMMIT = """
local docs, live, pending, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, number = ARGV[1], ARGV[2]
local lease = redis.call('HGET', pending, number)
if not lease then return -1 end
local record = cjson.decode(lease)
if record.writer ~= ARGV[5] or record.purging then return -1 end
local version = redis.call('HGET', KEYS[5], id)
if version then
  local newest = cjson.decode(version)
  if newest.number == number then
    newest.committed = true
    redis.call('HSET', KEYS[5], id, cjson.encode(newest))
  end
end
local old = redis.call('HGET', docs, id)
redis.call('HSET', docs, id, number)
redis.call('HSET', live, number, id)
redis.call('HDEL', pending, number)
redis.call('HINCRBY', stats, 'characters', ARGV[3])
redis.call('HINCRBY', stats, 'entries', ARGV[4])
redis.call('HINCRBY', stats, 'generation', 1)
if old and old ~= number then
  redis.call('HDEL', live, old)
  redis.call('HSET', pending, old, cjson.encode({id = id, lease = 0, committed = true}))
  return old
end
return false
"""

# KEYS: docs, live, pending, versions. ARGV: id. Takes `id` out of service at once; returns its number.
_WITHDRAW = """
local number = redis.call('HGET', KEYS[1], ARGV[1])
if not number then return false end
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], number)
redis.call('HSET', KEYS[3], number, cjson.encode({id = ARGV[1], lease = 0, committed = true}))
return number
"""

# KEYS: pending, versions. ARGV: number, now, new lease, writer. Takes over a pending record whose
# lease is over, so that exactly one writer purges it (and its first writer can no longer commit).
_CLAIM = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
local record = cjson.decode(raw)
if tonumber(record.lease) > tonumber(ARGV[2]) then return false end
record.lease = tonumber(ARGV[3])
record.writer = ARGV[4]
record.purging = true
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
local version = redis.call('HGET', KEYS[2], record.id)
if version and cjson.decode(version).number == ARGV[1] then redis.call('HDEL', KEYS[2], record.id) end
return raw
"""

# KEYS: pending, versions. ARGV: now, lease, writer, then (id, number, digest) per document. Leases
# `number` to this writer for a new version of `id` (1), unless that version (same digest) is
# already committed (2) or another writer holds a live lease on it (0: it is left to that one).
_BEGIN = """
local pending, versions = KEYS[1], KEYS[2]
local now, lease, writer = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local out = {}
for i = 4, #ARGV, 3 do
  local id, number, digest = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local current = redis.call('HGET', versions, id)
  local state = 1
  if current then
    local newest = cjson.decode(current)
    if newest.digest == digest then
      if newest.committed then state = 2
      elseif newest.writer ~= writer and tonumber(newest.lease) > now then state = 0 end
    end
  end
  if state == 1 then
    redis.call('HSET', versions, id, cjson.encode({number = number, digest = digest, lease = lease, writer = writer}))
    redis.call('HSET', pending, number, cjson.encode({id = id, lease = lease, writer = writer}))
  end
  out[#out + 1] = state
end
return out
"""


@dataclass(frozen=True, slots=True)
class Postings:
    """Lookup hits as parallel arrays: the looked-up key `runs[i]` met document `numbers[i]` at
    original offset `offsets[i]`, in key order. (Arrays, not objects: a check gets hundreds.)"""

    runs: np.ndarray  # int64 index into the looked-up keys
    numbers: np.ndarray  # int64
    offsets: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.runs)

    @classmethod
    def empty(cls) -> Postings:
        nothing = np.zeros(0, dtype=np.int64)
        return cls(nothing, nothing, nothing)

    @classmethod
    def concatenate(cls, parts: Sequence[Postings]) -> Postings:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("runs", "numbers", "offsets")))

    @classmethod
    def unpack(cls, runs: Iterable[int], replies: Iterable[bytes | None]) -> Postings:
        """From the lookup script's replies (packed postings, or nil), one per key run."""
        found = [(run, reply) for run, reply in zip(runs, replies, strict=True) if reply]
        if not found:
            return cls.empty()
        packed = np.frombuffer(b"".join(reply for _, reply in found), dtype=POSTING_DTYPE)
        counts = [len(reply) // POSTING_DTYPE.itemsize for _, reply in found]
        return cls(np.repeat(np.array([run for run, _ in found], dtype=np.int64), counts),
                   packed["n"].astype(np.int64), packed["o"].astype(np.int64))


def ragged(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Indices of the ranges [starts[i], starts[i] + counts[i]), concatenated."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.repeat(starts - (ends - counts), counts) + np.arange(total)


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
    """A stretch of a stored document's original text, with its normal form (offsets into
    `text`) and the document's metadata."""

    number: int
    meta: dict[str, Any]
    start: int  # original offset of text[0] in the document
    text: str
    normal: Normalised

    def cut(self, start: int, end: int) -> DocumentRegion:
        """The part of this region between original offsets `start` and `end` (clipped)."""
        begin = min(max(start - self.start, 0), len(self.text))
        stop = min(max(end - self.start, begin), len(self.text))
        low, high = np.searchsorted(self.normal.offsets, (begin, stop)).tolist()
        normal = Normalised(self.normal.text[low:high], self.normal.offsets[low:high] - begin)
        return DocumentRegion(self.number, self.meta, self.start + begin, self.text[begin:stop], normal)


@dataclass(frozen=True, slots=True)
class _Chunk:
    """One stored text chunk, decoded and normalised, with the metadata of its document's version.

    Checks verify against the normal form, so it is kept too: a check's candidates are mostly
    chunks it met before, and normalising them again was a tenth of a scan's time. (A region's
    normal form is its chunks' joined, which differs from normalising the region whole only
    where an OpenCC phrase rule would straddle a chunk's edge.)
    """

    meta: dict[str, Any]  # shared by the chunks of one version
    text: str
    normal_text: str
    normal_offsets: np.ndarray  # uint16 into `text`

    @property
    def digest(self) -> str:
        return str(self.meta.get("sha256", ""))

    @classmethod
    def decode(cls, meta: dict[str, Any], blob: bytes) -> _Chunk:
        text = _unpack_chunk(blob)
        normal = normalise(text)
        return cls(meta, text, normal.text, normal.offsets.astype(np.uint16))


def _assembled(number: int, found: dict[int, _Chunk], meta: dict[str, Any] | None = None) -> list[DocumentRegion]:
    """Regions of document `number` from its chunks at hand, one per run of consecutive ones;
    `meta` read just now, or the chunks' own."""
    return [DocumentRegion(number, meta or found[run[0]].meta, run[0] * CHUNK_CHARS, *_joined([found[c] for c in run]))
            for run in _consecutive(sorted(found))]


def _joined(chunks: Sequence[_Chunk]) -> tuple[str, Normalised]:
    """The text of consecutive chunks, and its normal form."""
    offsets = [chunk.normal_offsets.astype(np.int64) + i * CHUNK_CHARS for i, chunk in enumerate(chunks)]
    return "".join(c.text for c in chunks), Normalised("".join(c.normal_text for c in chunks), np.concatenate(offsets))


class ChunkCache:
    """Decoded text chunks of stored documents; the least recently used go first.

    A chunk never changes under its document number (a new version gets a new number), but an
    index built anew hands the numbers out again. So the cache holds chunks of one index
    `nonce` (each lookup reads it; another one empties the cache), and a fetch still compares
    the digest read with the metadata.
    """

    def __init__(self, capacity: int = CACHED_CHUNKS) -> None:
        self.capacity = capacity
        self._chunks: OrderedDict[tuple[int, int], _Chunk] = OrderedDict()
        self.nonce: bytes | None = None  # of the index the chunks came from; None: not known

    def observe_nonce(self, nonce: bytes | None) -> None:
        """The nonce a lookup just read: chunks of another index go."""
        if nonce != self.nonce:
            self._chunks.clear()
            self.nonce = nonce

    def get(self, number: int, chunk: int) -> _Chunk | None:
        found = self._chunks.get((number, chunk))
        if found is not None:
            self._chunks.move_to_end((number, chunk))
        return found

    def put(self, number: int, chunk: int, value: _Chunk) -> None:
        self._chunks[number, chunk] = value
        self._chunks.move_to_end((number, chunk))
        while len(self._chunks) > self.capacity:
            self._chunks.popitem(last=False)


def _consecutive(chunks: Iterable[int]) -> list[list[int]]:
    """Sorted chunk numbers grouped into runs of consecutive ones."""
    runs: list[list[int]] = []
    for chunk in chunks:
        if runs and chunk == runs[-1][-1] + 1:
            runs[-1].append(chunk)
        else:
            runs.append([chunk])
    return runs


class FilterSlot:
    """The key filter the readers of one guard share (as they share a ChunkCache): the snapshot
    lookups go through (None until read, or while out of date), and the background read of a
    fresh one."""

    def __init__(self) -> None:
        self.current: MembershipFilter | None = None
        self.refreshing: asyncio.Task[None] | None = None
        self.next_refresh = 0.0  # event loop time before which no read starts


class Layout:
    """Key names and the packing of band keys; shared by the reading and the writing side.

    `bucket_bits` None means "whatever the index records" (or, for a new index, what its first
    writer chooses); `adopt` fills it in from the stored record.
    """

    def __init__(self, index: str, params: SketchParams, bucket_bits: int | None,
                 extra: dict[str, Any] | None = None) -> None:
        self.base = f"textguard:v{FORMAT_VERSION}:{index}"
        control = "{" + self.base + "}"
        self.meta = f"{control}:meta"
        self.docs = f"{control}:docs"
        self.live = f"{control}:live"
        self.pending = f"{control}:pending"
        self.versions = f"{control}:versions"
        self.stats = f"{control}:stats"
        self.seq = f"{control}:seq"
        self.nonce = f"{control}:nonce"
        self.params = params
        self._requested_bits = bucket_bits
        self.bucket_bits = bucket_bits
        self.filter_bits: int | None = None  # chosen with a new index; None for one from before filters
        self._extra = extra or {}
        self._bucket_prefix = f"{self.base}:" + "{s%d}" + ":b%d"

    def record(self) -> dict[str, Any]:
        filter_bits = {} if self.filter_bits is None else {"filter_bits": self.filter_bits}
        return {"format": FORMAT_VERSION, "bucket_bits": self.bucket_bits, **filter_bits,
                **self.params.as_record(), **self._extra}

    def document(self, number: int) -> str:
        return f"{self.base}:d:{number}"

    def packed(self, band_keys: np.ndarray) -> tuple[np.ndarray, bytes]:
        """Bucket numbers and the packed 5-byte fields for `band_keys`."""
        if self.bucket_bits is None:
            raise RuntimeError("the index's bucket_bits are not known yet (adopt its record first)")
        keys = band_keys.astype(np.uint64)
        fields = (keys >> np.uint64(self.bucket_bits)).astype(">u8").tobytes()
        # keep the low FIELD_BYTES bytes of each big-endian 8-byte value
        packed = np.frombuffer(fields, dtype=np.uint8).reshape(-1, 8)[:, 8 - FIELD_BYTES:].tobytes()
        return (keys & np.uint64((1 << self.bucket_bits) - 1)).astype(np.uint32), packed

    def names(self, buckets: Iterable[int]) -> list[str]:
        return [self._bucket_prefix % (b % SHARDS, b) for b in buckets]

    def filter_keys(self) -> list[str]:
        return [f"{self.base}:{{s{shard}}}:f" for shard in range(SHARDS)]

    def filter_slots(self, band_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each band key's shard and its bits in that shard's filter (the index must have one)."""
        if self.bucket_bits is None or self.filter_bits is None:
            raise RuntimeError("the index's bucket_bits and filter_bits are not known yet")
        stored_bits = self.bucket_bits + 8 * FIELD_BYTES  # what bucket and field keep of a key
        keys = band_keys.astype(np.uint64)
        if stored_bits < 64:
            keys = keys & np.uint64((1 << stored_bits) - 1)
        return (keys % np.uint64(SHARDS)).astype(np.intp), filter_positions(keys, self.filter_bits)

    def entries(self, band_keys: np.ndarray) -> tuple[np.ndarray, list[str], bytes]:
        """Bucket numbers, bucket key names and the packed 5-byte fields for `band_keys`."""
        buckets, packed = self.packed(band_keys)
        return buckets, self.names(buckets.tolist()), packed

    def adopt(self, stored: str | bytes) -> None:
        """Take bucket_bits from the stored record unless set explicitly; then `check` it."""
        record = json.loads(stored)
        if self._requested_bits is None:
            self.bucket_bits = record.get("bucket_bits")
        self.filter_bits = record.get("filter_bits")
        self.check(stored)

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


def choose_bucket_bits(characters: int, small_hash_limit: int) -> int:
    """Bucket bits for an index expected to hold `characters`: buckets then average at most
    TARGET_FILL entries, and at most half the small-hash limit (room for chance and for the
    corpus to grow). Lookups scan a listpack, so fuller buckets cost Redis CPU per check and
    per write, while the ~100 bytes each key costs are already small beside 64 entries."""
    wanted = characters * ENTRIES_PER_CHAR / max(min(TARGET_FILL, small_hash_limit / 2), 1)
    bits = math.ceil(math.log2(wanted)) if wanted > 1 else 0
    return min(max(bits, MIN_BUCKET_BITS), MAX_BUCKET_BITS)


def small_hash_limit(client: SyncClient) -> int:
    """Entries a hash may hold and stay a compact listpack (Redis 7) or ziplist (Redis 6)."""
    try:
        for name in ("hash-max-listpack-entries", "hash-max-ziplist-entries"):
            value = client.config_get(name).get(name)
            if value is not None:
                return int(value)
    except REDIS_ERRORS as exc:  # CONFIG may be disabled on managed services
        logger.warning("cannot read the small-hash limit (%s); assuming %d", exc, FALLBACK_SMALL_HASH_LIMIT)
    return FALLBACK_SMALL_HASH_LIMIT


_SHARD_SLOTS = [key_slot(b"s%d" % shard) for shard in range(SHARDS)]  # the slot of hash tag {sN}


def by_shard(buckets: np.ndarray) -> list[np.ndarray]:
    """Indices of `buckets` grouped by shard tag (each group lives in one cluster slot)."""
    shards = buckets % SHARDS
    order = np.argsort(shards, kind="stable")
    cuts = np.flatnonzero(np.diff(shards[order])) + 1
    return np.split(order, cuts) if len(order) else []


def _command(*parts: bytes) -> bytes:
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


def _evalsha(pipe: Any, script: Script | AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> None:
    # cluster pipelines refuse `evalsha()` but route EVALSHA by its keys when queued directly
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


def pack_text(text: str) -> list[bytes]:
    return [zlib.compress(text[i:i + CHUNK_CHARS].encode(TEXT_ENCODING), 6)
            for i in range(0, len(text), CHUNK_CHARS)] or [zlib.compress(b"")]


def _unpack_chunk(blob: bytes) -> str:
    return zlib.decompress(blob).decode(TEXT_ENCODING)


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


check_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("textguard_check_deadline",
                                                                           default=None)
"""The event loop time by which the current check must be done (None: no budget)."""


def _ensure_time_left() -> None:
    """Do not start a round trip for a check already over its budget (CPU work or a wait for
    the processor used it up): cancelled in the middle of the round trip instead, redis-py
    would drop the connection, and under overload every such check would cost a new one."""
    deadline = check_deadline.get()
    if deadline is not None and asyncio.get_running_loop().time() >= deadline:
        raise TimeoutError("the check's time budget ran out before its next Redis round trip")


class IndexReader:
    """The request path, no writes: at most two pipelined round trips per check (on a cluster,
    per node: the pipelines to the nodes run at once)."""

    def __init__(self, client: AsyncClient, layout: Layout, chunks: ChunkCache | None = None,
                 key_filter: FilterSlot | None = None) -> None:
        self._client = client
        self._layout = layout
        self.chunks = chunks if chunks is not None else ChunkCache()
        self.key_filter = key_filter if key_filter is not None else FilterSlot()
        self._lookup = client.register_script(_LOOKUP)
        self._nodes = NodePipelines(client) if isinstance(client, acluster.RedisCluster) else None
        self._sha = self._lookup.sha.encode()
        self._checked = False

    async def ensure_compatible(self) -> bool:
        """Check the index's parameters once; False while there is no index yet (nothing to find).

        Until the index exists it is looked for again at every check, so that a guard started
        before its corpus learns the parameters the first writer records.
        """
        if not self._checked:
            stored = await self._client.get(self._layout.meta)
            if stored is None:
                return False
            self._layout.adopt(stored)
            self._checked = True
        return True

    @property
    def key_filter_held(self) -> MembershipFilter | None:
        """The filter snapshot lookups go through now (None: they go unfiltered)."""
        return self.key_filter.current

    async def lookup(self, band_keys: np.ndarray, *, trusted: MembershipFilter | None = None) -> Postings:
        """Postings of every band key: one script call on one Redis (for the keys its filter
        lets through); on a cluster, one per shard tag touched, pipelined per node.

        `trusted`: a filter snapshot an earlier lookup of the caller's found current. While it
        is still the one held, a lookup it lets no key through asks Redis nothing: the caller
        accepts the corpus as of that earlier lookup (a stream, as of its start).
        """
        if len(band_keys) == 0 or not await self.ensure_compatible():
            return Postings.empty()
        if self._nodes is None:
            return await self._lookup_filtered(band_keys, trusted)
        _ensure_time_left()
        buckets, fields = self._layout.packed(band_keys)
        groups = by_shard(buckets)
        field_rows = np.frombuffer(fields, dtype=np.uint8).reshape(-1, FIELD_BYTES)
        calls = []
        for group in groups:
            names = self._layout.names(buckets[group].tolist())
            calls.append((_SHARD_SLOTS[int(buckets[group[0]]) % SHARDS], _command(
                b"EVALSHA", self._sha, b"%d" % len(names), *(n.encode() for n in names),
                (self._layout.base + ":").encode(), buckets[group].astype(">u4").tobytes(),
                field_rows[group].tobytes())))
        replies = [reply for group in await self._nodes.run(calls, self._lookup) for reply in group]
        return Postings.unpack(np.concatenate(groups).tolist(), replies)

    async def _lookup_filtered(self, band_keys: np.ndarray, trusted: MembershipFilter | None) -> Postings:
        """`lookup` on one Redis, asking only for the keys the filter says may be there. Should
        the reply show the filter out of date (the corpus changed since it was read), the other
        keys are looked up too, in a second round trip, and a fresh filter is read in the
        background: a guard never misses a document for a filter it holds."""
        membership = self.key_filter.current
        asked = np.arange(len(band_keys))
        if membership is not None:
            asked = np.flatnonzero(membership.may_contain(*self._layout.filter_slots(band_keys)))
            if len(asked) == 0 and membership is trusted:
                return Postings.empty()
        replies, nonce, generation = await self._lookup_once(band_keys[asked])
        runs = asked.tolist()
        if membership is None or (membership.nonce, membership.generation) != (nonce, generation):
            if membership is not None:
                self.key_filter.current = None
                skipped = np.setdiff1d(np.arange(len(band_keys)), asked, assume_unique=True)
                more, _, _ = await self._lookup_once(band_keys[skipped])
                runs += skipped.tolist()
                replies += more
            self._schedule_refresh()
        return Postings.unpack(runs, replies)

    async def _lookup_once(self, band_keys: np.ndarray) -> tuple[list[bytes | None], bytes | None, int]:
        """The lookup script's replies for `band_keys`, and the index's nonce and generation."""
        _ensure_time_left()
        buckets, fields = self._layout.packed(band_keys)
        *replies, nonce, generation = await self._lookup(keys=[], args=[
            self._layout.base + ":", buckets.astype(">u4").tobytes(), fields, self._layout.nonce, self._layout.stats])
        self.chunks.observe_nonce(nonce)
        return replies, nonce, int(generation or 0)

    def _schedule_refresh(self) -> None:
        """Read the filter again in the background, at most once a second (while a corpus is
        being loaded the generation changes at every commit, and lookups go unfiltered)."""
        loop, slot = asyncio.get_running_loop(), self.key_filter
        if self._layout.filter_bits is None or (slot.refreshing is not None and not slot.refreshing.done()) \
                or loop.time() < slot.next_refresh:
            return
        slot.next_refresh = loop.time() + FILTER_REFRESH_SECONDS
        # (a context of its own: not bound by the budget of the check that started it)
        slot.refreshing = loop.create_task(self._refresh_quietly(), context=contextvars.Context())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh_filter()
        except REDIS_ERRORS as exc:
            logger.warning("cannot read the index's key filter (%s); lookups go unfiltered until it is read", exc)

    async def refresh_filter(self) -> None:
        """Read the index's filter of band keys (about 8 MB for 13 M characters), as one snapshot
        with the nonce and generation it is valid for. (Not on a cluster: its lookups go unfiltered.)"""
        if self._nodes is not None:
            return
        pipe = self._client.pipeline(transaction=True)
        pipe.get(self._layout.meta)
        pipe.get(self._layout.nonce)
        pipe.hget(self._layout.stats, "generation")
        pipe.mget(self._layout.filter_keys())
        meta, nonce, generation, strings = await pipe.execute()
        filter_bits = json.loads(meta).get("filter_bits") if meta else None
        if filter_bits is None or filter_bits != self._layout.filter_bits:
            self.key_filter.current = None  # no filter, or one of an index built anew since start-up
            return
        self.key_filter.current = MembershipFilter.from_strings(nonce, int(generation or 0), filter_bits, strings)

    async def aclose(self) -> None:
        refreshing = self.key_filter.refreshing
        if refreshing is not None:
            refreshing.cancel()
            await asyncio.gather(refreshing, return_exceptions=True)
        if self._nodes is not None:
            await self._nodes.aclose()

    def cached_regions(self, wanted: dict[int, list[tuple[int, int]]]) -> list[DocumentRegion] | None:
        """`regions(wanted)` from the chunks this reader holds, without a round trip; None unless
        it holds them all (and knows they are of the index its last lookup saw).

        They may have been withdrawn since: what is found in them must still be confirmed with
        `live_metas`. But most candidates are chance, nothing is found, and nothing need be asked.
        """
        if self.chunks.nonce is None:
            return None
        regions: list[DocumentRegion] = []
        for number in sorted(wanted):
            chunks = chunk_numbers(wanted[number])
            held = {c: chunk for c in chunks if (chunk := self.chunks.get(number, c)) is not None}
            chars = next(iter(held.values())).meta.get("chars") if held else None
            if chars is None or len(held) < sum(c * CHUNK_CHARS < int(chars) for c in chunks):
                return None  # a chunk of the document that is not held (those past its end are none)
            regions += _assembled(number, held)
        return regions

    async def regions(self, wanted: dict[int, list[tuple[int, int]]]) -> list[DocumentRegion]:
        """Text around the wanted original offsets of live documents: one round trip, which
        reads only the chunks this reader does not hold already."""
        numbers = sorted(wanted)
        chunk_lists = [chunk_numbers(wanted[number]) for number in numbers]
        regions, stale = await self._regions(numbers, chunk_lists, use_cache=True)
        if stale:  # the index was built anew under numbers this reader had cached: read them afresh
            again, _ = await self._regions(stale, [chunk_lists[numbers.index(n)] for n in stale], use_cache=False)
            regions = sorted([*regions, *again], key=lambda region: (region.number, region.start))
        return regions

    async def _regions(self, numbers: list[int], chunk_lists: list[list[int]],
                       use_cache: bool) -> tuple[list[DocumentRegion], list[int]]:
        """The regions, and the numbers whose cached chunks belong to another version of the
        document than the one stored now."""
        held = [{c: cached for c in chunks if (cached := self.chunks.get(number, c)) is not None} if use_cache else {}
                for number, chunks in zip(numbers, chunk_lists, strict=True)]
        missing = [[c for c in chunks if c not in have] for chunks, have in zip(chunk_lists, held, strict=True)]
        live, *documents = await self._read_documents(numbers, missing)
        regions: list[DocumentRegion] = []
        stale: list[int] = []
        for number, is_live, have, chunks, values in zip(numbers, live, held, missing, documents, strict=True):
            if is_live is None or values[0] is None:
                continue  # not committed, or withdrawn since the lookup
            meta = json.loads(values[0])
            digest = meta.get("sha256", "")
            if any(chunk.digest != digest for chunk in have.values()):
                stale.append(number)
                continue
            fetched = {c: _Chunk.decode(meta, blob) for c, blob in zip(chunks, values[1:], strict=True)
                       if blob is not None}
            if digest:  # without a digest one version cannot be told from another: not cached
                for c, chunk in fetched.items():
                    self.chunks.put(number, c, chunk)
            regions += _assembled(number, {**have, **fetched}, meta)
        return regions, stale

    async def live_metas(self, numbers: list[int]) -> dict[int, dict[str, Any]]:
        """The metadata of those of `numbers` that are live now: one round trip."""
        live, *documents = await self._read_documents(numbers, [[] for _ in numbers])
        return {number: json.loads(values[0]) for number, is_live, values in zip(numbers, live, documents, strict=True)
                if is_live is not None and values[0] is not None}

    async def _read_documents(self, numbers: list[int], chunk_lists: list[list[int]]) -> list[list[Any]]:
        """One round trip: which of `numbers` are live, then per number its metadata and chunks."""
        _ensure_time_left()
        reads = [[self._layout.live, *(str(n) for n in numbers)]]
        reads += [[self._layout.document(number), "meta", *(f"t{c}" for c in chunks)]
                  for number, chunks in zip(numbers, chunk_lists, strict=True)]
        if self._nodes is not None:
            encoded = [[part.encode() for part in read] for read in reads]
            return await self._nodes.run([(key_slot(read[0]), _command(b"HMGET", *read)) for read in encoded])
        pipe = self._client.pipeline(transaction=False)
        for key, *fields in reads:
            pipe.hmget(key, fields)
        return list(await pipe.execute())

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
            regions += [region.cut(run[0] * CHUNK_CHARS, (run[-1] + 1) * CHUNK_CHARS) for run in _consecutive(inside)]
    return regions


class IndexWriter:
    """Corpus maintenance: atomic per document, safe with several writer processes."""

    def __init__(self, client: SyncClient, layout: Layout, lease_seconds: float = 120.0) -> None:
        self._client = client
        self._layout = layout
        self.lease_seconds = lease_seconds
        self.token = uuid.uuid4().hex  # names this writer in the leases it holds
        self._add = client.register_script(_ADD_POSTINGS)
        self._remove = client.register_script(_REMOVE_POSTINGS)
        self._commit = client.register_script(_COMMIT)
        self._withdraw = client.register_script(_WITHDRAW)
        self._claim = client.register_script(_CLAIM)
        self._begin = client.register_script(_BEGIN)

    def ensure_meta(self, expected_chars: int = 0) -> None:
        """Create the index record, or refuse an index built with other parameters.

        A new index without explicit bucket_bits gets them from `expected_chars` (what is about
        to be added) and the server's small-hash limit.
        """
        try:
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
        except REDIS_ERRORS as exc:
            raise StoreUnavailableError(f"Redis error: {exc}") from exc

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
            (keys, [doc.doc_id, doc.number, len(doc.text), distinct(doc.band_keys), self.token])
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
                _evalsha(pipe, script, keys, args)
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
            buckets, names, fields = self._layout.entries(band_keys)
            tag = struct.pack(">I", number)
            self._pipelined(self._remove, [([names[i] for i in group], [_take(fields, group, FIELD_BYTES), tag])
                                           for group in self._groups(buckets)])
        self._client.delete(self._layout.document(number))
        pipe = self._client.pipeline(transaction=True)  # control keys share a slot
        if committed and band_keys is not None:
            pipe.hincrby(self._layout.stats, "entries", -distinct(band_keys))
            pipe.hincrby(self._layout.stats, "characters", -characters)
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
