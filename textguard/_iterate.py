"""`batched`, as Python 3.12's itertools has it (lists, not tuples), for Python 3.11."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

__all__ = ["batched"]

T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last one shorter), read lazily."""
    remaining = iter(items)
    while batch := list(islice(remaining, size)):
        yield batch
