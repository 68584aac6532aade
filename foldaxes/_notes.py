"""The note a wrapper adds to an exception raised inside the wrapped module: how the call was folded.

The module's exception is never wrapped or replaced: it keeps its type, its object and its traceback, and gains one
note (``BaseException.add_note``, Python 3.11+) that shows the shapes the user passed beside the shapes the module
got, since the module's own message speaks only of the latter. A ``FoldError`` (from foldaxes, such as a nested
wrapper's) gets no note; on Python 3.10, which has no notes, exceptions pass as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ._compiled import CompiledPattern, keyword_pattern
from ._errors import FoldError, format_shape
from ._unfold import is_array

__all__ = ["add_fold_note"]


def add_fold_note(
    error: BaseException,
    pattern: CompiledPattern,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    folded_args: Sequence[Any],
    folded_kwargs: Mapping[str, Any],
    group_sizes: Sequence[int],
    how: str | None = None,
) -> None:
    """Adds to ``error`` a note on the folded call it came from, unless it is a ``FoldError``.

    Args:
        error: What the module raised.
        pattern: The wrapper's pattern.
        args: The call's positional arguments as given.
        kwargs: Its keyword arguments as given (without ``fold_mask`` and ``fold_lengths``).
        folded_args: The positional arguments the module got.
        folded_kwargs: The keyword arguments the module got.
        group_sizes: The sizes of the folded axes.
        how: How the module ran, when not once on every row (for example in chunks).
    """
    if isinstance(error, FoldError) or not hasattr(error, "add_note"):
        return
    try:
        note = _note(pattern, args, kwargs, folded_args, folded_kwargs, group_sizes, how)
    except Exception:  # the note is a courtesy: it must never stand in for the module's own exception
        return
    if note not in getattr(error, "__notes__", ()):  # the same exception object raised again by a later call
        error.add_note(note)


def _note(
    pattern: CompiledPattern,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    folded_args: Sequence[Any],
    folded_kwargs: Mapping[str, Any],
    group_sizes: Sequence[int],
    how: str | None,
) -> str:
    lines = [f"foldaxes: raised inside the module, which was called on arguments folded by '{pattern.text}'"]
    for position, (given, folded) in enumerate(zip(args, folded_args, strict=True)):
        if is_array(given):
            lines.append(f"  argument {position}: shape {format_shape(given.shape)} -> {format_shape(folded.shape)}")
    for name, given in kwargs.items():
        if is_array(given):
            shape = f"  keyword argument '{name}': shape {format_shape(given.shape)}"
            if name in pattern.kwarg_rules:
                lines.append(f"{shape} -> {format_shape(folded_kwargs[name].shape)}")
            else:
                lines.append(f"{shape}, passed unfolded{_advice(name, given, pattern, group_sizes)}")
    if not pattern.group_axes:
        lines.append(
            "  The pattern folds no axes: its right side has no parenthesised group of axes, so the module got each "
            "tensor whole. Write the axes to fold in parentheses, for example '(b t) c h w'."
        )
    elif how is not None:
        lines.append(f"  The module ran on part of the folded rows at a time: {how}.")
    return "\n".join(lines)


def _advice(name: str, x: torch.Tensor, pattern: CompiledPattern, group_sizes: Sequence[int]) -> str:
    """Says so when the leading sizes of an unfolded keyword tensor are those of the folded axes."""
    sizes = tuple(group_sizes)
    if not sizes or tuple(x.shape[: len(sizes)]) != sizes:
        return ""
    advice = f"; its leading sizes {format_shape(sizes)} are those of the folded axes {pattern.group_text}"
    suggested = keyword_pattern(pattern.group_axes)
    if suggested is None:
        return advice + ", so a fold_kwargs entry for it would fold it too"
    return advice + f", so fold_kwargs={{{name!r}: {suggested!r}}} would fold it too"
