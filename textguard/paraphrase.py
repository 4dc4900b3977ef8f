"""rewrite_style "paraphrase": a model restates the copies in its own words, and a restatement is
released only if a new check finds no copy in it (after BloomScrub, 2025: paraphrase the
flagged quotes, check again, abstain if a long quote survives).

Each flagged span is sent alone to an OpenAI-compatible chat endpoint (the spans of one answer
at once) and the restatements take the spans' places; the new answer is checked whole. What it
still copies is restated again, up to `paraphrase_attempts` times, all within
`paraphrase_timeout_ms` (one budget per answer, whatever its number of texts). A restatement
that still copies, a model that fails or hangs, and a check that cannot run all leave the
verdict the policy gave (`paraphrase_fallback`, notice or quote), saying why in
`paraphrase_failure`. A blocked answer is not paraphrased: restating most
of a work is an adaptation of it (改编), not a quotation.

The model is `paraphrase_url`, or else the app the middleware guards (the proxy's upstream in
the served app), asked with the client's own Authorization.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import httpx2

from textguard import telemetry
from textguard._asgi import ASGIApp
from textguard.detect import Match
from textguard.guard import Guard
from textguard.policy import Rewriting, Verdict

__all__ = ["Paraphraser"]

logger = logging.getLogger(__name__)

_IN_PROCESS_URL = "http://guarded-app/v1"  # the app the middleware guards, called in-process


class _Unusable(Exception):
    """The model answered, but with nothing that can stand for the span."""


class Paraphraser:
    """Restates the copies of whole answers; one per surface, shared by its requests."""

    def __init__(self, guard: Guard, *, app: ASGIApp | None = None) -> None:
        """`app`: the model to ask when `paraphrase_url` is not set (in-process, no network)."""
        self.guard = guard
        self.settings = guard.settings
        self._app = app
        self._own_key = self.settings.paraphrase_url is not None
        self._http: httpx2.AsyncClient | None = None  # opened at the first paraphrase, again after aclose()

    @property
    def _can_ask(self) -> bool:
        return self.settings.paraphrase_url is not None or self._app is not None

    def _client(self) -> httpx2.AsyncClient:
        if self._http is None:
            timeout = httpx2.Timeout(self.settings.paraphrase_timeout_ms / 1000)
            if self.settings.paraphrase_url is not None:
                self._http = httpx2.AsyncClient(base_url=self.settings.paraphrase_url.rstrip("/"), timeout=timeout)
            else:
                assert self._app is not None  # (`_can_ask`)
                transport = httpx2.ASGITransport(app=self._app, raise_app_exceptions=False)  # a failing app: a 500
                self._http = httpx2.AsyncClient(transport=transport, base_url=_IN_PROCESS_URL, timeout=timeout)
        return self._http

    async def check_whole(self, text: str, rewriting: Rewriting, *, model: str | None = None,
                          authorization: str | None = None) -> Verdict:
        """Check a text an answer holds whole (`Guard.check_held`), and restate its copies if the
        answer asked for a paraphrase."""
        verdict = await self.guard.check_held(text, rewriting=rewriting)
        return await self.restate(text, verdict, rewriting, model=model, authorization=authorization)

    async def restate(self, text: str, verdict: Verdict, rewriting: Rewriting, *, model: str | None = None,
                      authorization: str | None = None) -> Verdict:
        """`verdict` (of `text`, checked with `rewriting`) with the copies restated, if the answer
        asked for a paraphrase, was rewritten, and a restatement passes its check in time;
        otherwise `verdict` as the policy gave it (marked with why, if a paraphrase was asked)."""
        if rewriting.style != "paraphrase" or verdict.verdict != "rewrite":
            return verdict
        model = self.settings.paraphrase_model or model
        if not self._can_ask or not model:
            return self._fell_back(verdict, "no_model")
        started = time.perf_counter()
        if rewriting.paraphrase_until is None:  # one budget for all the texts of the answer
            rewriting.paraphrase_until = asyncio.get_running_loop().time() + self.settings.paraphrase_timeout_ms / 1000
        deadline = rewriting.paraphrase_until
        headers = self._headers(authorization)
        current, spans = text, _apart(verdict.matches)
        for _ in range(self.settings.paraphrase_attempts):
            try:  # the budget bounds the model; a check of what it wrote runs to its own end
                async with asyncio.timeout_at(deadline):
                    restated = await self._ask_all([current[m.start:m.end] for m in spans], model, headers)
            except TimeoutError:
                return self._fell_back(verdict, "timeout")
            except (httpx2.HTTPError, ValueError, _Unusable) as exc:  # ValueError: an answer not JSON
                logger.warning("the paraphrasing model failed (%s): %s", type(exc).__name__, exc)
                return self._fell_back(verdict, "model_error")
            current = _spliced(current, spans, restated)
            check = await self.guard.check_held(current)
            if check.skipped is not None:
                return self._fell_back(verdict, "unchecked")
            if check.verdict == "allow":
                telemetry.PARAPHRASES.labels("released").inc()
                elapsed = verdict.elapsed_ms + (time.perf_counter() - started) * 1000
                return replace(verdict, text=current, elapsed_ms=elapsed, rewrite_style="paraphrase")
            if check.verdict == "block":
                break
            spans = _apart(check.matches)
        return self._fell_back(verdict, "copied_again")

    def _headers(self, authorization: str | None) -> dict[str, str]:
        if self._own_key:
            key = self.settings.paraphrase_api_key
            return {"authorization": f"Bearer {key}"} if key else {}
        return {"authorization": authorization} if authorization else {}

    async def _ask_all(self, spans: list[str], model: str, headers: dict[str, str]) -> list[str]:
        """The restatements of `spans`, asked at once; one failing ends the others."""
        asks = [asyncio.ensure_future(self._ask(span, model, headers)) for span in spans]
        try:
            return list(await asyncio.gather(*asks))
        finally:
            for ask in asks:
                ask.cancel()

    async def _ask(self, span: str, model: str, headers: dict[str, str]) -> str:
        body = {"model": model, "stream": False, "max_tokens": 64 + 3 * len(span),
                "messages": [{"role": "user", "content": self.settings.paraphrase_prompt.replace("{text}", span)}]}
        response = await self._client().post("/chat/completions", json=body, headers=headers)
        response.raise_for_status()
        return _content(response.json())

    @staticmethod
    def _fell_back(verdict: Verdict, reason: str) -> Verdict:
        telemetry.PARAPHRASES.labels(reason).inc()
        return replace(verdict, paraphrase_failure=reason)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def _content(answer: Any) -> str:
    """The text of a chat completion."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise _Unusable(f"not a chat completion ({exc!r})") from exc
    if not isinstance(content, str) or not content.strip():
        raise _Unusable("an empty restatement")
    return content.strip()


def _apart(spans: Sequence[Match]) -> list[Match]:
    """The spans in order, without those overlapping one before (its replacement covers them)."""
    kept: list[Match] = []
    for span in sorted(spans, key=lambda m: m.start):
        if not kept or span.start >= kept[-1].end:
            kept.append(span)
    return kept


def _spliced(text: str, spans: Sequence[Match], restated: Sequence[str]) -> str:
    """`text` with each of `spans` (in order, apart) replaced by its restatement."""
    pieces: list[str] = []
    position = 0
    for span, new in zip(spans, restated, strict=True):
        pieces += [text[position:span.start], new]
        position = span.end
    pieces.append(text[position:])
    return "".join(pieces)
