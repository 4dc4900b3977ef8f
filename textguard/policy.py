"""Stage 6: decide what to do with the spans found, and produce the text the client gets.

Short quotation is lawful (适当引用): a span under `quote_chars` passes, unless the spans taken
from one work add up to `mosaic_chars` (a copy cut into short pieces is still a copy). What does
not pass is replaced by a notice naming the work; an answer that is mostly copied, or copies
`block_chars` or more, is blocked whole.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from textguard.detect import Match
from textguard.normalise import normalise
from textguard.settings import Settings

__all__ = ["REWRITE_STYLES", "Policy", "RewriteStyle", "Rewriting", "Verdict", "VerdictKind", "rewrite_style_problem",
           "work_name", "worst"]

VerdictKind = Literal["allow", "rewrite", "block"]
RewriteStyle = Literal["notice", "quote", "paraphrase"]
REWRITE_STYLES: tuple[RewriteStyle, ...] = ("notice", "quote", "paraphrase")
_SEVERITY: dict[VerdictKind, int] = {"allow": 0, "rewrite": 1, "block": 2}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a check decided, and the text the client gets.

    An answer that copies 200 characters of 《故乡》 among 300 of its own is rewritten:

    >>> verdict = guard.check_sync(answer)
    >>> verdict.verdict, verdict.skipped
    ('rewrite', None)
    >>> verdict.text      # the copy replaced by settings.notice
    '……〔此处省略受著作权保护的内容，出自《故乡》〕……'
    >>> [(m.title, m.start, m.end) for m in verdict.matches]   # offsets into `answer`
    [('故乡', 120, 320)]
    """

    verdict: VerdictKind
    text: str  # the text after the action
    checked_chars: int
    matches: tuple[Match, ...]  # spans acted on (rewritten or counted toward the block)
    elapsed_ms: float
    quotations: tuple[Match, ...] = field(default=())  # spans passed as lawful quotation
    skipped: str | None = None  # why the check could not run, if it could not
    rewrite_style: RewriteStyle | None = None  # how a rewrite replaced the copies
    paraphrase_failure: str | None = None  # why a paraphrase asked for was not released

    def to_dict(self) -> dict[str, Any]:
        """The verdict object of the interface contract (`check --json`, the check API); a
        skipped check also says why, and a rewrite other than the notice says how it was made."""
        result: dict[str, Any] = {"verdict": self.verdict, "text": self.text, "checked_chars": self.checked_chars,
                                  "matches": [m.to_dict() for m in self.matches],
                                  "elapsed_ms": round(self.elapsed_ms, 3)}
        if self.skipped is not None:
            result["skipped"] = self.skipped
        if self.rewrite_style not in (None, "notice") or self.paraphrase_failure is not None:
            result["rewrite_style"] = self.rewrite_style
        if self.paraphrase_failure is not None:
            result["paraphrase_failure"] = self.paraphrase_failure
        return result

    @classmethod
    def unchecked(cls, text: str, reason: str, elapsed_ms: float = 0.0, *, block_message: str | None = None) -> Verdict:
        """A check that could not run (`reason`): the text passes as it is (fail open), or
        `block_message` takes its place (fail closed)."""
        if block_message is not None:
            return cls("block", block_message, len(text), (), elapsed_ms, skipped=reason)
        return cls("allow", text, len(text), (), elapsed_ms, skipped=reason)


@dataclass(slots=True)
class Rewriting:
    """How the copies of one answer are replaced, and the works that answer has quoted so far.

    One per answer, shared by its texts (Messages blocks, Responses parts, a stream's checks):
    rewrite_style "quote" quotes a work once per answer. "paraphrase" is the work of
    `paraphrase.Paraphraser` on a whole answer; the policy itself replaces copies as
    `paraphrase_fallback` says, which is what a stream, or a paraphrase not released, gets.
    """

    style: RewriteStyle
    quoted: set[str] = field(default_factory=set)
    paraphrase_until: float | None = None  # the answer's paraphrasing budget ends (loop time), once begun


def rewrite_style_problem(style: object, settings: Settings) -> str | None:
    """Why a request may not ask for `style` (None: it may)."""
    allowed = [s for s in REWRITE_STYLES if s in settings.request_rewrite_styles]
    if style not in allowed:
        return f"the rewrite style a request asks for must be one of {', '.join(allowed) or '(none)'}, not {style!r}"
    return None


def worst(verdicts: Iterable[Verdict]) -> VerdictKind:
    """The kind that speaks for all the checked texts of one answer ("allow" for none)."""
    return max((v.verdict for v in verdicts), key=_SEVERITY.__getitem__, default="allow")


def work_name(match: Match) -> str:
    return match.work or match.title or match.doc_id


class Policy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def decide(self, text: str, normalised_chars: int, matches: list[Match], elapsed_ms: float,
               rewriting: Rewriting | None = None) -> Verdict:
        s = self.settings
        rewriting = rewriting or Rewriting(s.rewrite_style)
        per_work: dict[str, int] = defaultdict(int)
        for match in matches:
            if match.policy != "allow":  # licensed: not a copy, and no part of a mosaic
                per_work[work_name(match)] += match.chars
        flagged = [m for m in matches if m.policy != "allow"
                   and (m.chars >= self.quote_limit(m) or per_work[work_name(m)] >= self.mosaic_limit(m))]
        quotations = tuple(m for m in matches if m not in flagged)
        if not flagged:
            return Verdict("allow", text, len(text), (), elapsed_ms, quotations)
        copied = sum(m.chars for m in flagged)
        if copied >= s.block_chars or copied >= s.block_ratio * max(normalised_chars, 1) \
                or any(m.policy == "block" for m in flagged):
            return Verdict("block", self.block_message(flagged), len(text), tuple(flagged), elapsed_ms, quotations)
        return Verdict("rewrite", self.rewrite(text, flagged, rewriting), len(text), tuple(flagged), elapsed_ms,
                       quotations, rewrite_style=self.applied_style(rewriting.style))

    def applied_style(self, style: RewriteStyle) -> RewriteStyle:
        """What the policy itself does for `style`: a paraphrase is not its to make."""
        return self.settings.paraphrase_fallback if style == "paraphrase" else style

    def quote_limit(self, match: Match) -> int:
        """Q for `match`: its work's own limit where its terms set one, else the settings'."""
        return match.quote_chars or self.settings.quote_chars

    def mosaic_limit(self, match: Match) -> int:
        """What the spans of `match`'s work may add up to: never less than its own Q (a work
        licensed for longer quotations must not be caught as a mosaic of one span)."""
        return max(self.settings.mosaic_chars, self.quote_limit(match))

    def notice(self, match: Match) -> str:
        return self.settings.notice.format(work=work_name(match), title=match.title, author=match.author,
                                           doc_id=match.doc_id)

    def block_message(self, matches: Iterable[Match]) -> str:
        """The text of a blocked answer, naming the works copied; with none, the answer could not
        be checked (and is blocked only because the fail mode is closed)."""
        works = "》《".join(dict.fromkeys(work_name(m) for m in matches))
        return self.settings.block_message.format(works=works) if works else self.settings.unchecked_message

    def rewrite(self, text: str, flagged: list[Match], rewriting: Rewriting) -> str:
        """`text` with each flagged span replaced."""
        pieces: list[str] = []
        position = 0
        for match in sorted(flagged, key=lambda m: m.start):
            if match.start < position:
                continue
            pieces.append(text[position:match.start])
            pieces.append(self.replacement(match, text[match.start:match.end], rewriting))
            position = match.end
        pieces.append(text[position:])
        return "".join(pieces)

    def replacement(self, match: Match, copied: str, rewriting: Rewriting) -> str:
        """What takes the place of `copied`, the text of `match`: the notice; or, with
        rewrite_style "quote", for the first copy of each work in the answer, its opening as an
        attributed quotation and then the notice for the rest. The quotation keeps two thirds
        of Q at most: the margin covers a copy that began a few characters before its span."""
        work = work_name(match)
        if self.applied_style(rewriting.style) != "quote" or work in rewriting.quoted:
            return self.notice(match)
        rewriting.quoted.add(work)
        normal = normalise(copied)
        keep = min(self.quote_limit(match) * 2 // 3, len(normal.text))
        opening = copied[:int(normal.offsets[keep - 1]) + 1] if keep else ""
        return f"“{opening}……”（{match.author}《{work}》）{self.notice(match)}"
