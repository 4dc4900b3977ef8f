"""The stages from normalised text to band runs, configured once from the settings.

The corpus side and the checking side must sketch text identically; both go through here.
"""

from __future__ import annotations

import numpy as np

from textguard.normalise import NORMALISER_VERSION, Normalised, warm_up
from textguard.segment import get_segmenter
from textguard.settings import Settings
from textguard.sketch import BandRuns, Sketcher, SketchParams
from textguard.store import Layout

__all__ = ["TextSketcher"]


class TextSketcher:
    def __init__(self, settings: Settings) -> None:
        warm_up()
        self.segmenter = get_segmenter(settings.user_dict)
        self.params = SketchParams.choose(settings.threshold, settings.num_perm, settings.window_shingles,
                                          settings.shingle_tokens, settings.seed)
        self.minhash = Sketcher(self.params)
        self.layout = Layout(settings.index, self.params, settings.bucket_bits,
                             extra={"normaliser": NORMALISER_VERSION, "segmenter": "jieba-no-hmm",
                                    "user_dict": self.segmenter.user_dict_digest})

    def sketch(self, text: Normalised) -> tuple[BandRuns, np.ndarray]:
        """Band runs of `text`, and each run's anchor as a normalised character position."""
        tokens, starts = self.segmenter.tokens(text.text)
        runs = self.minhash.band_runs(tokens)
        return runs, starts[runs.anchors]
