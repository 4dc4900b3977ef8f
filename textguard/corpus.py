"""The protected corpus: adding, removing and listing documents (files are read by `ingest`).

Adding is atomic per document: its text and band entries are written under a fresh internal
number, and one commit script makes that number live (replacing any earlier version). A writer
that dies midway leaves only a leased `pending` record; the next writer purges what it wrote.
So any number of writers, in one process or many, may add at once: `add(workers=N)` runs N
writer processes, each segmenting, sketching and writing its share of the documents (a
document id always goes to the same one, so that a later version of it still wins).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import queue
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textguard._iterate import batched
from textguard._redis import SyncClient, connect_sync, unavailable_on_error
from textguard.errors import CorpusInputError, StoreUnavailableError, TextGuardError
from textguard.normalise import normalise
from textguard.settings import Settings
from textguard.sketching import TextSketcher
from textguard.store import SHARDS, DocumentMeta, IndexWriter, StagedDocument, small_hash_limit

__all__ = [
    "AddReport", "Corpus", "Document", "FieldNames", "document_from_record",
]

logger = logging.getLogger(__name__)

_META_FIELDS = ("title", "author", "work")
_MAX_QUOTE = 10_000  # a quotation limit beyond this is a mistake, not a licence
_BATCH_CHARS = 200_000
_FULL_BUCKETS = 0.75  # of the small-hash limit: past this, buckets start to lose their compact encoding
_FEW_FILTER_BITS = 6  # per band entry: below this, 8% of absent keys and more pass the key filter


@dataclass(frozen=True, slots=True)
class Document:
    """One text of the index: `doc_id` is unique in it; `extra` keeps the record's other fields.

    A `public_domain` text is one anyone may reproduce (an old poem, a statute): it is indexed
    so that a quotation of it is never flagged, even where a protected work quotes it too.
    """

    doc_id: str
    text: str
    title: str = ""
    author: str = ""
    work: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    public_domain: bool = False
    policy: str = ""  # terms for this text: "allow" (licensed: never flagged), "block" (any copy blocks)
    quote_chars: int = 0  # its own quotation limit (0: the settings')

    def meta(self) -> DocumentMeta:
        meta: DocumentMeta = {"id": self.doc_id, "title": self.title, "author": self.author,
                              "work": self.work, "chars": len(self.text)}
        if self.extra:
            meta["extra"] = self.extra
        if self.public_domain:
            meta["public_domain"] = True
        if self.policy:
            meta["policy"] = self.policy
        if self.quote_chars:
            meta["quote_chars"] = self.quote_chars
        meta["sha256"] = hashlib.sha256(json.dumps([meta, self.text], ensure_ascii=False,
                                                   sort_keys=True).encode()).hexdigest()
        return meta


@dataclass(frozen=True, slots=True)
class AddReport:
    """What `Corpus.add` did: documents new, replaced (a changed version of an id) and left as
    they were (same text and metadata), and the characters written.

        with Corpus(settings) as corpus:
            report = corpus.add([Document("ch1", text, title="第一章", work="某小说")])
        print(report.added, report.replaced, report.unchanged, report.characters)
    """

    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    characters: int = 0


@dataclass(frozen=True, slots=True)
class FieldNames:
    """Which field of a record holds what (CSV and Parquet columns are seldom named `id`, `text`)."""

    id: str = "id"
    text: str = "text"
    title: str = "title"
    author: str = "author"
    work: str = "work"


def document_from_record(record: Any, where: str, fields: FieldNames = FieldNames(),
                         public_domain: bool = False) -> Document:
    """A Document from one record (`id`, `text`, optional `title`, `author`, `work` and
    `public_domain`, under the names `fields` gives; other fields are kept as metadata).
    `where` names the record in the error message."""
    if not isinstance(record, dict):
        raise CorpusInputError(f"{where}: expected a JSON object")
    record = dict(record)
    doc_id, text = record.pop(fields.id, None), record.pop(fields.text, None)
    if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool) or str(doc_id) == "":
        raise CorpusInputError(f"{where}: missing or invalid '{fields.id}' (a non-empty string or integer)")
    if not isinstance(text, str):
        raise CorpusInputError(f"{where}: missing or invalid '{fields.text}' (a string)")
    meta = {key: record.pop(getattr(fields, key), "") for key in _META_FIELDS}
    for key, value in meta.items():
        if value is None:
            meta[key] = ""
        elif not isinstance(value, str):
            raise CorpusInputError(f"{where}: '{getattr(fields, key)}' must be a string")
    marked = record.pop("public_domain", False)
    if not isinstance(marked, bool):
        raise CorpusInputError(f"{where}: 'public_domain' must be true or false")
    policy = record.pop("policy", "") or ""
    if policy not in ("", "allow", "block"):
        raise CorpusInputError(f"{where}: 'policy' must be \"allow\" (licensed: never flagged) or \"block\" "
                               f"(any copy blocks the answer), not {policy!r}")
    quote_chars = record.pop("quote_chars", 0) or 0
    if isinstance(quote_chars, bool) or not isinstance(quote_chars, int) or not 0 <= quote_chars <= _MAX_QUOTE:
        raise CorpusInputError(f"{where}: 'quote_chars' must be a whole number of characters up to {_MAX_QUOTE} "
                               f"(0: the settings')")
    return Document(doc_id=str(doc_id), text=text, extra=record, public_domain=public_domain or marked,
                    policy=policy, quote_chars=quote_chars, **meta)


class Corpus:
    """The protected works in one index. `Corpus()` configures itself as the CLI does."""

    def __init__(self, settings: Settings | None = None, *, client: SyncClient | None = None) -> None:
        self.settings = settings or Settings.load()
        self._sketcher = TextSketcher(self.settings)
        self._client = client or connect_sync(self.settings)
        self._writer = IndexWriter(self._client, self._sketcher.layout)
        self._ready = False

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Corpus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare(self, expected_chars: int = 0) -> None:
        if not self._ready:
            with unavailable_on_error():
                self._writer.ensure_meta(expected_chars)
                self.recover()
            self._ready = True

    def recover(self) -> int:
        """Purge what writers that died midway left behind; returns how many were purged."""
        purged = 0
        for number, committed in list(self._writer.claim_expired()):
            stored = self._writer.stored_text(number)
            if stored is None:
                self._writer.purge(number, None, 0, committed)
            else:
                meta, text = stored
                self._writer.purge(number, self._staged_keys(text), int(meta.get("chars", len(text))), committed,
                                   meta.get("public_domain", False))
            purged += 1
        if purged:
            logger.info("purged %d interrupted or withdrawn document version(s)", purged)
        return purged

    def _staged_keys(self, text: str) -> np.ndarray:
        return self._sketcher.sketch(normalise(text))[0].keys

    def add(self, documents: Iterable[Document], progress: Callable[[int], object] | None = None, *,
            workers: int = 1, expected_chars: int = 0) -> AddReport:
        """Index `documents`: new ids are added, changed texts replace, unchanged ones are skipped.

        `workers` > 1 segments, sketches and writes in that many processes. `expected_chars`
        (what is about to be added) sizes a new index's buckets; `ingest.add_files` estimates it.
        """
        self._prepare(expected_chars)
        if workers > 1:
            report = _add_in_processes(self.settings, documents, progress, workers)
        else:
            report = self._add_here(documents, progress)
        self._warn_if_undersized()
        return report

    def _add_here(self, documents: Iterable[Document], progress: Callable[[int], object] | None) -> AddReport:
        totals = {"added": 0, "replaced": 0, "unchanged": 0, "characters": 0}
        batch: list[Document] = []
        batch_chars = 0
        deferred: list[Document] = []
        with unavailable_on_error():
            for doc in documents:
                batch.append(doc)
                batch_chars += len(doc.text)
                if batch_chars >= _BATCH_CHARS:
                    deferred += self._add_batch(batch, totals, progress)
                    batch, batch_chars = [], 0
            if batch:
                deferred += self._add_batch(batch, totals, progress)
            self._wait_for_others(deferred, totals)
        return AddReport(**totals)

    def _warn_if_undersized(self) -> None:
        """An index is sized when it is created, for what is about to be added (known when adding
        files): one created for little and then filled with much says so."""
        entries = self._writer.counters().get("entries", 0)
        fill = self._bucket_fill(entries)
        if fill["entries_per_bucket"] > _FULL_BUCKETS * fill["small_hash_limit"]:
            logger.warning("band buckets average %.0f entries, near Redis's small-hash limit (%d): memory per "
                           "character will grow; rebuild into a new index with bucket_bits=%d",
                           fill["entries_per_bucket"], fill["small_hash_limit"], fill["bucket_bits"] + 1)
        filter_bits = self._sketcher.layout.filter_bits
        if filter_bits is not None and entries and SHARDS * 2 ** filter_bits / entries < _FEW_FILTER_BITS:
            logger.warning("the key filter has %.1f bits per band entry: it lets through more and more keys that "
                           "no work holds; rebuild into a new index, adding the corpus from its files at once",
                           SHARDS * 2 ** filter_bits / entries)

    def _bucket_fill(self, entries: int) -> dict[str, Any]:
        bits = self._sketcher.layout.bucket_bits or 0
        return {"bucket_bits": bits, "entries_per_bucket": round(entries / 2 ** bits, 1),
                "small_hash_limit": small_hash_limit(self._client)}

    def _add_batch(self, batch: list[Document], totals: dict[str, int],
                   progress: Callable[[int], object] | None) -> list[Document]:
        """Index a batch, counting its characters; returns the documents left to another writer
        that is writing the same version at this moment (see `_wait_for_others`)."""
        deferred = self._index(batch, totals)
        chars = sum(len(d.text) for d in batch)
        totals["characters"] += chars
        if progress is not None:
            progress(chars)
        return deferred

    def _wait_for_others(self, deferred: list[Document], totals: dict[str, int]) -> None:
        """Settle the documents other writers were writing: unchanged once their commit lands,
        written here if their lease runs out first."""
        deadline = time.monotonic() + self._writer.lease_seconds + 10
        while deferred:
            deferred = self._index(deferred, totals)
            if deferred:
                if time.monotonic() > deadline:
                    raise StoreUnavailableError(f"{len(deferred)} document(s) stayed leased to another writer")
                time.sleep(0.05)  # polls Redis until the other writer commits or its lease ends

    def _index(self, batch: list[Document], totals: dict[str, int]) -> list[Document]:
        latest: dict[str, Document] = {}
        for doc in batch:  # a later line with the same id wins, as a re-add would
            latest.pop(doc.doc_id, None)
            latest[doc.doc_id] = doc
        metas = {doc.doc_id: doc.meta() for doc in latest.values()}
        stored = self._writer.stored_digests(list(latest))
        fresh: list[Document] = []
        for doc in latest.values():
            if stored.get(doc.doc_id) == metas[doc.doc_id]["sha256"]:
                totals["unchanged"] += 1
            else:
                fresh.append(doc)
        if not fresh:
            return []
        leases = self._writer.begin([(d.doc_id, metas[d.doc_id]["sha256"]) for d in fresh])
        staged = []
        busy = []
        for doc, lease in zip(fresh, leases, strict=True):
            if lease == "unchanged":  # another writer committed it since `stored` was read
                totals["unchanged"] += 1
            elif lease == "busy":
                busy.append(doc)
            else:
                normalised = normalise(doc.text)
                runs, anchors = self._sketcher.sketch(normalised)
                staged.append(StagedDocument(doc.doc_id, lease, metas[doc.doc_id], doc.text, runs.keys,
                                             normalised.offsets[anchors]))
        if staged:
            self._writer.write(staged, self.settings.max_postings)
            for old in self._writer.commit(staged):
                if old is None:
                    totals["added"] += 1
                else:
                    totals["replaced"] += 1
            self.recover()  # purges the versions just replaced
        return busy

    def remove(self, doc_ids: Iterable[str]) -> list[str]:
        """Take documents down; returns the ids that were not in the index."""
        self._prepare()
        missing = []
        with unavailable_on_error():
            for doc_id in doc_ids:
                if self._writer.withdraw(doc_id) is None:
                    missing.append(doc_id)
            self.recover()
        return missing

    def list(self) -> Iterator[DocumentMeta]:
        """Metadata of every document (id, title, author, work, chars, extra fields, and where set:
        public_domain, policy, quote_chars)."""
        self._prepare()
        for chunk in batched(sorted(self._writer.documents()), 500):
            for meta in self._writer.metas([n for _, n in chunk]):
                if meta is not None:
                    meta.pop("sha256", None)
                    yield meta

    def stats(self) -> dict[str, Any]:
        """documents (and how many of them are public domain), characters, windows (band
        entries), redis_bytes, bytes_per_char, pending,
        and how full the band buckets are (entries_per_bucket against small_hash_limit)."""
        self._prepare()
        with unavailable_on_error():
            counters = self._writer.counters()
            redis_bytes = self._writer.memory_bytes()
            fill = self._bucket_fill(counters.get("entries", 0))
            pending = self._writer.pending_count()
        characters = counters.get("characters", 0)
        return {
            "index": self.settings.index,
            "documents": counters["documents"],
            "public_domain_documents": counters.get("public_domain", 0),
            "characters": characters,
            "windows": counters.get("entries", 0),
            "redis_bytes": redis_bytes,
            "bytes_per_char": round(redis_bytes / characters, 3) if characters else 0.0,
            "pending": pending,
            "shards": SHARDS,
            **fill,
            "parameters": self._sketcher.layout.record(),
        }


def _add_in_processes(settings: Settings, documents: Iterable[Document], progress: Callable[[int], object] | None,
                      workers: int) -> AddReport:
    """Hand `documents` to `workers` writer processes in batches; each id always to the same one.

    The processes are spawned (not forked: this process may hold threads and sockets); they
    report characters done as they go, then their totals. A failing worker stops them all.
    """
    context = multiprocessing.get_context("spawn")
    outbox = context.Queue()
    inboxes = [context.Queue(maxsize=2) for _ in range(workers)]
    processes = [context.Process(target=_ingest_worker, args=(settings, inbox, outbox), daemon=True,
                                 name=f"textguard-ingest-{i}") for i, inbox in enumerate(inboxes)]
    for process in processes:
        process.start()
    reports: list[dict[str, int]] = []

    def drain(wait: float = 0.0) -> None:
        try:
            while True:
                message = outbox.get(timeout=wait) if wait else outbox.get_nowait()
                wait = 0.0
                if isinstance(message, int):
                    if progress is not None:
                        progress(message)
                elif isinstance(message, BaseException):
                    raise message
                else:
                    reports.append(message)
        except queue.Empty:
            pass
        for i, process in enumerate(processes):
            if process.exitcode not in (None, 0):
                raise StoreUnavailableError(f"ingest worker {i} exited with code {process.exitcode}")

    def hand(worker: int, batch: list[Document] | None) -> None:
        while True:
            try:
                inboxes[worker].put(batch, timeout=0.05)
                return
            except queue.Full:
                drain()

    try:
        batches: list[list[Document]] = [[] for _ in range(workers)]
        sizes = [0] * workers
        for doc in documents:
            worker = zlib.crc32(doc.doc_id.encode()) % workers
            batches[worker].append(doc)
            sizes[worker] += len(doc.text)
            if sizes[worker] >= _BATCH_CHARS:
                hand(worker, batches[worker])
                batches[worker], sizes[worker] = [], 0
            drain()
        for worker in range(workers):
            if batches[worker]:
                hand(worker, batches[worker])
            hand(worker, None)
        while len(reports) < workers:
            drain(wait=0.2)
    finally:
        for process in processes:
            if process.is_alive() and len(reports) < workers:
                process.terminate()
            process.join(timeout=10)
    return AddReport(**{key: sum(r[key] for r in reports) for key in ("added", "replaced", "unchanged",
                                                                      "characters")})


def _ingest_worker(settings: Settings, inbox: Any, outbox: Any) -> None:
    """One writer process of `_add_in_processes`: add each batch it is handed, report, repeat."""
    try:
        with Corpus(settings) as corpus:
            corpus._prepare()
            totals = {"added": 0, "replaced": 0, "unchanged": 0, "characters": 0}
            deferred: list[Document] = []
            with unavailable_on_error():
                while (batch := inbox.get()) is not None:
                    deferred += corpus._add_batch(batch, totals, outbox.put)
                corpus._wait_for_others(deferred, totals)
        outbox.put(totals)
    except TextGuardError as exc:
        outbox.put(exc)
    except Exception as exc:  # anything else still reaches the parent as one line
        outbox.put(StoreUnavailableError(f"ingest worker failed: {type(exc).__name__}: {exc}"))
