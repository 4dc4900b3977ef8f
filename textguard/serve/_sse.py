"""Streamed bodies, incrementally: server-sent events and NDJSON lines (Ollama's streams). Events
may arrive split across body messages, lines may end in CRLF, and a multibyte character may be
cut between two messages."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Event", "EventParser", "Line", "LineParser", "encode_data"]


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE event: its raw lines (to re-send untouched) and its joined `data` field."""

    lines: tuple[bytes, ...]
    data: str | None  # None: no data field (a comment or keep-alive, or only other fields)

    def encode(self) -> bytes:
        return b"".join(line + b"\n" for line in self.lines) + b"\n"


def encode_data(data: str, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"".join(b"data: " + line.encode() + b"\n" for line in data.split("\n")) + b"\n"


@dataclass(frozen=True, slots=True)
class Line:
    """One NDJSON line: its raw bytes (to re-send untouched) and its text."""

    raw: bytes

    @property
    def data(self) -> str | None:
        return self.raw.decode("utf-8", "replace") if self.raw.strip() else None

    def encode(self) -> bytes:
        return self.raw + b"\n"


class LineParser:
    """Feed body bytes, get complete lines."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[Line]:
        *complete, self._buffer = (self._buffer + chunk).split(b"\n")
        return [Line(raw.rstrip(b"\r")) for raw in complete]

    def close(self) -> list[Line]:
        rest, self._buffer = self._buffer.rstrip(b"\r"), b""
        return [Line(rest)] if rest else []


class EventParser:
    """Feed body bytes, get complete events. Lines are split on bytes, so characters stay whole."""

    def __init__(self) -> None:
        self._buffer = b""
        self._lines: list[bytes] = []

    def feed(self, chunk: bytes) -> list[Event]:
        self._buffer += chunk
        events: list[Event] = []
        *complete, self._buffer = self._buffer.split(b"\n")
        for raw in complete:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if line:
                self._lines.append(line)
            elif self._lines:
                events.append(_event(self._lines))
                self._lines = []
        return events

    def close(self) -> list[Event]:
        """Whatever is left when the body ends (a last event without its blank line)."""
        if self._buffer:
            self._lines.append(self._buffer.rstrip(b"\r"))
            self._buffer = b""
        events = [_event(self._lines)] if self._lines else []
        self._lines = []
        return events


def _event(lines: list[bytes]) -> Event:
    data: list[str] = []
    for line in lines:
        if line.startswith(b"data:"):
            value = line[5:]
            data.append((value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace"))
    return Event(tuple(lines), "\n".join(data) if data else None)
