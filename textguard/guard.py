"""`Guard`: check one text against the index and decide (the API every surface uses).

- `check` runs within a time budget: a check out of time starts no more round trips; a check
  that cannot run is a skip, which the fail mode turns into allow or block (or raises), counted
  and logged once per reason per 10 s.
- `check_held` is for text a reader waits for: past the budget it keeps waiting, up to
  `check_ceiling_ms`, and asks a Redis that timed out again (slow is not gone).
- `check_many` checks a batch in two round trips in all (`store.BatchedReader`).
- `source_passages` gives the stored text at source offsets, to show a match beside its source.

    guard = Guard(Settings.load())
    verdict = await guard.check(answer)      # guard.check_sync(answer) outside asyncio
    if verdict.verdict != "allow":
        answer = verdict.text                # the copies replaced by notices, or the block message
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from typing import Any, Literal, TypeVar

from redis.exceptions import TimeoutError as RedisTimeout

from textguard import telemetry
from textguard._redis import REDIS_ERRORS, AsyncClient, connect_async, unavailable_on_error
from textguard.detect import Detector, LookupMemo
from textguard.errors import CheckSkipped, IndexMismatchError, StoreUnavailableError
from textguard.evasions import undisguise
from textguard.normalise import Normalised, normalise
from textguard.policy import Policy, Rewriting, Verdict
from textguard.settings import Settings
from textguard.sketching import TextSketcher
from textguard.store import BatchedReader, DocumentRegion, IndexReader, check_deadline

__all__ = ["FailMode", "Guard"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
FailMode = Literal["open", "closed", "raise"]
_SKIPPABLE = (TimeoutError, *REDIS_ERRORS, OSError, StoreUnavailableError)  # a check that could not run
_RETRY_PAUSE_S = 0.02  # between two tries of a check whose Redis timed out
SKIP_LOG_INTERVAL_S = 10.0  # beyond one warning per reason in this time, skips are logged as a count


class _SkipLog:
    """Log skipped checks without flooding: the first of each reason at once, then at most one
    line per interval that also says how many went unlogged since. (Every skip is counted in
    the metrics regardless.) A flood of log lines under overload would only add to the load,
    and an unread log pipe that fills up stops the process outright."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def warn(self, reason: str, mode: str, detail: str) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -SKIP_LOG_INTERVAL_S) < SKIP_LOG_INTERVAL_S:
            self._unlogged[reason] += 1
            return
        self._last[reason] = now
        more = self._unlogged.pop(reason, 0)
        also = f" (and {more} more since the last report)" if more else ""
        logger.warning("check skipped (%s), failing %s: %s%s", reason, mode, detail, also)


class Guard:
    """Checks answers for copied protected text. `Guard()` configures itself as the CLI does.

    One Guard serves many concurrent checks; its Redis pool belongs to the event loop of the
    first `check`. `check_sync` runs on a private loop thread, so it works inside or outside a
    running loop.
    """

    def __init__(self, settings: Settings | None = None, *, client: AsyncClient | None = None) -> None:
        self.settings = settings or Settings.load()
        self.sketcher = TextSketcher(self.settings)
        self.policy = Policy(self.settings)
        self._client = client
        self._detector: Detector | None = None
        self._reader: IndexReader | None = None
        self.skipped: Counter[str] = Counter()
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._sync_thread: threading.Thread | None = None
        self._sync_guard: Guard | None = None
        self._skip_log = _SkipLog()

    @property
    def redis(self) -> AsyncClient:
        """The asyncio client checks use (the audit log writes through it too)."""
        if self._client is None:
            self._client = connect_async(self.settings)
        return self._client

    def _ensure_detector(self) -> tuple[Detector, IndexReader]:
        if self._detector is None or self._reader is None:
            if self._client is None:
                self._client = connect_async(self.settings)
            self._reader = IndexReader(self._client, self.sketcher.layout)
            self._detector = Detector(self.sketcher, self._reader)
        return self._detector, self._reader

    async def ping(self) -> None:
        """Reach Redis and make sure the index there is one these settings can read."""
        _, reader = self._ensure_detector()
        assert self._client is not None
        await self._client.ping()
        await reader.ensure_compatible()

    async def start(self) -> None:
        """Connect ahead of the first check (a server's start-up). An unreachable Redis is
        logged, not fatal: the fail mode handles it per check until Redis answers. The index's
        key filter is read here too, so that the first checks already look up only what may be there."""
        _, reader = self._ensure_detector()
        try:
            await self.ping()
            await reader.refresh_filter()
        except (*REDIS_ERRORS, OSError, StoreUnavailableError) as exc:
            logger.error("Redis is not reachable at start-up (checks will fail %s until it is): %s",
                         self.settings.fail_mode, exc)

    async def check(self, text: str, *, budget_ms: float | None = None,
                    fail_mode: FailMode | None = None, memo: LookupMemo | None = None,
                    normalised: Normalised | None = None, rewriting: Rewriting | None = None) -> Verdict:
        """Check `text`; on a skipped check, `fail_mode` decides (default: the settings').

        `budget_ms` bounds the whole check (None: unbounded). A skip is counted in
        `self.skipped` and logged; with fail_mode "raise" it raises CheckSkipped instead.
        `memo` (kept by the caller) lets repeated checks of a growing text skip the lookups
        they already made, and `normalised` (text's normal form, offsets into text) the
        normalising that a stream does as it grows. `rewriting` (default: the settings' style)
        is the answer's, when it has more than one text or asks for a style of its own.
        """
        started = time.perf_counter()
        mode = fail_mode or self.settings.fail_mode
        if len(text) > self.settings.max_check_chars:
            limit = f"{len(text)} characters, more than max_check_chars={self.settings.max_check_chars}"
            return self._skip(text, "too_large", ValueError(limit), started, mode)
        try:
            return await self.attempt(text, budget_ms=budget_ms, memo=memo, normalised=normalised,
                                      rewriting=rewriting)
        except IndexMismatchError:
            raise
        except _SKIPPABLE as exc:
            return self._skip(text, _reason(exc), exc, started, mode)

    async def attempt(self, text: str, *, budget_ms: float | None = None, memo: LookupMemo | None = None,
                      normalised: Normalised | None = None, rewriting: Rewriting | None = None) -> Verdict:
        """`check` without the fail mode: what stopped the check (one of `_SKIPPABLE`) is raised,
        for a caller that would rather try again (a stream whose Redis is slow, not gone).
        `rewriting` is the answer's (its style, and the works its other texts quoted)."""
        started = time.perf_counter()
        detector, reader = self._ensure_detector()
        normalised = undisguise(normalised if normalised is not None else normalise(text))
        async with asyncio.timeout(budget_ms / 1000 if budget_ms is not None else None) as budget:
            deadline = check_deadline.set(budget.when())
            try:
                await reader.ensure_compatible()
                matches = await detector.find(normalised, memo)
            finally:
                check_deadline.reset(deadline)
        elapsed = (time.perf_counter() - started) * 1000
        verdict = self.policy.decide(text, len(normalised.text), matches, elapsed, rewriting)
        telemetry.CHECKS.labels(verdict.verdict).inc()
        telemetry.CHECK_SECONDS.observe(elapsed / 1000)
        return verdict

    async def check_held(self, text: str, *, ceiling_ms: float | None = None, memo: LookupMemo | None = None,
                         normalised: Normalised | None = None, rewriting: Rewriting | None = None) -> Verdict:
        """Check text that is held until the verdict (an answer not yet sent): a check past
        `check_timeout_ms` goes on, and a Redis that times out (slow, not gone) is asked again,
        until `ceiling_ms` (default `check_ceiling_ms`). Releasing unchecked text because the
        machine is busy would pass copies exactly when a server is loaded; only an unreachable
        Redis or the ceiling make it a skip, for the fail mode."""
        started = time.perf_counter()
        budget_ms = self.settings.check_timeout_ms
        ceiling_ms = max(self.settings.check_ceiling_ms if ceiling_ms is None else ceiling_ms, budget_ms)
        if len(text) > self.settings.max_check_chars:
            return await self.check(text)  # a skip (too_large), decided as any check's
        deadline = started + ceiling_ms / 1000
        while True:
            try:
                verdict = await self.attempt(text, budget_ms=max(deadline - time.perf_counter(), 0.0) * 1000,
                                             memo=memo, normalised=normalised, rewriting=rewriting)
                break
            except RedisTimeout as exc:
                if time.perf_counter() + _RETRY_PAUSE_S < deadline:
                    await asyncio.sleep(_RETRY_PAUSE_S)  # a breath for a starved Redis, not a busy loop
                    continue
                verdict = self._skip(text, _reason(exc), exc, started, self.settings.fail_mode)
                break
            except IndexMismatchError:
                raise
            except _SKIPPABLE as exc:
                verdict = self._skip(text, _reason(exc), exc, started, self.settings.fail_mode)
                break
        if verdict.elapsed_ms > budget_ms:
            telemetry.CHECK_WAIT_SECONDS.observe((verdict.elapsed_ms - budget_ms) / 1000)
        return verdict

    def note_skip(self, reason: str) -> None:
        """Count a check that could not run (also the surfaces' own: an undecodable body, say)."""
        self.skipped[reason] += 1
        telemetry.SKIPPED.labels(reason).inc()
        if reason == "redis":
            telemetry.REDIS_ERRORS.inc()

    async def check_many(self, texts: Sequence[str], *, fail_mode: FailMode | None = None,
                         normalised: Sequence[Normalised] | None = None) -> list[Verdict]:
        """Check `texts` together: the verdicts `check` gives one by one, but the lookups of all
        go to Redis in one round trip and their fetches of stored text in another (offline scans).

        There is no time budget; each verdict's `elapsed_ms` is the batch's time shared equally.
        `normalised` (the texts' normal forms) spares normalising them where the caller has.
        """
        started = time.perf_counter()
        _, reader = self._ensure_detector()
        mode = fail_mode or self.settings.fail_mode
        assert self._client is not None
        batch = BatchedReader(self._client, self.sketcher.layout, reader.chunks, reader.key_filter)
        detector = Detector(self.sketcher, batch)
        try:
            await reader.ensure_compatible()
        except IndexMismatchError:
            raise
        except _SKIPPABLE as exc:
            return [self._skip(text, _reason(exc), exc, started, mode) for text in texts]
        if normalised is None:
            normalised = [normalise(text) for text in texts]
        normalised = [undisguise(normal) for normal in normalised]
        found = await batch.run([detector.find(n) for n in normalised])
        share = (time.perf_counter() - started) * 1000 / max(len(texts), 1)
        verdicts = []
        for text, normal, result in zip(texts, normalised, found, strict=True):
            if isinstance(result, _SKIPPABLE):
                verdicts.append(self._skip(text, _reason(result), result, started, mode))
            elif isinstance(result, BaseException):
                raise result
            else:
                verdicts.append(self.policy.decide(text, len(normal.text), result, share))
        return verdicts

    async def source_passages(self, spans: Sequence[tuple[str, int, int]]) -> list[DocumentRegion | None]:
        """The stored original text of each (document id, start, end), to show a match beside
        its source; None where the document is no longer indexed. Two round trips in all."""
        _, reader = self._ensure_detector()
        with unavailable_on_error(OSError):
            return await reader.passages(spans)

    def _skip(self, text: str, reason: str, exc: BaseException, started: float, mode: FailMode) -> Verdict:
        self.note_skip(reason)
        if mode == "raise":
            raise CheckSkipped(reason, str(exc) or type(exc).__name__) from exc
        self._skip_log.warn(reason, mode, str(exc) or type(exc).__name__)
        elapsed = (time.perf_counter() - started) * 1000
        block_message = self.policy.block_message(()) if mode == "closed" else None
        return Verdict.unchecked(text, reason, elapsed, block_message=block_message)

    def check_sync(self, text: str, **kwargs: Any) -> Verdict:
        """Blocking `check`, for scripts and notebooks."""
        if self._sync_guard is None:
            self._sync_guard = Guard(self.settings)
            self._sync_guard.skipped = self.skipped
        return self._run_sync(self._sync_guard.check(text, **kwargs))

    def _run_sync(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._sync_loop is None:
            loop = asyncio.new_event_loop()
            self._sync_thread = threading.Thread(target=loop.run_forever, name="textguard-sync", daemon=True)
            self._sync_thread.start()
            self._sync_loop = loop
        return asyncio.run_coroutine_threadsafe(coroutine, self._sync_loop).result()

    async def aclose(self) -> None:
        if self._reader is not None:
            await self._reader.aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._detector = self._reader = None

    def close(self) -> None:
        """Release the sync side's connections and loop thread."""
        if self._sync_guard is not None and self._sync_loop is not None:
            self._run_sync(self._sync_guard.aclose())
            self._sync_loop.call_soon_threadsafe(self._sync_loop.stop)
            if self._sync_thread is not None:
                self._sync_thread.join()
            self._sync_loop.close()  # else it is closed at exit, perhaps while its thread still runs
            self._sync_loop = None
            self._sync_guard = None


def _reason(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, TimeoutError) else "redis"
