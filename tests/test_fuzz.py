"""Fuzzing the parts that read untrusted input: the SSE parser, the normaliser, and the whole
middleware over a real server fed arbitrary event streams. Cases these found are kept below as
explicit examples, so they are tried on every run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.servers import serve
from textguard import Settings
from textguard.normalise import normalise
from textguard.serve._sse import EventParser
from textguard.serve.middleware import TextGuardMiddleware

_any_text = st.text(st.characters(categories=["L", "M", "N", "P", "S", "Z", "C"]), max_size=120)
_line_end = st.sampled_from([b"\n", b"\r\n"])


@st.composite
def event_streams(draw: st.DrawFn) -> bytes:
    """Well-formed event streams: data, event, id and comment lines, CRLF or LF line ends."""
    events = []
    for _ in range(draw(st.integers(0, 6))):
        end = draw(_line_end)
        kinds = st.sampled_from([b"data: ", b"data:", b"event: ", b"id: ", b": "])
        lines = draw(st.lists(kinds, min_size=1, max_size=4))
        body = b"".join(kind + draw(_any_text).replace("\n", " ").replace("\r", " ").encode("utf-8", "surrogatepass")
                        + end for kind in lines)
        events.append(body + end)
    return b"".join(events)


def _parse(pieces: list[bytes]) -> list[tuple[tuple[bytes, ...], str | None]]:
    parser = EventParser()
    events = [e for piece in pieces for e in parser.feed(piece)] + parser.close()
    return [(e.lines, e.data) for e in events]


@given(event_streams(), st.lists(st.integers(1, 40), max_size=30))
@example(b"data: \xe4\xb8\xad\r\n\r\n", [1, 1, 1, 1, 1, 1, 1])  # a character and a CRLF cut apart
def test_sse_parse_does_not_depend_on_how_the_body_is_cut(body: bytes, cuts: list[int]) -> None:
    pieces, position = [], 0
    for size in cuts:
        pieces.append(body[position:position + size])
        position += size
    pieces.append(body[position:])
    assert _parse(pieces) == _parse([body])


@given(st.binary(max_size=400), st.integers(1, 50))
@example(b"\r\r\n\n\xff\xfedata:\r", 3)
def test_sse_parser_takes_any_bytes(body: bytes, piece: int) -> None:
    events = _parse([body[i:i + piece] for i in range(0, len(body), piece)])
    assert all(isinstance(data, str | None) for _, data in events)


@settings(deadline=None)  # the first call builds the normaliser's tables
@given(_any_text)
@example("\ud800\udfff\ud800")  # lone surrogates, which JSON escapes can carry
@example("ß\u0130ﬃ\u1e9e")  # characters that fold to several
def test_normaliser_takes_any_text(text: str) -> None:
    result = normalise(text)
    assert len(result.offsets) == len(result.text)
    assert all(0 <= o < len(text) for o in result.offsets.tolist())


class _Echo:
    """Answers a request with its own body as an event stream, cut in pieces of X-Piece bytes."""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        piece = int(dict(scope["headers"]).get(b"x-piece", b"64"))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(0, len(body), piece):
            await send({"type": "http.response.body", "body": body[i:i + piece], "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture(scope="module")
def echo_url(indexed: Settings) -> Iterator[str]:
    with serve(TextGuardMiddleware(_Echo(), settings=indexed.replace(fail_mode="closed"))) as url:
        yield url


def _chunk(content: Any) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": content}}]}).encode() + b"\n\n"


@st.composite
def hostile_streams(draw: st.DrawFn) -> bytes:
    """Chat chunks mixed with garbage: non-JSON data, odd JSON shapes, raw bytes, stray [DONE]s."""
    parts = draw(st.lists(st.one_of(
        _any_text.map(_chunk),
        st.binary(max_size=60),
        st.sampled_from([b"data: [DONE]\n\n", b"data: {}\n\n", b'data: {"choices": null}\n\n',
                         b'data: {"choices": [1, "x", null]}\n\n', b'data: {"choices": [{"index": "zero"}]}\n\n',
                         b'data: {"choices": [{"index": 0, "delta": {"content": 5}}]}\n\n',
                         b'data: {"type": "response.output_text.delta", "delta": 7}\n\n', b"data: \xff\n\n"]),
        st.recursive(st.none() | st.integers() | _any_text, lambda inner: st.lists(inner, max_size=3), max_leaves=8)
        .map(lambda value: b"data: " + json.dumps(value).encode() + b"\n\n"),
    ), max_size=12))
    return b"".join(parts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hostile_streams(), st.integers(1, 64))
@example(b'data: {"choices": [{"index": "zero"}]}\n\n', 7)
@example(b'data: {"choices": [{"index": 0, "delta": {"content": "\\ud800"}}]}\n\n', 3)
def test_middleware_survives_hostile_streams(echo_url: str, body: bytes, piece: int) -> None:
    response = httpx2.post(echo_url + "/v1/chat/completions", content=body, headers={"x-piece": str(piece)},
                           timeout=30)
    assert response.status_code == 200
    response.read()
