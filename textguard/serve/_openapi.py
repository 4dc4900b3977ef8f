"""The OpenAPI 3.1 document of the check API (`GET /openapi.json`), written out by hand: the API
is small, and a schema kept next to the contract is easier to review than one inferred."""

from __future__ import annotations

from typing import Any

from textguard import __version__

__all__ = ["document"]

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {_JSON: {"schema": _ref(schema)}}}


def _answer(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref(schema)}}}


_ERRORS = {
    "400": _answer("The body is not what the operation takes.", "Error"),
    "413": _answer("The body is larger than the server accepts.", "Error"),
}
_ADMIN_ERRORS = {
    **_ERRORS,
    "401": _answer("No admin bearer token, or a wrong one.", "Error"),
    "503": _answer("Redis cannot be reached.", "Error"),
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["message", "type", "code"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
            "code": {"type": "string"}}}},
    },
    "CheckRequest": {
        "type": "object", "required": ["text"],
        "properties": {
            "text": {"type": "string", "description": "The text to check (a model's answer)."},
            "rewrite_style": {"type": "string", "enum": ["notice", "quote", "paraphrase"],
                              "description": "How copies are replaced (default: the server's setting)."},
            "model": {"type": "string", "description": "The model asked to paraphrase, unless the server names "
                                                       "one (paraphrase_model)."},
        },
    },
    "Match": {
        "type": "object",
        "required": ["doc_id", "title", "author", "work", "start", "end", "source_start", "source_end",
                     "verbatim_chars", "similarity"],
        "properties": {
            "doc_id": {"type": "string"}, "title": {"type": "string"}, "author": {"type": "string"},
            "work": {"type": "string"},
            "start": {"type": "integer", "description": "Offset in the checked text (Python str index)."},
            "end": {"type": "integer", "description": "End offset, exclusive."},
            "source_start": {"type": "integer", "description": "Offset in the protected document."},
            "source_end": {"type": "integer"},
            "verbatim_chars": {"type": "integer", "description": "Longest exact run, normalised characters."},
            "similarity": {"type": "number", "minimum": 0, "maximum": 1},
        },
    },
    "Verdict": {
        "type": "object", "required": ["verdict", "text", "checked_chars", "matches", "elapsed_ms"],
        "properties": {
            "verdict": {"type": "string", "enum": ["allow", "rewrite", "block"]},
            "text": {"type": "string", "description": "The text after the action."},
            "checked_chars": {"type": "integer"},
            "matches": {"type": "array", "items": _ref("Match"), "description": "Spans acted on."},
            "elapsed_ms": {"type": "number"},
            "skipped": {"type": "string", "description": "Present when the check could not run (redis, timeout); "
                                                         "the fail mode then decided the verdict."},
            "rewrite_style": {"type": "string", "enum": ["notice", "quote", "paraphrase"],
                              "description": "How a rewrite replaced the copies; absent for the notice "
                                             "unless a paraphrase was asked for."},
            "paraphrase_failure": {"type": "string",
                                   "enum": ["copied_again", "timeout", "model_error", "unchecked", "no_model",
                                            "stream"],
                                   "description": "Why a paraphrase asked for was not released (the "
                                                  "fallback style was used)."},
        },
    },
    "AuditReport": {
        "type": "object", "required": ["subject", "answers", "copied_chars", "per_day", "per_work"],
        "properties": {
            "subject": {"type": "object"},
            "answers": {"type": "object", "properties": {k: {"type": "integer"} for k in
                                                         ("flagged", "rewritten", "blocked")}},
            "copied_chars": {"type": "integer"},
            "per_day": {"type": "array", "items": {"type": "object"}},
            "per_work": {"type": "array", "items": {"type": "object"}},
            "log_holds_from": {"type": ["string", "null"],
                               "description": "The oldest entry of the (capped) audit log."},
        },
    },
    "GuardrailRequest": {
        "type": "object",
        "properties": {
            "texts": {"type": ["array", "null"], "items": {"type": "string"},
                      "description": "Missing or null: nothing to check."},
            "input_type": {"type": "string", "enum": ["request", "response"]},
            "images": {"type": "array", "items": {"type": "string"}},
            "tools": {"type": "array", "items": {"type": "object"}},
            "request_data": {"type": "object"},
            "litellm_call_id": {"type": ["string", "null"],
                                "description": "Shared by the posts of one stream, each with the text so far."},
            "litellm_trace_id": {"type": ["string", "null"]},
            "additional_provider_specific_params": {
                "type": "object",
                "properties": {"check_requests": {"type": "boolean", "description": "Check prompts too."},
                               "rewrite_style": {"type": "string", "enum": ["notice", "quote", "paraphrase"]}}},
            "model": {"type": ["string", "null"], "description": "The model that answered (asked to paraphrase)."},
        },
    },
    "GuardrailResponse": {
        "type": "object", "required": ["action"],
        "properties": {
            "action": {"type": "string", "enum": ["NONE", "BLOCKED", "GUARDRAIL_INTERVENED"]},
            "blocked_reason": {"type": "string"},
            "texts": {"type": "array", "items": {"type": "string"}},
            "stream_holdback_chars": {"type": "array", "items": {"type": "integer", "minimum": 0},
                                      "description": "Per text, how much of its end a stream must hold back."},
        },
    },
    "Document": {
        "type": "object", "required": ["id", "text"],
        "properties": {"id": {"type": "string", "minLength": 1}, "text": {"type": "string"},
                       "title": {"type": "string"}, "author": {"type": "string"}, "work": {"type": "string"},
                       "public_domain": {"type": "boolean", "description": "Anyone may reproduce this text: a "
                                         "quotation of it is never flagged."},
                       "policy": {"type": "string", "enum": ["allow", "block"],
                                  "description": "Terms for this work: allow (licensed, never flagged) or block "
                                                 "(any copy blocks the answer)."},
                       "quote_chars": {"type": "integer", "minimum": 0, "maximum": 10000,
                                       "description": "This work's own quotation limit."}},
        "additionalProperties": True,
    },
    "AddDocuments": {
        "type": "object", "required": ["documents"],
        "properties": {"documents": {"type": "array", "minItems": 1, "items": _ref("Document")},
                       "public_domain": {"type": "boolean", "description": "Every document given is public "
                                         "domain (as `corpus add --public-domain`)."}},
    },
    "AddReport": {
        "type": "object", "required": ["added", "replaced", "unchanged", "characters"],
        "properties": {k: {"type": "integer"} for k in ("added", "replaced", "unchanged", "characters")},
    },
    "RemoveDocuments": {
        "type": "object", "required": ["ids"],
        "properties": {"ids": {"type": "array", "minItems": 1, "items": {"type": "string"}}},
    },
    "RemoveReport": {
        "type": "object", "required": ["removed", "missing"],
        "properties": {"removed": {"type": "integer"}, "missing": {"type": "array", "items": {"type": "string"}}},
    },
    "Stats": {
        "type": "object", "required": ["documents", "characters", "windows", "redis_bytes"],
        "properties": {"index": {"type": "string"}, "documents": {"type": "integer"},
                       "public_domain_documents": {"type": "integer"}, "characters": {"type": "integer"},
                       "windows": {"type": "integer"},
                       "redis_bytes": {"type": "integer"}, "bytes_per_char": {"type": "number"},
                       "pending": {"type": "integer"}, "parameters": {"type": "object"}},
    },
    "Health": {
        "type": "object", "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok", "degraded"]}, "redis": {"type": "string"}},
    },
}


def document(admin: bool, api_token: bool = False) -> dict[str, Any]:
    """The OpenAPI document; the corpus endpoints appear only where they exist (`admin`), and the
    check endpoints demand a token where one is set (`api_token`)."""
    checks: dict[str, Any] = {"security": [{"apiToken": []}]} if api_token else {}
    paths: dict[str, Any] = {
        "/v1/textguard/check": {"post": {
            "operationId": "check", "summary": "Check one text for copied protected works", **checks,
            "requestBody": _body("CheckRequest"),
            "responses": {"200": _answer("The verdict, with the spans acted on.", "Verdict"), **_ERRORS}}},
        "/beta/litellm_basic_guardrail_api": {"post": {
            "operationId": "litellmGuardrail", "summary": "LiteLLM Generic Guardrail API", **checks,
            "requestBody": _body("GuardrailRequest"),
            "responses": {"200": _answer("What LiteLLM should do.", "GuardrailResponse"), **_ERRORS}}},
        "/healthz": {"get": {
            "operationId": "health", "summary": "Is Redis reachable?",
            "responses": {"200": _answer("Ready.", "Health"), "503": _answer("Redis cannot be reached.", "Health")}}},
    }
    components: dict[str, Any] = {"schemas": _SCHEMAS, "securitySchemes": {}}
    if api_token:
        components["securitySchemes"]["apiToken"] = {"type": "http", "scheme": "bearer"}
    if admin:
        security: list[dict[str, list[str]]] = [{"adminToken": []}]
        paths["/v1/textguard/corpus/documents"] = {"post": {
            "operationId": "addDocuments", "summary": "Add or replace protected documents", "security": security,
            "requestBody": _body("AddDocuments"),
            "responses": {"200": _answer("What was indexed.", "AddReport"), **_ADMIN_ERRORS}}}
        paths["/v1/textguard/corpus/remove"] = {"post": {
            "operationId": "removeDocuments", "summary": "Take documents down", "security": security,
            "requestBody": _body("RemoveDocuments"),
            "responses": {"200": _answer("What was removed.", "RemoveReport"), **_ADMIN_ERRORS}}}
        paths["/v1/textguard/corpus/stats"] = {"get": {
            "operationId": "corpusStats", "summary": "Size of the index", "security": security,
            "responses": {"200": _answer("Index statistics.", "Stats"),
                          **{k: v for k, v in _ADMIN_ERRORS.items() if k in ("401", "503")}}}}
        paths["/v1/textguard/audit/report"] = {"get": {
            "operationId": "auditReport", "summary": "One work's or author's flagged answers, per day and per work",
            "security": security,
            "parameters": [{"name": name, "in": "query", "required": False, "schema": {"type": "string"},
                            "description": text} for name, text in (
                ("work", "The work (name this or author)."), ("author", "Every work of this author."),
                ("since", "ISO 8601 time; a date alone is its midnight, local time."), ("until", "ISO 8601 time."))],
            "responses": {"200": _answer("Counts and copied characters, no protected text.", "AuditReport"),
                          **_ADMIN_ERRORS}}}
        components["securitySchemes"]["adminToken"] = {"type": "http", "scheme": "bearer"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "textguard check API", "version": __version__,
                 "description": "Span-level checks of LLM answers against a self-hosted corpus of protected works."},
        "paths": paths,
        "components": components,
    }
