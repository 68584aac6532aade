"""Rows repeated along a folded axis (stride 0, as ``expand`` makes them), computed once when the wrapper asks.

When every tensor that carries the folded rows has stride 0 on the same folded axis, all its slices along that axis
are the same tensor. A module that computes each row from that row alone, and draws no random numbers, returns the
same rows for each; so with ``compute_repeats_once=True`` the module runs on one slice (``narrow(dim, 0, 1)``, a
view) and each output is expanded back along that axis: a view with stride 0, whose backward sums over the copies
as the dense call's would.

Only the dense call is exact for every module (one that mixes rows, or samples noise, is not row-wise), so this is
opt-in, and guarded: torch's Dropout and BatchNorm layers that would make copies differ send the call to the dense
path before it runs, and a call that draws from torch's default generators all the same raises a ``FoldError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from ._errors import FoldError, fold_error
from ._guards import per_copy_randomness, random_state
from ._pattern import ELLIPSIS
from ._records import FoldedCall, Key, TensorArgument
from ._tree import flatten, unflatten
from ._unfold import OutputRules

__all__ = ["Repeats", "find_repeats", "has_zero_stride"]


def has_zero_stride(x: torch.Tensor, span: tuple[int, int]) -> bool:
    """Whether dims ``span[0]`` to ``span[1]`` of the dense tensor ``x`` may repeat."""
    return not x.is_contiguous() and 0 in x.stride()[span[0] : span[1] + 1]


class Repeats(NamedTuple):
    """Which folded axes repeat in every tensor that carries the folded rows.

    Attributes:
        narrow: ``(key, dims)`` per such tensor: its positional index or keyword, and the input dims to narrow.
        positions: The positions in the folded group of the repeated axes.
        sizes: Their sizes.
        names: Their names, for messages.
        devices: The devices of those tensors, whose generators a draw would change.
        random_state: The states of those generators before the call.
    """

    narrow: tuple[tuple[Key, tuple[int, ...]], ...]
    positions: tuple[int, ...]
    sizes: tuple[int, ...]
    names: tuple[str, ...]
    devices: tuple[torch.device, ...]
    random_state: list[torch.Tensor]

    def narrowed(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """The call's arguments with one copy of each repeated axis: views of size 1 there."""
        call_args, call_kwargs = list(args), dict(kwargs)
        for key, dims in self.narrow:
            x = call_args[key] if isinstance(key, int) else call_kwargs[key]
            for input_dim in dims:
                x = x.narrow(input_dim, 0, 1)
            if isinstance(key, int):
                call_args[key] = x
            else:
                call_kwargs[key] = x
        return call_args, call_kwargs

    def check_no_draws(self, pattern: str) -> None:
        """Raises when the default generators moved since the repeats were found: a draw every copy would share.

        Raises:
            FoldError: a generator's state changed.
        """
        after = random_state(self.devices)
        if all(torch.equal(old, new) for old, new in zip(self.random_state, after, strict=True)):
            return
        raise fold_error(
            f"The module drew random numbers while it computed the rows repeated along {', '.join(self.names)} "
            "once (a default torch generator advanced), so every copy would share one draw.",
            pattern=pattern,
            hint="Leave compute_repeats_once off (the default computes every copy), or call the module in a mode "
            "that draws nothing, for example after .eval().",
        )

    def unfold(self, outputs: OutputRules, result: Any, call: FoldedCall) -> Any:
        """Unfolds the outputs of the one-copy call, and expands each back along the repeated axes."""
        dim = call.dim
        assert dim is not None
        try:
            unfolded = outputs.unfold(result, dim, call.group_sizes)
        except FoldError as error:
            raise FoldError(
                f"{error}\n  The input repeats (stride 0) along {', '.join(self.names)}, so the module ran on one "
                "copy, which the sizes above show as 1."
            ) from None
        if isinstance(unfolded, torch.Tensor):
            return self._expand(unfolded, dim)
        leaves, spec = flatten(unfolded)
        return unflatten([self._expand(leaf, dim) if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves], spec)

    def _expand(self, leaf: torch.Tensor, dim: int) -> torch.Tensor:
        """``leaf`` expanded back along the repeated axes, which the unfold put at ``dim`` onwards with size 1."""
        shape = list(leaf.shape)
        for position, size in zip(self.positions, self.sizes, strict=True):
            shape[dim + position] = size
        return leaf.expand(shape)


def find_repeats(
    fn: Callable[..., Any],
    arguments: Sequence[TensorArgument],
    group_axes: tuple[str, ...] | None,
    lengths: Mapping[str, int],
) -> Repeats | None:
    """The folded axes along which every tensor that carries the folded rows has stride 0, when ``fn`` may run once.

    An axis counts only where it stands alone in an input dim, has more than one element, and has no length
    given as a keyword. ``None`` when there is none, or when ``fn`` carries a layer whose copies would differ.
    The states of the default generators are read last, to be compared once ``fn`` has run.
    """
    common: set[int] | None = None
    sizes: dict[int, int] = {}
    names: Sequence[str] = ()
    found: list[tuple[Key, dict[int, int]]] = []
    for key, label, rule, x in arguments:
        if rule.operand.group_axes is None:
            continue
        if rule.operand.group_axes != group_axes or x.is_nested or x.layout != torch.strided or x.is_contiguous():
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
            if name in dims and name not in lengths and strides[dims[name]] == 0 and shape[dims[name]] > 1
        }
        for position, dim in repeated.items():
            if sizes.setdefault(position, shape[dim]) != shape[dim]:
                return None  # the arguments disagree: the dense fold says so
        common = set(repeated) if common is None else common & set(repeated)
        if not common:
            return None
        found.append((key, repeated))
    if not common or per_copy_randomness(fn):
        return None
    positions = tuple(sorted(common))
    devices = tuple(argument.tensor.device for argument in arguments)
    return Repeats(
        narrow=tuple((key, tuple(repeated[p] for p in positions)) for key, repeated in found),
        positions=positions,
        sizes=tuple(sizes[p] for p in positions),
        names=tuple("..." if names[p].startswith(ELLIPSIS) else names[p] for p in positions),
        devices=devices,
        random_state=random_state(devices),
    )
