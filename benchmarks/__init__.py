"""Benchmarks of textguard on the shared data, run by hand from the project's root as modules
(`python -m benchmarks.speed --quick`); each module's docstring says what it measures and how.

This package holds only what a bare Python can run (benchmarks.vllm_e2e starts on any Python 3.11,
before its venv exists): where the shared data is and how to read it. What the benchmarks share
besides is in benchmarks._harness.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["DATA", "PROJECT", "read_jsonl", "require_data"]

PROJECT = Path(__file__).resolve().parents[1]
DATA = PROJECT.parent / "shared" / "data"  # ../shared/data beside the project, read in place


def require_data() -> None:
    """Stop with a message unless the shared data is there."""
    if not DATA.is_dir():
        raise SystemExit(f"shared data not found at {DATA} (expected next to the project, as ../shared/data)")


def read_jsonl(path: Path, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The records of a JSON Lines file (of its first `limit` lines), blank lines skipped."""
    with path.open(encoding="utf-8") as handle:
        for line in itertools.islice(handle, limit):
            if line.strip():
                yield json.loads(line)
