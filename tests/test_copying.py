"""Copying metrics on characters, against values worked out by hand and a brute-force oracle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textguard.copying import Comparison, accumulated_runs, compare, coverage, longest_common_run
from textguard.normalise import normalise


def test_a_shared_opening() -> None:
    # 春眠不觉晓 (5) is shared; 处处闻啼鸟 and 夜来风雨声 share no character.
    # LCS 5, precision 5/10, recall 5/10: ROUGE-L 0.5; one run of 5 >= 3.
    assert compare("春眠不觉晓处处闻啼鸟", "春眠不觉晓夜来风雨声", min_run=3) == Comparison(
        answer_chars=10, reference_chars=10, longest_run=5, lcs=5, rouge_l=0.5, acs=5)


def test_punctuation_traditional_and_full_width_count_for_nothing() -> None:
    # 「春眠，不覺曉！」 normalises to 春眠不觉晓: the reference itself.
    result = compare("「春眠，不覺曉！」", "春眠不觉晓", min_run=3)
    assert (result.answer_chars, result.longest_run, result.lcs, result.rouge_l, result.acs) == (5, 5, 5, 1.0, 5)
    assert compare("ＡＢＣ１２３", "abc123").rouge_l == 1.0


def test_accumulated_runs_go_left_to_right() -> None:
    answer, reference = "一二三四五六", "一二三甲乙三四五六"
    # From 一: the longest run of the reference starting there is 一二三 (3); then 四五六 (3).
    assert accumulated_runs(answer, reference, min_run=3) == 6
    # With runs of 4 or more: 一二三 and 二三 are too short; from 三, 三四五六 (4) counts.
    assert accumulated_runs(answer, reference, min_run=4) == 4
    assert accumulated_runs(answer, reference, min_run=5) == 0
    # The longest common substring is 三四五六, which the left-to-right reading cut at 三.
    assert longest_common_run(answer, reference) == 4
    # LCS: 一二三 then 四五六 = 6; precision 6/6, recall 6/9: ROUGE-L 2·1·(2/3) / (1 + 2/3) = 0.8.
    result = compare(answer, reference, min_run=3)
    assert (result.lcs, result.rouge_l) == (6, pytest.approx(0.8))


def test_two_runs_and_a_gap() -> None:
    # 一二三四 and 五六七八 each occur in the reference, 一二三四五 does not; longest 4;
    # all eight characters are a subsequence: LCS 8, ROUGE-L 2·8 / (8 + 14) = 8/11.
    result = compare("一二三四五六七八", "一二三四甲五六七八乙三四五六", min_run=3)
    assert result == Comparison(8, 14, 4, 8, pytest.approx(8 / 11), 8)


def test_nothing_shared_and_empty_texts() -> None:
    assert compare("甲乙丙", "子丑寅") == Comparison(3, 3, 0, 0, 0.0, 0)
    assert compare("", "子丑寅") == Comparison(0, 3, 0, 0, 0.0, 0)
    assert compare("，。！", "") == Comparison(0, 0, 0, 0, 0.0, 0)


def test_coverage_counts_normalised_characters_once() -> None:
    text = "前言：春眠不觉晓，处处闻啼鸟。后记"
    # normalised: 前言春眠不觉晓处处闻啼鸟后记 (14); spans [3, 8) 春眠不觉晓 and [5, 11) 不觉晓，处处
    # overlap: together 春眠不觉晓处处 = 7 of 14.
    assert coverage(normalise(text), [(3, 8), (5, 11)]) == 0.5
    assert coverage(normalise(text), []) == 0.0
    assert coverage(normalise("。。"), [(0, 2)]) == 0.0


def _brute_longest(a: str, b: str) -> int:
    return max([0] + [n for i in range(len(a)) for n in range(1, len(a) - i + 1) if a[i:i + n] in b])


def _brute_accumulated(a: str, b: str, min_run: int) -> int:
    total, position = 0, 0
    while position < len(a):
        run = max([0] + [n for n in range(1, len(a) - position + 1) if a[position:position + n] in b])
        if run >= min_run:
            total, position = total + run, position + run
        else:
            position += 1
    return total


@settings(max_examples=300, deadline=None)
@given(st.text("甲乙丙", max_size=30), st.text("甲乙丙", max_size=30), st.integers(1, 5))
def test_runs_agree_with_brute_force(a: str, b: str, min_run: int) -> None:
    assert longest_common_run(a, b) == _brute_longest(a, b)
    assert accumulated_runs(a, b, min_run) == _brute_accumulated(a, b, min_run)
    assert compare(a, b, min_run).longest_run == _brute_longest(a, b)
