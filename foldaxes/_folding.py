"""Folds a call's tensor arguments, calls the function once, and unfolds what it returns.

``Folding`` is the engine shared by ``Distribute``, ``distribute`` and ``fold``: it holds the parsed pattern, one
``Rule`` per operand, the keyword-argument rules and the output rules, all built once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ._chunks import MASK, SAMPLE_LENGTHS, Execution, Rows, check_batch_statistics, run_rows, valid_rows
from ._errors import FoldError, format_message, positive_int
from ._expanded import call_repeated, find_repeats, has_zero_stride
from ._guards import per_copy_randomness
from ._pattern import ELLIPSIS, parse_pattern, parse_rule
from ._plan import Rule, SizeMismatch, product
from ._ragged import JaggedInput, call_jagged
from ._unfold import OutputRules, OutSpec

__all__ = ["Folding"]

Operand = tuple[int | str, str, Rule, torch.Tensor]
"""A tensor argument: its position or keyword, its label in messages, its rule, and the tensor."""


class Folding:
    """A pattern, parsed and checked, ready to fold arguments and unfold results.

    Args:
        pattern: ``"lhs -> rhs"``, or several comma-separated operands on each side.
        out: Overrides the default unfold; see ``Distribute``.
        fold_kwargs: Keyword arguments to fold too, each with its own single-operand pattern.
        lengths: Axis lengths given as keywords.
        execution: How to run the module over the rows (chunks, checkpointing, fill value); the default runs it
            once on every row.
        sample_axis: The axis of a two-axis folded group that per-sample lengths (``fold_lengths``) index.

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
        execution: Execution | None = None,
        sample_axis: int = 0,
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
        self.execution = execution or Execution()
        self.sample_axis = sample_axis
        self.axes_text = "(" + " ".join("..." if a == ELLIPSIS else a for a in self.group_axes or ()) + ")"
        self._check_execution()
        self._flatten_spans: dict[int, tuple[int, int] | None] = {}
        self._fast = self.single and out is None and self.execution.plain
        self._repeatable = out is None and bool(self.group_axes)

    def __call__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Folds ``args`` and ``kwargs``, calls ``fn`` (once, unless chunked), and unfolds its result."""
        if len(args) == 1 and not kwargs:
            x = args[0]
            if isinstance(x, torch.Tensor):
                spans, ndim = self._flatten_spans, x.ndim
                span = spans[ndim] if ndim in spans else self._flatten_span(x)
                # An input repeated along a folded axis (stride 0) takes the general path, which runs the module
                # on one copy; is_contiguous() rules that out at the least cost.
                if span is not None and (x.is_contiguous() or not has_zero_stride(x, span)):
                    start, end = span
                    try:
                        sizes, folded = x.shape[start : end + 1], x.flatten(start, end)
                    except RuntimeError:  # a nested tensor: the general path folds a jagged one or says what is wrong
                        pass
                    else:
                        y = fn(folded)
                        if isinstance(y, torch.Tensor) and y.ndim > start and y.shape[start] == product(sizes):
                            return torch.unflatten(y, start, sizes)
                        return self.outputs.unfold(y, start, sizes)
        return self._general(fn, args, kwargs)

    def _flatten_span(self, x: torch.Tensor) -> tuple[int, int] | None:
        """The fast path's one ``flatten``, cached per rank; ``None`` sends every call to the general path."""
        if x.is_nested or x.layout != torch.strided:
            return None  # not cached: a dense tensor of this rank may still take the fast path
        span = self.rules[0].plan(x, "argument 0").flatten_only if self._fast else None
        if not torch.compiler.is_compiling():  # a cache write while dynamo traces is a side effect of the graph
            self._flatten_spans[x.ndim] = span
        return span

    def _general(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        mask = lengths = None
        if MASK in kwargs or SAMPLE_LENGTHS in kwargs:
            kwargs = dict(kwargs)
            mask, lengths = kwargs.pop(MASK, None), kwargs.pop(SAMPLE_LENGTHS, None)
        masked = mask is not None or lengths is not None
        if self._repeatable and not masked:
            repeats = find_repeats(self, args, kwargs)
            if repeats is not None and per_copy_randomness(fn) is None:
                return call_repeated(self, fn, args, kwargs, repeats)
        try:
            folded_args, folded_kwargs, dim, group_sizes = self.fold_arguments(args, kwargs)
        except JaggedInput:
            return call_jagged(self, fn, args, kwargs, masked)
        if self.execution.plain and not masked:
            return self.outputs.unfold(fn(*folded_args, **folded_kwargs), dim, group_sizes)
        result = self.run(fn, args, kwargs, (folded_args, folded_kwargs, dim, group_sizes), mask, lengths)
        return self.outputs.unfold(result, dim, group_sizes)

    def run(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        folded: tuple[list[Any], dict[str, Any], int | None, Sequence[int]],
        mask: Any = None,
        lengths: Any = None,
    ) -> Any:
        """Calls ``fn`` on folded arguments as ``execution`` says: in chunks, checkpointed, or on the valid rows.

        ``args`` and ``kwargs`` are the arguments before folding, ``folded`` what ``fold_arguments`` made of them.
        Returns the module's output in the folded layout, with every row of the folded batch.

        Raises:
            FoldError: the mask or lengths do not fit, the module computes batch statistics, or its outputs
                cannot be put together.
        """
        folded_args, folded_kwargs, dim, group_sizes = folded
        masked = mask is not None or lengths is not None
        if self.execution.plain and not masked:
            return fn(*folded_args, **folded_kwargs)
        valid = None
        if masked:
            self._check_maskable()
            valid = valid_rows(mask, lengths, group_sizes, self.axes_text, self.sample_axis, self.pattern)
        why = self.why_partial(masked)
        if why is not None:
            check_batch_statistics(fn, self.execution, why, self.pattern)
        if dim is None:  # nothing is folded: only checkpointing applies
            return run_rows(fn, folded_args, folded_kwargs, Rows((), 1, 0), self.execution, self.pattern)
        rows = Rows(self.row_slots(self.operands(args, kwargs)), product(group_sizes), dim)
        return run_rows(fn, folded_args, folded_kwargs, rows, self.execution, self.pattern, valid)

    def operands(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Operand]:
        """Every tensor argument that the pattern folds, positional ones first.

        Raises:
            FoldError: the number of tensor arguments does not fit the pattern, or a keyword named in
                ``fold_kwargs`` is not a tensor.
        """
        positions = [i for i, arg in enumerate(args) if isinstance(arg, torch.Tensor)]
        if not positions or (not self.single and len(positions) != len(self.rules)):
            raise self._count_error(args, positions)
        found: list[Operand] = [
            (position, f"argument {position}", self.rules[0 if self.single else operand], args[position])
            for operand, position in enumerate(positions)
        ]
        for name, rule in self.kwarg_rules.items():
            value = kwargs.get(name)
            if value is not None:
                if not isinstance(value, torch.Tensor):
                    raise _kwarg_type_error(name, value, rule)
                found.append((name, f"keyword argument '{name}'", rule, value))
        return found

    def row_slots(self, operands: Sequence[Operand]) -> tuple[tuple[int | str, int], ...]:
        """``(key, dim)`` of each operand that carries the folded rows, and the dim they are at once folded.

        Raises:
            FoldError: an operand folds other axes, so its rows cannot be split like the others'.
        """
        slots = []
        for key, label, rule, x in operands:
            axes = rule.operand.group_axes
            if axes == self.group_axes:
                group_dim = rule.plan(x, label).group_dim
                assert group_dim is not None
                slots.append((key, group_dim))
            elif axes:
                raise FoldError(
                    format_message(
                        f"{label} folds other axes than the folded group {self.axes_text}, so its rows cannot be "
                        "chunked or masked like the others'.",
                        pattern=rule.pattern,
                        span=rule.operand.span("rhs", axes[0]),
                        hint="Fold the same axes in every operand, or run without chunk_size and fold_mask.",
                    )
                )
        return tuple(slots)

    def why_partial(self, masked: bool) -> str | None:
        """Why a call may show the module only part of the folded batch, or ``None`` when it will not."""
        if masked:
            return f"{MASK} / {SAMPLE_LENGTHS} runs it on the valid rows only"
        if self.execution.chunk_size is not None:
            return f"chunk_size={self.execution.chunk_size} runs it on that many rows at a time"
        if self.execution.checkpoint and torch.is_grad_enabled():
            return "checkpoint=True runs it a second time during the backward pass"
        return None

    def _check_maskable(self) -> None:
        self._require_default_unfold(
            f"{MASK} and {SAMPLE_LENGTHS}",
            "the valid rows are gathered from the folded group and scattered back at the folded dim of each output.",
        )

    def _check_execution(self) -> None:
        if self.execution.chunk_size is not None:
            self._require_default_unfold(
                "chunk_size", "the outputs of the chunks are put together at the folded dim of each output."
            )

    def _require_default_unfold(self, feature: str, why: str) -> None:
        """Refuses ``feature`` with ``out=``, or for a pattern that folds nothing: it needs the folded dim."""
        if self.group_axes and self.outputs.out is None:
            return
        what = "with out=" if self.group_axes else "when the pattern folds no axes"
        raise FoldError(
            format_message(
                f"{feature} cannot be used {what}: {why}",
                pattern=self.pattern,
                hint="Use the default unfold (no out=) and rearrange the result afterwards.",
            )
        )

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
                raise _kwarg_type_error(name, value, rule)
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
        nested, layout = x.is_nested, x.layout  # each a costly lookup on a nested tensor: read once
        if nested or layout != torch.strided:
            kind = "nested" if nested else str(layout).replace("torch.", "")
            jagged = nested and layout == torch.jagged
            error = JaggedInput if jagged else FoldError
            raise error(
                format_message(
                    f"{label} is a {kind} tensor; foldaxes folds strided (dense) tensors only"
                    + (", and Distribute also jagged nested tensors." if jagged else "."),
                    pattern=rule.pattern,
                    hint="Convert it first, for example with x.to_dense() or x.to_padded_tensor(0)"
                    + ("; or build it with layout=torch.jagged, which Distribute accepts." if nested else "."),
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
        value = positive_int(length)
        if value is None:
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


def _kwarg_type_error(name: str, value: object, rule: Rule) -> FoldError:
    return FoldError(
        format_message(
            f"Keyword argument '{name}' is listed in fold_kwargs but is of type {type(value).__name__}, not a tensor.",
            pattern=rule.pattern,
            hint="Pass a tensor, or None to leave it out.",
        )
    )


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
