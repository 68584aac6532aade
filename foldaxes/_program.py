"""Programs: what the full path did for one call structure, replayed by later calls with the same structure.

The full path (``CompiledPattern.fold``, then ``OutputRules.unfold``) checks everything and raises every error.
Once a call has gone through it, a program writes down what it did: which arguments were tensors of which rank,
the one view op or plan for each, which sizes had to agree, and how each output leaf was unfolded. A later call
runs only those steps, checking as it goes that it has the same structure: the same tensor positions, ranks and
layouts, sizes that agree, and an output of the same containers. Whatever differs makes the program step aside
(``None``, or ``MISS`` for an output), and the full path runs, raising what it raises. So a program changes how
fast a well-formed call goes, never what is checked or said.

This module holds the programs of the inputs; ``_output_program.py`` those of the outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from ._arrays import namespace
from ._plan import NoView, Plan, Rule, SizeMismatch, mergeable
from ._records import FoldedCall, Key

__all__ = ["FlattenProgram", "InputProgram", "ProgramInput", "SizesAt", "as_slice", "merged_checks", "sizes_at"]

_STRIDED = torch.strided
_Tensor = torch.Tensor
_flatten = torch.flatten
_is_compiling = torch.compiler.is_compiling
"""Bound once, as ``FlattenProgram.fold`` runs them for every tensor of every call: one lookup instead of two."""


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
            for x, (_, start, end) in zip(args, self.spans, strict=False):  # kept by their number: as many
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
