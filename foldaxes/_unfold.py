"""Splits the folded dim of every tensor in a module's output back into its axes, or applies ``out=``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ._arrays import apply_plan, namespace, reshape
from ._errors import fold_error, shown
from ._pattern import ELLIPSIS, parse_rule
from ._plan import Rule, SizeMismatch, product
from ._tree import flatten, leaf_paths, map_structure, unflatten

__all__ = ["OutSpec", "OutputRules", "bind_group", "conform", "is_array", "split_leaf"]

OutSpec = str | None | Sequence[Any] | Mapping[Any, Any]
"""What ``out=`` takes: a pattern, ``None``, or a nested structure of those matching the module's output."""


def bind_group(axes: Sequence[str], sizes: Sequence[int]) -> dict[str, int]:
    """Names each size of a folded group; the axes that ``...`` stood for get no name."""
    if ELLIPSIS not in axes:
        return dict(zip(axes, sizes, strict=True))
    split = list(axes).index(ELLIPSIS)
    after = len(axes) - split - 1
    named = list(zip(axes[:split], sizes[:split], strict=True))
    named += zip(axes[split + 1 :], sizes[len(sizes) - after :], strict=True)
    return dict(named)


class OutputRules:
    """How to unfold a module's output: the default split of the folded dim, or the user's ``out=``.

    Args:
        pattern: The fold's pattern, for messages.
        out: ``None`` for the default split, a pattern for every tensor, or a structure of patterns and ``None``.
        group_axes: The names of the folded group (``None`` when the pattern folds nothing).
        lengths: Axis lengths given as keywords.
    """

    def __init__(
        self,
        pattern: str,
        out: OutSpec,
        group_axes: tuple[str, ...] | None,
        lengths: Mapping[str, int],
    ) -> None:
        self.pattern = pattern
        self.group_axes = group_axes or ()
        self.lengths = dict(lengths)
        self.out = out
        known = frozenset(name for name in self.group_axes if name != ELLIPSIS) | frozenset(lengths)
        leaves = [out] if isinstance(out, str) else flatten(out)[0]
        self.rules: dict[str, Rule] = {}
        for leaf in leaves:
            if isinstance(leaf, str):
                if leaf not in self.rules:
                    self.rules[leaf] = Rule(leaf, parse_rule(leaf, known, "out="), known)
            elif leaf is not None:
                raise fold_error(
                    f"Each leaf of out= must be a pattern string or None, not {shown(leaf, typed=True)}.",
                    pattern=pattern,
                    hint="Give out= one pattern for every output tensor, or a structure like the module's output "
                    "with a pattern or None at each leaf.",
                )

    @property
    def names(self) -> frozenset[str]:
        """Every axis name the ``out=`` patterns use."""
        return frozenset().union(*(rule.operand.names for rule in self.rules.values()))

    def unfold(self, result: Any, dim: int | None, sizes: Sequence[int]) -> Any:
        """Unfolds every tensor in ``result``; ``dim`` and ``sizes`` describe the folded group."""
        if self.out is None:
            if dim is None:
                return result
            total = product(sizes)
            return self._each_tensor(result, lambda leaf: self._split(leaf, result, dim, sizes, total))
        bindings = {**self.lengths, **bind_group(self.group_axes, sizes)}
        if isinstance(self.out, str):
            rule = self.rules[self.out]
            return self._each_tensor(result, lambda leaf: self._rearrange(rule, leaf, result, bindings))

        def rearrange(pattern: str | None, part: Any) -> Any:
            if pattern is None:
                return part
            return self._each_tensor(part, lambda leaf: self._rearrange(self.rules[pattern], leaf, result, bindings))

        try:
            return map_structure(rearrange, conform(self.out, result), result)
        except ValueError as error:
            found = (
                "the output is a single tensor"
                if is_array(result)
                else f"the output has leaves at {', '.join(leaf_paths(result))}"
            )
            raise fold_error(
                f"out= does not match the structure of the module's output: {error}",
                pattern=self.pattern,
                hint=f"Give out= the same containers as the output. out={shown(self.out)}; {found}.",
            ) from None

    def _each_tensor(self, part: Any, apply: Any) -> Any:
        if is_array(part):
            return apply(part)
        leaves, spec = flatten(part)
        return unflatten([apply(leaf) if is_array(leaf) else self._opaque(leaf, part) for leaf in leaves], spec)

    def _opaque(self, leaf: Any, result: Any) -> Any:
        """Passes a non-tensor leaf through, unless it hides tensors that would come back still folded."""
        if isinstance(leaf, set | frozenset):
            hidden = any(is_array(item) for item in leaf)
        elif dataclasses.is_dataclass(leaf) and not isinstance(leaf, type):
            hidden = any(is_array(getattr(leaf, field.name)) for field in dataclasses.fields(leaf))
        else:
            return leaf
        if hidden:
            label = _label(leaf, result)
            raise fold_error(
                f"{label[0].upper() + label[1:]} is of type {type(leaf).__name__} and holds tensors, which "
                "foldaxes cannot look into: they would come back still folded.",
                pattern=self.pattern,
                hint="Return a tuple, list, dict or NamedTuple, register a dataclass with "
                "torch.export.register_dataclass, or pass out= with None for this output.",
            )
        return leaf

    def _split(self, leaf: Any, result: Any, dim: int, sizes: Sequence[int], total: int) -> Any:
        split = split_leaf(leaf, dim, sizes, total)
        if split is None:
            found = "no such dim" if leaf.ndim <= dim else f"size {leaf.shape[dim]}"
            axes = " ".join("..." if a == ELLIPSIS else a for a in self.group_axes)
            label = _label(leaf, result)
            raise fold_error(
                f"{label[0].upper() + label[1:]} cannot be unfolded: dim {dim} should hold the folded "
                f"({axes}) of size {total}, but it has {found}.",
                pattern=self.pattern,
                shapes=[(label, leaf.shape)],
                sizes=bind_group(self.group_axes, sizes),
                hint=f"Pass out= with a pattern for this output (for example '({axes}) n -> {axes} n' if the "
                "folded axes are elsewhere), or None to return it as the module gave it.",
            )
        return split

    def _rearrange(self, rule: Rule, leaf: Any, result: Any, bindings: dict[str, int]) -> Any:
        plan = rule.plan(leaf, lambda: _label(leaf, result))
        try:
            if isinstance(leaf, torch.Tensor):
                return plan.apply(leaf, bindings)[0]
            return apply_plan(plan, leaf, bindings, None, namespace(leaf))[0]
        except SizeMismatch as mismatch:
            label = _label(leaf, result)
            raise fold_error(
                f"out= cannot rearrange {label}: {mismatch.what}.",
                pattern=rule.pattern,
                span=rule.operand.span("lhs", mismatch.name),
                shapes=[(label, leaf.shape)],
                sizes=plan.sizes_read_off(leaf.shape),
                given=bindings,
                hint=f"The folded axes are bound from the input (fold pattern: {self.pattern}).",
            ) from None


def split_leaf(leaf: Any, dim: int, sizes: Sequence[int], total: int) -> Any | None:
    """The tensor or array ``leaf`` with dim ``dim`` split into ``sizes`` (removed when there are none), a view;
    ``None`` when ``leaf`` is neither, or its dim ``dim`` does not hold the ``total`` folded rows."""
    if isinstance(leaf, torch.Tensor):
        if leaf.ndim <= dim or leaf.shape[dim] != total:
            return None
        return torch.unflatten(leaf, dim, sizes) if sizes else leaf.squeeze(dim)
    xp = namespace(leaf)
    shape = None if xp is None else leaf.shape
    if shape is None or len(shape) <= dim or shape[dim] != total:
        return None
    return reshape(leaf, (*shape[:dim], *sizes, *shape[dim + 1 :]), xp)


def is_array(value: object) -> bool:
    """Whether ``value`` is an output leaf that unfolds: a torch tensor, or an array of an array API library."""
    return isinstance(value, torch.Tensor) or namespace(value) is not None


def conform(structure: Any, tree: Any) -> Any:
    """``structure`` with each tuple or list rebuilt as the tuple-like or list that stands there in ``tree``.

    So that ``out=("...", None)`` matches a NamedTuple, a ``torch.return_types`` result or a list by position.
    """
    if isinstance(structure, tuple | list) and isinstance(tree, tuple | list) and len(structure) == len(tree):
        children = [conform(s, t) for s, t in zip(structure, tree, strict=True)]
        if isinstance(tree, list):
            return children
        return tree._make(children) if hasattr(tree, "_make") else type(tree)(children)
    if isinstance(structure, Mapping) and isinstance(tree, Mapping):
        return {key: conform(value, tree.get(key)) for key, value in structure.items()}
    return structure


def _label(leaf: Any, result: Any) -> str:
    """``"the output"``, or ``"output ['logits'][0]"`` for a leaf inside a structure: only for messages."""
    if leaf is result:
        return "the output"
    leaves, _ = flatten(result)
    paths = leaf_paths(result)
    return "output " + next((path for path, other in zip(paths, leaves, strict=True) if other is leaf), "?")
