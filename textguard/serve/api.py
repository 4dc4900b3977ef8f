"""The check API: textguard as an HTTP service beside (or without) the proxy.

- `POST /v1/textguard/check` takes `{"text": ...}` and answers with the verdict object of
  `textguard check --json` (spans, sources, the text after the action).
- `POST /beta/litellm_basic_guardrail_api` is LiteLLM's Generic Guardrail API, so a LiteLLM
  proxy can use textguard as a post-call guardrail with configuration alone (streams too: see
  `litellm`).
- With `api_token` set, both demand it (as a bearer token or LiteLLM's `x-api-key`): a
  reachable check API would otherwise tell anyone what the corpus holds.
- `/v1/textguard/corpus/...` (add, remove, stats) and `/v1/textguard/audit/report` (one work's
  or author's flags, as `textguard audit report --json`) exist only when an admin token is
  set, and demand it as a bearer token.
- `GET /openapi.json` describes all of it; `GET /healthz` says whether Redis answers; the
  served app adds Prometheus metrics at `/metrics`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from textguard import audit_report
from textguard._redis import REDIS_ERRORS, unavailable_on_error
from textguard.audit import AuditLog
from textguard.audit_report import AuditQuery, parse_time
from textguard.corpus import Corpus, document_from_record
from textguard.errors import ConfigError, CorpusInputError, StoreUnavailableError, TextGuardError
from textguard.guard import Guard
from textguard.paraphrase import Paraphraser
from textguard.policy import Rewriting, rewrite_style_problem
from textguard.serve._http import SKIPPED_HEADER, VERDICT_HEADER, error_body
from textguard.serve.litellm import PATH as LITELLM_PATH
from textguard.serve.litellm import LiteLLMGuardrail

__all__ = ["CheckAPI", "error"]

CHECK_PATH = "/v1/textguard/check"
CORPUS_PATH = "/v1/textguard/corpus"
AUDIT_REPORT_PATH = "/v1/textguard/audit/report"

Endpoint = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    pass


def error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(status, message, code), status_code=status, media_type="application/json",
                    headers=headers)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        payload = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadRequest(f"the body is not valid JSON ({exc})") from exc
    if not isinstance(payload, dict):
        raise _BadRequest("the body must be a JSON object")
    return payload


def _handles_bad_requests(endpoint: Endpoint) -> Endpoint:
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except _BadRequest as exc:
            return error(400, str(exc), "invalid_request")
        except CorpusInputError as exc:
            return error(400, str(exc), "invalid_document")
        except StoreUnavailableError as exc:
            return error(503, str(exc), "store_unavailable")
    return wrapped


class CheckAPI:
    """The endpoints, bound to one Guard (and, for the admin endpoints, one Corpus)."""

    def __init__(self, guard: Guard, paraphraser: Paraphraser | None = None) -> None:
        """`paraphraser`: how copies are restated (default: only a `paraphrase_url` is asked)."""
        self.guard = guard
        self.settings = guard.settings
        self.paraphraser = paraphraser or Paraphraser(guard)
        self.litellm = LiteLLMGuardrail(guard, AuditLog(guard.redis, guard.settings), self.paraphraser)
        self._corpus: Corpus | None = None

    def routes(self) -> list[Route]:
        checks = _bearer(self.settings.api_token, "api")
        admin = _bearer(self.settings.admin_token, "admin")
        routes = [
            Route(CHECK_PATH, checks(_handles_bad_requests(self.check)), methods=["POST"]),
            Route(LITELLM_PATH, checks(_handles_bad_requests(self.litellm_guardrail)), methods=["POST"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/healthz", self.health, methods=["GET"]),
        ]
        if self.settings.admin_token:
            routes += [
                Route(CORPUS_PATH + "/documents", admin(_handles_bad_requests(self.add_documents)), methods=["POST"]),
                Route(CORPUS_PATH + "/remove", admin(_handles_bad_requests(self.remove_documents)), methods=["POST"]),
                Route(CORPUS_PATH + "/stats", admin(self.corpus_stats), methods=["GET"]),
                Route(AUDIT_REPORT_PATH, admin(_handles_bad_requests(self.audit_report)), methods=["GET"]),
            ]
        return routes

    async def check(self, request: Request) -> Response:
        payload = await _json_object(request)
        text = payload.get("text")
        if not isinstance(text, str):
            raise _BadRequest("'text' must be a string")
        style = payload.get("rewrite_style", self.settings.rewrite_style)
        if "rewrite_style" in payload and (problem := rewrite_style_problem(style, self.settings)):
            raise _BadRequest(f"'rewrite_style': {problem}")
        model = payload.get("model")
        if model is not None and not isinstance(model, str):
            raise _BadRequest("'model' must be a string")
        rewriting = Rewriting(style)
        verdict = await self.guard.check(text, budget_ms=self.settings.api_check_timeout_ms, rewriting=rewriting)
        verdict = await self.paraphraser.restate(text, verdict, rewriting, model=model)
        headers: dict[str, str] = {VERDICT_HEADER: verdict.verdict}
        if verdict.skipped:
            headers[SKIPPED_HEADER] = verdict.skipped
        return JSONResponse(verdict.to_dict(), headers=headers)

    async def litellm_guardrail(self, request: Request) -> Response:
        try:
            return JSONResponse(await self.litellm.answer(await _json_object(request)))
        except ValueError as exc:
            raise _BadRequest(str(exc)) from exc

    async def health(self, request: Request) -> Response:
        try:
            await self.guard.ping()
        except (*REDIS_ERRORS, OSError, TextGuardError) as exc:
            return JSONResponse({"status": "degraded", "redis": str(exc) or type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def openapi(self, request: Request) -> Response:
        from textguard.serve._openapi import document  # built on demand: only tools read it

        return JSONResponse(document(admin=bool(self.settings.admin_token), api_token=bool(self.settings.api_token)))

    # -- corpus administration --------------------------------------------------------------

    def _corpus_instance(self) -> Corpus:
        if self._corpus is None:
            self._corpus = Corpus(self.settings)
        return self._corpus

    async def _in_thread(self, work: Callable[[Corpus], Any]) -> Any:
        """Corpus maintenance is blocking (and long): keep it off the event loop."""
        return await asyncio.to_thread(lambda: work(self._corpus_instance()))

    async def add_documents(self, request: Request) -> Response:
        payload = await _json_object(request)
        records = payload.get("documents")
        if not isinstance(records, list) or not records:
            raise _BadRequest("'documents' must be a non-empty list of {id, text, ...} objects")
        public_domain = payload.get("public_domain", False)
        if not isinstance(public_domain, bool):
            raise _BadRequest("'public_domain' must be true or false")
        documents = [document_from_record(r, f"documents[{i}]", public_domain=public_domain)
                     for i, r in enumerate(records)]
        report = await self._in_thread(lambda corpus: corpus.add(documents))
        return JSONResponse({"added": report.added, "replaced": report.replaced, "unchanged": report.unchanged,
                             "characters": report.characters})

    async def remove_documents(self, request: Request) -> Response:
        payload = await _json_object(request)
        ids = payload.get("ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise _BadRequest("'ids' must be a non-empty list of document ids")
        missing = await self._in_thread(lambda corpus: corpus.remove(ids))
        return JSONResponse({"removed": len(ids) - len(missing), "missing": missing})

    async def corpus_stats(self, request: Request) -> Response:
        return JSONResponse(await self._in_thread(lambda corpus: corpus.stats()))

    async def audit_report(self, request: Request) -> Response:
        """`textguard audit report --json`: one work's or author's flags, per day and per work."""
        params = request.query_params
        try:
            query = AuditQuery(params.get("work"), params.get("author"), parse_time(params.get("since"), "since"),
                               parse_time(params.get("until"), "until"))
        except ConfigError as exc:
            raise _BadRequest(str(exc)) from exc
        with unavailable_on_error():
            result = await asyncio.to_thread(audit_report.report, self.settings, query)
        return JSONResponse(result)

    async def aclose(self) -> None:
        await self.litellm.close()
        await self.paraphraser.aclose()
        if self._corpus is not None:
            self._corpus.close()
            self._corpus = None


def _bearer(token: str | None, kind: str) -> Callable[[Endpoint], Endpoint]:
    """Endpoints that demand `token` as `Authorization: Bearer` (or `x-api-key`, which LiteLLM's
    guardrail sends); with no token set they are open."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        if token is None:
            return endpoint
        expected = token.encode()

        async def guarded(request: Request) -> Response:
            given = request.headers.get("authorization", "").strip()
            scheme, _, credential = given.partition(" ")
            if scheme.lower() != "bearer":
                credential = request.headers.get("x-api-key", "")
            if not hmac.compare_digest(credential.strip().encode(), expected):
                return error(401, f"a valid {kind} bearer token is required", "unauthorized",
                             headers={"www-authenticate": "Bearer"})
            return await endpoint(request)
        return guarded
    return wrap
