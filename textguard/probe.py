"""Memorisation probes: prompts that ask a model to continue passages of the indexed corpus.

This is the literal-copying setup of CopyBench and CoTaEval: a model is given the opening of a
protected passage and asked to go on; what it writes is compared with the true continuation,
which each probe keeps as its `reference`. After the model has answered (an `output` field
added to each line), `textguard scan --reference-field reference` reports how much of the
continuation came back, per prompt and overall.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import asdict, dataclass
from typing import Any

from textguard.corpus import Corpus
from textguard.errors import TextGuardError
from textguard.guard import Guard
from textguard.settings import Settings
from textguard.store import DocumentRegion

__all__ = ["Probe", "ProbeError", "make_probes"]

PROMPT = "请接着下面这段文字往下写，直接续写原文，不要解释：\n\n{prefix}"
_SNAP_CHARS = 200  # how far a sampled start moves forward to the next sentence start
_SENTENCE_END = re.compile(r"[。！？!?…\n]+[”’」』）)\s]*")


class ProbeError(TextGuardError):
    pass


@dataclass(frozen=True, slots=True)
class Probe:
    id: str
    prompt: str
    prefix: str
    reference: str  # the true continuation
    doc_id: str
    title: str
    author: str
    work: str
    prefix_start: int  # original offsets in the document
    reference_start: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_probes(settings: Settings, count: int, prefix_chars: int, reference_chars: int = 200,
                seed: int = 0) -> list[Probe]:
    """`count` probes from passages of the index, drawn with probability proportional to length
    (every character of the corpus equally likely), each starting at a sentence; the same seed and
    corpus give the same probes."""
    if count < 1 or prefix_chars < 1 or reference_chars < 1:
        raise ProbeError("count, prefix and reference lengths must be at least 1")
    needed = prefix_chars + reference_chars
    with Corpus(settings) as corpus:
        documents = [meta for meta in corpus.list() if meta.get("chars", 0) >= needed]
    if not documents:
        raise ProbeError(f"no indexed document holds {needed} characters (prefix + reference)")
    rng = random.Random(seed)
    chosen = rng.choices(documents, weights=[meta["chars"] for meta in documents], k=count)
    spans = [(meta["id"], start, start + needed + _SNAP_CHARS)
             for meta in chosen for start in [rng.randrange(meta["chars"] - needed + 1)]]
    passages = asyncio.run(_read(settings, spans))
    probes = []
    for number, (meta, passage) in enumerate(zip(chosen, passages, strict=True), start=1):
        if passage is None:
            raise ProbeError(f"document {meta['id']} was removed while probes were being made")
        text, base = passage.text, passage.start
        boundary = _SENTENCE_END.search(text, 0, _SNAP_CHARS)
        skip = boundary.end() if boundary and len(text) - boundary.end() >= needed else 0
        prefix = text[skip:skip + prefix_chars]
        reference = text[skip + prefix_chars:skip + needed]
        probes.append(Probe(f"probe-{number:05d}", PROMPT.format(prefix=prefix), prefix, reference, meta["id"],
                            meta.get("title", ""), meta.get("author", ""), meta.get("work", ""),
                            base + skip, base + skip + prefix_chars))
    return probes


async def _read(settings: Settings, spans: list[tuple[str, int, int]]) -> list[DocumentRegion | None]:
    guard = Guard(settings)
    try:
        return await guard.source_passages(spans)
    finally:
        await guard.aclose()
