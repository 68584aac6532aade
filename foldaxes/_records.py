"""The small immutable records that pass a call between the modules on its path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from ._plan import Rule

__all__ = ["FoldedCall", "Key", "TensorArgument"]

Key = int | str
"""Where an argument is: its position, or its keyword."""


class TensorArgument(NamedTuple):
    """A tensor argument of a call that the pattern folds: where it is, its name in messages, its rule, itself."""

    key: Key
    label: str
    rule: Rule
    tensor: torch.Tensor


class FoldedCall(NamedTuple):
    """A call's arguments after folding, and where their folded rows are.

    Attributes:
        args: The positional arguments, each tensor folded.
        kwargs: The keyword arguments, those named in ``fold_kwargs`` folded.
        dim: The folded dim of every output, or ``None`` when the pattern folds nothing.
        group_sizes: The sizes of the folded group's axes, in group order.
        row_slots: ``(key, dim)`` of each folded argument that carries the folded rows, and the dim they are at.
        other_group: The label and rule of the first argument that folds other axes than the folded group, whose
            rows therefore cannot be split like the others'; ``None`` when there is none.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    dim: int | None
    group_sizes: Sequence[int]
    row_slots: tuple[tuple[Key, int], ...]
    other_group: tuple[str, Rule] | None
