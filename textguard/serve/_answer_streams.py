"""Streamed answers, one handler per wire format: where the text deltas sit, and how a stream
that must be blocked ends so that its clients finish normally.

- `ChatStream`: OpenAI chat and legacy completions chunks (`choices[].delta.content`, `text`),
  one guarded stream per choice; also Ollama's native NDJSON lines (`message.content`, `response`).
- `ResponsesStream`: the Responses API's `response.output_text.delta` events, per content part.
- `MessagesStream`: the Anthropic Messages API's `content_block_delta` events, per text block.

A handler gets each event as a parsed JSON object and either handles it (sending what may go
out through its `Sink`) or leaves it to pass unchanged. Usage is relayed as the upstream sent
it; a stream blocked before the upstream sent usage carries none (or, where the client's SDK
demands a figure, the last the upstream sent), never invented counts.
"""

from __future__ import annotations

from typing import Any, NoReturn, Protocol

from textguard.guard import Guard
from textguard.policy import RewriteStyle, Rewriting
from textguard.stream import GuardedStream, Release

__all__ = [
    "AnswerStream", "ChatStream", "MessagesStream", "ResponsesStream", "Sink", "pick",
]

ANTHROPIC_EVENTS = frozenset({"message_start", "content_block_start", "content_block_delta", "content_block_stop",
                              "message_delta", "message_stop", "ping", "error"})  # an error first: passed as it is


class Sink(Protocol):
    """What a handler needs of the response it writes to."""

    guard: Guard
    rewrite_style: RewriteStyle  # the settings', or the request's own

    async def emit(self, payload: Any, event: str | None = None) -> None:
        """Send one event (SSE, named `event`) or line (NDJSON)."""

    async def end(self) -> NoReturn:
        """End the response here and stop the app (raises)."""


class AnswerStream:
    """The guarded streams of one response, keyed by what the format calls a text's place."""

    one_answer = True  # its texts are parts of one answer (blocks, parts), not answers of their own (choices)

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.streams: dict[Any, GuardedStream] = {}
        self.rewriting = Rewriting(sink.rewrite_style)  # the answer's, shared by its texts

    def stream(self, key: Any) -> GuardedStream:
        stream = self.streams.get(key)
        if stream is None:
            rewriting = self.rewriting if self.one_answer else Rewriting(self.sink.rewrite_style)
            stream = self.streams[key] = GuardedStream(self.sink.guard, rewriting)
        return stream

    async def on(self, payload: dict[str, Any]) -> bool:
        """Handle one event; False leaves it to pass unchanged."""
        raise NotImplementedError

    async def on_done(self) -> None:
        """The upstream's stream ended: release what is still held."""


def pick(payload: dict[str, Any], sink: Sink) -> AnswerStream | None:
    """The handler for a stream whose first readable event is `payload` (None: not a format we read)."""
    kind = payload.get("type")
    if isinstance(kind, str) and kind.startswith("response."):
        return ResponsesStream(sink)
    if kind in ANTHROPIC_EVENTS:
        return MessagesStream(sink)
    if isinstance(payload.get("choices"), list) or "error" in payload:
        return ChatStream(sink)
    if "done" in payload and (isinstance(payload.get("message"), dict) or "response" in payload):
        return ChatStream(sink)  # Ollama's native lines
    return None


class ChatStream(AnswerStream):
    """Chat and legacy completions chunks (and Ollama's lines, which have one implicit choice)."""

    one_answer = False  # each choice is an answer of its own

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self.closed = False  # blocked at the end: only the upstream's usage and [DONE] still pass

    async def on(self, chunk: dict[str, Any]) -> bool:
        if "done" in chunk and "choices" not in chunk:
            return await self._ollama_line(chunk)
        if not isinstance(chunk.get("choices"), list) or not chunk["choices"]:
            return False  # usage chunks, errors
        if self.closed:
            return True
        keep: list[Any] = []
        for choice in chunk["choices"]:
            if not isinstance(choice, dict):
                keep.append(choice)
                continue
            index = choice.get("index", 0)
            if not isinstance(index, int):  # malformed: still guarded, as choice 0
                index = 0
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else None
            holder, key = (delta, "content") if delta is not None else (choice, "text")
            content = holder.get(key)
            if isinstance(content, str) and content:
                release = await self.stream(index).feed(content)
                if release.blocked:
                    await self._block(chunk, index, at_end=False)
                holder[key] = release.text
            if choice.get("finish_reason") is not None and await self._flush_choice(chunk, index, holder, key):
                return True
            if _carries_something(choice, holder, key):
                keep.append(choice)
        if keep:
            await self.sink.emit({**chunk, "choices": keep})
        return True

    async def _flush_choice(self, chunk: dict[str, Any], index: int, holder: dict[str, Any], key: str) -> bool:
        """Before a choice's finish_reason, send what its stream still holds, in a chunk of its
        own: clients drop content that shares a chunk with the finish_reason. True if blocked."""
        release = await self.stream(index).finish()
        if release.blocked:
            await self._block(chunk, index, at_end=True)
            return True
        text = (holder.get(key) or "") + release.text
        if key in holder:
            holder[key] = ""
        if text:
            await self.sink.emit(_content_chunk(chunk, index, key, text))
        return False

    async def on_done(self) -> None:
        for index, stream in list(self.streams.items()):
            if stream.finished:
                continue
            release = await stream.finish()
            if release.text and not self.closed:
                template = {"object": "chat.completion.chunk", "choices": []}
                await self.sink.emit(_content_chunk(template, index, "content", release.text))

    async def _block(self, chunk: dict[str, Any], index: int, at_end: bool) -> None:
        """An empty delta with finish_reason content_filter. Blocked at its end, the stream goes on
        to pass the upstream's usage chunk and [DONE]; blocked midway, it ends here with [DONE]
        (no usage: the upstream never sent it) and the app is stopped."""
        delta = any(isinstance(c, dict) and "delta" in c for c in chunk["choices"])
        choice: dict[str, Any] = {"index": index, "finish_reason": "content_filter"}
        if delta:
            choice["delta"] = {}
        else:
            choice["text"] = ""
        await self.sink.emit({**chunk, "choices": [choice]})
        self.closed = True
        if not at_end:
            await self.sink.emit("[DONE]")
            await self.sink.end()

    async def _ollama_line(self, line: dict[str, Any]) -> bool:
        """Ollama's /api/chat (`message.content`) and /api/generate (`response`) lines; the last
        says `done`. A block ends the answer with the block message and `done_reason: "content_filter"`."""
        if self.closed:
            return True
        holder, key = (line["message"], "content") if isinstance(line.get("message"), dict) else (line, "response")
        content = holder.get(key)
        stream = self.stream(0)
        release = await stream.feed(content) if isinstance(content, str) and content else Release("")
        if line.get("done") and not release.blocked:
            end = await stream.finish()
            release = Release(release.text + end.text, blocked=end.blocked)
        if release.blocked:
            holder[key] = release.text + self.sink.guard.policy.block_message(stream.matches)
            self.closed = True
            await self.sink.emit({**line, "done": True, "done_reason": "content_filter"})
            await self.sink.end()
        holder[key] = release.text
        if release.text or line.get("done"):
            await self.sink.emit(line)
        return True


class ResponsesStream(AnswerStream):
    """Responses API events: text deltas guarded per content part; done and completed events get
    the released text; events are renumbered, since held-back deltas are dropped."""

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self.response: dict[str, Any] = {}
        self.released: dict[tuple[Any, Any, Any], str] = {}
        self.items: dict[Any, dict[str, Any]] = {}  # opened output items, by output_index
        self.parts: dict[tuple[Any, Any, Any], dict[str, Any]] = {}  # opened content parts not yet done
        self.sequence = 0

    async def on(self, event: dict[str, Any]) -> bool:
        kind = event.get("type")
        if not isinstance(kind, str):
            return False
        if kind == "response.created" and isinstance(event.get("response"), dict):
            self.response = event["response"]
        elif kind == "response.output_item.added" and isinstance(event.get("item"), dict):
            self.items[event.get("output_index")] = event["item"]
        elif kind == "response.output_item.done":
            self.items.pop(event.get("output_index"), None)
        elif kind == "response.content_part.added" and isinstance(event.get("part"), dict):
            self.parts[(event.get("item_id"), event.get("output_index"), event.get("content_index"))] = event["part"]
        elif kind == "response.content_part.done":
            self.parts.pop((event.get("item_id"), event.get("output_index"), event.get("content_index")), None)
        part = (event.get("item_id"), event.get("output_index"), event.get("content_index"))
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            release = await self.stream(part).feed(event["delta"])
            self._add(part, release)
            if release.blocked:
                await self._incomplete()
            if not release.text:
                return True
            event["delta"] = release.text
        elif kind == "response.output_text.done":
            release = await self.stream(part).finish()
            self._add(part, release)
            if release.blocked:
                await self._incomplete()
            if release.text:
                await self._emit({**{k: v for k, v in event.items() if k != "text"},
                                  "type": "response.output_text.delta", "delta": release.text})
            event["text"] = self.released.get(part, "")
        else:
            self._replace_released_texts(event)
        await self._emit(event)
        return True

    def _add(self, part: tuple[Any, Any, Any], release: Release) -> None:
        self.released[part] = self.released.get(part, "") + release.text

    def _replace_released_texts(self, event: dict[str, Any]) -> None:
        """Done and completed events repeat the whole text: give them the released text."""
        released = {(item_id, content_index): text for (item_id, _, content_index), text in self.released.items()}
        if isinstance(event.get("part"), dict) and "text" in event["part"]:
            event["part"]["text"] = released.get((event.get("item_id"), event.get("content_index")),
                                                 event["part"]["text"])
        items = [event["item"]] if isinstance(event.get("item"), dict) else []
        if isinstance(event.get("response"), dict) and isinstance(event["response"].get("output"), list):
            items += [i for i in event["response"]["output"] if isinstance(i, dict)]
        for item in items:
            for index, content in enumerate(item.get("content") or []):
                if isinstance(content, dict) and (item.get("id"), index) in released:
                    content["text"] = released[(item.get("id"), index)]

    async def _incomplete(self) -> NoReturn:
        """Close what was opened (text, part and item done events, with the released text), then
        `response.completed` holding status incomplete (reason content_filter): the SDK's stream
        helpers need that terminal event to give the final response. Then stop the app."""
        output = []
        for output_index, item in sorted(self.items.items(), key=lambda pair: _position(pair[0])):
            content = []
            for (item_id, part_output, content_index), part in list(self.parts.items()):
                if part_output != output_index:
                    continue
                key = (item_id, part_output, content_index)
                text = self.released.get(key, "")
                where = {"item_id": item_id, "output_index": part_output, "content_index": content_index}
                if part.get("type") == "output_text":
                    await self._emit({"type": "response.output_text.done", **where, "text": text, "logprobs": []})
                await self._emit({"type": "response.content_part.done", **where, "part": {**part, "text": text}})
                content.append({**part, "text": text})
            done = {**item, "status": "incomplete", "content": content}
            await self._emit({"type": "response.output_item.done", "output_index": output_index, "item": done})
            output.append(done)
        response = {**self.response, "status": "incomplete", "output": output,
                    "incomplete_details": {"reason": "content_filter"}}
        await self._emit({"type": "response.completed", "response": response})
        await self.sink.end()

    async def _emit(self, event: dict[str, Any]) -> None:
        event["sequence_number"] = self.sequence
        self.sequence += 1
        await self.sink.emit(event, event=event["type"])


class MessagesStream(AnswerStream):
    """Anthropic Messages events: `text_delta`s guarded per content block; a text block's held
    text goes out before its `content_block_stop`; a block ends the message with
    `stop_reason: "refusal"`."""

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self.usage: dict[str, Any] = {}  # the last usage the upstream sent
        self.open: dict[Any, bool] = {}  # content blocks started and not stopped: index -> is text

    async def on(self, event: dict[str, Any]) -> bool:
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            self.usage = dict(event["message"].get("usage") or {})
        elif kind == "message_delta" and isinstance(event.get("usage"), dict):
            self.usage.update(event["usage"])
        elif kind == "content_block_start" and isinstance(event.get("content_block"), dict):
            self.open[event.get("index")] = event["content_block"].get("type") == "text"
        delta = event.get("delta")
        if kind == "content_block_delta" and isinstance(delta, dict) and delta.get("type") == "text_delta" \
                and isinstance(delta.get("text"), str):
            release = await self.stream(event.get("index")).feed(delta["text"])
            if release.blocked:
                await self._refuse()
            if release.text:
                await self.sink.emit({**event, "delta": {**delta, "text": release.text}}, event=kind)
            return True
        if kind == "content_block_stop":
            await self._flush(event.get("index"))
            self.open.pop(event.get("index"), None)
        return False

    async def _flush(self, index: Any) -> None:
        stream = self.streams.get(index)
        if stream is None or stream.finished:
            return
        release = await stream.finish()
        if release.blocked:
            await self._refuse()
        if release.text:
            await self.sink.emit({"type": "content_block_delta", "index": index,
                                  "delta": {"type": "text_delta", "text": release.text}}, event="content_block_delta")

    async def on_done(self) -> None:
        for index in list(self.streams):
            await self._flush(index)

    async def _refuse(self) -> NoReturn:
        for index in list(self.open):
            await self.sink.emit({"type": "content_block_stop", "index": index}, event="content_block_stop")
        usage = {**self.usage, "output_tokens": int(self.usage.get("output_tokens") or 0)}
        await self.sink.emit({"type": "message_delta", "delta": {"stop_reason": "refusal", "stop_sequence": None},
                              "usage": usage}, event="message_delta")
        await self.sink.emit({"type": "message_stop"}, event="message_stop")
        await self.sink.end()


def _position(index: Any) -> int:
    return index if isinstance(index, int) else -1


def _carries_something(choice: dict[str, Any], holder: dict[str, Any], key: str) -> bool:
    """Does a choice still say anything once its held-back content is taken out?"""
    if holder.get(key):
        return True
    if choice.get("finish_reason") is not None or choice.get("logprobs"):
        return True
    delta = choice.get("delta")
    return isinstance(delta, dict) and any(k != "content" and v is not None for k, v in delta.items())


def _content_chunk(chunk: dict[str, Any], index: int, key: str, text: str) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "finish_reason": None}
    if key == "content":
        choice["delta"] = {"content": text}
    else:
        choice["text"] = text
    return {**chunk, "choices": [choice]}
