"""Streams through a real LiteLLM proxy with textguard as its guardrail: the leakage bound over many
copied streams, clean streams unchanged, and what the guardrail costs a reader, against the same
LiteLLM without it, in one run.

    python -m benchmarks.litellm [--streams 60] [--corpus-fraction 0.1] [--sampling-rate 5]

Processes on 127.0.0.1: the embedded Redis holding part of the shared corpus, the fake model of
the tests (it answers with the user's message, two characters a chunk, `--chunk-delay` apart),
`textguard serve`, and `litellm` with textguard as a `generic_guardrail_api` guardrail in
`incremental_diff` mode (asked for per request, so the same LiteLLM serves the bare baseline).
The answers are real chat answers of 500-1,500 characters, half of them with a 300-character
corpus passage a third of the way in. Guarded and bare streams alternate, so both see the same
noise. Printed: per flavour, the longest run of the passage the reader got (the bound is Q),
clean streams changed, and time to first and to last character, guarded against bare.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from dataclasses import dataclass

import openai

from benchmarks._harness import (
    STREAMED_CHARS,
    corpus_passage,
    fraction,
    index_corpus,
    load_answers,
    load_corpus,
    p50,
    scratch_index,
)
from tests.support.helpers import longest_shared_run
from tests.support.litellm_proxy import MASTER_KEY, guardrail, litellm_proxy
from tests.support.llm_app import Recorder, create_app
from tests.support.servers import serve, spawn
from textguard import Settings

SEED = 20261207


@dataclass(frozen=True, slots=True)
class Run:
    flavour: str
    guarded: bool
    first_s: float
    last_s: float
    longest: int  # of the passage, in what the reader got (copied answers)
    changed: bool


def stream_once(client: openai.OpenAI, text: str, guarded: bool) -> tuple[str, float, float]:
    extra = {"guardrails": ["textguard"]} if guarded else {}
    started = time.perf_counter()
    first = 0.0
    pieces: list[str] = []
    for chunk in client.chat.completions.create(model="demo", stream=True, extra_body=extra,
                                                messages=[{"role": "user", "content": text}]):
        for choice in chunk.choices:
            if choice.delta.content:
                first = first or time.perf_counter() - started
                pieces.append(choice.delta.content)
    return "".join(pieces), first, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=60, help="answers per flavour (clean, copied)")
    parser.add_argument("--corpus-fraction", type=fraction, default=0.1)
    parser.add_argument("--sampling-rate", type=int, default=5, help="LiteLLM's streaming_sampling_rate")
    parser.add_argument("--chunk-delay", type=float, default=0.005, help="seconds between the model's chunks")
    options = parser.parse_args()
    with scratch_index(f"litellm-{uuid.uuid4().hex[:6]}") as (settings, _):
        runs = measure(options, settings)
    report(runs, settings.quote_chars)


def measure(options: argparse.Namespace, settings: Settings) -> list[Run]:
    documents = load_corpus(options.corpus_fraction)
    print(f"indexing {len(documents)} documents ...", flush=True)
    print(f"indexed in {index_corpus(settings, documents)[1]:.1f} s", flush=True)
    rng = random.Random(SEED)
    answers = load_answers(2 * options.streams, STREAMED_CHARS)
    work: list[tuple[str, str, str]] = []  # flavour, text, passage
    for index, answer in enumerate(answers):
        if index % 2:
            passage = corpus_passage(documents, rng)
            cut = len(answer) // 3
            work.append(("copied", answer[:cut] + "\n\n" + passage + "\n\n" + answer[cut:], passage))
        else:
            work.append(("clean", answer, ""))

    env = {"TEXTGUARD_HOME": str(settings.home), "TEXTGUARD_INDEX": settings.index}
    with serve(create_app(Recorder(), chunk_chars=2, delay=options.chunk_delay)) as upstream, \
            spawn(["serve", "--port", "0"], env) as (_, textguard):
        guardrails = [guardrail("textguard", textguard, default_on=False, sampling_rate=options.sampling_rate)]
        with litellm_proxy(upstream, guardrails, settings.home) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=120)
            for _ in range(2):  # warm-up: connections, dictionaries
                stream_once(client, answers[0], True)
            runs: list[Run] = []
            for number, (flavour, text, passage) in enumerate(work):
                for guarded in (True, False) if number % 2 else (False, True):
                    released, first, last = stream_once(client, text, guarded)
                    longest = longest_shared_run(released, passage) if passage else 0
                    runs.append(Run(flavour, guarded, first, last, longest, released != text))
                if (number + 1) % 20 == 0:
                    print(f"  {number + 1}/{len(work)} answers", flush=True)
    return runs


def report(runs: list[Run], quote: int) -> None:
    print(f"\nlitellm {_version('litellm')}, textguard guardrail in incremental_diff mode; Q = {quote}")
    print(f"{'flavour':<8} {'streams':>7} {'longest run max':>16} {'p50':>5} {'changed':>8} "
          f"{'first char p50 guarded / bare':>30} {'last char p50 guarded / bare':>30}")
    for flavour in ("clean", "copied"):
        guarded = [r for r in runs if r.flavour == flavour and r.guarded]
        bare = [r for r in runs if r.flavour == flavour and not r.guarded]
        longest = [r.longest for r in guarded]
        first_g, first_b = p50([r.first_s for r in guarded]), p50([r.first_s for r in bare])
        last_g, last_b = p50([r.last_s for r in guarded]), p50([r.last_s for r in bare])
        print(f"{flavour:<8} {len(guarded):>7} {max(longest):>16} {int(p50(longest)):>5} "
              f"{sum(r.changed for r in guarded):>8} "
              f"{f'{first_g * 1000:.0f} / {first_b * 1000:.0f} ms ({first_g / first_b:.1f}x)':>30} "
              f"{f'{last_g * 1000:.0f} / {last_b * 1000:.0f} ms ({last_g / last_b:.2f}x)':>30}")
    copied = [r for r in runs if r.flavour == "copied" and r.guarded]
    clean = [r for r in runs if r.flavour == "clean" and r.guarded]
    held = max(r.longest for r in copied) <= quote and not any(r.changed for r in clean) \
        and all(r.changed for r in copied)
    print(f"\nbound held over {len(copied)} copied streams, no clean stream changed: {'yes' if held else 'NO'}")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
