"""Whole answers: a JSON body (in one of the formats of `_answer_fields`) or plain text, held
whole, checked, and sent rewritten or blocked with a new Content-Length.

A body textguard cannot read (an unknown encoding, malformed JSON, an unknown format, or more
than it may check) is a skipped check, never "allow": the fail mode decides whether it passes
(marked as skipped) or an error takes its place.
"""

from __future__ import annotations

import json
import logging
import zlib
from typing import Any

from textguard import telemetry
from textguard._asgi import Message
from textguard.policy import Rewriting, Verdict, worst
from textguard.serve._answer_fields import answer_fields
from textguard.serve._http import (
    REQUEST_ID_HEADER,
    REWRITE_STYLE_HEADER,
    SKIPPED_HEADER,
    VERDICT_HEADER,
    compact_json,
    decoder,
    is_json,
    response_headers,
    send_error,
    with_headers,
)
from textguard.serve._reply import Reply

__all__ = ["WholeAnswer"]

logger = logging.getLogger(__name__)

BYTES_PER_CHAR = 8  # a held answer beyond max_check_chars * this cannot fit the check


class WholeAnswer:
    def __init__(self, reply: Reply, start: Message) -> None:
        self.reply = reply
        self.start_message = start
        headers = response_headers(start)
        self.content_type = headers.get("content-type", "").strip().lower()
        self.encoding = headers.get("content-encoding", "identity")
        self.body = bytearray()
        self.overflow: str | None = None  # past the size limit: "relay" the rest (open) or "drop" it (closed)

    async def start(self) -> None:
        """Nothing goes out before the whole answer is checked."""

    async def feed(self, chunk: bytes, more: bool) -> None:
        if self.overflow == "relay":
            await self.reply.body(chunk, more)
        elif self.overflow is None:
            self.body += chunk
            if len(self.body) > BYTES_PER_CHAR * self.reply.settings.max_check_chars:
                await self._too_large(more)
            elif not more:
                await self._check()

    async def close(self) -> None:
        """Verdicts are recorded as they are sent."""

    async def _too_large(self, more: bool) -> None:
        settings = self.reply.settings
        logger.warning("answer larger than %d bytes: not checked, failing %s",
                       BYTES_PER_CHAR * settings.max_check_chars, settings.fail_mode)
        self.reply.guard.note_skip("too_large")
        self.overflow = "drop" if settings.fail_mode == "closed" else "relay"
        await self._unchecked("too_large", more=more)

    async def _check(self) -> None:
        try:
            body = decoder(self.encoding)(bytes(self.body))
        except (OSError, ValueError, zlib.error) as exc:
            logger.warning("cannot decode a %s answer: %s", self.encoding, exc)
            self.reply.guard.note_skip("encoding")
            await self._unchecked("encoding")
            return
        try:
            payload = json.loads(body) if is_json(self.content_type) or not self.content_type else None
        except (ValueError, RecursionError):  # not JSON, or nested beyond reason
            if self.content_type:
                logger.warning("a guarded answer is not valid JSON: not checked, failing %s",
                               self.reply.settings.fail_mode)
                self.reply.guard.note_skip("malformed")
                await self._unchecked("malformed")
                return
            payload = None  # no content type: read it as text
        if payload is None:
            await self._check_text(body)
        else:
            await self._check_json(body, payload)

    async def _check_text(self, body: bytes) -> None:
        text = body.decode("utf-8", "replace")
        verdict = await self.reply.check_whole(text, Rewriting(self.reply.rewrite_style))
        await self._respond(body if verdict.verdict == "allow" else verdict.text.encode(), [verdict])
        await self.reply.record(verdict, text)

    async def _check_json(self, body: bytes, payload: Any) -> None:
        fields = answer_fields(payload)
        if fields is None:
            logger.warning("a guarded answer is in no format textguard reads: not checked, failing %s",
                           self.reply.settings.fail_mode)
            self.reply.guard.note_skip("unknown_format")
            await self._unchecked("unknown_format", mark_allowed=False)
            return
        checked = []
        rewritings: dict[int, Rewriting] = {}  # per answer (chat choice), whatever its number of texts
        model = payload.get("model") if isinstance(payload.get("model"), str) else None
        for field in fields:
            text = field.holder[field.key]
            rewriting = rewritings.setdefault(field.answer, Rewriting(self.reply.rewrite_style))
            verdict = await self.reply.check_whole(text, rewriting, model)
            if verdict.verdict != "allow":
                field.holder[field.key] = verdict.text
            if verdict.verdict == "block":
                field.mark_blocked()
            checked.append((verdict, text))
        verdicts = [verdict for verdict, _ in checked]
        expose = self.reply.settings.expose_matches
        if expose and isinstance(payload, dict) and verdicts:
            payload["textguard"] = {"verdict": worst(verdicts),
                                    "matches": [m.to_dict() for v in verdicts for m in v.matches]}
        changed = expose or any(v.verdict != "allow" or v.skipped for v in verdicts)
        await self._respond(compact_json(payload).encode() if changed else body, verdicts)
        for verdict, text in checked:
            await self.reply.record(verdict, text)

    async def _respond(self, body: bytes, verdicts: list[Verdict]) -> None:
        headers = {VERDICT_HEADER: worst(verdicts), "content-length": str(len(body))}
        styles = sorted({v.rewrite_style for v in verdicts if v.rewrite_style and v.verdict == "rewrite"})
        if styles:
            headers[REWRITE_STYLE_HEADER] = ",".join(styles)
        skipped = sorted({v.skipped for v in verdicts if v.skipped})
        if skipped:
            headers[SKIPPED_HEADER] = ",".join(skipped)
        await self.reply.send(with_headers(self.start_message, headers, drop=("content-encoding",)))
        await self.reply.body(body, more=False)

    async def _unchecked(self, reason: str, more: bool = False, mark_allowed: bool = True) -> None:
        """Send an answer that could not be checked as it is (open), or an error in its place
        (closed): it cannot be rewritten or blocked in its own format if it cannot be read.
        An unknown format passes marked only as skipped (no verdict was reached)."""
        if self.reply.settings.fail_mode == "closed":
            message = self.reply.guard.policy.block_message(())
            headers = {VERDICT_HEADER: "block", SKIPPED_HEADER: reason, REQUEST_ID_HEADER: telemetry.request_id.get()}
            await send_error(self.reply.send, 502, message, "answer_not_checked", headers)
            await self.reply.record(Verdict.unchecked("", reason, block_message=message), "")
            return
        headers = {VERDICT_HEADER: "allow", SKIPPED_HEADER: reason} if mark_allowed else {SKIPPED_HEADER: reason}
        await self.reply.send(with_headers(self.start_message, headers))
        await self.reply.body(bytes(self.body), more=more)

