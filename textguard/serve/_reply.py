"""One guarded response as the handlers of its answer see it: where to send, what checks, and
how the guard ends it early."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

from textguard._asgi import Send
from textguard.audit import AuditLog
from textguard.guard import Guard
from textguard.paraphrase import Paraphraser
from textguard.policy import RewriteStyle, Rewriting, Verdict
from textguard.settings import Settings

__all__ = ["Answer", "Reply", "Stopped"]


class Stopped(OSError):
    """Raised into the app when the guard has ended the response (a blocked stream). An
    OSError, as a vanished client is to an ASGI app: apps and servers already unwind on it."""


class Answer(Protocol):
    """The handler of one kind of answer body, picked at `http.response.start`."""

    async def start(self) -> None:
        """Send the response's start (with the headers this kind of answer needs)."""

    async def feed(self, chunk: bytes, more: bool) -> None:
        """Handle one `http.response.body` message."""

    async def close(self) -> None:
        """The response is over (ended, stopped or failed): record what was decided."""


@dataclass(eq=False)
class Reply:
    send: Send
    guard: Guard
    audit: AuditLog
    path: str
    paraphraser: Paraphraser
    rewrite_style: RewriteStyle  # the settings', or the request's own
    authorization: str | None = None  # the client's, for a paraphrase asked of the app it called
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def settings(self) -> Settings:
        return self.guard.settings

    async def body(self, data: bytes, more: bool = True) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def end(self) -> NoReturn:
        """End the response here and stop the app (raises Stopped)."""
        await self.body(b"", more=False)
        self.stopped.set()
        raise Stopped

    async def check_whole(self, text: str, rewriting: Rewriting, model: str | None = None) -> Verdict:
        """Check an answer's text held whole, and paraphrase its copies if the answer asked to."""
        return await self.paraphraser.check_whole(text, rewriting, model=model, authorization=self.authorization)

    async def record(self, verdict: Verdict, text: str) -> None:
        await self.audit.record(verdict, self.path, text)
