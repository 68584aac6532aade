"""Output programs: how the full path unfolded one output structure, replayed by later outputs of that structure.

See ``_program.py`` for programs in general. An output program is a tree of nodes, one per container or leaf of the
output; each node checks that its part has the type, length, keys or rank it was recorded with, and returns
``MISS`` when it has not, so that ``OutputRules.unfold`` runs instead and raises what it raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from ._plan import Plan, Rule, SizeMismatch, product
from ._unfold import OutputRules, bind_group, conform

__all__ = ["MISS", "OutputProgram", "record_outputs"]

_Tensor = torch.Tensor
_unflatten = torch.unflatten
_is_compiling = torch.compiler.is_compiling
"""Bound once, as the nodes run them for every tensor of every output: one lookup instead of two."""
_ATOMS = (type(None), bool, int, float, complex, str, bytes)
"""Output leaves that the full path passes through as they are and a program may too."""

MISS: Any = object()
"""What an output program returns for an output it was not recorded for."""


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
