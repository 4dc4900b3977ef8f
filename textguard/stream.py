"""Guarding one answer while it streams: release text as soon as it is safe, never a copy.

The text received so far is checked again each time `stream_check_chars` new characters have
arrived, over a tail window that reaches back far enough to see a copy that began earlier.
Text is released only once checked, never the last `stream_holdback_chars` (a copy must reach
some length before the index can see it), and never from the start of a span that is still
growing at the end of the text (a quotation now, perhaps a copy in a moment). So no released
run of one work exceeds Q = `quote_chars` normalised characters (DESIGN.md, invariant 2): a
copy is either seen while the held-back tail still holds it, and then replaced by the notice
from the point reached, or it never grows past the hold-back.

While a flagged copy is still running at the end, checks come `_IN_COPY_STEPS` times as far
apart: what arrives meanwhile is held (nothing is released without a check), the copy is being
replaced by its notice anyway, and only the text after its end waits a little longer.

A check that runs past `check_timeout_ms` is not cut short: the text it covers stays held, and
the reader waits, until it ends (`Guard.check_held`). Only a check past `check_ceiling_ms`, or
one that cannot reach Redis at all, is a skip for the fail mode. After Redis failed a check
(gone, or timing out to the ceiling), the stream's later checks wait no longer than
`check_timeout_ms`: an outage should not stall every stream for seconds; a machine merely busy
past the ceiling keeps it.

A stream is checked against the corpus as it stood when its checking began: what one check
learned (a band key's postings, a document found live, the key filter found current, the
document a copy under way comes from) the later ones take as known, so that most checks ask
Redis nothing at all.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np

from textguard import telemetry
from textguard.detect import LookupMemo, Match
from textguard.guard import Guard
from textguard.normalise import GrowingNormal, Normalised, matchable_chars
from textguard.policy import Rewriting, Verdict, VerdictKind, work_name

__all__ = ["GuardedStream", "Release"]

_IN_COPY_STEPS = 3


@dataclass(frozen=True, slots=True)
class Release:
    """What a stream may send now: `text` (rewritten where needed); `blocked` ends the stream."""

    text: str
    blocked: bool = False
    skipped: str | None = None


class GuardedStream:
    """The incremental guard of one streamed answer (one choice). Not shared between requests."""

    def __init__(self, guard: Guard, rewriting: Rewriting | None = None) -> None:
        """`rewriting` is shared by the streams of one answer's texts (rewrite_style "quote":
        one quotation of a work per answer). A stream cannot be paraphrased, its text being out
        before the copy is whole: "paraphrase" gets its fallback style."""
        settings = guard.settings
        self._guard = guard
        self._ceiling_ms = settings.check_ceiling_ms
        self._holdback = settings.stream_holdback_chars
        self._step = settings.stream_check_chars
        # Normalised characters of released text re-checked with the new ones: a copy under way
        # has released fewer than Q of them, and the index needs a few windows to see it.
        self._context = settings.quote_chars + 3 * settings.window_shingles
        self._normal = GrowingNormal()  # everything received, and its normal form near the end
        self._released = 0  # text[:_released] has been sent (or replaced by a notice)
        self._unchecked_chars = 0  # normalised characters received since the last check
        self._memo = LookupMemo()  # lookups and verifications already made for this answer
        self._suppressing: str | None = None  # doc id of a flagged copy still running at the end
        self._flagged_chars = 0
        self._quoted: dict[str, int] = defaultdict(int)  # per work: quotation chars already released
        self._counted: set[tuple[str, int]] = set()  # quotations already added to `_quoted`
        self._rewriting = rewriting or Rewriting(settings.rewrite_style)
        self.matches: list[Match] = []
        self.blocked = False
        self.finished = False
        self.skipped: str | None = None
        self.elapsed_ms = 0.0  # spent in checks
        self.waits_ms: list[float] = []  # how long past check_timeout_ms each slow check made the reader wait

    @property
    def text(self) -> str:
        """Everything received."""
        return self._normal.text

    async def feed(self, delta: str) -> Release:
        """Take the next piece of the answer; returns what may be sent now."""
        if self.blocked:
            return Release("", blocked=True)
        self._normal.add(delta)
        if self.skipped == "too_large":  # past the limit in fail mode open: passed unchecked
            self._released = self._normal.length
            return Release(delta, skipped="too_large")
        if self._normal.length > self._guard.settings.max_check_chars:
            return self._too_large()
        self._unchecked_chars += matchable_chars(delta)
        if self._unchecked_chars < (self._step if self._suppressing is None else _IN_COPY_STEPS * self._step):
            return Release("")
        return await self._check(final=False)

    def _too_large(self) -> Release:
        """An answer longer than max_check_chars: the fail mode decides the rest of it."""
        self.skipped = "too_large"
        self._guard.note_skip("too_large")
        if self._guard.settings.fail_mode == "closed":
            self.blocked = True
            return Release("", blocked=True, skipped="too_large")
        held, self._released = self.text[self._released:], len(self.text)
        return Release(held, skipped="too_large")

    async def finish(self) -> Release:
        """The answer is complete: check what is left and release it."""
        if self.blocked or self.finished:
            return Release("", blocked=self.blocked)
        self.finished = True
        if self.skipped == "too_large":
            return Release("")
        return await self._check(final=True)

    async def _check(self, final: bool) -> Release:
        normalised = self._normal.normalised()  # of text[self._normal.start:]
        normalised_chars = self._normal.forgotten + len(normalised.text)  # of the whole text
        # the window reaches back far enough to see a copy that began before the released point
        released_chars = int(np.searchsorted(normalised.offsets, self._released))
        first = max(released_chars - self._context, 0)
        window_start = int(normalised.offsets[first]) if first else self._normal.start
        window = Normalised(normalised.text[first:], normalised.offsets[first:] - window_start)
        verdict = await self._guard.check_held(self.text[window_start:], ceiling_ms=self._ceiling_ms,
                                               memo=self._memo, normalised=window)
        self._normal.forget(window_start)
        self.elapsed_ms += verdict.elapsed_ms
        budget_ms = self._guard.settings.check_timeout_ms
        if verdict.elapsed_ms > budget_ms:
            self.waits_ms.append(verdict.elapsed_ms - budget_ms)
        if verdict.skipped == "redis":  # Redis gone (not a busy machine): later checks wait no longer
            self._ceiling_ms = budget_ms
        if verdict.skipped is not None:
            self.skipped = verdict.skipped
            if verdict.verdict == "block":  # fail closed
                self.blocked = True
                return Release("", blocked=True, skipped=verdict.skipped)
        spans = sorted((replace(m, start=m.start + window_start, end=m.end + window_start)
                        for m in (*verdict.matches, *verdict.quotations)), key=lambda m: m.start)
        self._unchecked_chars = 0
        at_end = _original_before(normalised.offsets, len(normalised.text) - 1)
        release_to = len(self.text) if final else max(
            self._released, _original_before(normalised.offsets, len(normalised.text) - self._holdback))
        suppressing, self._suppressing = self._suppressing, None
        pieces: list[str] = []
        position = self._released
        for span in spans:
            if span.end <= position or span.policy == "allow":  # licensed text is never held
                continue
            growing = not final and span.end > at_end
            if self._is_copy(span, continues=suppressing == span.doc_id and span.start <= position):
                if span.start > position:
                    pieces.append(self.text[position:span.start])
                if suppressing != span.doc_id or span.start > position:
                    start = max(position, span.start)
                    rewriting = self._rewriting if span.start >= position else replace(
                        self._rewriting, quoted={*self._rewriting.quoted, work_name(span)})  # its opening is out
                    pieces.append(self._guard.policy.replacement(span, self.text[start:span.end], rewriting))
                    self.matches.append(span)
                self._flagged_chars += int(np.searchsorted(normalised.offsets, span.end)
                                           - np.searchsorted(normalised.offsets, max(position, span.start)))
                position = span.end
                self._suppressing = span.doc_id if growing else None
                release_to = max(release_to, position)
            elif growing:
                release_to = min(release_to, max(span.start, position))  # may yet become a copy
            elif (span.doc_id, span.end) not in self._counted:
                self._counted.add((span.doc_id, span.end))
                self._quoted[work_name(span)] += span.chars
        if release_to > position:
            pieces.append(self.text[position:release_to])
            position = release_to
        self._released = position
        telemetry.HELD_CHARS.observe(len(self.text) - position)
        if self._should_block(normalised_chars, final):
            self.blocked = True
            return Release("", blocked=True)
        return Release("".join(pieces))

    def fork(self) -> GuardedStream:
        """A twin to try `finish()` on without ending this stream: what would go out if the
        answer ended now (a caller that cannot tell its last piece asks this each time)."""
        twin = copy.copy(self)
        twin._normal = self._normal.copy()
        twin._memo = replace(self._memo, copying=set(self._memo.copying))
        twin._quoted = defaultdict(int, self._quoted)
        twin._counted = set(self._counted)
        twin._rewriting = replace(self._rewriting, quoted=set(self._rewriting.quoted))
        twin.matches = list(self.matches)
        twin.waits_ms = list(self.waits_ms)
        return twin

    def summary(self) -> Verdict:
        """The stream's verdict so far, as a whole answer's would be (for the audit log)."""
        kind: VerdictKind = "block" if self.blocked else "rewrite" if self.matches else "allow"
        style = self._guard.policy.applied_style(self._rewriting.style) if kind == "rewrite" else None
        failure = "stream" if style is not None and self._rewriting.style == "paraphrase" else None
        return Verdict(kind, "", len(self.text), tuple(self.matches), self.elapsed_ms, skipped=self.skipped,
                       rewrite_style=style, paraphrase_failure=failure)

    def _is_copy(self, span: Match, continues: bool) -> bool:
        """Flag spans of Q chars or more (the work's own Q where its terms set one), the rest of a
        copy already flagged, and mosaics; never a span of a work licensed for reproduction."""
        if span.policy == "allow":
            return False
        if continues or span.chars >= self._guard.policy.quote_limit(span):
            return True
        return self._quoted[work_name(span)] + span.chars >= self._guard.policy.mosaic_limit(span)

    def _should_block(self, normalised_chars: int, final: bool) -> bool:
        """Block on `block_chars` copied at any point; on the share copied only at the end,
        since mid-stream the answer may yet go on with text of its own."""
        settings = self._guard.settings
        if self._flagged_chars >= settings.block_chars or any(m.policy == "block" for m in self.matches):
            return True
        return final and 0 < self._flagged_chars >= settings.block_ratio * normalised_chars


def _original_before(offsets: np.ndarray, normalised_position: int) -> int:
    """Original index that keeps the first `normalised_position` normalised chars before it."""
    if normalised_position <= 0:
        return 0
    if normalised_position >= len(offsets):
        return int(offsets[-1]) + 1 if len(offsets) else 0
    return int(offsets[normalised_position])
