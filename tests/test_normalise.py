import itertools
import unicodedata

import opencc
from hypothesis import given
from hypothesis import strategies as st

from textguard.normalise import LOOKALIKES, GrowingNormal, normalise

ORIGINAL = "滚滚长江东逝水，浪花淘尽英雄。是非成败转头空：青山依旧在，几度夕阳红。ABC 123"


def test_keeps_letters_and_digits_only_and_folds_case() -> None:
    assert normalise(ORIGINAL).text == "滚滚长江东逝水浪花淘尽英雄是非成败转头空青山依旧在几度夕阳红abc123"


def test_disguises_normalise_to_the_same_text() -> None:
    expected = normalise(ORIGINAL).text
    disguises = [
        "\u200b".join(ORIGINAL),  # zero-width spaces between all characters
        " ".join(ORIGINAL),  # spaced out
        ORIGINAL.replace("，", "!").replace("。", "~~").replace("：", "……"),  # other punctuation
        opencc.OpenCC("s2t").convert(ORIGINAL),  # Traditional script
        ORIGINAL.replace("ABC 123", "ＡＢＣ　１２３"),  # full-width forms
        ORIGINAL.replace("ABC", "АВС").replace("一", "ー"),  # Cyrillic and katakana look-alikes
        "\ufeff" + ORIGINAL.replace("江", "江\u200d\u2060"),  # BOM, joiners, word joiner
        "🙂".join(ORIGINAL[i:i + 3] for i in range(0, len(ORIGINAL), 3)),  # emoji stuffing
    ]
    for text in disguises:
        assert normalise(text).text == expected, text


def test_offsets_point_back_into_the_original() -> None:
    text = "前言。\u200b滾滾長江 東逝水"
    result = normalise(text)
    assert result.text == "前言滚滚长江东逝水"
    start, end = result.original_span(2, 9)
    assert text[start:end] == "滾滾長江 東逝水"


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_offset_map_is_valid_for_any_text(text: str) -> None:
    result = normalise(text)
    assert len(result.offsets) == len(result.text)
    offsets = result.offsets.tolist()
    assert offsets == sorted(offsets)
    assert all(0 <= o < len(text) for o in offsets)
    for char, offset in zip(result.text, offsets, strict=True):
        source = unicodedata.normalize("NFKC", text[offset]).casefold().translate(LOOKALIKES)
        simplified = opencc.OpenCC("t2s").convert(source)
        assert char in source or char in simplified
    if result.text:
        start, end = result.original_span(0, len(result.text))
        assert 0 <= start < end <= len(text)


@given(st.text(alphabet=st.sampled_from("天下大势分久必合合久必分ab1"), min_size=1, max_size=60),
       st.lists(st.sampled_from(["\u200b", " ", "，", "\n", "😀", "\u00ad"]), min_size=1, max_size=5))
def test_inserted_noise_never_changes_the_match_text(text: str, noise: list[str]) -> None:
    disguised = "".join(c + noise[i % len(noise)] for i, c in enumerate(text))
    assert normalise(disguised).text == normalise(text).text


# Traditional phrases whose conversion depends on a neighbour (顯著 keeps 著, alone it becomes 着),
# multi-character folds (ß, ﬁ), full-width, zero-width, emoji, punctuation and line breaks.
_STREAMED = "顯著乾隆頭髮皇後的了是在，。 ａＢc①\u200bßﬁ𠀀😀\n"


@given(st.text(alphabet=st.sampled_from(_STREAMED), max_size=150), st.lists(st.integers(1, 6), min_size=1),
       st.lists(st.integers(0, 200)))
def test_a_growing_text_normalises_as_the_whole_text_does(text: str, steps: list[int], forgets: list[int]) -> None:
    growing = GrowingNormal()
    position = 0
    for turn in itertools.count():
        step = steps[turn % len(steps)]
        growing.add(text[position:position + step])
        position = min(position + step, len(text))
        got, whole = growing.normalised(), normalise(text[:position])
        kept = whole.offsets >= growing.start
        assert got.text == "".join(itertools.compress(whole.text, kept))
        assert got.offsets.tolist() == whole.offsets[kept].tolist()
        assert growing.text == text[:position] and growing.length == position
        assert growing.forgotten == len(whole.text) - len(got.text)
        if forgets:
            growing.forget(min(forgets[turn % len(forgets)], position))
        if position == len(text):
            break


def test_characters_that_fold_to_several_keep_their_offset() -> None:
    folded = normalise("第⑩回，ß与ﬁ。")
    assert folded.text == "第10回ss与fi"
    assert folded.offsets.tolist() == [0, 1, 1, 2, 4, 4, 5, 6, 6]
