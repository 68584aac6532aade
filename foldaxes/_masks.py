"""``fold_mask`` and ``fold_lengths``: the call-time keywords that say which rows of a padded batch are valid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from ._errors import fold_error, shown

__all__ = ["MASK", "SAMPLE_LENGTHS", "RowSelection"]

MASK = "fold_mask"
"""The call-time keyword that marks the valid rows of a padded input; consumed, never passed to the module."""
SAMPLE_LENGTHS = "fold_lengths"
"""The call-time keyword that gives per-sample lengths instead of a mask; consumed as well."""


class RowSelection(NamedTuple):
    """What a call said about its valid rows: a mask, or per-sample lengths (at least one is not ``None``)."""

    mask: Any
    lengths: Any

    @staticmethod
    def take(kwargs: Mapping[str, Any]) -> tuple[Mapping[str, Any], RowSelection | None]:
        """Removes ``fold_mask`` and ``fold_lengths`` from a call's keywords; returns the rest and what they said."""
        if MASK not in kwargs and SAMPLE_LENGTHS not in kwargs:
            return kwargs, None
        rest = dict(kwargs)
        mask, lengths = rest.pop(MASK, None), rest.pop(SAMPLE_LENGTHS, None)
        return rest, None if mask is None and lengths is None else RowSelection(mask, lengths)

    def valid_rows(self, group_sizes: Sequence[int], axes: str, sample_axis: int, pattern: str) -> torch.Tensor | None:
        """The indices of the valid rows among the folded rows, or ``None`` when every row is valid.

        Args:
            group_sizes: The sizes of the folded group's axes, in group order.
            axes: The folded group as written, such as ``"(b t)"``, for messages.
            sample_axis: The axis of the group that ``lengths`` has one entry per; the other one is the time axis.
            pattern: For messages.

        Raises:
            FoldError: both are given, or what is given does not fit the folded group.
        """
        shape = tuple(int(size) for size in group_sizes)
        mask, lengths = self
        if mask is not None and lengths is not None:
            raise fold_error(
                f"Both {MASK} and {SAMPLE_LENGTHS} were given; they say the same thing two ways.",
                pattern=pattern,
                hint=f"Pass one: {MASK} for any pattern of valid rows, {SAMPLE_LENGTHS} for a prefix of each sample.",
            )
        if lengths is not None:
            mask = _lengths_mask(lengths, shape, axes, sample_axis, pattern)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            found = f"a {mask.dtype} tensor" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise fold_error(
                f"{MASK} must be a bool tensor over the folded axes {axes}, not {found}.",
                pattern=pattern,
                shapes=[(f"folded axes {axes}", shape)],
                hint=f"Pass for example lengths[:, None] > torch.arange(t), or per-sample lengths as {SAMPLE_LENGTHS}.",
            )
        if tuple(mask.shape) != shape:
            raise fold_error(
                f"{MASK} has shape {tuple(mask.shape)}, but the folded axes {axes} have shape {shape}.",
                pattern=pattern,
                shapes=[(MASK, mask.shape), (f"folded axes {axes}", shape)],
                hint="Give the mask the sizes of the folded axes, in the order the folded group lists them.",
            )
        index = mask.reshape(-1).nonzero().flatten()
        return None if index.numel() == mask.numel() else index


def _lengths_mask(lengths: Any, shape: tuple[int, ...], axes: str, sample_axis: int, pattern: str) -> torch.Tensor:
    if len(shape) != 2:
        raise fold_error(
            f"{SAMPLE_LENGTHS} needs a folded group of two axes (sample and time), but {axes} has {len(shape)}.",
            pattern=pattern,
            shapes=[(f"folded axes {axes}", shape)],
            hint=f"Pass {MASK}, a bool tensor of shape {shape}, instead.",
        )
    samples, steps = shape[sample_axis], shape[1 - sample_axis]
    try:
        values = torch.as_tensor(lengths)
    except (TypeError, ValueError, RuntimeError):
        values = None
    if values is None or values.dtype == torch.bool or values.dtype.is_floating_point or values.is_complex():
        raise fold_error(
            f"{SAMPLE_LENGTHS} must be integers, one per sample, not {shown(lengths)}.",
            pattern=pattern,
            hint=f"Pass a 1-D integer tensor or a list of {samples} ints.",
        )
    if values.shape != (samples,):
        raise fold_error(
            f"{SAMPLE_LENGTHS} has shape {tuple(values.shape)}, but there are {samples} samples "
            f"(axis {sample_axis} of the folded axes {axes}).",
            pattern=pattern,
            shapes=[(SAMPLE_LENGTHS, values.shape), (f"folded axes {axes}", shape)],
            hint=f"Give one length per sample, each between 0 and {steps}.",
        )
    if bool(((values < 0) | (values > steps)).any()):
        raise fold_error(
            f"{SAMPLE_LENGTHS} must lie between 0 and {steps} (the time axis), but its entries range from "
            f"{int(values.min())} to {int(values.max())}.",
            pattern=pattern,
            shapes=[(f"folded axes {axes}", shape)],
            hint="Correct the lengths, or check which axis of the group is time.",
        )
    steps_range = torch.arange(steps, device=values.device)
    if sample_axis == 0:
        return steps_range < values[:, None]
    return steps_range[:, None] < values[None, :]
