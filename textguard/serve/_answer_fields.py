"""Whole answers: where the text sits in each JSON answer format, and how each says "blocked".

OpenAI chat and legacy completions (and vLLM's `/v1/chat/completions/batch`, one choice per
conversation), the Responses API's response object, the Anthropic Messages API's message, and
Ollama's native `/api/chat` and `/api/generate` answers. A JSON answer in none of these shapes
is not one textguard can read: the caller treats it as a skipped check, never as "allow".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["AnswerField", "answer_fields"]


@dataclass(frozen=True, slots=True)
class AnswerField:
    """One answer text: `holder[key]`, and what marks its answer blocked in its own format.
    `answer` tells the answers of one payload apart (chat choices); the texts of one answer
    (Messages blocks, Responses parts) share it."""

    holder: dict[str, Any]
    key: str
    mark_blocked: Callable[[], None]
    answer: int = 0


def answer_fields(payload: Any) -> list[AnswerField] | None:
    """The answer texts of `payload` (an empty list: a known format with no text, such as a
    tool call), or None if it is no format textguard reads."""
    if not isinstance(payload, dict):
        return None
    if payload.get("object") == "response" and isinstance(payload.get("output"), list):
        return _response_fields(payload)
    if payload.get("type") == "message" and isinstance(payload.get("content"), list):
        return _message_fields(payload)
    if isinstance(payload.get("choices"), list):
        return _choice_fields(payload["choices"])
    if "done" in payload and isinstance(payload.get("message"), dict):  # Ollama /api/chat
        holder = payload["message"]
        return [_ollama_field(payload, holder, "content")] if isinstance(holder.get("content"), str) else []
    if "done" in payload and isinstance(payload.get("response"), str):  # Ollama /api/generate
        return [_ollama_field(payload, payload, "response")]
    return None


def _response_fields(response: dict[str, Any]) -> list[AnswerField]:
    def incomplete() -> None:
        response.update(status="incomplete", incomplete_details={"reason": "content_filter"})

    return [AnswerField(content, "text", incomplete)
            for item in response["output"] if isinstance(item, dict)
            for content in item.get("content") or []
            if isinstance(content, dict) and content.get("type") == "output_text"
            and isinstance(content.get("text"), str)]


def _message_fields(message: dict[str, Any]) -> list[AnswerField]:
    def refusal() -> None:
        message.update(stop_reason="refusal", stop_sequence=None)

    return [AnswerField(block, "text", refusal) for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)]


def _choice_fields(choices: list[Any]) -> list[AnswerField]:
    fields = []
    for number, choice in enumerate(choices):
        if not isinstance(choice, dict):
            continue

        def content_filter(choice: dict[str, Any] = choice) -> None:
            choice["finish_reason"] = "content_filter"

        message = choice.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            fields.append(AnswerField(message, "content", content_filter, number))
        elif isinstance(choice.get("text"), str):
            fields.append(AnswerField(choice, "text", content_filter, number))
    return fields


def _ollama_field(answer: dict[str, Any], holder: dict[str, Any], key: str) -> AnswerField:
    def content_filter() -> None:
        answer["done_reason"] = "content_filter"

    return AnswerField(holder, key, content_filter)
