"""textguard as a step of a Ray Data pipeline: `Dataset.map_batches(CheckBatches, ...)` checks the
answers of each batch and adds the verdict and the copying metrics as columns.

    import ray
    from textguard.ray import CheckBatches

    checked = answers.map_batches(                        # answers: a Dataset with an "output" column
        CheckBatches, compute=ray.data.ActorPoolStrategy(size=8), num_cpus=1, batch_size=256,
        fn_constructor_kwargs={"settings": {"redis_url": "redis+cluster://10.0.0.5:7000", "index": "books"}})

Each actor holds one Guard (one Redis pool, jieba loaded once) and checks a batch in two Redis
round trips (`Guard.check_many`), as `textguard scan` does; a check that cannot run raises, so
the run stops (or Ray tries the batch again, where its DataContext allows map retries) rather
than counting an unchecked answer as clean. The columns added are
`verdict`, `copied_chars`, `longest_run`, `coverage`, `lcs`, `rouge_l`, `acs`, `works` (the works
copied) and `matches` (JSON, as `textguard check --json` gives them). Batches come as NumPy
columns (Ray's default), pandas or Arrow, and go back in the same form. Ray itself is not
imported here: install it with `pip install 'textguard[ray]'`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from textguard.copying import MIN_RUN
from textguard.scan import BatchScanner, Item, Record
from textguard.settings import Settings
from textguard.summary import work_of

__all__ = ["COLUMNS", "CheckBatches"]

COLUMNS = ("verdict", "copied_chars", "longest_run", "coverage", "lcs", "rouge_l", "acs", "works", "matches")
_METRICS = ("longest_run", "coverage", "lcs", "rouge_l", "acs")


class CheckBatches:
    """A callable class for `Dataset.map_batches`: one per actor."""

    def __init__(self, text_column: str = "output", settings: Settings | Mapping[str, Any] | None = None, *,
                 min_run: int = MIN_RUN) -> None:
        """`settings`: a Settings, or setting values (as in textguard.toml) over the actor's own
        environment and settings file; None: those alone."""
        if not isinstance(settings, Settings):
            settings = Settings.load(**dict(settings or {}))
        self.text_column = text_column
        self._scanner = BatchScanner(settings, min_run)

    def __call__(self, batch: Any) -> Any:
        texts = self._texts(batch)
        records = self._scanner.scan_batch([Item(line=i, id=i, text=text) for i, text in enumerate(texts)])
        columns = _columns(records)
        kind = _kind(batch)
        if kind == "numpy":
            return {**batch, **{name: _array(values) for name, values in columns.items()}}
        if kind == "pandas":
            return batch.assign(**columns)
        for name, values in columns.items():
            batch = batch.append_column(name, [values])
        return batch

    def _texts(self, batch: Any) -> list[str]:
        names = _column_names(batch)
        if self.text_column not in names:
            raise ValueError(f"no column {self.text_column!r} in the batch (it has {', '.join(names)}); name the "
                             "answers' column with fn_constructor_kwargs={'text_column': ...}")
        present = [name for name in COLUMNS if name in names]
        if present:
            raise ValueError(f"the batch already has column(s) {', '.join(present)}, which CheckBatches adds; "
                             "rename them first")
        column = batch.column(self.text_column).to_pylist() if _kind(batch) == "arrow" else list(
            batch[self.text_column])
        texts = []
        for value in column:
            if not isinstance(value, str) and _missing(value):
                value = ""  # no answer (a failed generation) copies nothing
            if not isinstance(value, str):
                raise TypeError(f"column {self.text_column!r} holds a {type(value).__name__}, not text")
            texts.append(value)
        return texts

    def __del__(self) -> None:
        scanner = getattr(self, "_scanner", None)
        if scanner is not None:
            scanner.close()


def _missing(value: Any) -> bool:
    """None, and the missing values of NumPy (NaN) and pandas (NA, NaT), which equal nothing."""
    if value is None:
        return True
    try:
        return bool(value != value)
    except TypeError:  # pandas.NA: its comparisons are NA, which has no truth value
        return True


def _kind(batch: Any) -> str:
    """The batch format: "numpy" (a dict of columns, Ray's default), "pandas" or "arrow"."""
    if isinstance(batch, dict):
        return "numpy"
    return "pandas" if hasattr(batch, "assign") else "arrow"


def _column_names(batch: Any) -> list[str]:
    kind = _kind(batch)
    if kind == "numpy":
        return list(batch)
    return [str(name) for name in batch.columns] if kind == "pandas" else list(batch.column_names)


def _columns(records: list[Record]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for record in records:
        columns["verdict"].append(record["verdict"])
        columns["copied_chars"].append(sum(m["chars"] for m in record["matches"]))
        for name in _METRICS:
            columns[name].append(record["metrics"][name])
        columns["works"].append(sorted({work_of(m) for m in record["matches"]}))
        columns["matches"].append(json.dumps(record["matches"], ensure_ascii=False))
    return columns


def _array(values: list[Any]) -> np.ndarray:
    """A NumPy column; lists (the works) as an object array of lists."""
    if not values or isinstance(values[0], list):  # (an empty batch: no type to tell)
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array
    return np.asarray(values)
