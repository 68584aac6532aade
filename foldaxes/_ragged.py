"""Jagged nested tensors in and out: the module runs on the packed real frames, and its outputs share the offsets.

A jagged tensor ``(B, j, ...)`` stores its frames packed as ``values()``, ``(sum(j), ...)``, with ``offsets()``
marking where each sample starts. Folding ``b j ... -> (b j) ...`` is exactly that packed tensor: no padding and
no copy. Each output tensor with one row per real frame becomes a jagged tensor over the same offsets (so its
ragged size is the input's, and the two can be added), through ``nested_tensor_from_jagged``, a view that autograd
follows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._chunks import MASK, SAMPLE_LENGTHS, Rows, check_batch_statistics, run_rows
from ._errors import FoldError, format_message
from ._tree import flatten, leaf_paths, unflatten

if TYPE_CHECKING:
    from ._folding import Folding, Operand

__all__ = ["JaggedInput", "call_jagged"]

_SUPPORTED = "Jagged nested tensors are folded only by patterns of the shape 'b j ... -> (b j) ...'"


class JaggedInput(FoldError):
    """A jagged tensor met the dense fold: ``Distribute`` catches this and folds it here; ``fold`` reports it."""


def call_jagged(
    folding: Folding, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], masked: bool
) -> Any:
    """Runs ``fn`` once (or in chunks) on the real frames of jagged arguments; returns jagged outputs.

    Raises:
        FoldError: the pattern or the arguments are not of the supported kind, the arguments' offsets differ, or
            an output does not have one row per real frame.
    """
    if masked:
        raise FoldError(
            format_message(
                f"{MASK} and {SAMPLE_LENGTHS} are for padded tensors; a jagged tensor already holds only real frames.",
                pattern=folding.pattern,
                hint=f"Leave out {MASK} and {SAMPLE_LENGTHS}.",
            )
        )
    if folding.outputs.out is not None:
        raise _unsupported(folding.pattern, "out= is not supported with jagged input", "Leave out out=.")
    operands = folding.operands(args, kwargs)
    offsets = _offsets(operands)
    call_args, call_kwargs = list(args), dict(kwargs)
    for key, _, _, x in operands:
        if isinstance(key, int):
            call_args[key] = x.values()
        else:
            call_kwargs[key] = x.values()
    first = operands[0][0]
    count = (call_args[first] if isinstance(first, int) else call_kwargs[first]).shape[0]
    why = folding.why_partial(masked=False)  # one call sees all the real frames: the meaning jagged input has
    if why is not None:
        check_batch_statistics(fn, folding.execution, why, folding.pattern)
    rows = Rows(tuple((key, 0) for key, _, _, _ in operands), count, 0)
    result = run_rows(fn, call_args, call_kwargs, rows, folding.execution, folding.pattern)
    return _jagged_outputs(result, offsets, count, folding.pattern)


def _offsets(operands: list[Operand]) -> torch.Tensor:
    """The offsets every argument shares, after checking that each argument is a foldable jagged tensor."""
    first: tuple[str, torch.Tensor] | None = None
    for _, label, rule, x in operands:
        if type(x) is torch.Tensor or not (x.is_nested and x.layout == torch.jagged):
            raise _unsupported(
                rule.pattern,
                f"{label} is a dense tensor beside a jagged one; with jagged input, every tensor argument must be "
                "jagged, with the same offsets",
                "Make it jagged too, for example torch.nested.nested_tensor_from_jagged(values, x.offsets()).",
            )
        ragged = [dim for dim, size in enumerate(x.shape) if not isinstance(size, int)]
        if rule.plan(x, label).flatten_only != (0, 1) or ragged != [1]:
            raise _unsupported(
                rule.pattern,
                f"{label} of shape {_shape(x)} is not folded that way: {_SUPPORTED}, "
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
            raise FoldError(
                format_message(
                    f"{label} and {first[0]} are jagged with different offsets, so their frames do not line up: "
                    f"sample lengths {offsets.diff().tolist()} here, {first[1].diff().tolist()} there.",
                    pattern=rule.pattern,
                    hint="Build every jagged argument over the same offsets, for example with "
                    "torch.nested.nested_tensor_from_jagged(values, first.offsets()).",
                )
            )
    assert first is not None
    return first[1]


def _jagged_outputs(result: Any, offsets: torch.Tensor, count: int, pattern: str) -> Any:
    leaves, spec = flatten(result)
    jagged = []
    for position, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor):
            if leaf.is_nested or leaf.ndim == 0 or leaf.shape[0] != count:
                label = "the output" if leaf is result else "output " + leaf_paths(result)[position]
                found = "a nested tensor" if leaf.is_nested else f"shape {_shape(leaf)}"
                raise FoldError(
                    format_message(
                        f"{label[0].upper() + label[1:]} cannot become a jagged tensor: it should have one row per "
                        f"real frame ({count}) at dim 0, but it has {found}.",
                        pattern=pattern,
                        hint="With jagged input, return only per-frame tensors; compute per-sample or batch "
                        "results (a loss, a mean) outside the wrapper, from the jagged output.",
                    )
                )
            leaf = torch.nested.nested_tensor_from_jagged(leaf, offsets)
        jagged.append(leaf)
    return unflatten(jagged, spec)


def _unsupported(pattern: str, what: str, hint: str) -> FoldError:
    return FoldError(format_message(what + ".", pattern=pattern, hint=hint))


def _shape(x: torch.Tensor) -> tuple[object, ...]:
    return tuple(size if isinstance(size, int) else str(size) for size in x.shape)
