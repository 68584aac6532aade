"""Folds a call's tensor arguments, calls the function once, and unfolds what it returns.

``Folding`` is the engine shared by ``Distribute``, ``distribute`` and ``fold``: it holds the parsed pattern, one
``Rule`` per operand, the keyword-argument rules and the output rules, all built once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ._errors import FoldError, format_message
from ._pattern import ELLIPSIS, parse_pattern, parse_rule
from ._plan import Rule, SizeMismatch
from ._unfold import OutputRules, OutSpec

__all__ = ["Folding"]


class Folding:
    """A pattern, parsed and checked, ready to fold arguments and unfold results.

    Args:
        pattern: ``"lhs -> rhs"``, or several comma-separated operands on each side.
        out: Overrides the default unfold; see ``Distribute``.
        fold_kwargs: Keyword arguments to fold too, each with its own single-operand pattern.
        lengths: Axis lengths given as keywords.

    Raises:
        FoldError: any part is malformed.
    """

    def __init__(
        self,
        pattern: str,
        *,
        out: OutSpec = None,
        fold_kwargs: Mapping[str, str] | None = None,
        lengths: Mapping[str, int] | None = None,
    ) -> None:
        lengths = dict(sorted((lengths or {}).items()))
        known = frozenset(lengths)
        parsed = parse_pattern(pattern, known)
        self.pattern = pattern
        self.lengths = lengths
        self.operands = parsed.operands
        self.rules = tuple(Rule(pattern, operand, known) for operand in parsed.operands)
        self.group_axes = parsed.group_axes
        self.folded = parsed.folded or 0
        self.single = len(self.rules) == 1
        self.kwarg_rules = _kwarg_rules(pattern, fold_kwargs, known)
        self.outputs = OutputRules(pattern, out, self.group_axes, lengths)
        self._check_lengths()
        self._compared = tuple(self._sizes_to_compare(rule) for rule in self.rules)
        self._compared_kwargs = {name: self._sizes_to_compare(rule) for name, rule in self.kwarg_rules.items()}
        self._flatten_spans: dict[int, tuple[int, int] | None] = {}
        self._fast = self.single and out is None

    def __call__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Folds ``args`` and ``kwargs``, calls ``fn`` once, and unfolds its result."""
        if len(args) == 1 and not kwargs:
            x = args[0]
            if isinstance(x, torch.Tensor):
                spans, ndim = self._flatten_spans, x.ndim
                if ndim not in spans:
                    spans[ndim] = self._flatten_span(x)
                span = spans[ndim]
                if span is not None:
                    start, end = span
                    sizes = x.shape[start : end + 1]
                    y = fn(x.flatten(start, end))
                    if isinstance(y, torch.Tensor):
                        # Cheaper than checking the size first; a mismatch is reported by the general path below.
                        try:
                            return torch.unflatten(y, start, sizes)
                        except (RuntimeError, IndexError):
                            pass
                    return self.outputs.unfold(y, start, sizes)
        folded_args, folded_kwargs, dim, group_sizes = self.fold_arguments(args, kwargs)
        return self.outputs.unfold(fn(*folded_args, **folded_kwargs), dim, group_sizes)

    def _flatten_span(self, x: torch.Tensor) -> tuple[int, int] | None:
        """``(start, end)`` when one ``x.flatten(start, end)`` is the whole fold of tensors of this rank."""
        return self.rules[0].plan(x, "argument 0").flatten_only if self._fast else None

    def fold_arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any], int | None, Sequence[int]]:
        """Folds every tensor argument; returns the new arguments, the folded dim and the folded group's sizes.

        Raises:
            FoldError: the arguments do not fit the pattern or disagree with each other.
        """
        positions = [i for i, arg in enumerate(args) if isinstance(arg, torch.Tensor)]
        if not positions or (not self.single and len(positions) != len(self.rules)):
            raise self._count_error(args, positions)
        folded_args = list(args)
        seen: dict[str, tuple[object, str]] = {}
        dim: int | None = None
        sizes: Sequence[int] = ()
        for operand, position in enumerate(positions):
            index = 0 if self.single else operand
            folded_args[position], group_sizes, group_dim = self._fold_one(
                self.rules[index], self._compared[index], args[position], f"argument {position}", seen
            )
            if (self.single and operand == 0) or (not self.single and operand == self.folded):
                dim, sizes = group_dim, group_sizes
        folded_kwargs = dict(kwargs)
        for name, rule in self.kwarg_rules.items():
            value = kwargs.get(name)
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise FoldError(
                    f"Keyword argument '{name}' is listed in fold_kwargs but is a {type(value).__name__}, "
                    "not a tensor. Pass a tensor, or None to leave it out."
                )
            folded_kwargs[name], _, _ = self._fold_one(
                rule, self._compared_kwargs[name], value, f"keyword argument '{name}'", seen
            )
        return folded_args, folded_kwargs, dim, sizes

    def _fold_one(
        self,
        rule: Rule,
        compared: tuple[frozenset[str], bool],
        x: torch.Tensor,
        label: str,
        seen: dict[str, tuple[object, str]],
    ) -> tuple[torch.Tensor, Sequence[int], int | None]:
        plan = rule.plan(x, label)
        try:
            folded, group_sizes, elementary = plan.apply(x, self.lengths)
        except SizeMismatch as mismatch:
            raise FoldError(
                format_message(
                    f"{label} does not fit the pattern: {mismatch.what}.",
                    pattern=rule.pattern,
                    span=rule.operand.span("lhs", mismatch.name),
                    shapes=[(label, x.shape)],
                    sizes=self.lengths,
                    hint="Pass a tensor whose sizes match, or correct the axis lengths given as keywords.",
                )
            ) from None
        names, same_group = compared
        for name, size in zip(plan.names, elementary, strict=True):
            if name in names:
                self._agree(rule, name, size, label, x, seen)
        if same_group and group_sizes is not None:
            self._agree(rule, "(" + ELLIPSIS + ")", tuple(group_sizes), label, x, seen)
        return folded, group_sizes or (), plan.group_dim

    def _sizes_to_compare(self, rule: Rule) -> tuple[frozenset[str], bool]:
        """Which axis names of ``rule`` must agree with other arguments, and whether its ``...`` group must.

        With one operand for every argument only the folded axes must agree (other axes, such as the lengths of
        queries and keys, may differ); with one operand per argument every shared name must.
        """
        names = frozenset(self.group_axes or ()) if self.single else rule.operand.names
        same_group = ELLIPSIS in names and rule.operand.group_axes == self.group_axes
        return frozenset(name for name in names if name != ELLIPSIS), same_group

    def _agree(
        self, rule: Rule, name: str, size: object, label: str, x: torch.Tensor, seen: dict[str, tuple[object, str]]
    ) -> None:
        first = seen.setdefault(name, (size, label))
        if first[0] != size:
            shown = "the axes of '...'" if name.startswith("(") else f"axis '{name}'"
            raise FoldError(
                format_message(
                    f"{label} disagrees with {first[1]} on {shown}: {_size_text(size)} here, "
                    f"{_size_text(first[0])} there.",
                    pattern=rule.pattern,
                    span=rule.operand.span("lhs", name),
                    shapes=[(label, x.shape)],
                    hint="Every tensor argument must have the same sizes for the folded axes"
                    + ("" if self.single else " and for every axis name operands share")
                    + ".",
                )
            )

    def _count_error(self, args: tuple[Any, ...], positions: list[int]) -> FoldError:
        kinds = ", ".join(type(arg).__name__ for arg in args) or "nothing"
        expected = "at least one tensor argument" if self.single else f"{len(self.rules)} tensor arguments"
        return FoldError(
            format_message(
                f"The pattern needs {expected}, but the call passed {len(positions)} tensor(s) among its "
                f"positional arguments ({kinds}).",
                pattern=self.pattern,
                shapes=[(f"argument {i}", args[i].shape) for i in positions],
                hint="Give one comma-separated operand per tensor positional argument, or a single operand to "
                "apply to all of them; keyword tensors are folded only when named in fold_kwargs.",
            )
        )

    def _check_lengths(self) -> None:
        used = frozenset().union(
            *(operand.names for operand in self.operands),
            *(rule.operand.names for rule in self.kwarg_rules.values()),
            self.outputs.names,
        )
        for name, length in self.lengths.items():
            if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                raise FoldError(
                    format_message(
                        f"The length of axis '{name}' must be a positive int, not {length!r}.",
                        pattern=self.pattern,
                        hint="Pass the pattern and the module positionally: Distribute(pattern, module)."
                        if callable(length)
                        else None,
                    )
                )
            if name not in used:
                raise FoldError(
                    format_message(
                        f"Axis '{name}' was given a length ({name}={length}) but no pattern uses it.",
                        pattern=self.pattern,
                        hint="Remove the keyword or correct its name.",
                    )
                )


def _kwarg_rules(pattern: str, fold_kwargs: Mapping[str, str] | None, known: frozenset[str]) -> dict[str, Rule]:
    if fold_kwargs is None:
        return {}
    if not isinstance(fold_kwargs, Mapping):
        raise FoldError(
            format_message(
                f"fold_kwargs must map keyword names to patterns, not {type(fold_kwargs).__name__}.",
                pattern=pattern,
                hint="For example fold_kwargs={'mask': 'b t s -> (b t) s'}.",
            )
        )
    rules = {}
    for name, text in fold_kwargs.items():
        if not isinstance(text, str):
            raise FoldError(
                format_message(
                    f"fold_kwargs['{name}'] must be a pattern string, not {type(text).__name__}.",
                    pattern=pattern,
                    hint="For example fold_kwargs={'mask': 'b t s -> (b t) s'}.",
                )
            )
        rules[name] = Rule(text, parse_rule(text, known, f"fold_kwargs['{name}']"), known)
    return rules


def _size_text(size: object) -> str:
    return f"({', '.join(str(s) for s in size)})" if isinstance(size, tuple) else str(size)
