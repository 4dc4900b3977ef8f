import numpy as np
from datasketch import MinHash
from datasketch.lsh import _optimal_param
from hypothesis import given
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from textguard.normalise import normalise
from textguard.segment import get_segmenter
from textguard.sketch import Sketcher, SketchParams, _sliding_min, shingle_bytes, shingle_hash

TEXT = ("我家的后面有一个很大的园，相传叫作百草园。现在是早已并屋子一起卖给朱文公的子孙了，连那最末次的相见也已经"
        "隔了七八年，其中似乎确凿只有一些野草；但那时却是我的乐园。不必说碧绿的菜畦，光滑的石井栏，高大的皂荚树，"
        "紫红的桑椹；也不必说鸣蝉在树叶里长吟，肥胖的黄蜂伏在菜花上，轻捷的叫天子忽然从草间直窜向云霄里去了。")


def _tokens() -> list[str]:
    return get_segmenter().tokens(normalise(TEXT).text)[0]


def test_bulk_signatures_equal_datasketch_minhash() -> None:
    params = SketchParams.choose(0.5, 16, 12, 2, seed=3)
    tokens = _tokens()
    minima = Sketcher(params).signatures(tokens)
    shingles = shingle_bytes(tokens, 2)
    assert len(minima) == len(shingles) - 12 + 1
    for window in (0, 7, len(minima) - 1):
        reference = MinHash(num_perm=16, seed=3, hashfunc=shingle_hash, scheme="affine32")
        reference.update_batch(shingles[window:window + 12])
        assert np.array_equal(reference.hashvalues, minima[window])


def test_bands_come_from_the_optimiser() -> None:
    params = SketchParams.choose(0.4, 8, 24, 2, seed=1)
    assert (params.bands, params.rows) == _optimal_param(0.4, 8, 0.5, 0.5)


def test_runs_are_fewer_than_windows_and_anchored_on_content() -> None:
    params = SketchParams.choose(0.5, 4, 24, 2, seed=1)
    sketcher = Sketcher(params)
    tokens = _tokens()
    runs = sketcher.band_runs(tokens)
    windows = len(tokens) - 2 + 1 - 24 + 1
    assert 0 < len(runs) < windows * params.bands / 2
    # the same content after other text gives the same band keys, anchors shifted by the prefix
    prefixed = sketcher.band_runs(["前言", "一些", "别的", "话", *tokens])
    shared = set(runs.keys.tolist()) & set(prefixed.keys.tolist())
    assert len(shared) >= len(runs) * 0.8
    for key in shared:
        assert prefixed.anchors[prefixed.keys == key][0] == runs.anchors[runs.keys == key][0] + 4


def test_short_text_gives_one_window() -> None:
    sketcher = Sketcher(SketchParams.choose(0.5, 4, 24, 2, seed=1))
    minima = sketcher.signatures(["天下", "大势", "分久必合"])
    assert minima.shape == (1, 4)
    assert len(sketcher.band_runs(["天下"])) == 0


@given(st.integers(1, 300), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_sliding_min_equals_the_naive_one(length: int, width: int, seed: int) -> None:
    values = np.random.default_rng(seed).integers(0, 2**32, (length, 3), dtype=np.uint32)
    naive = sliding_window_view(values, min(width, length), axis=0).min(axis=2)
    assert np.array_equal(_sliding_min(values, width), naive)
