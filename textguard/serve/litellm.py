"""LiteLLM's Generic Guardrail API, with streams held to the same bound as textguard's own.

LiteLLM posts an answer's texts here. On a stream it posts again every few chunks
(`streaming_sampling_rate`) with all the text so far, under one `litellm_call_id`, and it never
says which post is the last. In `streaming_transform_mode: incremental_diff` it sends the
client the `texts` we return less their last `stream_holdback_chars` characters, and on its
last post all of them. So every post is answered with the answer as it would stand if it ended
now, and a hold-back covering all of it that is not yet safe to release:

- the first post of a call is checked as a whole answer (a whole answer has only this one), and
  all of it is held;
- later posts feed what is new to a `GuardedStream` kept for the call: what the stream releases
  is final, and the held rest is what `finish()` gives on a twin of the stream.

What the client has been sent is therefore always a prefix of what we return next (LiteLLM
ends a stream with `stream_transform_underflow` otherwise), copies are replaced by the notice
mid-stream, and a stream that must be blocked ends with the block message in place of the rest.
LiteLLM's default `block_only` mode streams its raw chunks and drops rewrites: nothing returned
here can hold the bound there. It writes our texts back into its own copy of the answer, so a
post that continues what we returned rather than what we were sent shows that mode: a copy
found there ends the stream (BLOCKED) at once, the most that mode allows.

Calls are kept in memory (one server process per LiteLLM proxy), at most `_MAX_CALLS`, and
forgotten `_IDLE_S` seconds after their last post, when their verdict goes to the audit log.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from textguard.audit import AuditLog
from textguard.guard import Guard
from textguard.paraphrase import Paraphraser
from textguard.policy import RewriteStyle, Rewriting, Verdict, rewrite_style_problem
from textguard.stream import GuardedStream

__all__ = ["PATH", "LiteLLMGuardrail"]

PATH = "/beta/litellm_basic_guardrail_api"
_MAX_CALLS = 10_000
_IDLE_S = 120.0


class _RewritesDropped(Exception):
    """LiteLLM did not send our rewrite to the client (its block_only mode): only a block can act."""


class _Answer:
    """One text (choice) of one call: what it was fed, and what is final of what it returned."""

    def __init__(self, guard: Guard, text: str, first: Verdict, style: RewriteStyle) -> None:
        self._guard = guard
        self._style = style
        self.text = text  # the latest posted
        self.first = first  # the whole-answer check of the first post
        self.fed = text  # the answer as LiteLLM received it, so far
        self.stream: GuardedStream | None = None  # fed from the second post on
        self.outcome: GuardedStream | None = None  # the stream as it ended if the last post was the last
        self.released = ""  # final: the client has it, or will get it on LiteLLM's next send
        self.returned = first.text if first.verdict != "allow" else ""  # what the last post was answered with
        self.blocked = False

    async def post(self, text: str) -> tuple[str, int]:
        """The answer as it would stand if `text` were all of it, and how much of its end to hold."""
        self.text = text
        if self.blocked:
            return self.released, 0
        if not text.startswith(self.fed):
            if self.returned and text.startswith(self.returned):
                raise _RewritesDropped
            return self.released, 0  # not the text grown, as LiteLLM always sends it: keep it held
        if self.stream is None:
            self.stream, new = GuardedStream(self._guard, Rewriting(self._style)), text
        else:
            new = text[len(self.fed):]
        release = await self.stream.feed(new) if new else None
        self.fed = text
        if release is not None:
            self.released += release.text
            if release.blocked:
                self.blocked = True
                self.released += self._guard.policy.block_message(self.stream.matches)
                self.returned = self.released
                return self.released, 0
        self.outcome = self.stream.fork()
        preview = await self.outcome.finish()
        rest = self._guard.policy.block_message(self.outcome.matches) if preview.blocked else preview.text
        self.returned = self.released + rest
        return self.returned, len(rest)

    def verdict(self) -> Verdict:
        """What the answer came to, had its last post been its end (LiteLLM does not say)."""
        if self.outcome is not None and not self.blocked:
            return self.outcome.summary()
        return self.first if self.stream is None else self.stream.summary()


@dataclass(frozen=True, slots=True)
class _Asked:
    """What a call asked of the guard: its rewrite style, and the model that answered."""

    style: RewriteStyle
    model: str | None


@dataclass
class _Call:
    answers: list[_Answer]
    last_post: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class LiteLLMGuardrail:
    """The endpoint's logic, bound to one Guard; keeps the calls under way."""

    def __init__(self, guard: Guard, audit: AuditLog, paraphraser: Paraphraser) -> None:
        self.guard = guard
        self.audit = audit
        self.paraphraser = paraphraser
        self._calls: OrderedDict[str, _Call] = OrderedDict()

    async def answer(self, payload: dict[str, Any]) -> dict[str, Any]:
        """LiteLLM's contract: action NONE, GUARDRAIL_INTERVENED (with the rewritten `texts`) or
        BLOCKED (with `blocked_reason`). Only answers are checked unless the guardrail's
        `additional_provider_specific_params` set `check_requests`: quoting a protected work in
        a prompt is the user's act, not the model's. Those params (the guardrail's config, or a
        request's own) may also name a `rewrite_style`."""
        texts = payload.get("texts")
        if texts is None:
            return {"action": "NONE"}
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("'texts' must be a list of strings")
        params = payload.get("additional_provider_specific_params") or {}
        if not isinstance(params, dict):
            raise ValueError("'additional_provider_specific_params' must be an object")
        style = params.get("rewrite_style", self.guard.settings.rewrite_style)
        if "rewrite_style" in params and (problem := rewrite_style_problem(style, self.guard.settings)):
            raise ValueError(f"'rewrite_style': {problem}")
        model = payload.get("model") if isinstance(payload.get("model"), str) else None
        asked = _Asked(style, model)
        if payload.get("input_type") == "request":
            if not params.get("check_requests"):
                return {"action": "NONE"}
            prompt = _Asked(self.guard.policy.applied_style(style), None)  # a prompt is not the model's to restate
            return await self._whole(texts, "request", prompt)
        call_id = payload.get("litellm_call_id")
        if not isinstance(call_id, str) or not call_id:
            return await self._whole(texts, "response", asked)
        return await self._post(call_id, texts, asked)

    async def _check(self, texts: Sequence[str], asked: _Asked) -> list[Verdict]:
        """Each text checked whole, its copies paraphrased if the call asked for it."""
        return [await self.paraphraser.check_whole(text, Rewriting(asked.style), model=asked.model) for text in texts]

    async def _whole(self, texts: Sequence[str], kind: str, asked: _Asked) -> dict[str, Any]:
        """Texts that are not a stream's: judged whole, now."""
        verdicts = await self._check(texts, asked)
        for verdict, text in zip(verdicts, texts, strict=True):
            await self.audit.record(verdict, f"{PATH} ({kind})", text)
        return self._whole_answer(verdicts)

    def _whole_answer(self, verdicts: Sequence[Verdict]) -> dict[str, Any]:
        blocked = [v for v in verdicts if v.verdict == "block"]
        if blocked:
            return {"action": "BLOCKED", "blocked_reason": self.guard.policy.block_message(
                m for v in blocked for m in v.matches)}
        if any(v.verdict == "rewrite" for v in verdicts):
            return {"action": "GUARDRAIL_INTERVENED", "texts": [v.text for v in verdicts]}
        return {"action": "NONE"}

    async def _post(self, call_id: str, texts: list[str], asked: _Asked) -> dict[str, Any]:
        await self._forget_idle()
        call = self._calls.get(call_id)
        if call is None or len(call.answers) != len(texts):
            return await self._first_post(call_id, texts, asked)
        self._calls.move_to_end(call_id)
        call.last_post = time.monotonic()
        async with call.lock:
            try:
                results = [await answer.post(text) for answer, text in zip(call.answers, texts, strict=True)]
            except _RewritesDropped:
                del self._calls[call_id]
                await self._record(call)
                return {"action": "BLOCKED", "blocked_reason": self.guard.policy.block_message(
                    m for answer in call.answers for m in answer.verdict().matches)}
        returned = [text for text, _ in results]
        response: dict[str, Any] = {"action": "NONE" if returned == texts else "GUARDRAIL_INTERVENED",
                                    "stream_holdback_chars": [held for _, held in results]}
        if response["action"] != "NONE":
            response["texts"] = returned
        return response

    async def _first_post(self, call_id: str, texts: list[str], asked: _Asked) -> dict[str, Any]:
        """Judge the texts whole (a whole answer has no other post) and hold all of them (a
        stream's first post is not its answer: a paraphrase there reaches no client, and the
        stream's later posts get the fallback style)."""
        verdicts = await self._check(texts, asked)
        response = self._whole_answer(verdicts)
        if response["action"] == "BLOCKED":
            for verdict, text in zip(verdicts, texts, strict=True):
                await self.audit.record(verdict, PATH, text)
            return response
        answers = [_Answer(self.guard, text, verdict, asked.style)
                   for text, verdict in zip(texts, verdicts, strict=True)]
        self._calls[call_id] = _Call(answers)
        while len(self._calls) > _MAX_CALLS:
            await self._record(self._calls.popitem(last=False)[1])
        response["stream_holdback_chars"] = [len(v.text) for v in verdicts]
        return response

    async def _forget_idle(self) -> None:
        now = time.monotonic()
        while self._calls:
            call_id, call = next(iter(self._calls.items()))
            if now - call.last_post < _IDLE_S:
                break
            del self._calls[call_id]
            await self._record(call)

    async def _record(self, call: _Call) -> None:
        for answer in call.answers:
            await self.audit.record(answer.verdict(), PATH, answer.text)

    async def close(self) -> None:
        """Record what the calls still kept did (the server is stopping)."""
        while self._calls:
            await self._record(self._calls.popitem(last=False)[1])
