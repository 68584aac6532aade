"""Inputs repeated along a folded axis (stride 0, as ``expand`` makes them): run one copy, expand the output.

When every tensor that carries the folded rows has stride 0 on the same folded axis, all its slices along that
axis are the same tensor, and a module that treats rows independently returns the same rows for each. So the
module runs on one slice (``narrow(dim, 0, 1)``, a view) and each output is expanded back along that axis: a view
with stride 0, which is exact, and whose backward sums over the copies as the dense call's would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ._errors import FoldError
from ._pattern import ELLIPSIS
from ._tree import flatten, unflatten

if TYPE_CHECKING:
    from ._folding import Folding

__all__ = ["Repeats", "call_repeated", "find_repeats", "has_zero_stride"]


def has_zero_stride(x: torch.Tensor, span: tuple[int, int]) -> bool:
    """Whether dims ``span[0]`` to ``span[1]`` of ``x`` may repeat (or ``x`` is not a dense tensor at all)."""
    if x.is_nested or x.layout != torch.strided:
        return True  # the general path folds it or says what is wrong
    return 0 in x.stride()[span[0] : span[1] + 1]


@dataclass(frozen=True)
class Repeats:
    """Which folded axes repeat in every tensor that carries the folded rows.

    Attributes:
        narrow: ``(key, dims)`` per such tensor: its positional index or keyword, and the input dims to narrow.
        positions: The positions in the folded group of the repeated axes.
        sizes: Their sizes.
        names: Their names, for messages.
    """

    narrow: tuple[tuple[int | str, tuple[int, ...]], ...]
    positions: tuple[int, ...]
    sizes: tuple[int, ...]
    names: tuple[str, ...]


def find_repeats(folding: Folding, args: Sequence[Any], kwargs: dict[str, Any]) -> Repeats | None:
    """The folded axes along which every tensor that carries the folded rows has stride 0, or ``None``.

    An axis counts only where it stands alone in an input dim, has more than one element, and has no length
    given as a keyword. Any contiguous positional tensor, or one of a tensor subclass, ends the search early:
    this is the cost the general path pays.
    """
    for arg in args:
        # A subclass (a nested tensor) is not searched: its is_contiguous() alone can cost more than a fold.
        if isinstance(arg, torch.Tensor) and (type(arg) is not torch.Tensor or arg.is_contiguous()):
            return None
    common: set[int] | None = None
    sizes: dict[int, int] = {}
    names: Sequence[str] = ()
    found: list[tuple[int | str, dict[int, int]]] = []
    for key, label, rule, x in folding.operands(args, kwargs):
        if rule.operand.group_axes is None:
            continue
        if rule.operand.group_axes != folding.group_axes or x.is_nested or x.layout != torch.strided:
            return None
        plan = rule.plan(x, label)
        assert plan.group is not None
        order = plan.names if plan.permutation is None else tuple(plan.names[i] for i in plan.permutation)
        dims = {axes[0]: dim for dim, axes in enumerate(plan.inputs) if len(axes) == 1}
        strides, shape = x.stride(), x.shape
        names = names or order[plan.group[0] : plan.group[1]]
        repeated = {
            position: dims[name]
            for position, name in enumerate(order[plan.group[0] : plan.group[1]])
            if name in dims and name not in folding.lengths and strides[dims[name]] == 0 and shape[dims[name]] > 1
        }
        for position, dim in repeated.items():
            if sizes.setdefault(position, shape[dim]) != shape[dim]:
                return None  # the arguments disagree: the dense fold says so
        common = set(repeated) if common is None else common & set(repeated)
        if not common:
            return None
        found.append((key, repeated))
    if not common:
        return None
    positions = tuple(sorted(common))
    return Repeats(
        narrow=tuple((key, tuple(repeated[p] for p in positions)) for key, repeated in found),
        positions=positions,
        sizes=tuple(sizes[p] for p in positions),
        names=tuple("..." if names[p].startswith(ELLIPSIS) else names[p] for p in positions),
    )


def call_repeated(
    folding: Folding, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], repeats: Repeats
) -> Any:
    """Runs ``fn`` on one copy of the repeated axes and returns its unfolded outputs expanded along them."""
    call_args, call_kwargs = list(args), dict(kwargs)
    for key, dims in repeats.narrow:
        x = call_args[key] if isinstance(key, int) else call_kwargs[key]
        for input_dim in dims:
            x = x.narrow(input_dim, 0, 1)
        if isinstance(key, int):
            call_args[key] = x
        else:
            call_kwargs[key] = x
    folded = folding.fold_arguments(call_args, call_kwargs)
    result = folding.run(fn, call_args, call_kwargs, folded)
    dim, group_sizes = folded[2], folded[3]
    assert dim is not None
    try:
        unfolded = folding.outputs.unfold(result, dim, group_sizes)
    except FoldError as error:
        raise FoldError(
            f"{error}\n  The input repeats (stride 0) along {', '.join(repeats.names)}, so the module ran on one "
            "copy, which the sizes above show as 1."
        ) from None
    if isinstance(unfolded, torch.Tensor):
        return _expand(unfolded, dim, repeats)
    leaves, spec = flatten(unfolded)
    return unflatten([_expand(leaf, dim, repeats) if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves], spec)


def _expand(leaf: torch.Tensor, dim: int, repeats: Repeats) -> torch.Tensor:
    """``leaf`` expanded back along the repeated axes, which the unfold put at ``dim`` onwards with size 1."""
    shape = list(leaf.shape)
    for position, size in zip(repeats.positions, repeats.sizes, strict=True):
        shape[dim + position] = size
    return leaf.expand(shape)
