"""Runs a module over the rows of a folded batch in chunks, checkpointed, or over only the valid rows.

The caller has folded the arguments; ``Rows`` says which of them carry the folded rows, and at which dim.
``run_rows`` calls the module on slices of those rows (a view each, or a gather of the valid ones) and writes each
call's outputs into one tensor per output leaf: a copy of the outputs, made once, so that no chunk's outputs
outlive the copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint

from ._errors import FoldError, format_message, positive_int
from ._guards import batch_statistics
from ._tree import TreeSpec, flatten, leaf_paths, unflatten

__all__ = ["MASK", "SAMPLE_LENGTHS", "Execution", "Rows", "run_rows", "valid_rows"]

MASK = "fold_mask"
"""The call-time keyword that marks the valid rows of a padded input; consumed, never passed to the module."""
SAMPLE_LENGTHS = "fold_lengths"
"""The call-time keyword that gives per-sample lengths instead of a mask; consumed as well."""


@dataclass(frozen=True)
class Execution:
    """How the module is run over the folded rows; the defaults run it once, on every row.

    Attributes:
        chunk_size: Rows per module call, or ``None`` for one call.
        checkpoint: Whether each call is checkpointed (when gradients are enabled).
        fill_value: What the rows left out by a mask are filled with in the outputs.
        allow_batch_statistics: Whether a BatchNorm that uses batch statistics may see part of the batch.
    """

    chunk_size: int | None = None
    checkpoint: bool = False
    fill_value: float = 0.0
    allow_batch_statistics: bool = False

    @property
    def plain(self) -> bool:
        """Whether every call runs the module once, unchecked, on all rows (unless a mask is given)."""
        return self.chunk_size is None and not self.checkpoint

    @classmethod
    def checked(
        cls,
        pattern: str,
        chunk_size: int | None,
        checkpoint: bool,
        fill_value: float,
        allow_batch_statistics: bool,
    ) -> Execution:
        """Validates the keywords of a wrapper.

        Raises:
            FoldError: a keyword has a value of the wrong kind.
        """
        if chunk_size is not None:
            size = positive_int(chunk_size)
            if size is None:
                raise FoldError(
                    format_message(
                        f"chunk_size must be a positive int (rows of the folded batch per call), not {chunk_size!r}.",
                        pattern=pattern,
                        hint="Pass for example chunk_size=64, or None to run the module once.",
                    )
                )
            chunk_size = size
        for name, flag in [("checkpoint", checkpoint), ("allow_batch_statistics", allow_batch_statistics)]:
            if flag not in (True, False):
                raise FoldError(format_message(f"{name} must be True or False, not {flag!r}.", pattern=pattern))
        if isinstance(fill_value, bool) or not isinstance(fill_value, int | float):
            raise FoldError(
                format_message(
                    f"fill_value must be a number, not {type(fill_value).__name__} ({fill_value!r}).",
                    pattern=pattern,
                    hint="It fills the rows that a mask leaves out, for example fill_value=0.0 or float('nan').",
                )
            )
        return cls(chunk_size, bool(checkpoint), fill_value, bool(allow_batch_statistics))


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


def valid_rows(
    mask: Any,
    lengths: Any,
    group_sizes: Sequence[int],
    axes: str,
    sample_axis: int,
    pattern: str,
) -> torch.Tensor | None:
    """The indices of the valid rows among the folded rows, or ``None`` when every row is valid.

    Args:
        mask: A bool tensor of the folded group's shape, or ``None``.
        lengths: Per-sample lengths (a 1-D integer tensor or a sequence of ints) for a two-axis group, or ``None``.
        group_sizes: The sizes of the folded group's axes, in group order.
        axes: The folded group as written, such as ``"(b t)"``, for messages.
        sample_axis: The axis of the group that ``lengths`` has one entry per; the other one is the time axis.
        pattern: For messages.

    Raises:
        FoldError: both or neither are given, or what is given does not fit the folded group.
    """
    shape = tuple(int(size) for size in group_sizes)
    if mask is not None and lengths is not None:
        raise FoldError(
            format_message(
                f"Both {MASK} and {SAMPLE_LENGTHS} were given; they say the same thing two ways.",
                pattern=pattern,
                hint=f"Pass one: {MASK} for any pattern of valid rows, {SAMPLE_LENGTHS} for a prefix of each sample.",
            )
        )
    if lengths is not None:
        mask = _lengths_mask(lengths, shape, axes, sample_axis, pattern)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        found = f"a {mask.dtype} tensor" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise FoldError(
            format_message(
                f"{MASK} must be a bool tensor over the folded axes {axes}, not {found}.",
                pattern=pattern,
                shapes=[(f"folded axes {axes}", shape)],
                hint=f"Pass for example lengths[:, None] > torch.arange(t), or per-sample lengths as {SAMPLE_LENGTHS}.",
            )
        )
    if tuple(mask.shape) != shape:
        raise FoldError(
            format_message(
                f"{MASK} has shape {tuple(mask.shape)}, but the folded axes {axes} have shape {shape}.",
                pattern=pattern,
                shapes=[(MASK, mask.shape), (f"folded axes {axes}", shape)],
                hint="Give the mask the sizes of the folded axes, in the order the folded group lists them.",
            )
        )
    index = mask.reshape(-1).nonzero().flatten()
    return None if index.numel() == mask.numel() else index


def _lengths_mask(lengths: Any, shape: tuple[int, ...], axes: str, sample_axis: int, pattern: str) -> torch.Tensor:
    if len(shape) != 2:
        raise FoldError(
            format_message(
                f"{SAMPLE_LENGTHS} needs a folded group of two axes (sample and time), but {axes} has {len(shape)}.",
                pattern=pattern,
                shapes=[(f"folded axes {axes}", shape)],
                hint=f"Pass {MASK}, a bool tensor of shape {shape}, instead.",
            )
        )
    samples, steps = shape[sample_axis], shape[1 - sample_axis]
    try:
        values = torch.as_tensor(lengths)
    except (TypeError, ValueError, RuntimeError):
        values = None
    if values is None or values.dtype == torch.bool or values.dtype.is_floating_point or values.is_complex():
        raise FoldError(
            format_message(
                f"{SAMPLE_LENGTHS} must be integers, one per sample, not {type(lengths).__name__} {lengths!r}.",
                pattern=pattern,
                hint=f"Pass a 1-D integer tensor or a list of {samples} ints.",
            )
        )
    if values.shape != (samples,):
        raise FoldError(
            format_message(
                f"{SAMPLE_LENGTHS} has shape {tuple(values.shape)}, but there are {samples} samples "
                f"(axis {sample_axis} of the folded axes {axes}).",
                pattern=pattern,
                shapes=[(SAMPLE_LENGTHS, values.shape), (f"folded axes {axes}", shape)],
                hint=f"Give one length per sample, each between 0 and {steps}.",
            )
        )
    if bool(((values < 0) | (values > steps)).any()):
        raise FoldError(
            format_message(
                f"{SAMPLE_LENGTHS} must lie between 0 and {steps} (the time axis), but it is {values.tolist()}.",
                pattern=pattern,
                shapes=[(f"folded axes {axes}", shape)],
                hint="Correct the lengths, or check which axis of the group is time.",
            )
        )
    steps_range = torch.arange(steps, device=values.device)
    if sample_axis == 0:
        return steps_range < values[:, None]
    return steps_range[:, None] < values[None, :]


def check_batch_statistics(fn: Any, execution: Execution, why: str, pattern: str) -> None:
    """Refuses a BatchNorm that uses batch statistics when the module will see only part of the folded batch.

    Raises:
        FoldError: there is one, and ``allow_batch_statistics`` is off.
    """
    if execution.allow_batch_statistics:
        return
    found = batch_statistics(fn)
    if found is not None:
        raise FoldError(
            format_message(
                f"The module's {found} normalises with the statistics of the batch it is given, but {why}: its "
                "results, and its running averages, would differ from one call on the whole folded batch.",
                pattern=pattern,
                hint="Call .eval() on the module first (running statistics treat rows independently), or pass "
                "allow_batch_statistics=True to the wrapper to accept statistics over each part.",
            )
        )


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
            raise FoldError(
                format_message(
                    f"The module returned differently structured outputs for rows {start} to {start + count - 1} "
                    "than for the first rows, so they cannot be put together.",
                    pattern=self.pattern,
                    hint="Return the same structure for any rows, or run the module in one call (no chunk_size).",
                )
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
        raise FoldError(
            format_message(
                f"{path[0].upper() + path[1:]} cannot be put together from the rows the module ran on: it has {what}.",
                pattern=self.pattern,
                shapes=[(path, leaf.shape)],
                hint="chunk_size, fold_mask and fold_lengths need every output tensor to have one row per input "
                "row at the folded dim, and the same other sizes for any rows; run such a module without them.",
            )
        )


def _memory_format(leaf: torch.Tensor) -> torch.memory_format:
    """The memory format that ``leaf`` is laid out in, so that the assembled output keeps it."""
    if leaf.is_contiguous():
        return torch.contiguous_format
    if leaf.ndim == 4 and leaf.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if leaf.ndim == 5 and leaf.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format
