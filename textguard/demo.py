"""`textguard demo`: the whole product on the embedded defaults, in one command.

It indexes the sample works that ship with the package (original prose written for this demo,
treated as protected), starts a small OpenAI-compatible demo model that answers some questions
by copying them and others in words of its own, puts the guarded proxy in front of it, asks it
four questions to show the verdicts, and prints what to try next. Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from textguard._asgi import ASGIApp
from textguard.corpus import Corpus, Document
from textguard.ingest import Inventory, ReadOptions, find_sources, read_sources
from textguard.serve.server import Server, create_app, run_on_server_loop, stop_on_signals, uvicorn_config
from textguard.settings import Settings

__all__ = ["create_model_app", "run_demo", "sample_books"]

DEMO_INDEX = "demo"
MODEL_NAME = "demo-model"
CHUNK_CHARS = 2  # about one token of Chinese
CHUNK_DELAY_S = 0.02  # so that streaming is visible


def sample_books() -> Path:
    """The folder of sample works shipped with the package: original prose written for this
    demo (treated as protected), as an EPUB, a Word document and a GB18030 text file, the way a
    publisher's files come."""
    return Path(str(resources.files("textguard").joinpath("samples/books")))


def scripted_answer(question: str, works: dict[str, Document]) -> str:
    """What the demo model says: it copies a whole work when asked to recite one, quotes a long
    passage when asked about the rainy season, quotes one line (lawfully) about the abacus,
    and answers in its own words otherwise."""
    lighthouse, rain = works["灯塔守望者"], works["南方的雨季"]
    if "灯塔" in question:
        return f"好的，下面是《{lighthouse.work}》第一章的全文：\n\n{lighthouse.text}"
    if "雨季" in question:
        passage = rain.text.split("\n\n")[1]
        return ("《南方的雨季》写的是一种气候，更是一种心境。作者没有直接抒情，而是从霉味、返潮的墙角、"
                "凉冰冰的棉被这些细节写起，让读者先用鼻子和皮肤感受雨季。其中最有名的是写雨的一段：\n\n"
                f"{passage}\n\n"
                "这一段的妙处在于“挂着”这个动词：雨不再是落下来的动作，而成了一种持续的状态，"
                "和后文外婆“被允许停下来的时光”互相呼应。读这篇文章时，可以留意作者如何用空间的"
                "缩小来写时间的放慢，这是散文里很常见、也很见功力的写法。")
    if "算盘" in question:
        return ("《算盘与星图》借祖父的一生写生计与理想的关系。文章结尾有一句话概括了全篇："
                "“一个人的一生，一半要交给生计，一半要留给星空。”"
                "这句话之所以动人，是因为前文已经用算盘声和星图上的小楷做足了铺垫，"
                "读者到这里不会觉得是说教，而是觉得祖父终于把账算清楚了。")
    return ("这是演示模型用自己的话写的回答。它不引用任何受保护的作品，所以 textguard 会原样放行。"
            "你可以问我《灯塔守望者》的原文、《南方的雨季》里写雨的段落，或者《算盘与星图》的主题，"
            "看看守卫分别怎样处理整篇复制、大段引用和简短引用。")


def create_model_app(works: dict[str, Document]) -> Starlette:
    """A small OpenAI-compatible chat model that streams its scripted answers."""

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "demo"}]})

    async def chat(request: Request) -> Response:
        body = await request.json()
        messages = body.get("messages") or [{}]
        answer = scripted_answer(str(messages[-1].get("content", "")), works)
        base = {"id": f"chatcmpl-demo-{time.time_ns()}", "created": int(time.time()), "model": MODEL_NAME}
        usage = {"prompt_tokens": 12, "completion_tokens": len(answer), "total_tokens": 12 + len(answer)}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
            return JSONResponse({**base, "object": "chat.completion", "choices": [choice], "usage": usage})

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            payload = {**base, "object": "chat.completion.chunk", "choices": [choice], **extra}
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            for start in range(0, len(answer), CHUNK_CHARS):
                yield chunk({"content": answer[start:start + CHUNK_CHARS]})
                await asyncio.sleep(CHUNK_DELAY_S)
            yield chunk({}, "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                payload = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                yield f"data: {json.dumps(payload)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])


TOUR = (
    ("请介绍一下这个演示。", "an answer in the model's own words"),
    ("《算盘与星图》的主题是什么？", "one short, attributed line: lawful quotation"),
    ("《南方的雨季》里写雨的那段是怎么写的？", "a long copied paragraph inside commentary"),
    ("请背诵《灯塔守望者》第一章。", "the whole chapter"),
)


async def _tour(proxy_url: str, out: TextIO) -> None:
    """Ask the guarded proxy the tour's questions and show what the guard did."""
    print("\nWhat the guard did with four questions (non-streaming):\n", file=out)
    async with httpx2.AsyncClient(timeout=30, trust_env=False) as client:
        for question, kind in TOUR:
            response = await client.post(f"{proxy_url}/v1/chat/completions", json={
                "model": MODEL_NAME, "messages": [{"role": "user", "content": question}]})
            answer = response.json()["choices"][0]
            verdict = response.headers.get("x-textguard-verdict", "?")
            text = answer["message"]["content"].replace("\n", " ")
            start = max(0, text.find("〔") - 20)  # show the notice, where there is one
            excerpt = ("…" if start else "") + text[start:start + 70] + ("…" if len(text) > start + 70 else "")
            print(f"  {verdict:<8} {question}  ({kind})", file=out)
            print(f"           → {excerpt}  [finish_reason: {answer['finish_reason']}]", file=out, flush=True)


def _instructions(proxy_url: str, model_url: str) -> str:
    def request(question: str, **extra: Any) -> str:
        messages = [{"role": "user", "content": question}]
        return json.dumps({"model": MODEL_NAME, **extra, "messages": messages}, ensure_ascii=False)

    body, stream_body = request(TOUR[2][0]), request(TOUR[3][0], stream=True)
    return f"""
Try it yourself:

  curl -si {proxy_url}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{body}'
  curl -N {proxy_url}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{stream_body}'
  curl -s {proxy_url}/v1/textguard/check -H 'content-type: application/json' -d '{{"text": "…"}}'

  python - <<'EOF'
  from openai import OpenAI
  client = OpenAI(base_url="{proxy_url}/v1", api_key="unused")
  stream = client.chat.completions.create(model="{MODEL_NAME}", stream=True,
      messages=[{{"role": "user", "content": "请背诵《灯塔守望者》第一章。"}}])
  for chunk in stream:
      for choice in chunk.choices:
          print(choice.delta.content or "", end="", flush=True)
          if choice.finish_reason: print("\\n[finish_reason:", choice.finish_reason, "]")
  EOF

The demo model answers unguarded at {model_url}/v1 (compare). Press Ctrl-C to stop.
"""


def run_demo(settings: Settings, out: TextIO = sys.stdout) -> None:
    """Index the samples, serve the demo model and the guarded proxy until SIGINT or SIGTERM."""
    settings = settings.replace(index=DEMO_INDEX, expose_matches=True)
    books = sample_books()
    sources, _, _ = find_sources([books], ReadOptions())
    inventory = Inventory()
    documents = list(read_sources(sources, inventory))
    if inventory.problems:  # a broken installation: say what, rather than fail later
        raise SystemExit(f"textguard demo: cannot read the sample works:\n{inventory.summary()}")
    with Corpus(settings) as corpus:
        corpus.add(documents)
    print(f"Indexed the sample protected works in {books} into index '{DEMO_INDEX}', as "
          f"`textguard corpus add {books}` does:\n{inventory.summary()}", file=out)
    run_on_server_loop(_serve(settings, {d.work or d.title: d for d in documents}, out))
    print("textguard demo stopped.", file=out)


async def _serve(settings: Settings, works: dict[str, Document], out: TextIO) -> None:
    ready: asyncio.Queue[str] = asyncio.Queue()
    servers: list[Server] = []
    tasks: list[asyncio.Task[None]] = []

    async def start(app: ASGIApp, app_settings: Settings, port: int) -> str:
        server = Server(uvicorn_config(app, app_settings, port=port), on_ready=ready.put_nowait)
        servers.append(server)
        serving = asyncio.ensure_future(server.serve())
        tasks.append(serving)
        waiting = asyncio.ensure_future(ready.get())
        await asyncio.wait([waiting, serving], return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():  # it failed to start (a port in use, say); uvicorn said why
            waiting.cancel()
            raise SystemExit(1)
        return waiting.result()

    with stop_on_signals(servers):
        try:
            model_url = await start(create_model_app(works), settings, 0)
            proxy_settings = settings.replace(upstream_url=model_url)
            proxy_url = await start(create_app(proxy_settings), proxy_settings, settings.port)
            print(f"\ntextguard demo is running:\n  guarded proxy  {proxy_url}/v1\n"
                  f"  check API      {proxy_url}/v1/textguard/check\n  demo model     {model_url}/v1 (unguarded)",
                  file=out, flush=True)  # a pipe buffers: whoever waits for this line (a test, a script) gets it now
            tour = asyncio.ensure_future(_tour(proxy_url, out))
            await asyncio.wait([tour, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if any(server.should_exit for server in servers) or not tour.done():
                tour.cancel()  # stopped (Ctrl-C) before the tour was over: its requests were cut off
                await asyncio.gather(tour, return_exceptions=True)
                return
            tour.result()
            print(_instructions(proxy_url, model_url), file=out, flush=True)
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for server in servers:
                server.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)
