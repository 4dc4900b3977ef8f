"""Stage 4: the index in Redis, in a layout of our own.

Keys, all under `textguard:v1:<index>` (the format version is part of the name):

    {…}:meta          JSON of the sketch parameters; an index refuses other parameters
    {…}:docs          hash  document id -> internal number (committed documents)
    {…}:live          hash  internal number -> document id (what lookups may return)
    {…}:pending       hash  internal number -> JSON (writes in flight, or to be purged)
    {…}:versions      hash  document id -> JSON (its newest version: number, digest, writer, committed)
    {…}:stats, :seq   counters (stats' `generation` counts commits: see _membership.py)
    {…}:nonce         random, set when the index is created: a rebuilt index reuses numbers
    …:{sN}:b<B>       hash  band key (5 bytes) -> postings (8 bytes each: number, offset)
    …:{sN}:f          bits  the shard's part of the filter of band keys held (_membership.py)
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

from textguard.store._batched import BatchedReader
from textguard.store._chunks import ChunkCache, chunk_numbers, cut_regions, pack_text
from textguard.store._format import (
    CHUNK_CHARS,
    FORMAT_VERSION,
    POSTING_DTYPE,
    SHARDS,
    DocumentMeta,
    DocumentRegion,
    Postings,
    Ranges,
    StagedDocument,
    ragged,
)
from textguard.store._layout import FilterSlot, Layout, by_shard, choose_bucket_bits, small_hash_limit
from textguard.store._membership import MembershipFilter
from textguard.store._reader import IndexReader, Reader, check_deadline
from textguard.store._writer import IndexWriter

__all__ = [
    "CHUNK_CHARS", "FORMAT_VERSION", "POSTING_DTYPE", "SHARDS", "BatchedReader", "ChunkCache",
    "DocumentMeta", "DocumentRegion", "FilterSlot", "IndexReader", "IndexWriter", "Layout",
    "MembershipFilter", "Postings", "Ranges", "Reader", "StagedDocument", "by_shard", "check_deadline",
    "choose_bucket_bits", "chunk_numbers", "cut_regions", "pack_text", "ragged", "small_hash_limit",
]
