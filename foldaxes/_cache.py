"""A bounded memo for the pattern parsers: a plain dict, so that torch.compile traces through it silently.

``functools.lru_cache`` would do, but dynamo warns on every call it traces through one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["bounded_cache"]

R = TypeVar("R")

_MISSING = object()


def bounded_cache(maxsize: int) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Memoises a function of hashable positional arguments; the memo is emptied when it reaches ``maxsize``."""

    def decorate(fn: Callable[..., R]) -> Callable[..., R]:
        memo: dict[tuple[Any, ...], Any] = {}

        @functools.wraps(fn)
        def cached(*args: Any) -> R:
            try:
                result = memo.get(args, _MISSING)
            except TypeError:  # unhashable arguments: the function itself reports what is wrong with them
                return fn(*args)
            if result is _MISSING:
                result = fn(*args)
                if not torch.compiler.is_compiling():  # a write while dynamo traces is a side effect of the graph
                    if len(memo) >= maxsize:
                        memo.clear()
                    memo[args] = result
            return result  # type: ignore[no-any-return]

        return cached

    return decorate
