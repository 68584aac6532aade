"""Turns one operand of a pattern, for one tensor rank, into a frozen plan of tensor operations.

A plan applies ``unflatten``/``squeeze`` for the input's groups, one ``permute`` when the axes move, then
``flatten``/``unsqueeze`` for the output's groups, skipping every step that is a no-op. Each step is a view
whenever the strides allow it, so adjacent folded axes cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ._errors import FoldError, fold_error
from ._pattern import ELLIPSIS, Composition, Operand, element_text

__all__ = ["FRAME_FORMATS", "MAX_RANKS", "NoView", "Plan", "Rule", "SizeMismatch", "mergeable", "product"]

MAX_RANKS = 64
"""How many ranks a per-rank cache holds before it is emptied: a bound on memory, not on the ranks allowed."""


def product(sizes: Iterable[int]) -> int:
    """The product of ``sizes``; a loop rather than ``math.prod``, which torch.compile cannot trace over sizes."""
    total = 1
    for size in sizes:
        total *= size
    return total


FRAME_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}
"""The channels-last layout of a batch of frames, by the batch's rank."""


def mergeable(sizes: Sequence[int], strides: Sequence[int], start: int, end: int) -> bool:
    """Whether dims ``start`` to ``end`` of a tensor of these sizes and strides merge into one by a view.

    torch's rule, as ``flatten`` applies it: each dim's stride must be the next dim's size times its stride, dims
    of size 1 having no say; an empty tensor merges any dims.
    """
    expected = -1
    for dim in range(end, start - 1, -1):
        size = sizes[dim]
        if size == 0:
            return True
        if size == 1:
            continue
        if expected >= 0 and strides[dim] != expected:
            return False
        expected = strides[dim] * size
    return True


class NoView(Exception):
    """Internal: a merge of dims needs a copy, which ``copy=False`` forbids; the caller explains which and why."""


class SizeMismatch(Exception):
    """Internal: an input's size disagrees with its plan; the caller adds what it knows and raises FoldError."""

    def __init__(self, what: str, name: str) -> None:
        super().__init__(what)
        self.what = what
        self.name = name


@dataclass(frozen=True)
class Plan:
    """The operations that take a tensor of one rank from an operand's left composition to its right one.

    Attributes:
        inputs: The axes of each input dim, in order (ellipsis axes as ``…0``, ``…1``...).
        equal_checks: ``(dim, name)``: the input's ``dim`` must equal the given length of ``name``.
        expansions: ``(dim, names, unknown)`` in decreasing ``dim``: squeeze ``dim`` (which must have size 1)
            when ``names`` is empty, else unflatten it into ``names`` (``unknown`` is the index of the inferred
            one, or -1).
        names: The elementary axes after the expansions, in input order (ellipsis axes as ``…0``, ``…1``...).
        permutation: The permute into output order, or ``None`` when the order is unchanged.
        merges: ``(start, end)`` ranges to flatten, in decreasing order.
        unsqueezes: Output positions of ``1``/``()`` axes, in increasing order.
        group: ``(start, stop)`` of the folded group's axes after the permute, or ``None``.
        group_dim: Position of the folded group in the output, or ``None``.
        flatten_only: ``(start, end)`` when the whole plan is one ``flatten`` that forms the group.
    """

    inputs: tuple[tuple[str, ...], ...]
    equal_checks: tuple[tuple[int, str], ...]
    expansions: tuple[tuple[int, tuple[str, ...], int], ...]
    names: tuple[str, ...]
    permutation: tuple[int, ...] | None
    merges: tuple[tuple[int, int], ...]
    unsqueezes: tuple[int, ...]
    group: tuple[int, int] | None
    group_dim: int | None
    flatten_only: tuple[int, int] | None

    def apply(
        self, x: torch.Tensor, lengths: Mapping[str, int], copy: bool | None = None
    ) -> tuple[torch.Tensor, torch.Size | None, torch.Size]:
        """Rearranges ``x``; returns it with the folded group's sizes and the sizes of the elementary axes.

        ``copy`` has the array API's meaning: ``None`` copies only where the strides leave no view, ``False``
        never copies, ``True`` always does. A copy is laid out as each frame of ``x`` is (see ``frame_format``).

        Raises:
            SizeMismatch: a size of ``x`` disagrees with ``lengths`` or cannot be split.
            NoView: ``copy`` is ``False``, and merging the axes needs a copy.
        """
        for dim, sizes in self.splits(x.shape, lengths):
            x = x.squeeze(dim) if sizes is None else torch.unflatten(x, dim, sizes)
        elementary = x.shape
        if self.permutation is not None:
            x = x.permute(self.permutation)
        group_sizes = None if self.group is None else x.shape[self.group[0] : self.group[1]]
        viewable = copy is not False and self.viewable(x)
        if copy or (copy is None and not viewable):
            x = self.copied(x, viewable)
        else:
            if copy is False:
                self.check_views(x.shape, x.stride())
            for start, end in self.merges:
                x = x.flatten(start, end)
        for dim in self.unsqueezes:
            x = x.unsqueeze(dim)
        return x, group_sizes, elementary

    def splits(self, shape: Sequence[int], lengths: Mapping[str, int]) -> list[tuple[int, list[int] | None]]:
        """``(dim, sizes)`` for each input dim to split, in decreasing order; ``None`` sizes squeeze a unit dim.

        An unknown size is -1. Raises ``SizeMismatch`` when a size of ``shape`` disagrees with ``lengths`` or
        cannot be split.
        """
        for dim, name in self.equal_checks:
            if shape[dim] != lengths[name]:
                raise SizeMismatch(f"axis '{name}' has size {shape[dim]} but was given as {lengths[name]}", name)
        splits: list[tuple[int, list[int] | None]] = []
        for dim, names, unknown in self.expansions:
            if not names:
                if shape[dim] != 1:
                    raise SizeMismatch(f"dim {dim} is written as 1 but has size {shape[dim]}", "")
                splits.append((dim, None))
                continue
            sizes = [-1 if i == unknown else lengths[name] for i, name in enumerate(names)]
            known = product(size for size in sizes if size != -1)
            fits = shape[dim] % known == 0 if unknown >= 0 else shape[dim] == known
            if not fits:
                raise SizeMismatch(
                    f"dim {dim} of size {shape[dim]} cannot be split into ({' '.join(names)}) "
                    f"with {', '.join(f'{n}={lengths[n]}' for i, n in enumerate(names) if i != unknown)}",
                    names[unknown] if unknown >= 0 else names[0],
                )
            splits.append((dim, sizes))
        return splits

    def check_views(self, shape: Sequence[int], strides: Sequence[int]) -> None:
        """Raises ``NoView`` for the first merge that the strides (after the splits and permute) make a copy."""
        for start, end in self.merges:
            if not mergeable(shape, strides, start, end):
                raise NoView

    def viewable(self, x: torch.Tensor) -> bool:
        """Whether the merges make views of ``x``, the tensor after the splits and the permute."""
        if not self.merges or x.is_contiguous():
            return True
        sizes, strides = x.shape, x.stride()
        return all(mergeable(sizes, strides, start, end) for start, end in self.merges)

    def copied(self, x: torch.Tensor, viewable: bool) -> torch.Tensor:
        """``x`` (after the splits and the permute) with its merges made, as one new tensor laid out as its frames
        are (see ``frame_format``); ``viewable`` says whether the merges alone would have made a view."""
        layout = self.frame_format(x)
        if layout == torch.contiguous_format:
            # torch's own flatten copies into a contiguous tensor at the first merge that is no view, and the merges
            # after it are views of that copy.
            merged = x
            for start, end in self.merges:
                merged = merged.flatten(start, end)
            return merged.clone(memory_format=torch.contiguous_format) if viewable else merged
        shape = list(x.shape)
        for start, end in self.merges:
            shape[start : end + 1] = [product(shape[start : end + 1])]
        merged = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)
        parts = merged
        for start, end in reversed(self.merges):  # increasing order: each split leaves the dims before it alone
            parts = torch.unflatten(parts, start, x.shape[start : end + 1])
        parts.copy_(x)
        return merged

    def frame_format(self, x: torch.Tensor) -> torch.memory_format:
        """The layout of a copy of ``x`` (after the splits and the permute): that of each of its frames.

        The frames are what the folded group leaves of each row. When the group is merged at dim 0 of a 4-D (5-D)
        result and every frame is stored channels_last, the copy is ``channels_last`` (``channels_last_3d``), as a
        batch of such frames would be; otherwise it is contiguous.
        """
        if self.group is None:
            return torch.contiguous_format
        candidate = FRAME_FORMATS.get(x.ndim - self.group[1] + 1)  # by the rank of the merged result
        if candidate is None or self.unsqueezes or self.merges != ((0, self.group[1] - 1),):
            return torch.contiguous_format
        if 0 in x.shape[: self.group[1]]:
            return torch.contiguous_format
        frame = x[(0,) * self.group[1]].unsqueeze(0)
        if frame.is_contiguous() or not frame.is_contiguous(memory_format=candidate):
            return torch.contiguous_format
        return candidate

    @property
    def group_positions(self) -> tuple[int, ...]:
        """Where the folded group's axes are among the elementary axes (``names``), in group order."""
        if self.group is None:
            return ()
        order = self.permutation or range(len(self.names))
        return tuple(order[i] for i in range(*self.group))

    def sizes_read_off(self, shape: Sequence[int]) -> dict[str, int]:
        """The size of each named axis that stands alone in an input dim, for messages."""
        return {
            names[0]: shape[dim]
            for dim, names in enumerate(self.inputs)
            if len(names) == 1 and not names[0].startswith(ELLIPSIS)
        }


class Rule:
    """One operand of a pattern, with its plans cached per input rank.

    Args:
        pattern: The whole pattern's text, for messages.
        operand: The parsed operand.
        known: Names whose lengths are given at call time rather than read off the tensor.
    """

    def __init__(self, pattern: str, operand: Operand, known: frozenset[str]) -> None:
        self.pattern = pattern
        self.operand = operand
        self.known = known
        self._plans: dict[int, Plan] = {}

    def plan(self, x: torch.Tensor, label: str | Callable[[], str]) -> Plan:
        """The plan for tensors of the rank of ``x``; ``label`` (or what it returns) names ``x`` in messages."""
        ndim = x.ndim
        plan = self._plans.get(ndim)
        if plan is None:
            plan = self._build(ndim, label if isinstance(label, str) else label(), tuple(x.shape))
            # Under dynamo a write here is a side effect of the traced program: strict export warns about it
            # and compile adds a recompile. Tracing rebuilds the plan instead; eager calls fill the cache.
            if not torch.compiler.is_compiling():
                if len(self._plans) >= MAX_RANKS:
                    self._plans.clear()
                self._plans[ndim] = plan
        return plan

    def _build(self, ndim: int, label: str, shape: tuple[int, ...]) -> Plan:
        operand = self.operand
        lhs, rhs = operand.lhs, operand.rhs
        if ELLIPSIS in lhs:
            ellipsis_ndim = ndim - (len(lhs) - 1)
            if ellipsis_ndim < 0:
                raise self._rank_error(f"at least {len(lhs) - 1}", ndim, label, shape)
        else:
            ellipsis_ndim = 0
            if ndim != len(lhs):
                raise self._rank_error(str(len(lhs)), ndim, label, shape)
        ellipsis_axes = tuple(f"{ELLIPSIS}{i}" for i in range(ellipsis_ndim))
        lhs_groups = _expand(lhs, ellipsis_axes)
        rhs_groups = _expand(rhs, ellipsis_axes)

        equal_checks: list[tuple[int, str]] = []
        expansions: list[tuple[int, tuple[str, ...], int]] = []
        for dim, names in enumerate(lhs_groups):
            if not names:
                expansions.append((dim, (), -1))
            elif len(names) == 1:
                if names[0] in self.known:
                    equal_checks.append((dim, names[0]))
            else:
                unknown = next((i for i, name in enumerate(names) if name not in self.known), -1)
                expansions.append((dim, names, unknown))
        names = tuple(name for group in lhs_groups for name in group)
        order = tuple(name for group in rhs_groups for name in group)
        permutation = tuple(names.index(name) for name in order)

        merges: list[tuple[int, int]] = []
        unsqueezes: list[int] = []
        position = 0
        group: tuple[int, int] | None = None
        group_dim: int | None = None
        folded = _expanded_index(rhs, operand.group, ellipsis_ndim)
        for index, axes in enumerate(rhs_groups):
            if not axes:
                unsqueezes.append(index)
            elif len(axes) > 1:
                merges.append((position, position + len(axes) - 1))
            if index == folded:
                group, group_dim = (position, position + len(axes)), index
            position += len(axes)

        plain = not (equal_checks or expansions or unsqueezes) and permutation == tuple(range(len(names)))
        flatten_only = merges[0] if plain and len(merges) == 1 and group_dim == merges[0][0] else None
        return Plan(
            inputs=tuple(lhs_groups),
            equal_checks=tuple(equal_checks),
            expansions=tuple(reversed(expansions)),
            names=names,
            permutation=None if permutation == tuple(range(len(names))) else permutation,
            merges=tuple(reversed(merges)),
            unsqueezes=tuple(unsqueezes),
            group=group,
            group_dim=group_dim,
            flatten_only=flatten_only,
        )

    def _rank_error(self, expected: str, ndim: int, label: str, shape: tuple[int, ...]) -> FoldError:
        lhs = " ".join(element_text(element) for element in self.operand.lhs)
        return fold_error(
            f"{label} has {ndim} dim{'' if ndim == 1 else 's'}, but '{lhs}' expects {expected}.",
            pattern=self.pattern,
            shapes=[(label, shape)],
            hint="Pass a tensor of the rank the pattern describes, or change the pattern "
            "('...' stands for any number of dims).",
        )


def _expand(composition: Composition, ellipsis_axes: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The composition with ``...`` replaced by its axes: one group per dim."""
    groups: list[tuple[str, ...]] = []
    for element in composition:
        if isinstance(element, str):
            groups.extend((axis,) for axis in ellipsis_axes)
        else:
            groups.append(tuple(a for name in element for a in (ellipsis_axes if name == ELLIPSIS else (name,))))
    return groups


def _expanded_index(composition: Composition, index: int | None, ellipsis_ndim: int) -> int | None:
    if index is None:
        return None
    before = composition[:index]
    return index + (ellipsis_ndim - 1 if ELLIPSIS in before else 0)
