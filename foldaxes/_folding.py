"""Folds a call's tensor arguments, calls the function once, and unfolds what it returns.

``Folding`` is the engine shared by ``Distribute``, ``distribute`` and ``fold``: it holds the parsed pattern, one
``Rule`` per operand, the keyword-argument rules and the output rules, all built once.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ._errors import FoldError, format_message
from ._pattern import ELLIPSIS, parse_pattern, parse_rule
from ._plan import Rule, SizeMismatch, product
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
        if not isinstance(pattern, str):
            raise FoldError(f"A pattern must be a string such as 'b t c -> (b t) c', not {type(pattern).__name__}.")
        self.pattern = pattern
        self.lengths = _checked_lengths(pattern, lengths or {})
        known = frozenset(self.lengths)
        parsed = parse_pattern(pattern, known)
        self.rules = tuple(Rule(pattern, operand, known) for operand in parsed.operands)
        self.group_axes = parsed.group_axes
        self.folded = parsed.folded or 0
        self.single = len(self.rules) == 1
        self.kwarg_rules = _kwarg_rules(pattern, fold_kwargs, known)
        self.outputs = OutputRules(pattern, out, self.group_axes, self.lengths)
        self._check_lengths_used()
        self._check_group_orders()
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
                    spans[ndim] = self.rules[0].plan(x, "argument 0").flatten_only if self._fast else None
                span = spans[ndim]
                if span is not None:
                    start, end = span
                    try:
                        sizes, folded = x.shape[start : end + 1], x.flatten(start, end)
                    except RuntimeError:  # a nested or sparse tensor: the general path says what is wrong
                        pass
                    else:
                        y = fn(folded)
                        if isinstance(y, torch.Tensor) and y.ndim > start and y.shape[start] == product(sizes):
                            return torch.unflatten(y, start, sizes)
                        return self.outputs.unfold(y, start, sizes)
        folded_args, folded_kwargs, dim, group_sizes = self.fold_arguments(args, kwargs)
        return self.outputs.unfold(fn(*folded_args, **folded_kwargs), dim, group_sizes)

    def fold_arguments(
        self, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any], int | None, Sequence[int]]:
        """Folds every tensor argument; returns the new arguments, the folded dim and the folded group's sizes.

        Raises:
            FoldError: the arguments do not fit the pattern or disagree with each other.
        """
        positions = [i for i, arg in enumerate(args) if isinstance(arg, torch.Tensor)]
        if not positions or (not self.single and len(positions) != len(self.rules)):
            raise self._count_error(args, positions)
        folded_args = list(args)
        seen: dict[str, tuple[object, str, torch.Size]] = {}
        dim: int | None = None
        sizes: Sequence[int] = ()
        for operand, position in enumerate(positions):
            index = 0 if self.single else operand
            folded_args[position], group_sizes, group_dim = self._fold_one(
                self.rules[index], self._compared[index], args[position], f"argument {position}", seen
            )
            if operand == (0 if self.single else self.folded):
                dim, sizes = group_dim, group_sizes
        folded_kwargs = dict(kwargs)
        for name, rule in self.kwarg_rules.items():
            value = kwargs.get(name)
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise FoldError(
                    format_message(
                        f"Keyword argument '{name}' is listed in fold_kwargs but is of type {type(value).__name__}, "
                        "not a tensor.",
                        pattern=rule.pattern,
                        hint="Pass a tensor, or None to leave it out.",
                    )
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
        seen: dict[str, tuple[object, str, torch.Size]],
    ) -> tuple[torch.Tensor, Sequence[int], int | None]:
        if x.is_nested or x.layout != torch.strided:
            kind = "nested" if x.is_nested else str(x.layout).replace("torch.", "")
            raise FoldError(
                format_message(
                    f"{label} is a {kind} tensor; foldaxes folds strided (dense) tensors only.",
                    pattern=rule.pattern,
                    hint="Convert it first, for example with x.to_dense() or x.to_padded_tensor(0).",
                )
            )
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
                    sizes=plan.sizes_read_off(x.shape),
                    given=self.lengths,
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
        self,
        rule: Rule,
        name: str,
        size: object,
        label: str,
        x: torch.Tensor,
        seen: dict[str, tuple[object, str, torch.Size]],
    ) -> None:
        first = seen.setdefault(name, (size, label, x.shape))
        if first[0] != size:
            shown = "the axes of '...'" if name.startswith("(") else f"axis '{name}'"
            raise FoldError(
                format_message(
                    f"{label} disagrees with {first[1]} on {shown}: {_size_text(size)} here, "
                    f"{_size_text(first[0])} there.",
                    pattern=rule.pattern,
                    span=rule.operand.span("lhs", name),
                    shapes=[(first[1], first[2]), (label, x.shape)],
                    hint="Every tensor argument must have the same sizes for the folded axes"
                    + ("" if self.single else " and for every axis name operands share")
                    + ".",
                )
            )

    def _count_error(self, args: Sequence[Any], positions: list[int]) -> FoldError:
        kinds = ", ".join(type(arg).__name__ for arg in args) or "nothing"
        expected = "at least one tensor" if self.single else f"{len(self.rules)} tensors, one per operand"
        return FoldError(
            format_message(
                f"The pattern needs {expected}, but {len(positions)} tensor(s) came ({kinds}).",
                pattern=self.pattern,
                shapes=[(f"argument {i}", args[i].shape) for i in positions],
                hint="Give one comma-separated operand per tensor positional argument, or a single operand to "
                "apply to all of them; keyword tensors are folded only when named in fold_kwargs.",
            )
        )

    def _check_lengths_used(self) -> None:
        used = frozenset().union(
            *(rule.operand.names for rule in self.rules),
            *(rule.operand.names for rule in self.kwarg_rules.values()),
            self.outputs.names,
        )
        for name, length in self.lengths.items():
            if name not in used:
                raise FoldError(
                    format_message(
                        f"Axis '{name}' was given a length ({name}={length}) but no pattern uses it.",
                        pattern=self.pattern,
                        hint="Remove the keyword or correct its name.",
                    )
                )

    def _check_group_orders(self) -> None:
        """Refuses a group that folds the folded axes in another order: its rows would not line up."""
        expected = self.group_axes
        for rule in (*self.rules, *self.kwarg_rules.values()):
            axes = rule.operand.group_axes
            if expected and axes and axes != expected and sorted(axes) == sorted(expected):
                shown = " ".join("..." if a == ELLIPSIS else a for a in expected)
                raise FoldError(
                    format_message(
                        f"This group folds the axes of ({shown}) in another order, so row i of one folded "
                        "tensor would not be row i of the other.",
                        pattern=rule.pattern,
                        span=rule.operand.span("rhs", axes[0]),
                        hint=f"Write every folded group in the same order: ({shown}).",
                    )
                )


def check_callable(fn: object, pattern: str) -> None:
    """Refuses what cannot be the wrapped module: ``None`` is allowed (a factory), anything else must be callable."""
    if fn is None or (callable(fn) and not isinstance(fn, type)):
        return
    what = f"the class {fn.__name__}" if isinstance(fn, type) else f"an object of type {type(fn).__name__}"
    raise FoldError(
        format_message(
            f"The wrapped module must be a module instance or another callable, not {what}.",
            pattern=pattern,
            hint="Pass an instance, for example nn.Linear(4, 5) rather than nn.Linear."
            if isinstance(fn, type)
            else "Pass the module or function as the second positional argument.",
        )
    )


def _checked_lengths(pattern: str, lengths: Mapping[str, Any]) -> dict[str, int]:
    checked = {}
    for name, length in sorted(lengths.items()):
        try:
            value = operator.index(length)
        except TypeError:
            value = 0
        if isinstance(length, bool) or value < 1:
            raise FoldError(
                format_message(
                    f"The length of axis '{name}' must be a positive int, not {length!r}.",
                    pattern=pattern,
                    hint="Pass the pattern and the module positionally: Distribute(pattern, module)."
                    if callable(length)
                    else None,
                )
            )
        checked[name] = value
    return checked


def _kwarg_rules(pattern: str, fold_kwargs: Mapping[str, str] | None, known: frozenset[str]) -> dict[str, Rule]:
    if fold_kwargs is None:
        return {}
    example = "For example fold_kwargs={'mask': 'b t s -> (b t) s'}."
    if not isinstance(fold_kwargs, Mapping):
        raise FoldError(
            format_message(
                f"fold_kwargs must map keyword names to patterns, not {type(fold_kwargs).__name__}.",
                pattern=pattern,
                hint=example,
            )
        )
    rules = {}
    for name, text in fold_kwargs.items():
        if not isinstance(text, str):
            raise FoldError(
                format_message(
                    f"fold_kwargs['{name}'] must be a pattern string, not {type(text).__name__}.",
                    pattern=pattern,
                    hint=example,
                )
            )
        rules[name] = Rule(text, parse_rule(text, known, f"fold_kwargs['{name}']"), known)
    return rules


def _size_text(size: object) -> str:
    return f"({', '.join(str(s) for s in size)})" if isinstance(size, tuple) else str(size)
