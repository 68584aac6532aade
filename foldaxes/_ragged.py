"""Jagged nested tensors in and out: the module runs on the packed real frames, and its outputs share the offsets.

A jagged tensor ``(B, j, ...)`` stores its frames packed as ``values()``, ``(sum(j), ...)``, with ``offsets()``
marking where each sample starts. Folding ``b j ... -> (b j) ...`` is exactly that packed tensor: no padding and
no copy. Each output tensor with one row per real frame becomes a jagged tensor over the same offsets (so its
ragged size is the input's, and the two can be added), through ``nested_tensor_from_jagged``, a view that autograd
follows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from ._chunks import Rows, run_rows
from ._errors import fold_error, format_shape
from ._execution import Execution, why_partial
from ._guards import check_batch_statistics
from ._masks import MASK, SAMPLE_LENGTHS
from ._records import TensorArgument
from ._tree import flatten, leaf_paths, unflatten

__all__ = ["call_jagged"]

_SUPPORTED = "Jagged nested tensors are folded only by patterns of the shape 'b j ... -> (b j) ...'"


def call_jagged(
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    arguments: Sequence[TensorArgument],
    execution: Execution,
    pattern: str,
    *,
    masked: bool,
    out: bool,
    note: Callable[[BaseException, Sequence[Any], Mapping[str, Any]], None],
) -> Any:
    """Runs ``fn`` once (or in chunks) on the real frames of jagged arguments; returns jagged outputs.

    Args:
        fn: The module.
        args: The call's positional arguments.
        kwargs: Its keyword arguments.
        arguments: The tensor arguments that the pattern folds.
        execution: Chunks and checkpointing.
        pattern: For messages.
        masked: Whether the call gave ``fold_mask`` or ``fold_lengths``, which jagged input has no use for.
        out: Whether the wrapper has ``out=``, which jagged outputs do not support.
        note: Adds a note to an exception raised by ``fn``, given the arguments ``fn`` was called with.

    Raises:
        FoldError: the pattern or the arguments are not of the supported kind, the arguments' offsets differ, or
            an output does not have one row per real frame.
    """
    if masked:
        raise fold_error(
            f"{MASK} and {SAMPLE_LENGTHS} are for padded tensors; a jagged tensor already holds only real frames.",
            pattern=pattern,
            hint=f"Leave out {MASK} and {SAMPLE_LENGTHS}.",
        )
    if out:
        raise _unsupported(pattern, "out= is not supported with jagged input", "Leave out out=.")
    layout = _shared_layout(arguments)
    call_args, call_kwargs = list(args), dict(kwargs)
    for key, _, _, x in arguments:
        values = x.values().clone() if execution.copy else x.values()  # the packed frames: a view, or its own
        if isinstance(key, int):
            call_args[key] = values
        else:
            call_kwargs[key] = values
    count = (call_args[layout.key] if isinstance(layout.key, int) else call_kwargs[layout.key]).shape[0]
    why = why_partial(execution, masked=False)  # one call sees all the real frames: the meaning jagged input has
    if why is not None:
        check_batch_statistics(fn, execution.allow_batch_statistics, why, pattern)
    rows = Rows(tuple((key, 0) for key, _, _, _ in arguments), count, 0)
    try:
        result = run_rows(fn, call_args, call_kwargs, rows, execution, pattern)
    except Exception as error:
        note(error, call_args, call_kwargs)
        raise
    return _jagged_outputs(result, layout, count, pattern)


class _JaggedLayout(NamedTuple):
    """What the jagged arguments share: the offsets of their samples, and the sample lengths torch has cached."""

    key: int | str
    offsets: torch.Tensor
    min_seqlen: int | None
    max_seqlen: int | None


def _shared_layout(arguments: Sequence[TensorArgument]) -> _JaggedLayout:
    """The layout every argument shares, after checking that each argument is a foldable jagged tensor."""
    first: tuple[str, torch.Tensor] | None = None
    for _, label, rule, x in arguments:
        if not (x.is_nested and x.layout == torch.jagged):
            what = "a nested tensor with layout=torch.strided" if x.is_nested else "a dense tensor"
            raise _unsupported(
                rule.pattern,
                f"{label} is {what} beside a jagged one; with jagged input, every tensor argument must be "
                "jagged, with the same offsets",
                "Make it jagged too, for example torch.nested.nested_tensor_from_jagged(values, x.offsets()).",
            )
        ragged = [dim for dim, size in enumerate(x.shape) if not isinstance(size, int)]
        if rule.plan(x, label).flatten_only != (0, 1) or ragged != [1]:
            raise _unsupported(
                rule.pattern,
                f"{label} of shape {format_shape(x.shape)} is not folded that way: {_SUPPORTED}, "
                "with the ragged dim second, next to the batch dim, both folded, in that order",
                "Pad it with x.to_padded_tensor(0.0) and pass fold_mask or fold_lengths, or rearrange inside the "
                "module.",
            )
        if x.lengths() is not None:  # type: ignore[attr-defined]
            raise _unsupported(
                rule.pattern,
                f"{label} has holes (it was built with lengths, so its values hold frames outside the samples)",
                "Call x.contiguous() first, which packs the real frames.",
            )
        offsets: torch.Tensor = x.offsets()  # type: ignore[attr-defined]
        if first is None:
            first = (label, offsets)
        elif offsets is not first[1] and not (offsets.shape == first[1].shape and torch.equal(offsets, first[1])):
            raise fold_error(
                f"{label} and {first[0]} are jagged with different offsets, so their frames do not line up: "
                f"{_first_difference(offsets.diff(), first[1].diff())}.",
                pattern=rule.pattern,
                hint="Build every jagged argument over the same offsets, for example with "
                "torch.nested.nested_tensor_from_jagged(values, first.offsets()).",
            )
    assert first is not None
    return _JaggedLayout(arguments[0].key, first[1], *cached_seqlens(arguments[0].tensor))


def cached_seqlens(x: torch.Tensor) -> tuple[int | None, int | None]:
    """The shortest and longest sample lengths that the jagged tensor ``x`` has cached, or ``None`` for each not.

    They decide, for example, the padded length of ``to_padded_tensor``; reading them never computes them (which
    would wait for the device). torch has no public accessor, so this is foldaxes' one read of the private
    ``_maybe_min_seqlen`` and ``_maybe_max_seqlen``; ``tests/test_ragged.py`` pins them.
    """
    return getattr(x, "_maybe_min_seqlen", None), getattr(x, "_maybe_max_seqlen", None)


def _first_difference(lengths: torch.Tensor, first: torch.Tensor) -> str:
    """Where two sets of sample lengths first differ, in words, without listing them all."""
    if lengths.shape != first.shape:
        return f"{lengths.numel()} samples here, {first.numel()} there"
    sample = int((lengths != first).nonzero()[0, 0])
    return f"sample {sample} has {int(lengths[sample])} frames here, {int(first[sample])} there"


def _jagged_outputs(result: Any, layout: _JaggedLayout, count: int, pattern: str) -> Any:
    leaves, spec = flatten(result)
    jagged = []
    for position, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor):
            if leaf.is_nested or leaf.ndim == 0 or leaf.shape[0] != count:
                label = "the output" if leaf is result else "output " + leaf_paths(result)[position]
                found = "a nested tensor" if leaf.is_nested else f"shape {format_shape(leaf.shape)}"
                raise fold_error(
                    f"{label[0].upper() + label[1:]} cannot become a jagged tensor: it should have one row per "
                    f"real frame ({count}) at dim 0, but it has {found}.",
                    pattern=pattern,
                    hint="With jagged input, return only per-frame tensors; compute per-sample or batch "
                    "results (a loss, a mean) outside the wrapper, from the jagged output.",
                )
            leaf = torch.nested.nested_tensor_from_jagged(
                leaf, layout.offsets, min_seqlen=layout.min_seqlen, max_seqlen=layout.max_seqlen
            )
        jagged.append(leaf)
    return unflatten(jagged, spec)


def _unsupported(pattern: str, what: str, hint: str) -> Exception:
    return fold_error(what + ".", pattern=pattern, hint=hint)
