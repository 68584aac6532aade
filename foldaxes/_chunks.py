"""Runs a module over the rows of a folded batch in chunks, checkpointed, or over only the valid rows.

``call_rows`` takes a folded call; ``Rows`` says which of its arguments carry the folded rows, and at which dim.
``run_rows`` calls the module on slices of those rows (a view each, or a gather of the valid ones) and writes each
call's outputs into one tensor per output leaf: a copy of the outputs, made once, so that no chunk's outputs
outlive the copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint

from ._errors import fold_error
from ._execution import Execution, why_partial
from ._guards import check_batch_statistics
from ._masks import RowSelection
from ._plan import FRAME_FORMATS, product
from ._records import FoldedCall
from ._tree import TreeSpec, flatten, leaf_paths, unflatten

__all__ = ["Rows", "call_rows", "run_rows"]


@dataclass(frozen=True)
class Rows:
    """Where the folded rows are in a call's folded arguments.

    Attributes:
        slots: ``(key, dim)`` of each argument that carries the rows: a positional index or a keyword name, and
            the dim of its folded group. Other arguments are passed whole to every call.
        count: How many rows there are.
        dim: The folded dim of every output tensor.
    """

    slots: tuple[tuple[int | str, int], ...]
    count: int
    dim: int


def call_rows(
    fn: Callable[..., Any],
    call: FoldedCall,
    execution: Execution,
    selection: RowSelection | None,
    pattern: str,
    group_text: str,
) -> Any:
    """Calls ``fn`` on a folded call's rows as ``execution`` and ``selection`` say; returns the folded outputs.

    Args:
        fn: The module.
        call: The folded call.
        execution: Chunks, checkpointing and the fill value.
        selection: The valid rows, or ``None`` for all of them.
        pattern: For messages.
        group_text: The folded group as written, such as ``"(b t)"``, for messages.

    Raises:
        FoldError: the mask or lengths do not fit, the module computes batch statistics, an argument folds other
            axes than the folded group, or the outputs cannot be put together.
    """
    valid = None
    if selection is not None:
        valid = selection.valid_rows(call.group_sizes, group_text, execution.sample_axis, pattern)
    why = why_partial(execution, selection is not None)
    if why is not None:
        check_batch_statistics(fn, execution.allow_batch_statistics, why, pattern)
    if call.dim is None:  # nothing is folded: only checkpointing applies (chunks and masks are refused)
        return _call(fn, list(call.args), call.kwargs, execution.checkpoint)
    if call.other_group is not None and (selection is not None or execution.chunk_size is not None):
        label, rule = call.other_group
        axes = rule.operand.group_axes
        raise fold_error(
            f"{label} folds other axes than the folded group {group_text}, so its rows cannot be chunked or masked "
            "like the others'.",
            pattern=rule.pattern,
            span=None if not axes else rule.operand.span("rhs", axes[0]),
            hint="Fold the same axes in every operand, or run without chunk_size and fold_mask.",
        )
    rows = Rows(call.row_slots, product(call.group_sizes), call.dim)
    return run_rows(fn, list(call.args), call.kwargs, rows, execution, pattern, valid)


def run_rows(
    fn: Callable[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    rows: Rows,
    execution: Execution,
    pattern: str,
    valid: torch.Tensor | None = None,
) -> Any:
    """Calls ``fn`` over the rows (only ``valid`` ones, when given) and returns its outputs for every row.

    Without ``valid`` and with the rows in one chunk, this is the plain call. Otherwise each output tensor comes
    back as one new tensor with ``rows.count`` rows at ``rows.dim``; rows left out by ``valid`` hold
    ``execution.fill_value``. Non-tensor leaves come from the first call.

    Raises:
        FoldError: an output cannot be assembled, because it does not have one row per input row at
            ``rows.dim``, or because the calls returned different structures or shapes.
    """
    selected = rows.count if valid is None else valid.numel()
    step = execution.chunk_size or max(selected, 1)
    if valid is None and selected <= step:
        return _call(fn, args, kwargs, execution.checkpoint)
    collector = _Collector(rows, execution.fill_value, masked=valid is not None, pattern=pattern)
    for start in range(0, max(selected, 1), step):
        count = min(step, selected - start)
        index = None if valid is None else valid[start : start + count]
        call_args, call_kwargs = list(args), dict(kwargs)
        for key, dim in rows.slots:
            if isinstance(key, int):
                call_args[key] = _part(args[key], dim, start, count, index)
            else:
                call_kwargs[key] = _part(kwargs[key], dim, start, count, index)
        collector.add(_call(fn, call_args, call_kwargs, execution.checkpoint), start, count, index)
    return collector.result()


def _part(x: torch.Tensor, dim: int, start: int, count: int, index: torch.Tensor | None) -> torch.Tensor:
    """Rows ``start`` to ``start + count`` of ``x``: a view, or with ``index`` a gather of those valid rows."""
    return x.narrow(dim, start, count) if index is None else x.index_select(dim, index.to(x.device))


def _call(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], checkpoint: bool) -> Any:
    if checkpoint and torch.is_grad_enabled():
        # The keywords go through a closure, which non-reentrant checkpointing follows, so that checkpoint()'s
        # own keywords (debug, context_fn...) can never take one of the module's.
        return torch.utils.checkpoint.checkpoint(functools.partial(fn, **kwargs), *args, use_reentrant=False)
    return fn(*args, **kwargs)


class _Collector:
    """Writes each call's output tensors into the rows they stand for, allocating on the first call."""

    def __init__(self, rows: Rows, fill_value: float, masked: bool, pattern: str) -> None:
        self.rows = rows
        self.fill_value = fill_value
        self.masked = masked
        self.pattern = pattern
        self.leaves: list[Any] = []
        self.spec: TreeSpec | None = None

    def add(self, result: Any, start: int, count: int, index: torch.Tensor | None) -> None:
        leaves, spec = flatten(result)
        dim = self.rows.dim
        if self.spec is None:
            self.spec = spec
            for position, leaf in enumerate(leaves):
                if isinstance(leaf, torch.Tensor):
                    self._check(leaf, position, count, None, spec, len(leaves))
                    leaf = self._allocate(leaf)
                self.leaves.append(leaf)
        elif spec != self.spec:
            raise fold_error(
                f"The module returned differently structured outputs for rows {start} to {start + count - 1} "
                "than for the first rows, so they cannot be put together.",
                pattern=self.pattern,
                hint="Return the same structure for any rows, or run the module in one call (no chunk_size).",
            )
        for position, (leaf, out) in enumerate(zip(leaves, self.leaves, strict=True)):
            if not isinstance(leaf, torch.Tensor):
                continue
            self._check(leaf, position, count, out, spec, len(leaves))
            if index is None:
                out.narrow(dim, start, count).copy_(leaf)
            else:
                out.index_copy_(dim, index.to(out.device), leaf)

    def result(self) -> Any:
        assert self.spec is not None
        return unflatten(self.leaves, self.spec)

    def _allocate(self, leaf: torch.Tensor) -> torch.Tensor:
        shape = list(leaf.shape)
        shape[self.rows.dim] = self.rows.count
        layout = _memory_format(leaf)
        out = torch.empty(shape, dtype=leaf.dtype, device=leaf.device, memory_format=layout)
        return out.fill_(self.fill_value) if self.masked else out

    def _check(
        self, leaf: torch.Tensor, position: int, count: int, out: torch.Tensor | None, spec: TreeSpec, leaves: int
    ) -> None:
        dim = self.rows.dim
        if leaf.ndim > dim and leaf.shape[dim] == count:
            if out is None:
                return
            expected = (*out.shape[:dim], count, *out.shape[dim + 1 :])
            if leaf.shape == expected and leaf.dtype == out.dtype:
                return
            what = f"shape {tuple(leaf.shape)} and {leaf.dtype}, where {expected} and {out.dtype} came first"
        else:
            found = "no such dim" if leaf.ndim <= dim else f"size {leaf.shape[dim]}"
            what = f"{found} at dim {dim}, where the {count} rows it was given should be"
        # The outputs are not kept, since they would hold a chunk's memory: a copy of the structure names the leaf.
        skeleton = unflatten(list(range(leaves)), spec)
        path = "the output" if isinstance(skeleton, int) else "output " + leaf_paths(skeleton)[position]
        raise fold_error(
            f"{path[0].upper() + path[1:]} cannot be put together from the rows the module ran on: it has {what}.",
            pattern=self.pattern,
            shapes=[(path, leaf.shape)],
            hint="chunk_size, fold_mask and fold_lengths need every output tensor to have one row per input "
            "row at the folded dim, and the same other sizes for any rows; run such a module without them.",
        )


def _memory_format(leaf: torch.Tensor) -> torch.memory_format:
    """The memory format that ``leaf`` is laid out in, so that the assembled output keeps it."""
    candidate = FRAME_FORMATS.get(leaf.ndim)
    if candidate is None or leaf.is_contiguous() or not leaf.is_contiguous(memory_format=candidate):
        return torch.contiguous_format
    return candidate
