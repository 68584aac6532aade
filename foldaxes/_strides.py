"""Why a fold is a view or a copy: torch's rule for merging axes, and the words that explain a verdict.

``flatten`` merges adjacent axes into one without a copy exactly when each axis's stride is the next axis's size
times its stride (axes of size 1 have no say): ``mergeable`` in ``_plan.py``, which ``Plan.apply`` asks before it
merges, so that it can make the copy itself, in the frames' layout, or refuse one. ``explain`` and the error of
``copy=False`` explain the verdict with ``reason``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from itertools import pairwise
from typing import NamedTuple

import torch

from ._errors import fold_error
from ._pattern import ELLIPSIS, Operand, element_text
from ._plan import Plan, product

__all__ = ["Axis", "copy_refused", "elementary_axes", "group_text", "reason", "shown_name", "view_recipe"]


class Axis(NamedTuple):
    """One elementary axis of a tensor about to be merged: its name in the pattern, size and stride."""

    name: str
    size: int
    stride: int


def elementary_axes(plan: Plan, x: torch.Tensor, lengths: Mapping[str, int]) -> list[Axis]:
    """The input's axes after the plan's splits and permute, just before it merges any: in output order."""
    apart, _, _ = replace(plan, merges=(), unsqueezes=()).apply(x, lengths)
    names = plan.names if plan.permutation is None else tuple(plan.names[i] for i in plan.permutation)
    return [Axis(name, size, stride) for name, size, stride in zip(names, apart.shape, apart.stride(), strict=True)]


def reason(plan: Plan, axes: list[Axis], is_view: bool, empty: bool) -> tuple[str, str | None, tuple[str, ...] | None]:
    """Why the fold is a view or a copy, a hint when a copy could become a view, and the group order that would.

    The third item is the folded group's axes in the order they lie in memory, when writing the group in that order
    would make the fold a view; ``view_recipe`` turns it into a pattern.
    """
    merges = sorted(plan.merges)
    if not merges:
        return (
            "The pattern merges no axes: it only splits, reorders or adds unit axes, which are always views.",
            None,
            None,
        )
    if empty:
        return "The input is empty, and any reshape of an empty tensor is a view.", None, None
    clauses: list[str] = []
    hints: list[str] = []
    blocked_any = False
    reordered = None
    for start, end in merges:
        members = axes[start : end + 1]
        text = group_text(tuple(shown_name(axis.name) for axis in members))
        blocked = _blocking_pair(members)
        if blocked is None:
            clauses.append(_merges(text, members))
            continue
        outer, inner = blocked
        blocked_any = True
        clauses.append(
            f"{text} cannot be one axis: {shown_name(outer.name)}'s stride {_stride(outer, axes)} would have to be "
            f"{shown_name(inner.name)}'s size {inner.size} times {shown_name(inner.name)}'s stride "
            f"{_stride(inner, axes)}, {inner.size * inner.stride}."
        )
        hint, order = _hint(members, outer, inner, axes)
        hints.append(hint)
        if order is not None and plan.group == (start, end + 1):
            reordered = order
    if not is_view and not blocked_any:  # not expected: every copy comes from a merge that the strides rule out
        clauses.append("torch copied the input all the same.")
    return " ".join(clauses), " ".join(hint for hint in hints if hint) or None, reordered


def view_recipe(
    pattern: str, operand: Operand, plan: Plan, reordered: tuple[str, ...], lengths: Mapping[str, int]
) -> str | None:
    """``Distribute(...)`` with the folded group written in ``reordered`` order, the axis ``lengths`` the pattern
    needs, and the ``out=`` that restores the order.

    ``None`` when the group holds axes of ``...``, which a pattern cannot name one by one.
    """
    assert plan.group is not None and plan.group_dim is not None and operand.group is not None
    group = operand.rhs[operand.group]
    if any(name.startswith(ELLIPSIS) for name in reordered) or isinstance(group, str) or ELLIPSIS in group:
        return None
    lhs = pattern.split("->")[0].strip()
    rhs = " ".join(
        "(" + " ".join(reordered) + ")" if index == operand.group else element_text(element)
        for index, element in enumerate(operand.rhs)
    )
    before = " ".join(f"d{i}" for i in range(plan.group_dim))
    out = f"{before} ({' '.join(reordered)}) ... -> {before} {' '.join(group)} ...".strip()
    given = "".join(f", {name}={length}" for name, length in lengths.items())
    return f"Distribute('{lhs} -> {rhs}', module{given}, out='{' '.join(out.split())}')"


def _merges(text: str, members: list[Axis]) -> str:
    big = [axis for axis in members if axis.size != 1]
    if len(big) < 2:
        which = f"only {shown_name(big[0].name)} has" if big else "none of its axes has"
        return f"{text} merges whatever the strides: {which} a size above 1."
    pairs = "; ".join(
        f"{shown_name(outer.name)}'s stride {outer.stride} = {shown_name(inner.name)}'s size {inner.size} times "
        f"{shown_name(inner.name)}'s stride {inner.stride}"
        for outer, inner in pairwise(big)
    )
    return f"{text} becomes one axis of stride {big[-1].stride}: {pairs}."


def _blocking_pair(members: list[Axis]) -> tuple[Axis, Axis] | None:
    """The first two neighbouring axes (size-1 axes skipped) that one stride cannot cover, if any.

    ``flatten`` returns a view exactly when each axis's stride is the next axis's size times its stride;
    axes of size 1 have no say.
    """
    big = [axis for axis in members if axis.size != 1]
    for outer, inner in pairwise(big):
        if outer.stride != inner.size * inner.stride:
            return outer, inner
    return None


def _hint(members: list[Axis], outer: Axis, inner: Axis, axes: list[Axis]) -> tuple[str, tuple[str, ...] | None]:
    repeated = [axis for axis in members if axis.stride == 0 and axis.size > 1]
    if repeated:
        return (
            f"{shown_name(repeated[0].name)} has stride 0: the input repeats along it, as expand() makes. "
            "Distribute(..., compute_repeats_once=True) runs the module on one copy of such an input rather than "
            "folding every repeat.",
            None,
        )
    in_memory = sorted(members, key=lambda axis: -axis.stride)
    if in_memory != members and _blocking_pair(in_memory) is None:
        order = tuple(axis.name for axis in in_memory)
        shown = group_text(tuple(shown_name(name) for name in order))
        return f"Writing the group as {shown}, the order of its axes in memory, would make it a view.", order
    between = [a for a in axes if a not in members and a.size != 1 and inner.stride < a.stride < outer.stride]
    if between:
        names = " and ".join(shown_name(axis.name) for axis in between)
        verb = "lie" if len(between) > 1 else "lies"
        return f"They are not adjacent in memory: {names} {verb} between them.", None
    if outer.stride > inner.size * inner.stride:
        return "There is a gap in memory between them: the input is cropped or strided along an axis.", None
    return "", None


def _stride(axis: Axis, axes: list[Axis]) -> str:
    """The stride, with the axes whose sizes it is the product of when it is one (a dense layout)."""
    if axis.stride <= 1:
        return str(axis.stride)
    inside = sorted(
        (other for other in axes if other is not axis and other.size > 1 and other.stride < axis.stride),
        key=lambda other: -other.stride,
    )
    if inside and product(other.size for other in inside) == axis.stride:
        return f"{axis.stride} (= {'*'.join(shown_name(other.name) for other in inside)})"
    return str(axis.stride)


def shown_name(name: str) -> str:
    """An axis name as messages show it: ``...[0]`` for the first axis of ``...``."""
    return f"...[{name[len(ELLIPSIS) :]}]" if name.startswith(ELLIPSIS) else name


def group_text(names: tuple[str, ...]) -> str:
    """Names as a parenthesised group, as a pattern writes them."""
    return "(" + " ".join(names) + ")"


def copy_refused(
    label: str,
    pattern: str,
    operand: Operand,
    plan: Plan,
    x: torch.Tensor,
    lengths: Mapping[str, int],
    with_recipe: bool = True,
) -> Exception:
    """The error for a fold that needs a copy under ``copy=False``: why, and what would fold by a view.

    ``with_recipe``: whether ``pattern`` is a wrapper's one-operand pattern, which a ``Distribute(...)`` line with
    the group reordered can replace (not a ``fold_kwargs`` entry, nor one operand of several).
    """
    axes = elementary_axes(plan, x, lengths)
    why, hint, reordered = reason(plan, axes, False, False)  # an empty tensor always folds by a view
    recipe = None if reordered is None or not with_recipe else view_recipe(pattern, operand, plan, reordered, lengths)
    advice = [hint or "", f"{recipe} folds without a copy." if recipe else "", "Or leave copy=None to copy."]
    return fold_error(
        f"{label} cannot be folded without a copy, and copy=False forbids one. {why}",
        pattern=pattern,
        span=None if plan.group is None else operand.span("rhs", axes[plan.group[0]].name),
        shapes=[(f"{label} (strides {tuple(x.stride())})", x.shape)],
        hint=" ".join(part for part in advice if part),
    )
