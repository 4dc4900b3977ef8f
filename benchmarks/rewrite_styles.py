"""What each rewrite style adds to a rewritten answer: `textguard proxy` in front of a model
server, against calling the model directly, in one run on the shared data.

    python -m benchmarks.rewrite_styles [--corpus-fraction 1.0] [--requests 200] [--quick]

Processes on 127.0.0.1: the embedded Redis holding the shared corpus, the tests' fake model (it
answers with the user's message), the tests' paraphrasing model (`/restate/v1`: it answers at
once with a restatement of its own), `textguard proxy` in front of the first with
`paraphrase_url` naming the second, and this client. Answers are non-streaming chat completions
of about 1,000 characters of real chat answers with a 300-character corpus passage inside, so
every one is rewritten. Each request goes direct and through the proxy once per style
(`X-TextGuard-Rewrite-Style`), the order rotating, so all see the same noise. Printed: latency
p50/p99 per target, and what each style adds to the direct call (p50/p99 of the per-answer
difference). The paraphrasing model takes no time here: a real one adds its own generation
time for the spans it restates (about 300 characters of output per copy).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import httpx2

from benchmarks._harness import (
    MIXED_CHARS,
    chat_request,
    fake_model_process,
    fraction,
    index_corpus,
    load_corpus,
    mixed_answers,
    p50,
    p99,
    parse_quick,
    scratch_index,
)
from tests.support.servers import spawn

STYLES = ("notice", "quote", "paraphrase")
WARMUP = 10


@dataclass(frozen=True, slots=True)
class Options:
    corpus_fraction: float
    requests: int


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--corpus-fraction", type=fraction, help="share of each corpus file to index (default 1.0)")
    parser.add_argument("--requests", type=int, help="copied answers sent to each target (default 200)")
    args = parse_quick(parser, argv, {"corpus_fraction": 1.0, "requests": 200},
                       {"corpus_fraction": 0.1, "requests": 60}, "a tenth of the corpus, 60 answers")
    if args.requests < 10:
        parser.error("--requests >= 10")
    return Options(args.corpus_fraction, args.requests)


async def one(client: httpx2.AsyncClient, url: str, text: str, style: str | None) -> tuple[float, str]:
    """Milliseconds for one answer, and the style its rewrite says it used."""
    headers = {"x-textguard-rewrite-style": style} if style else {}
    started = time.perf_counter()
    response = await client.post(url + "/v1/chat/completions", json=chat_request(text), headers=headers)
    response.raise_for_status()
    response.json()
    return (time.perf_counter() - started) * 1000, response.headers.get("x-textguard-rewrite-style", "none")


async def measure(model_url: str, proxy_url: str, texts: Sequence[str]) -> tuple[dict[str, list[float]], Counter[str]]:
    targets: list[tuple[str, str, str | None]] = [("direct", model_url, None)]
    targets += [(style, proxy_url, style) for style in STYLES]
    samples: dict[str, list[float]] = {name: [] for name, _, _ in targets}
    outcomes: Counter[str] = Counter()
    async with httpx2.AsyncClient(timeout=60, trust_env=False) as client:
        for text in texts[:WARMUP]:
            for _, url, style in targets:
                await one(client, url, text, style)
        for index, text in enumerate(texts):
            shift = index % len(targets)
            for name, url, style in targets[shift:] + targets[:shift]:
                elapsed, done = await one(client, url, text, style)
                samples[name].append(elapsed)
                if style is not None:
                    outcomes[f"{style} -> {done}"] += 1
    return samples, outcomes


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    with scratch_index("styles") as (settings, _):
        documents = load_corpus(options.corpus_fraction)
        _, seconds = index_corpus(settings, documents)
        chars = sum(len(d.text) for d in documents)
        print(f"textguard rewrite styles benchmark · {platform.python_implementation()} {platform.python_version()}"
              f" · {os.cpu_count()} cores · corpus {len(documents):,} documents, {chars:,} chars "
              f"(indexed in {seconds:.0f} s)\n")
        texts = [text for flavour, text in mixed_answers(2 * options.requests, documents) if flavour == "copied"]
        with fake_model_process() as model_url, \
                fake_model_process("tests.support.paraphrasers:default_app", ready="/health") as paraphraser_url:
            env = {"TEXTGUARD_HOME": str(settings.home), "TEXTGUARD_INDEX": settings.index,
                   "TEXTGUARD_PARAPHRASE_URL": paraphraser_url + "/restate/v1"}
            with spawn(["proxy", "--upstream", model_url, "--port", "0"], env) as (_, proxy_url):
                samples, outcomes = asyncio.run(measure(model_url, proxy_url, texts))
    report(samples, outcomes, len(texts))


def report(samples: dict[str, list[float]], outcomes: Counter[str], count: int) -> None:
    direct = samples["direct"]
    print(f"{count} answers of ~{MIXED_CHARS:,} chars, each with a 300-char copy, sent direct and through the "
          "proxy in each style, in turn\n")
    print(f"   {'target':<11} {'p50/p99':>17} {'added p50/p99':>17} {'ratio p50':>10}   (ms)")
    for name, values in samples.items():
        added = [v - d for v, d in zip(values, direct, strict=True)]
        added_cell = "" if name == "direct" else f"{p50(added):>7.2f} / {p99(added):<7.2f}"
        print(f"   {name:<11} {p50(values):>7.2f} / {p99(values):<7.2f} {added_cell:>17} "
              f"{p50(values) / p50(direct):>9.2f}x")
    print("\n   what the answers say was done (x-textguard-rewrite-style):")
    for outcome, number in sorted(outcomes.items()):
        print(f"   {outcome:<28} {number}")


if __name__ == "__main__":
    main()
