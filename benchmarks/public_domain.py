"""False flags on public-domain quotations, with and without a public-domain base.

    python -m benchmarks.public_domain [--quick] [--essays N] [--workers W]

The modern works of the shared data are the protected corpus, and N of them quote a passage
of a classical novel in their middle (“古人说得好：……”), as essays do. Three indexes are built:
the classical novels left out, indexed as protected (all a user could do before), and indexed
as public domain (`corpus add --public-domain`). Each is checked with:
- the encyclopedia paragraphs and chat answers of the shared data (they quote famous lines of
  the classical novels now and then): answers flagged, and the works they were flagged for;
- N answers quoting only the classical passage that an essay quotes: flagged means a lawful
  quotation of public-domain text was treated as copying (a false flag);
- N answers copying the essay's own text around that quotation, the quotation included: these
  copy a protected work and must stay flagged.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections import Counter
from collections.abc import Sequence

from benchmarks import DATA, read_jsonl, require_data
from benchmarks._harness import index_corpus, parse_quick, scratch_index
from textguard import Document, Guard, Settings, Verdict
from textguard.policy import work_name

FRONT = "谢谢你的提问。关于这个问题，我先说说自己的理解，再引一段原文给你参考："
BACK = "以上就是我找到的内容，仅供参考。如果你还想了解作者的生平或者写作背景，欢迎继续提问。"
QUOTED_CHARS = 120
OWN_CHARS = 150  # of the essay's own text before the quotation, in an answer that copies the essay
SEED = 20261207


def documents(name: str) -> list[Document]:
    return [Document(r["id"], r["text"], r.get("title", ""), r.get("author", ""), r.get("work", ""))
            for r in read_jsonl(DATA / name)]


def quoting_essays(modern: list[Document], classical: list[Document], count: int,
                   rng: random.Random) -> tuple[list[Document], list[tuple[str, str]]]:
    """`modern` with `count` of its long works quoting a classical passage in their middle; and
    per quoting work, (the passage, the essay's own text before it with the quotation)."""
    long = [i for i, doc in enumerate(modern) if len(doc.text) >= 4000]
    chosen = set(rng.sample(long, count))
    works = []
    pairs = []
    for i, doc in enumerate(modern):
        if i not in chosen:
            works.append(doc)
            continue
        source = rng.choice([d for d in classical if len(d.text) > 2000])
        start = rng.randrange(len(source.text) - QUOTED_CHARS)
        passage = source.text[start:start + QUOTED_CHARS]
        middle = len(doc.text) // 2
        text = doc.text[:middle] + "古人说得好：“" + passage + "”" + doc.text[middle:]
        works.append(Document(doc.doc_id, text, doc.title, doc.author, doc.work))
        pairs.append((passage, text[middle - OWN_CHARS:middle + 8 + QUOTED_CHARS]))
    return works, pairs


async def check_all(settings: Settings, texts: list[str]) -> list[Verdict]:
    guard = Guard(settings)
    try:
        verdicts: list[Verdict] = []
        for start in range(0, len(texts), 64):
            verdicts += await guard.check_many(texts[start:start + 64], fail_mode="raise")
        return verdicts
    finally:
        await guard.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--essays", type=int, help="modern works made to quote a classical passage (default 200)")
    parser.add_argument("--workers", type=int, default=4, help="writer processes while indexing (default 4)")
    args = parse_quick(parser, argv, {"essays": 200}, {"essays": 40}, "40 quoting essays")
    require_data()
    rng = random.Random(SEED)
    classical = documents("corpus_classical_novels.jsonl")
    modern = documents("corpus_modern_pd.jsonl") + documents("corpus_modern_pd_cn_only.jsonl")
    protected, pairs = quoting_essays(modern, classical, args.essays, rng)
    negatives = [r["text"] for name in ("unrelated_wiki_ccbysa.jsonl", "llm_answers_zh.jsonl")
                 for r in read_jsonl(DATA / name)]
    quotations = [FRONT + passage + BACK for passage, _ in pairs]
    copies = [FRONT + around + BACK for _, around in pairs]
    print(f"protected: {len(protected):,} modern works ({args.essays} quoting a classical passage of "
          f"{QUOTED_CHARS} characters); classical: {len(classical):,} chapters; negatives: {len(negatives):,}\n")
    print(f"{'classical novels':<22}{'negatives flagged':>19}{'quotations flagged':>20}{'copies flagged':>16}"
          f"  works the negatives were flagged for")
    for label, extra in (("left out", []), ("protected", classical),
                         ("public domain", [Document(d.doc_id, d.text, d.title, d.author, d.work, public_domain=True)
                                            for d in classical])):
        with scratch_index(f"pd-{label.replace(' ', '-')}", snapshots=False) as (settings, _):
            index_corpus(settings, protected + extra, workers=args.workers, desc=f"indexing ({label})")
            verdicts = asyncio.run(check_all(settings, negatives + quotations + copies))
        on_negatives = verdicts[:len(negatives)]
        on_quotations = verdicts[len(negatives):len(negatives) + len(quotations)]
        on_copies = verdicts[len(negatives) + len(quotations):]
        works = Counter(work_name(m) for v in on_negatives for m in v.matches)
        print(f"{label:<22}{_flagged(on_negatives):>19}{_flagged(on_quotations):>20}{_flagged(on_copies):>16}  "
              + ", ".join(f"{work} {count}" for work, count in works.most_common(6)), flush=True)


def _flagged(verdicts: list[Verdict]) -> str:
    flagged = sum(v.verdict != "allow" for v in verdicts)
    return f"{flagged:,} / {len(verdicts):,}"


if __name__ == "__main__":
    main()
