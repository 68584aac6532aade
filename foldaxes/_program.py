"""Programs: what the full path did for one call structure, replayed by later calls with the same structure.

The full path (``CompiledPattern.fold``, then ``OutputRules.unfold``) checks everything and raises every error.
Once a call has gone through it, a program writes down what it did: which arguments were tensors of which rank,
the one view op or plan for each, which sizes had to agree, and how each output leaf was unfolded. A later call
runs only those steps, checking as it goes that it has the same structure: the same tensor positions, ranks and
layouts, sizes that agree, and an output of the same containers. Whatever differs makes the program step aside
(``None``, or ``MISS`` for an output), and the full path runs, raising what it raises. So a program changes how
fast a well-formed call goes, never what is checked or said.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from ._arrays import namespace
from ._plan import NoView, Plan, Rule, SizeMismatch, mergeable, product
from ._records import FoldedCall, Key
from ._unfold import OutputRules, bind_group, conform

__all__ = [
    "MISS",
    "FlattenProgram",
    "InputProgram",
    "OutputProgram",
    "ProgramInput",
    "SizesAt",
    "as_slice",
    "merged_checks",
    "record_outputs",
    "sizes_at",
]

_STRIDED = torch.strided
_Tensor = torch.Tensor
_flatten = torch.flatten
_unflatten = torch.unflatten
_is_compiling = torch.compiler.is_compiling
"""Bound once, as ``FlattenProgram.fold`` runs them for every tensor of every call: one lookup instead of two."""
_ATOMS = (type(None), bool, int, float, complex, str, bytes)
"""Output leaves that the full path passes through as they are and a program may too."""

MISS: Any = object()
"""What an output program returns for an output it was not recorded for."""


class ProgramInput(NamedTuple):
    """One tensor argument of a recorded call: where it is, its rank, and its fold (a ``flatten``, or a plan)."""

    key: Key
    ndim: int
    span: tuple[int, int] | None
    plan: Plan


class InputProgram(NamedTuple):
    """How the tensor arguments of one call structure are folded and checked.

    Attributes:
        nargs: The number of positional arguments.
        others: The positions that held no tensor.
        absent: The ``fold_kwargs`` names that were left out or ``None``.
        tensors: The tensor arguments, in the order the full path folds them.
        checks: ``(tensor, axes, tensor, axes)``: elementary sizes that must be equal, as slices.
        carrier: The index in ``tensors`` of the argument that gives the folded group's sizes, or -1.
        group: The positions of the folded group's axes among the carrier's elementary sizes, as a slice when
            they are in order.
        dim: The folded dim, which every matching call shares.
        row_slots: Where the folded rows are, as ``FoldedCall.row_slots``.
        other_group: As ``FoldedCall.other_group``.
        copy: The ``copy`` it was folded with.
        arrays: Whether the wrapper folds arrays of other libraries too: then none may stand where no tensor did.
    """

    nargs: int
    others: tuple[int, ...]
    absent: tuple[str, ...]
    tensors: tuple[ProgramInput, ...]
    checks: tuple[tuple[int, slice, int, slice], ...]
    carrier: int
    group: slice | tuple[int, ...]
    dim: int | None
    row_slots: tuple[tuple[Key, int], ...]
    other_group: tuple[str, Rule] | None
    copy: bool | None
    arrays: bool

    def fold(self, args: Sequence[Any], kwargs: Mapping[str, Any], lengths: Mapping[str, int]) -> FoldedCall | None:
        """The folded call, as ``CompiledPattern.fold`` would make it; ``None`` when the call has another structure."""
        if len(args) != self.nargs:
            return None
        for position in self.others:
            if isinstance(args[position], torch.Tensor) or (self.arrays and namespace(args[position]) is not None):
                return None
        for name in self.absent:
            if kwargs.get(name) is not None:
                return None
        folded_args = list(args)
        folded_kwargs = dict(kwargs)
        elementary: list[Sequence[int]] = []
        for key, ndim, span, plan in self.tensors:
            x = args[key] if isinstance(key, int) else kwargs.get(key)
            if not isinstance(x, torch.Tensor) or x.layout is not _STRIDED or x.is_nested or x.ndim != ndim:
                return None
            if span is not None:  # one flatten, with copy=None: a view, or one copy in the frames' layout
                elementary.append(x.shape)
                viewable = x.is_contiguous() or mergeable(x.shape, x.stride(), *span)
                folded = x.flatten(*span) if viewable else plan.copied(x, False)
            else:
                try:
                    folded, _, sizes = plan.apply(x, lengths, self.copy)
                except (SizeMismatch, NoView):
                    return None
                elementary.append(sizes)
            if isinstance(key, int):
                folded_args[key] = folded
            else:
                folded_kwargs[key] = folded
        for first, axes, other, other_axes in self.checks:
            if elementary[first][axes] != elementary[other][other_axes]:
                return None
        carrier = self.carrier
        if carrier < 0:
            group_sizes: Sequence[int] = ()
        else:
            group, carried = self.group, elementary[carrier]
            group_sizes = carried[group] if type(group) is slice else tuple(carried[p] for p in group)
        return FoldedCall(tuple(folded_args), folded_kwargs, self.dim, group_sizes, self.row_slots, self.other_group)


class FlattenProgram:
    """An input program whose arguments are all positional dense tensors, each folded by one ``flatten``.

    The common call of several tensors (attention's query, key and value; the operands of a two-operand pattern)
    needs nothing else: a shape and a view per tensor, and the size equalities as comparisons of tuples. The shapes
    of the last call whose sizes agreed are kept with its group's sizes: a call with the same shapes, the common
    case, skips the comparisons. Eager calls only: under dynamo, comparing symbolic shapes to the kept ones would
    specialize them.

    Attributes:
        spans: ``(rank, start, end)`` of each positional argument, folded by ``flatten(start, end)``.
        equal: ``(tensor, sizes, other, other_sizes)``: the sizes that ``sizes`` reads off the shape of
            argument ``tensor`` must equal those that ``other_sizes`` reads off the shape of ``other``.
        carrier: The index of the argument whose shape gives the folded group's sizes.
        group_sizes: Reads the folded group's sizes off the carrier's shape, as a tuple (which ``torch.unflatten``
            takes faster than a ``torch.Size``).
        dim: The folded dim.
    """

    __slots__ = ("_agreed", "carrier", "dim", "equal", "group_sizes", "spans")

    def __init__(
        self,
        spans: tuple[tuple[int, int, int], ...],
        equal: tuple[tuple[int, SizesAt, int, SizesAt], ...],
        carrier: int,
        group_sizes: SizesAt,
        dim: int,
    ) -> None:
        self.spans = spans
        self.equal = equal
        self.carrier = carrier
        self.group_sizes = group_sizes
        self.dim = dim
        self._agreed: tuple[list[torch.Size], tuple[int, ...]] = ([], ())

    @staticmethod
    def of(program: InputProgram) -> FlattenProgram | None:
        """``program`` as a flatten program, when its arguments are positional tensors folded by views alone."""
        spans = tuple((ndim, *span) for key, ndim, span, _ in program.tensors if isinstance(key, int) and span)
        group = program.group
        if len(spans) != program.nargs or type(group) is not slice or program.dim is None or program.carrier < 0:
            return None
        positions: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
        for first, axes, other, other_axes in program.checks:
            pair = positions.setdefault((first, other), ([], []))
            pair[0].extend(range(axes.start, axes.stop))
            pair[1].extend(range(other_axes.start, other_axes.stop))
        equal = tuple(
            (first, sizes_at(axes), other, sizes_at(others)) for (first, other), (axes, others) in positions.items()
        )
        group_sizes = sizes_at(range(group.start, group.stop))
        return FlattenProgram(spans, equal, program.carrier, group_sizes, program.dim)

    def fold(self, args: Sequence[Any]) -> tuple[list[torch.Tensor], tuple[int, ...]] | None:
        """The folded arguments and the folded group's sizes; ``None`` when a tensor, rank or size differs, or a view
        cannot be made."""
        shapes = []
        folded = []
        try:
            for x, (_, start, end) in zip(args, self.spans, strict=False):
                # Plain tensors only, whose shape and flatten run no code of a subclass. Of those, a nested tensor
                # of strided layout has no shape (RuntimeError), and a tensor of too low a rank cannot be flattened
                # there (IndexError): both step aside, as a rank too high does below.
                if type(x) is not _Tensor or x.layout is not _STRIDED:
                    return None
                shape = x.shape
                if not (x.is_contiguous() or mergeable(shape, x.stride(), start, end)):
                    return None
                shapes.append(shape)
                folded.append(_flatten(x, start, end))
        except (IndexError, RuntimeError):
            return None
        agreed_shapes, agreed_sizes = self._agreed
        if shapes == agreed_shapes:  # the shapes of a call whose ranks and sizes agreed
            return folded, agreed_sizes
        for (ndim, _, _), shape in zip(self.spans, shapes, strict=True):
            if len(shape) != ndim:
                return None
        for first, sizes, other, other_sizes in self.equal:
            if sizes(shapes[first]) != other_sizes(shapes[other]):
                return None
        group_sizes = self.group_sizes(shapes[self.carrier])
        if not _is_compiling():  # dynamo may trace this frame alone, from a caller that it runs eagerly
            self._agreed = (shapes, group_sizes)  # one assignment: a thread reads the old pair or the new, not a mix
        return folded, group_sizes


SizesAt = Callable[[Sequence[int]], tuple[int, ...]]
"""Reads the sizes at some positions of a shape, as a tuple."""


def sizes_at(positions: Sequence[int]) -> SizesAt:
    """What reads the sizes at ``positions`` of a shape, as a tuple.

    A closure per count rather than an ``operator.itemgetter``, which dynamo cannot trace on a shape.
    """
    match tuple(positions):
        case (first,):
            return lambda shape: (shape[first],)
        case (first, second):
            return lambda shape: (shape[first], shape[second])
        case (first, second, third):
            return lambda shape: (shape[first], shape[second], shape[third])
        case many:
            return lambda shape: tuple([shape[position] for position in many])


def as_slice(positions: Sequence[int]) -> slice | tuple[int, ...]:
    """``positions`` as a slice when they are consecutive and in order (a cheaper lookup), else as they are."""
    if positions and list(positions) == list(range(positions[0], positions[0] + len(positions))):
        return slice(positions[0], positions[0] + len(positions))
    return tuple(positions)


def merged_checks(pairs: Sequence[tuple[int, int, int, int]]) -> tuple[tuple[int, slice, int, slice], ...]:
    """Equalities ``(tensor, axis, tensor, axis)`` of sizes, with runs of consecutive axes merged into slices."""
    merged: list[tuple[int, slice, int, slice]] = []
    for first, axis, other, other_axis in pairs:
        if merged:
            last_first, last, last_other, last_other_axes = merged[-1]
            if (last_first, last.stop, last_other, last_other_axes.stop) == (first, axis, other, other_axis):
                merged[-1] = (first, slice(last.start, axis + 1), other, slice(last_other_axes.start, other_axis + 1))
                continue
        merged.append((first, slice(axis, axis + 1), other, slice(other_axis, other_axis + 1)))
    return tuple(merged)


class _Env:
    """What unfolding one call's outputs needs: the folded dim, the group's sizes, and the out= bindings."""

    __slots__ = ("_bindings", "_total", "dim", "outputs", "sizes")

    def __init__(self, outputs: OutputRules, dim: int, sizes: Sequence[int]) -> None:
        self.outputs = outputs
        self.dim = dim
        self.sizes = sizes
        self._total = -1
        self._bindings: dict[str, int] | None = None

    @property
    def total(self) -> int:
        """The number of folded rows."""
        if self._total < 0:
            self._total = product(self.sizes)
        return self._total

    @property
    def bindings(self) -> dict[str, int]:
        if self._bindings is None:
            self._bindings = {**self.outputs.lengths, **bind_group(self.outputs.group_axes, self.sizes)}
        return self._bindings


Node = Callable[[Any, _Env], Any]
"""One node of an output program: it unfolds the part of the output it stands for, or returns ``MISS``."""


class OutputProgram(NamedTuple):
    """How each part of one output structure is unfolded; ``run`` returns ``MISS`` for another structure."""

    root: Node

    def run(self, result: Any, outputs: OutputRules, dim: int, sizes: Sequence[int]) -> Any:
        return self.root(result, _Env(outputs, dim, sizes))


def record_outputs(outputs: OutputRules, result: Any) -> OutputProgram | None:
    """The program that unfolds ``result`` as ``outputs.unfold`` just did at a folded dim; ``None`` when none can.

    A program is made only from the containers a program can check cheaply and exactly (tuples, lists, dicts,
    NamedTuples and torch's structseqs, of exactly those types) and from tensors and plain values as leaves.
    """
    if outputs.out is None:
        root = _each_leaf(result, lambda leaf: _split)
    elif isinstance(outputs.out, str):
        root = _each_leaf(result, _Rearrange.maker(outputs.rules[outputs.out], outputs.group_axes))
    else:
        root = _structured(conform(outputs.out, result), result, outputs)
    return None if root is None else OutputProgram(root)


def _keep(value: Any, env: _Env) -> Any:
    return value


def _split(value: Any, env: _Env) -> Any:
    return _split_at(value, env.dim, env)


def _split_at(value: Any, dim: int, env: _Env) -> Any:
    """``value`` with dim ``dim`` split into the folded group's axes (removed when there are none); ``MISS`` when it
    is no tensor with the folded rows at ``dim``.

    A plain tensor is split in a ``try``: ``torch.unflatten`` raises for a dim out of range or of another size than
    the group's, which is cheaper than reading its shape first. Not while dynamo traces, which turns that error into
    its own; the check for that is made in the frame of the ``try``, as dynamo may trace a frame whose caller it runs
    eagerly.
    """
    sizes = env.sizes
    if type(value) is _Tensor and sizes and not _is_compiling():
        try:
            return _unflatten(value, dim, sizes)
        except (IndexError, RuntimeError):
            return MISS
    if not isinstance(value, torch.Tensor) or value.ndim <= dim or value.shape[dim] != env.total:
        return MISS
    return _unflatten(value, dim, sizes) if sizes else value.squeeze(dim)


class _Rearrange(NamedTuple):
    """A tensor leaf that an ``out=`` pattern rearranges, with the plan for its rank."""

    ndim: int
    plan: Plan

    @staticmethod
    def maker(rule: Rule, group_axes: tuple[str, ...]) -> Callable[[torch.Tensor], Node]:
        """Makes the node for a leaf like ``leaf``, which the full path has just rearranged by ``rule``.

        A plan that only splits one dim into the folded group's axes, in order, is that dim's split.
        """

        def make(leaf: torch.Tensor) -> Node:
            plan = rule.plan(leaf, "an output")
            other_steps = (plan.equal_checks, plan.permutation, plan.merges, plan.unsqueezes)
            split = len(plan.expansions) == 1 and plan.expansions[0][1:] == (group_axes, -1)
            if group_axes and split and not any(other_steps):
                return _SplitAt(plan.expansions[0][0], leaf.ndim).run
            return _Rearrange(leaf.ndim, plan).run

        return make

    def run(self, value: Any, env: _Env) -> Any:
        if not isinstance(value, torch.Tensor) or value.ndim != self.ndim:
            return MISS
        try:
            return self.plan.apply(value, env.bindings)[0]
        except SizeMismatch:
            return MISS


class _SplitAt(NamedTuple):
    """A tensor leaf of this rank whose dim ``dim`` is split into the folded group's axes."""

    dim: int
    ndim: int

    def run(self, value: Any, env: _Env) -> Any:
        if not isinstance(value, torch.Tensor) or value.ndim != self.ndim:
            return MISS
        return _split_at(value, self.dim, env)


class _Atom(NamedTuple):
    """A leaf that is not a tensor, passed through while it has the same type."""

    kind: type

    def run(self, value: Any, env: _Env) -> Any:
        return value if type(value) is self.kind else MISS


class _Sequence(NamedTuple):
    """A tuple, list, NamedTuple or structseq of exactly this type and length."""

    kind: type
    children: tuple[Node, ...]
    make: Callable[[list[Any]], Any]

    def run(self, value: Any, env: _Env) -> Any:
        sequence: Sequence[Any] = value
        if type(value) is not self.kind or len(sequence) != len(self.children):
            return MISS
        parts = []
        for child, part in zip(self.children, sequence, strict=True):
            part = child(part, env)
            if part is MISS:
                return MISS
            parts.append(part)
        return self.make(parts)


class _Splits(NamedTuple):
    """A dict, tuple, list, NamedTuple or structseq of tensors, each split at the folded dim: one node, one loop.

    The common output of several tensors (attention's output and weights, a dict of heads) needs no node per part.
    Any number of parts under any keys unfold alike, so only the container's type is checked.
    """

    kind: Any  # a type; typed loosely, as mypy would narrow a value checked against it to ``object``
    make: Callable[[list[Any]], Any]

    def run(self, value: Any, env: _Env) -> Any:
        if type(value) is not self.kind:
            return MISS
        dim, sizes = env.dim, env.sizes
        trusted = sizes and not _is_compiling()  # as in _split_at, in the frame of the try
        is_dict = self.kind is dict
        parts = []
        for part in value.values() if is_dict else value:
            if trusted and type(part) is _Tensor:
                try:
                    parts.append(_unflatten(part, dim, sizes))
                    continue
                except (IndexError, RuntimeError):
                    return MISS
            part = _split_at(part, dim, env)
            if part is MISS:
                return MISS
            parts.append(part)
        return dict(zip(value, parts, strict=True)) if is_dict else self.make(parts)


class _Dict(NamedTuple):
    """A dict with exactly these keys in this order, rebuilt with its keys in ``order`` (that of out=)."""

    keys: tuple[Any, ...]
    order: tuple[Any, ...]
    children: tuple[Node, ...]

    def run(self, value: Any, env: _Env) -> Any:
        if type(value) is not dict or tuple(value) != self.keys:
            return MISS
        parts = {}
        for key, child in zip(self.order, self.children, strict=True):
            part = child(value[key], env)
            if part is MISS:
                return MISS
            parts[key] = part
        return parts


def _each_leaf(value: Any, leaf: Callable[[torch.Tensor], Node]) -> Node | None:
    """The program that unfolds every tensor in ``value`` by the node ``leaf`` makes for it, passing plain values."""
    if isinstance(value, torch.Tensor):
        return leaf(value)
    if type(value) in _ATOMS:
        return _Atom(type(value)).run
    return _container(value, [_each_leaf(part, leaf) for part in _parts(value)])


def _structured(out: Any, value: Any, outputs: OutputRules) -> Node | None:
    """The program for an ``out=`` structure: a pattern or ``None`` at each leaf of ``out``, over ``value``.

    ``out`` has been conformed to ``value``, which the full path has just unfolded by it: they have the same
    containers, lengths and keys.
    """
    if out is None:
        return _keep
    if isinstance(out, str):
        return _each_leaf(value, _Rearrange.maker(outputs.rules[out], outputs.group_axes))
    if isinstance(out, dict):
        if type(value) is not dict:  # another Mapping: the full path unfolds it on every call
            return None
        children = [_structured(part, value[key], outputs) for key, part in out.items()]
        if any(child is None for child in children):
            return None
        return _Dict(tuple(value), tuple(out), tuple(children)).run  # type: ignore[arg-type]
    return _container(value, [_structured(o, v, outputs) for o, v in zip(out, value, strict=True)])


def _parts(value: Any) -> list[Any]:
    return list(value.values()) if type(value) is dict else list(value) if _sequence_maker(value) else []


def _container(value: Any, children: list[Node | None]) -> Node | None:
    """The node for the container ``value`` over ``children``; ``None`` for a type a program does not check."""
    if any(child is None for child in children):
        return None
    if children and all(child is _split for child in children):
        make = dict if type(value) is dict else _sequence_maker(value)
        return None if make is None else _Splits(type(value), make).run
    if type(value) is dict:
        return _Dict(tuple(value), tuple(value), tuple(children)).run  # type: ignore[arg-type]
    make = _sequence_maker(value)
    return None if make is None else _Sequence(type(value), tuple(children), make).run  # type: ignore[arg-type]


def _sequence_maker(value: Any) -> Callable[[list[Any]], Any] | None:
    kind = type(value)
    if kind is tuple:
        return tuple
    if kind is list:
        return list
    if isinstance(value, tuple) and hasattr(kind, "_fields") and hasattr(kind, "_make"):
        return kind._make  # type: ignore[no-any-return]
    if isinstance(value, tuple) and kind.__module__ == "torch.return_types":
        return kind
    return None
