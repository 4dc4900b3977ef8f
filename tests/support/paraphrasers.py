"""Local model servers that textguard asks to paraphrase, one behaviour per base path:
`/restate/v1` restates properly (in words of its own), `/copy/v1` hands the passage back
verbatim, `/hang/v1` never answers (until the test ends), `/error/v1` answers 500, and
`/garbage/v1` answers 200 with something that is not JSON."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from textguard.settings import Settings

RESTATEMENT = "（转述）这里说的是一个人在旅途中的所见所感，大意如此，细节从略。"
BEHAVIOURS = ("restate", "copy", "hang", "error")


class Paraphrasers:
    """The app, and what it was asked (each request's behaviour, headers and body)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.release = threading.Event()  # ends the hanging answers
        self.app = Starlette(routes=[Route("/{behaviour}/v1/chat/completions", self.answer, methods=["POST"]),
                                     Route("/health", lambda request: JSONResponse({}), methods=["GET"])])

    def spans(self, behaviour: str) -> list[str]:
        """The copied spans sent to `behaviour`, without the instruction around them."""
        prefix = Settings().paraphrase_prompt.split("{text}")[0]
        return [body["messages"][-1]["content"].removeprefix(prefix)
                for asked, _, body in self.asked if asked == behaviour]

    async def answer(self, request: Request) -> Response:
        behaviour = request.path_params["behaviour"]
        body = await request.json()
        self.asked.append((behaviour, dict(request.headers), body))
        if behaviour == "hang":
            await asyncio.to_thread(self.release.wait, 60)
        if behaviour == "garbage":
            return Response("<html>upstream proxy page</html>", media_type="text/html")
        if behaviour == "error":
            return JSONResponse({"error": {"message": "model overloaded", "type": "server_error"}}, status_code=500)
        content = RESTATEMENT if behaviour == "restate" else body["messages"][-1]["content"]
        return JSONResponse({"id": "chatcmpl-p", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": content}}]})


def default_app() -> Starlette:
    """The servers for `uvicorn --factory` (benchmarks.rewrite_styles)."""
    return Paraphrasers().app
