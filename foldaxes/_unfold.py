"""Splits the folded dim of every tensor in a module's output back into its axes, or applies ``out=``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ._errors import FoldError, format_message
from ._pattern import ELLIPSIS, parse_rule
from ._plan import Rule, SizeMismatch, product
from ._tree import flatten, leaf_paths, map_structure, unflatten

__all__ = ["OutputRules", "bind_group"]

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
        self.default = out is None
        self.structure: Any = None
        known = frozenset(name for name in self.group_axes if name != ELLIPSIS) | frozenset(lengths)
        rules: dict[str, Rule] = {}
        if isinstance(out, str):
            rules[out] = Rule(out, parse_rule(out, known, "out="), known)
        elif out is not None:
            leaves, _ = flatten(out)
            for leaf in leaves:
                if isinstance(leaf, str):
                    rules.setdefault(leaf, Rule(leaf, parse_rule(leaf, known, "out="), known))
                elif leaf is not None:
                    raise FoldError(
                        f"Each leaf of out= must be a pattern string or None, not {type(leaf).__name__} "
                        f"({leaf!r}).\n  out={out!r}"
                    )
            self.structure = out
        self.rules = rules
        self.out = out

    @property
    def names(self) -> frozenset[str]:
        """Every axis name the ``out=`` patterns use."""
        return frozenset().union(*(rule.operand.names for rule in self.rules.values()))

    def unfold(self, result: Any, dim: int | None, sizes: Sequence[int]) -> Any:
        """Unfolds every tensor in ``result``; ``dim`` and ``sizes`` describe the folded group."""
        if self.default:
            if dim is None:
                return result
            total = product(sizes)
            if isinstance(result, torch.Tensor):
                return self._split(result, result, dim, sizes, total)
            leaves, spec = flatten(result)
            return unflatten(
                [
                    self._split(leaf, result, dim, sizes, total) if isinstance(leaf, torch.Tensor) else leaf
                    for leaf in leaves
                ],
                spec,
            )
        bindings = {**self.lengths, **bind_group(self.group_axes, sizes)}
        if self.structure is None:
            rule = self.rules[self.out]  # type: ignore[index]
            return self._rearrange_all(rule, result, result, bindings)
        try:
            return map_structure(
                lambda pattern, part: (
                    part if pattern is None else self._rearrange_all(self.rules[pattern], part, result, bindings)
                ),
                self.structure,
                result,
            )
        except ValueError as error:
            raise FoldError(
                format_message(
                    f"out= does not match the structure of the module's output: {error}",
                    pattern=self.pattern,
                    hint=f"Give out= the same containers as the output. out={self.structure!r}; the output has "
                    f"leaves at {', '.join(leaf_paths(result)) or '(none)'}.",
                )
            ) from None

    def _split(self, leaf: torch.Tensor, result: Any, dim: int, sizes: Sequence[int], total: int) -> torch.Tensor:
        if leaf.ndim <= dim or leaf.shape[dim] != total:
            found = "no such dim" if leaf.ndim <= dim else f"size {leaf.shape[dim]}"
            axes = " ".join("..." if a == ELLIPSIS else a for a in self.group_axes)
            raise FoldError(
                format_message(
                    f"Output {_path(leaf, result)} cannot be unfolded: dim {dim} should hold the folded "
                    f"({axes}) of size {total}, but it has {found}.",
                    pattern=self.pattern,
                    shapes=[(f"output {_path(leaf, result)}", leaf.shape)],
                    sizes=bind_group(self.group_axes, sizes),
                    hint="Pass out= with a pattern for this output (for example '(b t) n -> b t n'), or None to "
                    "return it as the module gave it.",
                )
            )
        if not sizes:
            return leaf.squeeze(dim)
        return torch.unflatten(leaf, dim, sizes)

    def _rearrange_all(self, rule: Rule, part: Any, result: Any, bindings: dict[str, int]) -> Any:
        if isinstance(part, torch.Tensor):
            return self._rearrange(rule, part, result, bindings)
        leaves, spec = flatten(part)
        return unflatten(
            [
                self._rearrange(rule, leaf, result, bindings) if isinstance(leaf, torch.Tensor) else leaf
                for leaf in leaves
            ],
            spec,
        )

    def _rearrange(self, rule: Rule, leaf: torch.Tensor, result: Any, bindings: dict[str, int]) -> torch.Tensor:
        label = f"output {_path(leaf, result)}" if leaf is not result else "the output"
        plan = rule.plan(leaf, label)
        try:
            return plan.apply(leaf, bindings)[0]
        except SizeMismatch as mismatch:
            raise FoldError(
                format_message(
                    f"out= cannot rearrange {label}: {mismatch.what}.",
                    pattern=rule.pattern,
                    span=rule.operand.span("lhs", mismatch.name),
                    shapes=[(label, leaf.shape)],
                    sizes=bindings,
                    hint=f"The folded axes are bound from the input (fold pattern: {self.pattern}).",
                )
            ) from None


def _path(leaf: torch.Tensor, result: Any) -> str:
    if leaf is result:
        return "tensor"
    leaves, _ = flatten(result)
    paths = leaf_paths(result)
    return next((path for path, other in zip(paths, leaves, strict=True) if other is leaf), "?")
