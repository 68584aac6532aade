"""A pattern compiled for calls: every operand, keyword and output rule, checked together once.

``CompiledPattern.fold`` folds one call's tensor arguments and returns a ``FoldedCall``, the small record that each
way of running the module (``_call.py`` lists them) takes. Nothing here calls the module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ._arrays import apply_plan, element_strides, meta_like, namespace
from ._checks import check_group_orders, check_lengths_used, checked_lengths, kwarg_rules
from ._errors import fold_error
from ._pattern import ELLIPSIS, parse_pattern
from ._plan import NoView, Plan, Rule, SizeMismatch
from ._program import InputProgram, ProgramInput, as_slice, merged_checks
from ._records import FoldedCall, Key, TensorArgument
from ._strides import copy_refused
from ._unfold import OutputRules, OutSpec

__all__ = ["CompiledPattern", "is_jagged", "keyword_pattern"]


def is_jagged(x: torch.Tensor) -> bool:
    """Whether ``x`` is a nested tensor with ``layout=torch.jagged``."""
    # A nested tensor is a subclass, so the exact type rules it out at the least cost.
    return type(x) is not torch.Tensor and x.is_nested and x.layout == torch.jagged


class CompiledPattern:
    """A pattern with its ``out=``, ``fold_kwargs`` and axis lengths, parsed and checked together.

    Args:
        pattern: ``"lhs -> rhs"``, or several comma-separated operands on each side.
        out: Overrides the default unfold; see ``Distribute``.
        fold_kwargs: Keyword arguments to fold too, each with its own single-operand pattern.
        lengths: Axis lengths given as keywords.

    Attributes:
        text: The pattern as given.
        lengths: The axis lengths, checked.
        rules: One rule per comma-separated operand.
        kwarg_rules: One rule per keyword named in ``fold_kwargs``.
        outputs: How the outputs unfold.
        group_axes: The names in the folded group, in order, or ``None`` when the pattern folds nothing.
        group_text: The folded group as written, such as ``"(b t)"``, for messages.

    Raises:
        FoldError: any part is malformed, or the parts disagree.
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
            raise fold_error(
                f"A pattern must be a string such as 'b t c -> (b t) c', not {type(pattern).__name__}.",
                pattern=None,
                hint="Pass the pattern first: Distribute(pattern, module), fold(x, pattern).",
            )
        self.text = pattern
        self.lengths = checked_lengths(pattern, lengths or {})
        known = frozenset(self.lengths)
        parsed = parse_pattern(pattern, known)
        self.rules = tuple(Rule(pattern, operand, known) for operand in parsed.operands)
        self.kwarg_rules = kwarg_rules(pattern, fold_kwargs, known)
        self.group_axes = parsed.group_axes
        self.group_text = "(" + " ".join("..." if a == ELLIPSIS else a for a in self.group_axes or ()) + ")"
        self.outputs = OutputRules(pattern, out, self.group_axes, self.lengths)
        check_lengths_used(pattern, self.lengths, (*self.rules, *self.kwarg_rules.values()), self.outputs.names)
        check_group_orders(self.group_axes, (*self.rules, *self.kwarg_rules.values()))
        self._group_operand = parsed.folded or 0
        self._compared = tuple(_compared_names(rule, self.group_axes, self.single) for rule in self.rules)
        self._compared_kwargs = {
            name: _compared_names(rule, self.group_axes, self.single) for name, rule in self.kwarg_rules.items()
        }

    @property
    def single(self) -> bool:
        """Whether the pattern has one operand, which applies to every positional tensor argument."""
        return len(self.rules) == 1

    def tensor_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any], xp: Any = None) -> list[TensorArgument]:
        """Every tensor argument that the pattern folds, positional ones first, in the order they are folded.

        Raises:
            FoldError: the tensor arguments do not fit the pattern's operands, or a keyword named in
                ``fold_kwargs`` is not a tensor.
        """
        positions = self._positions(args, kwargs, xp)
        found = [
            TensorArgument(position, f"argument {position}", self.rules[0 if self.single else operand], args[position])
            for operand, position in enumerate(positions)
        ]
        for name, rule in self.kwarg_rules.items():
            value = kwargs.get(name)
            if value is not None:
                found.append(
                    TensorArgument(name, f"keyword argument '{name}'", rule, self._keyword_tensor(name, value, xp))
                )
        return found

    def fold(
        self, args: Sequence[Any], kwargs: Mapping[str, Any], copy: bool | None = None, xp: Any = None
    ) -> FoldedCall:
        """Folds every tensor argument of a call, checking that they fit the pattern and agree on their sizes.

        ``copy`` is as for ``Plan.apply``: ``None`` copies only where no view exists, ``True`` always copies,
        ``False`` never does. With ``xp``, an array API namespace, the call's arrays of that library are folded
        instead of its torch tensors.

        Raises:
            FoldError: the arguments do not fit the pattern, disagree with each other, or need a copy that
                ``copy=False`` forbids.
        """
        seen: dict[str, tuple[object, str, torch.Size]] = {}
        folded_args = list(args)
        folded_kwargs = dict(kwargs)
        dim: int | None = None
        sizes: Sequence[int] = ()
        slots: list[tuple[Key, int]] = []
        other: tuple[str, Rule] | None = None
        carried = False
        for key, label, rule, x in self.tensor_arguments(args, kwargs, xp):
            compared = self._compared_for(key, rule)
            folded, group_sizes, group_dim = self._fold_one(
                rule, compared, x, label, seen, copy, xp, isinstance(key, str)
            )
            if isinstance(key, str):
                folded_kwargs[key] = folded
            else:
                folded_args[key] = folded
            axes = rule.operand.group_axes
            if axes == self.group_axes:
                if not carried and self._carries(key, rule):
                    carried, dim, sizes = True, group_dim, group_sizes
                if group_dim is not None:
                    slots.append((key, group_dim))
            elif axes and other is None:
                other = (label, rule)
        return FoldedCall(tuple(folded_args), folded_kwargs, dim, sizes, tuple(slots), other)

    def program(
        self, args: Sequence[Any], kwargs: Mapping[str, Any], call: FoldedCall, copy: bool | None, arrays: bool
    ) -> InputProgram:
        """What ``fold`` did for this call, as a program that later calls of the same structure can run.

        ``call`` is what ``fold`` returned for these arguments with ``copy``; the program checks the sizes that
        ``fold`` checked (see ``_program.py``). ``arrays``: whether the wrapper folds arrays of other libraries.
        """
        tensors: list[ProgramInput] = []
        first: dict[str, tuple[int, int]] = {}
        checks: list[tuple[int, int, int, int]] = []
        carrier, group = -1, tuple[int, ...]()
        for index, (key, label, rule, x) in enumerate(self.tensor_arguments(args, kwargs)):
            plan = rule.plan(x, label)
            tensors.append(ProgramInput(key, x.ndim, plan.flatten_only if copy is None else None, plan))
            names, same_group = (
                self._compared_kwargs[key] if isinstance(key, str) else self._compared[rule.operand.index]
            )
            positions = plan.group_positions
            compared = [(name, p) for p, name in enumerate(plan.names) if name in names]
            compared += [(f"({ELLIPSIS}){k}", p) for k, p in enumerate(positions) if same_group]
            for name, position in compared:
                if name in first:
                    checks.append((*first[name], index, position))
                else:
                    first[name] = (index, position)
            if carrier < 0 and rule.operand.group_axes == self.group_axes and self._carries(key, rule):
                carrier, group = index, positions
        return InputProgram(
            nargs=len(args),
            others=tuple(i for i, arg in enumerate(args) if not isinstance(arg, torch.Tensor)),
            absent=tuple(name for name in self.kwarg_rules if kwargs.get(name) is None),
            tensors=tuple(tensors),
            checks=merged_checks(checks),
            carrier=carrier,
            group=as_slice(group),
            dim=call.dim,  # not the call itself, which would keep its tensors alive
            row_slots=call.row_slots,
            other_group=call.other_group,
            copy=copy,
            arrays=arrays,
        )

    def _compared_for(self, key: Key, rule: Rule) -> tuple[frozenset[str], bool]:
        """The names a tensor argument's sizes are compared on, and whether its ``...`` group is (see ``fold``)."""
        return self._compared_kwargs[key] if isinstance(key, str) else self._compared[rule.operand.index]

    def _carries(self, key: Key, rule: Rule) -> bool:
        """Whether a tensor argument that folds the folded group decides the folded dim, if none has yet.

        The first positional tensor of the folded operand does; with none, the first keyword tensor that folds the
        same group does.
        """
        return isinstance(key, str) or self.single or rule.operand.index == self._group_operand

    def _positions(self, args: Sequence[Any], kwargs: Mapping[str, Any], xp: Any) -> list[int]:
        """The positions of the tensor arguments, once their number is checked against the operands."""
        positions = [i for i, arg in enumerate(args) if _is_operand(arg, xp)]
        if self.single:
            if positions or any(
                kwargs.get(name) is not None and rule.operand.group_axes == self.group_axes
                for name, rule in self.kwarg_rules.items()
            ):
                return positions
        elif len(positions) == len(self.rules):
            return positions
        raise _count_error(self, args, kwargs, positions)

    def _fold_one(
        self,
        rule: Rule,
        compared: tuple[frozenset[str], bool],
        x: Any,
        label: str,
        seen: dict[str, tuple[object, str, torch.Size]],
        copy: bool | None,
        xp: Any,
        keyword: bool,
    ) -> tuple[Any, Sequence[int], int | None]:
        plan = rule.plan(x, label) if xp is not None else _dense(x, label, rule).plan(x, label)
        with_recipe = not keyword and self.single  # a Distribute(...) line rewrites only a one-operand pattern
        folded, group_sizes, elementary = _apply(plan, x, self.lengths, copy, xp, label, rule, with_recipe)
        names, same_group = compared
        for name, size in zip(plan.names, elementary, strict=True):
            if name in names:
                self._agree(rule, name, size, label, x, seen)
        if same_group and group_sizes is not None:
            self._agree(rule, "(" + ELLIPSIS + ")", tuple(group_sizes), label, x, seen)
        return folded, group_sizes or (), plan.group_dim

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
            raise fold_error(
                f"{label} disagrees with {first[1]} on {shown}: {_size_text(size)} here, {_size_text(first[0])} there.",
                pattern=rule.pattern,
                span=rule.operand.span("lhs", ELLIPSIS if name.startswith("(") else name),
                shapes=[(first[1], first[2]), (label, x.shape)],
                hint="Every tensor argument must have the same sizes for the folded axes"
                + ("" if self.single else " and for every axis name operands share")
                + ".",
            )

    def _keyword_tensor(self, name: str, value: object, xp: Any) -> Any:
        if _is_operand(value, xp):
            return value
        wanted = "a tensor" if xp is None else f"an array of {xp.__name__}"
        raise fold_error(
            f"Keyword argument '{name}' is listed in fold_kwargs but is of type {type(value).__name__}, not {wanted}.",
            pattern=self.kwarg_rules[name].pattern,
            hint="Pass a tensor, or None to leave it out." if xp is None else "Pass one, or None to leave it out.",
        )


def _is_operand(value: object, xp: Any) -> bool:
    """Whether the pattern folds ``value``: a torch tensor, or with ``xp`` an array of that namespace."""
    return isinstance(value, torch.Tensor) if xp is None else namespace(value) is xp


def _dense(x: torch.Tensor, label: str, rule: Rule) -> Rule:
    """``rule``, once ``x`` is known to be a dense (strided, not nested) tensor."""
    nested, layout = x.is_nested, x.layout  # each a costly lookup on a nested tensor: read once
    if nested or layout != torch.strided:
        raise _layout_error(label, rule.pattern, nested, layout)
    return rule


def _apply(
    plan: Plan,
    x: Any,
    lengths: Mapping[str, int],
    copy: bool | None,
    xp: Any,
    label: str,
    rule: Rule,
    with_recipe: bool,
) -> tuple[Any, Sequence[int] | None, Sequence[int]]:
    """``plan`` applied to ``x`` (a tensor, or an array of ``xp``), its errors told in the call's words.

    ``with_recipe``: whether a refused copy may suggest a ``Distribute(...)`` line with ``rule``'s pattern reordered.
    """
    try:
        return plan.apply(x, lengths, copy) if xp is None else apply_plan(plan, x, lengths, copy, xp)
    except NoView:
        strides = x.stride() if xp is None else element_strides(x)
        if strides is None:  # a library that hides its strides: its reshape refused to copy, which is all we know
            raise fold_error(
                f"{label} cannot be folded without a copy, its library says, and copy=False forbids one.",
                pattern=rule.pattern,
                shapes=[(label, x.shape)],
                hint="Leave copy=None to copy.",
            ) from None
        example = x if xp is None else meta_like(x.shape, strides)
        raise copy_refused(label, rule.pattern, rule.operand, plan, example, lengths, with_recipe) from None
    except SizeMismatch as mismatch:
        raise fold_error(
            f"{label} does not fit the pattern: {mismatch.what}.",
            pattern=rule.pattern,
            span=rule.operand.span("lhs", mismatch.name),
            shapes=[(label, x.shape)],
            sizes=plan.sizes_read_off(x.shape),
            given=lengths,
            hint="Pass a tensor whose sizes match, or correct the axis lengths given as keywords.",
        ) from None


def keyword_pattern(group_axes: tuple[str, ...] | None) -> str | None:
    """A ``fold_kwargs`` pattern that folds a keyword tensor's leading axes as the folded group, for hints.

    ``None`` when the folded group has an ellipsis or there is none, which no simple pattern can name.
    """
    if not group_axes or ELLIPSIS in group_axes:
        return None
    axes = " ".join(group_axes)
    return f"{axes} ... -> ({axes}) ..."


def _count_error(
    pattern: CompiledPattern, args: Sequence[Any], kwargs: Mapping[str, Any], positions: list[int]
) -> Exception:
    given = f"the positional arguments are ({', '.join(type(arg).__name__ for arg in args)})" if args else ""
    unlisted = [  # arrays too: an array keyword alone leaves the call without a library to fold with
        name
        for name, v in kwargs.items()
        if (isinstance(v, torch.Tensor) or namespace(v) is not None) and name not in pattern.kwarg_rules
    ]
    listed = [name for name in pattern.kwarg_rules if kwargs.get(name) is not None]
    if not pattern.single:
        count = "1 positional tensor came" if len(positions) == 1 else f"{len(positions)} positional tensors came"
        what = f"The pattern has {len(pattern.rules)} operands, one per positional tensor argument, but {count}"
        what += f" ({given})" if given else ""
        hint = (
            "Give one comma-separated operand per positional tensor argument, or a single operand to apply to "
            "all of them; keyword tensors are folded by their own fold_kwargs patterns."
        )
    elif listed:
        what = (
            f"The pattern needs a tensor that carries the folded group {pattern.group_text}, but none came: no "
            f"positional tensor, and the keyword tensors named in fold_kwargs ({', '.join(map(repr, listed))}) "
            "fold other axes"
        )
        hint = f"Pass the tensor to fold positionally, or give a keyword a pattern that folds {pattern.group_text}."
    else:
        what = "The pattern needs at least one tensor to fold, but none came" + (f": {given}" if given else "")
        if unlisted:
            tensors = "tensor" if len(unlisted) == 1 else "tensors"
            what += f"{', and' if given else ':'} the keyword {tensors} {', '.join(map(repr, unlisted))} "
            what += f"{'is' if len(unlisted) == 1 else 'are'} not named in fold_kwargs"
        suggested = keyword_pattern(pattern.group_axes)
        hint = (
            f"Keyword tensors are folded only when named in fold_kwargs, for example fold_kwargs="
            f"{{{unlisted[0]!r}: {suggested!r}}}."
            if unlisted and suggested
            else "Pass the tensor to fold positionally, or as a keyword argument named in fold_kwargs."
        )
    return fold_error(
        what + ".",
        pattern=pattern.text,
        shapes=[(f"argument {i}", args[i].shape) for i in positions],
        hint=hint,
    )


def _compared_names(rule: Rule, group_axes: tuple[str, ...] | None, single: bool) -> tuple[frozenset[str], bool]:
    """Which axis names of ``rule`` must agree with other arguments, and whether its ``...`` group must.

    With one operand for every argument only the folded axes must agree (other axes, such as the lengths of
    queries and keys, may differ); with one operand per argument every shared name must.
    """
    names = frozenset(group_axes or ()) if single else rule.operand.names
    same_group = ELLIPSIS in names and rule.operand.group_axes == group_axes
    return frozenset(name for name in names if name != ELLIPSIS), same_group


def _layout_error(label: str, pattern: str, nested: bool, layout: torch.layout) -> Exception:
    jagged = nested and layout == torch.jagged
    if jagged:
        hint = (
            "fold() has no jagged form: Distribute and distribute run a module on a jagged tensor's packed frames; "
            "or pass x.values() (the packed frames) or x.to_padded_tensor(0)."
        )
    elif nested:
        hint = "Build it with layout=torch.jagged, which Distribute accepts, or convert it with x.to_padded_tensor(0)."
    else:
        hint = "Convert it first, for example with x.to_dense()."
    kind = "jagged nested" if jagged else "nested" if nested else str(layout).replace("torch.", "")
    return fold_error(
        f"{label} is a {kind} tensor; foldaxes folds strided (dense) tensors only.", pattern=pattern, hint=hint
    )


def _size_text(size: object) -> str:
    return f"({', '.join(str(s) for s in size)})" if isinstance(size, tuple) else str(size)
