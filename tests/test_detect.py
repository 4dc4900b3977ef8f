"""Detection against a real Redis holding a slice of the shared corpus."""

from __future__ import annotations

import random

import hypothesis
import hypothesis.strategies as st
import jieba
import numpy as np
import pytest

from tests.support.helpers import PREFIX, SUFFIX, check, expected_span, long_records, passage
from textguard import Guard, Settings, _align
from textguard.normalise import normalise


@pytest.fixture(scope="module")
def guard(indexed: Settings) -> Guard:
    guard = Guard(indexed)
    yield guard
    guard.close()


def test_verbatim_copy_is_found_with_exact_offsets_and_attribution(guard: Guard, corpus_records: list[dict]) -> None:
    for index, record in enumerate(long_records(corpus_records, 12)):
        piece = passage(record, 100, at=0.1 + index * 0.07)
        text = PREFIX + piece + SUFFIX
        verdict = check(guard, text)
        assert verdict.verdict == "rewrite", record["id"]
        (match,) = verdict.matches
        assert (match.doc_id, match.work, match.author) == (record["id"], record["work"], record["author"])
        assert (match.start, match.end) == expected_span(text, piece)
        assert normalise(record["text"][match.source_start:match.source_end]).text == normalise(piece).text
        assert match.verbatim_chars == 100 and match.similarity == 1.0
        notice = f"〔此处省略受著作权保护的内容，出自《{record['work']}》〕"
        assert verdict.text == text[:match.start] + notice + text[match.end:]


def test_mostly_copied_answer_is_blocked(guard: Guard, corpus_records: list[dict]) -> None:
    record = long_records(corpus_records, 1)[0]
    verdict = check(guard, "好的：" + passage(record, 300))
    assert verdict.verdict == "block"
    assert record["work"] in verdict.text and passage(record, 300)[:20] not in verdict.text


def test_quotation_limit_is_exact(guard: Guard, corpus_records: list[dict]) -> None:
    for record in long_records(corpus_records, 6):
        under = check(guard, PREFIX + passage(record, 49, at=0.5) + SUFFIX)
        over = check(guard, PREFIX + passage(record, 51, at=0.5) + SUFFIX)
        assert under.verdict == "allow" and [q.chars for q in under.quotations] == [49], record["id"]
        assert over.verdict == "rewrite" and [m.chars for m in over.matches] == [51], record["id"]


def _edit_tokens(text: str, fraction: float, rng: random.Random) -> str:
    tokens = jieba.lcut(text)
    fillers = ["然后", "我们", "其实", "非常", "一下", "东西", "好像", "这个"]
    out: list[str] = []
    for token in tokens:
        roll = rng.random()
        if roll < fraction / 3:
            out.append(rng.choice(fillers))  # substituted
        elif roll < 2 * fraction / 3:
            out.extend([token, rng.choice(fillers)])  # inserted after
        elif roll < fraction:
            continue  # deleted
        else:
            out.append(token)
    return "".join(out)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3])
def test_edited_copy_yields_one_span_over_the_region(guard: Guard, corpus_records: list[dict], fraction: float) -> None:
    rng = random.Random(42)
    for record in long_records(corpus_records, 5):
        edited = _edit_tokens(passage(record, 400, at=0.4), fraction, rng)
        text = PREFIX + edited + SUFFIX
        verdict = check(guard, text)
        assert verdict.verdict in ("rewrite", "block"), (record["id"], fraction)
        region = expected_span(text, edited)
        spans = [m for m in verdict.matches if m.doc_id == record["id"]]
        assert len(spans) == 1, [(m.start, m.end) for m in spans]
        covered = min(spans[0].end, region[1]) - max(spans[0].start, region[0])
        assert covered >= 0.9 * (region[1] - region[0])


def test_mosaic_of_short_pieces_is_copying(guard: Guard, corpus_records: list[dict]) -> None:
    fillers = ["这一点很重要。", "我们再看下一段。", "作者在这里换了个说法。", "接着往下读。", "这是我的理解。"]
    for record in long_records(corpus_records, 4, minimum=6000):
        pieces = [passage(record, 30, at=0.1 + 0.15 * i) for i in range(5)]
        text = PREFIX + "".join(p + fillers[i] for i, p in enumerate(pieces)) + SUFFIX
        verdict = check(guard, text)
        assert verdict.verdict in ("rewrite", "block"), record["id"]
        assert sum(m.chars for m in verdict.matches) >= 120
        assert all(m.chars < 50 for m in verdict.matches)


def test_reordered_sentences_are_found(guard: Guard, corpus_records: list[dict]) -> None:
    rng = random.Random(7)
    for record in long_records(corpus_records, 4):
        sentences = [s + "。" for s in passage(record, 400).split("。") if s]
        rng.shuffle(sentences)
        verdict = check(guard, PREFIX + "".join(sentences) + SUFFIX)
        assert verdict.verdict in ("rewrite", "block"), record["id"]
        assert sum(m.chars for m in verdict.matches) >= 300


def test_famous_short_quotations_pass(guard: Guard, corpus_records: list[dict]) -> None:
    for record in long_records(corpus_records, 20):
        quote = passage(record, 20, at=0.0)
        verdict = check(guard, f"正如书中所说：“{quote}”这句话很有名。")
        assert verdict.verdict == "allow"


def test_unrelated_text_passes(guard: Guard, negative_records: list[dict]) -> None:
    flagged = [r["id"] for r in negative_records if check(guard, r["text"]).verdict != "allow"]
    assert len(negative_records) > 500
    assert flagged == []


@pytest.mark.parametrize("text", ["", "。。。！？", "hello", "🙂" * 30, "天"])
def test_degenerate_input_passes(guard: Guard, text: str) -> None:
    verdict = check(guard, text)
    assert verdict.verdict == "allow" and verdict.text == text and verdict.checked_chars == len(text)


def test_to_dict_has_the_contract_shape(guard: Guard, corpus_records: list[dict]) -> None:
    record = long_records(corpus_records, 1)[0]
    payload = check(guard, PREFIX + passage(record, 80) + SUFFIX).to_dict()
    assert list(payload) == ["verdict", "text", "checked_chars", "matches", "elapsed_ms"]
    assert list(payload["matches"][0]) == ["doc_id", "title", "author", "work", "start", "end", "source_start",
                                          "source_end", "verbatim_chars", "similarity"]


_LETTERS = "甲乙丙丁戊己庚辛壬癸子丑寅卯辰巳午未申酉"
_pieces = st.lists(st.text(alphabet=_LETTERS, max_size=12), min_size=3, max_size=7)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(shared=_pieces, query_gaps=_pieces, source_gaps=_pieces,
                  hints=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), max_size=3))
def test_the_span_prefilter_never_turns_away_a_region_with_a_span(shared: list[str], query_gaps: list[str],
                                                                  source_gaps: list[str],
                                                                  hints: list[tuple[int, int]]) -> None:
    """`may_share_span` skips an alignment only where the alignment would find nothing. The two
    texts share short pieces between gaps of their own (borderline spans: blocks of a few
    characters, gaps near the bridging limit)."""
    query = "".join(gap + piece for gap, piece in zip(query_gaps, shared, strict=False))
    source = "".join(gap + piece for gap, piece in zip(source_gaps, shared, strict=False))
    checked = _align.Query(query)
    normal = normalise(source)
    hint = np.array([(q, d) for q, d in hints if q < len(query) and d < len(source)], dtype=np.int64).reshape(-1, 2)
    spans = [span for stretch in _align.stretches(_align.seeds(checked, normal, hint))
             for span in _align.verify(query, normal, 0, stretch)]
    hypothesis.event("has a span" if spans else "no span")
    if spans:
        assert checked.may_share_span(normal.text)
