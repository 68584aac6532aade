"""The path of one call: fold the arguments, run the module by the first way that applies, unfold what it returns.

``Caller.call`` lists the ways in order, each chosen by a condition written where it is chosen:

1. fast: one dense tensor whose fold is a single ``flatten`` view, and the default unfold;
2. flattens: positional tensors only, each folded by one ``flatten`` view, as a recorded call of that number did;
3. recorded: a call of a structure seen before, folded by the program its first call recorded (``_program.py``);
4. jagged: nested tensors with ``layout=torch.jagged``, run on their packed frames (``_ragged.py``);
5. arrays: NumPy and other array API arrays, with the functional API (``_arrays.py``);
6. repeated: with ``compute_repeats_once``, rows repeated along a folded axis run once (``_expanded.py``);
7. plain: every other call, folded by ``CompiledPattern.fold`` and run once on every row;
8. rows: chunks, checkpointing, or only the valid rows of ``fold_mask`` / ``fold_lengths`` (``_chunks.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ._arrays import library_of, refuse_torch_features
from ._chunks import call_rows
from ._compiled import CompiledPattern, is_jagged
from ._errors import fold_error
from ._execution import Execution, why_partial
from ._expanded import find_repeats, has_zero_stride
from ._masks import MASK, SAMPLE_LENGTHS, RowSelection
from ._notes import add_fold_note
from ._output_program import MISS, OutputProgram, record_outputs
from ._plan import MAX_RANKS, mergeable, product
from ._program import FlattenProgram, InputProgram, SizesAt, sizes_at
from ._ragged import call_jagged
from ._records import FoldedCall

__all__ = ["Caller", "check_callable"]

_STRIDED = torch.strided
_Tensor = torch.Tensor
_flatten = torch.flatten
_unflatten = torch.unflatten
_is_compiling = torch.compiler.is_compiling
"""Bound once, as the fast paths run them on every call: one lookup instead of two."""
Structure = tuple[Any, ...] | int
"""A call's structure, under which its programs are kept: its number of positional arguments, and its keywords."""
_MAX_STRUCTURES = 64
_PROGRAMS_PER_STRUCTURE = 4
_UNRECORDED = OutputProgram(lambda value, env: MISS)
"""Stands for a structure with no output program yet: it unfolds nothing, so the full path runs and records one."""


class Caller:
    """A compiled pattern and how to run the module on it: what ``Distribute`` and ``distribute`` call.

    Args:
        pattern: The compiled pattern.
        execution: How to run the module over the folded rows.
        arrays: Whether arrays of other libraries (NumPy, JAX...) are folded too, as the functional API does;
            ``Distribute`` folds torch tensors only.

    Raises:
        FoldError: ``chunk_size`` or ``compute_repeats_once`` is set where they need the default unfold.
    """

    def __init__(self, pattern: CompiledPattern, execution: Execution, arrays: bool = False) -> None:
        self.pattern = pattern
        self.execution = execution
        self.arrays = arrays
        if execution.chunk_size is not None:
            _require_default_unfold(
                pattern, "chunk_size", "the outputs of the chunks are put together at the folded dim of each output."
            )
        if execution.compute_repeats_once:
            _require_default_unfold(
                pattern, "compute_repeats_once", "the outputs are expanded back at the folded dim of each output."
            )
        self._fast = pattern.single and pattern.outputs.out is None and execution.plain and execution.copy is None
        self._repeats_once = execution.compute_repeats_once
        self._split_tensor = pattern.outputs.out is None
        self._flatten_spans: dict[int, tuple[int, int, SizesAt] | None] = {}
        self._inputs: dict[Structure, tuple[InputProgram, ...]] = {}
        self._flattens: dict[Structure, FlattenProgram] = {}
        self._outputs: dict[Structure, OutputProgram | None] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Leaves the caches out of a pickle or deep copy: the next call rebuilds them, and some hold closures."""
        caches = ("_flatten_spans", "_inputs", "_flattens", "_outputs")
        return {name: {} if name in caches else value for name, value in self.__dict__.items()}

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """Folds ``args`` and ``kwargs``, calls ``fn`` by the first path that applies, and unfolds its outputs."""
        # 1. Fast: one dense tensor whose fold is one flatten (a view), then one unflatten of the output.
        folded_args: Sequence[torch.Tensor] | None = None
        compiling = _is_compiling()  # for this frame only: dynamo may trace the frames it calls, and not this one
        if self._fast and len(args) == 1 and not kwargs:
            x = args[0]
            if isinstance(x, _Tensor) and x.layout is _STRIDED and not x.is_nested:
                spans, ndim = self._flatten_spans, x.ndim
                span = spans[ndim] if ndim in spans else self._flatten_span(x)
                # A contiguous tensor flattens by a view and repeats nothing; any other needs its strides read.
                if span is not None and (
                    x.is_contiguous()
                    or (
                        mergeable(x.shape, x.stride(), *span[:2])
                        and not (self._repeats_once and has_zero_stride(x, span[:2]))
                    )
                ):
                    dim, end, sizes_of = span
                    folded_args, group_sizes = (_flatten(x, dim, end),), sizes_of(x.shape)
        # 2. Flattens: positional tensors only, each folded by one flatten view and checked by integer comparisons,
        # as the first call of this number of them was. Only plain calls with copy=None record one.
        elif self._flattens and not kwargs and not compiling:
            flattens = self._flattens.get(len(args))
            flattened = None if flattens is None else flattens.fold(args)
            if flattened is not None:
                (folded_args, group_sizes), dim = flattened, flattens.dim  # type: ignore[union-attr]
        if folded_args is not None:
            try:
                y = fn(*folded_args)
            except Exception as error:
                add_fold_note(error, self.pattern, args, kwargs, folded_args, {}, group_sizes)
                raise
            if self._split_tensor and type(y) is _Tensor and not compiling:
                # The checks of split_leaf, left to torch: a dim out of range or of another size raises. Not while
                # dynamo traces, which turns that error into its own.
                try:
                    return _unflatten(y, dim, group_sizes)
                except (IndexError, RuntimeError):
                    pass  # the full unfold raises its own error for it
            return self._unfold(y, dim, group_sizes, len(args))
        pattern, execution = self.pattern, self.execution
        structure = (len(args), *kwargs) if kwargs else len(args)
        # 3. Recorded: a structure that the full path has folded before, folded again by the program it recorded
        # (_program.py). Only calls without a mask or repeats record one, and a program refuses jagged tensors.
        call = None
        for program in self._inputs.get(structure, ()):
            call = program.fold(args, kwargs, pattern.lengths)
            if call is not None:
                break
        repeats = selection = None
        if call is None:
            given, (kwargs, selection) = kwargs, RowSelection.take(kwargs)
            # 4. Jagged: nested tensors with layout=torch.jagged run on their packed frames, with no padding or copy.
            if _any_jagged(args, kwargs, pattern.kwarg_rules):
                return call_jagged(
                    fn,
                    args,
                    kwargs,
                    pattern.tensor_arguments(args, kwargs),
                    execution,
                    pattern.text,
                    masked=selection is not None,
                    out=pattern.outputs.out is not None,
                    note=lambda error, packed_args, packed_kwargs: add_fold_note(
                        error, pattern, args, kwargs, packed_args, packed_kwargs, (), why_partial(execution, False)
                    ),
                )
            if selection is not None:
                _require_default_unfold(
                    pattern,
                    f"{MASK} and {SAMPLE_LENGTHS}",
                    "the valid rows are gathered from the folded group and scattered back at the folded dim of each "
                    "output.",
                )
            # 5. Arrays: with the functional API, NumPy and other array API arrays fold through their own namespace.
            xp = library_of(args, kwargs, tuple(pattern.kwarg_rules), pattern.text) if self.arrays else None
            if xp is not None:
                refuse_torch_features(selection, execution, pattern.text)
                call = pattern.fold(args, kwargs, execution.copy, xp)
            # 6. Repeated: with compute_repeats_once, rows repeated along a folded axis (stride 0) run once. Dynamo
            # cannot trace the check for random draws, so compiled code computes every copy.
            elif selection is None and execution.compute_repeats_once and not torch.compiler.is_compiling():
                arguments = pattern.tensor_arguments(args, kwargs)
                repeats = find_repeats(fn, arguments, pattern.group_axes, pattern.lengths)
            if call is None and repeats is not None:
                call = pattern.fold(*repeats.narrowed(args, kwargs), execution.copy)
            elif call is None:
                call = pattern.fold(args, kwargs, execution.copy)
                if kwargs is given:  # no fold_mask or fold_lengths, not even None: the program passes every keyword
                    self._record(args, kwargs, structure, call)
        try:
            # 7. Plain: one call on every row.
            if execution.plain and selection is None:
                result = fn(*call.args, **call.kwargs)
            # 8. Rows: in chunks, checkpointed, or on the valid rows only.
            else:
                result = call_rows(fn, call, execution, selection, pattern.text, pattern.group_text)
        except Exception as error:
            how = why_partial(execution, selection is not None)
            add_fold_note(error, pattern, args, kwargs, call.args, call.kwargs, call.group_sizes, how)
            raise
        if repeats is not None:
            repeats.check_no_draws(pattern.text)
            return repeats.unfold(pattern.outputs, result, call)
        return self._unfold(result, call.dim, call.group_sizes, structure)

    def _record(self, args: Sequence[Any], kwargs: Mapping[str, Any], structure: Structure, call: FoldedCall) -> None:
        """Records how ``call`` was folded, for later calls of its structure; the latest few per structure are kept."""
        if self._repeats_once or _tracing():
            return  # a program folds a repeated input densely, which compute_repeats_once asks not to
        programs = self._inputs.get(structure, ())
        program = self.pattern.program(args, kwargs, call, self.execution.copy, self.arrays)
        _store(self._inputs, structure, (program, *programs[: _PROGRAMS_PER_STRUCTURE - 1]))
        flattens = FlattenProgram.of(program) if self.execution.plain and type(structure) is int else None
        if flattens is not None:
            _store(self._flattens, structure, flattens)

    def _unfold(self, result: Any, dim: int | None, sizes: Sequence[int], structure: Structure) -> Any:
        """``OutputRules.unfold``, or the program that the last output of a call of this structure recorded."""
        outputs = self.pattern.outputs
        if dim is None:
            return outputs.unfold(result, dim, sizes)
        if outputs.out is None and isinstance(result, torch.Tensor):
            if result.ndim > dim and result.shape[dim] == product(sizes) and sizes:
                return torch.unflatten(result, dim, sizes)
            return outputs.unfold(result, dim, sizes)
        program = self._outputs.get(structure, _UNRECORDED)
        if program is not None:  # None: an output that no program can unfold, recorded once
            unfolded = program.run(result, outputs, dim, sizes)
            if unfolded is not MISS:
                return unfolded
        unfolded = outputs.unfold(result, dim, sizes)
        if program is not None and not _tracing():
            _store(self._outputs, structure, record_outputs(outputs, result))
        return unfolded

    def _flatten_span(self, x: torch.Tensor) -> tuple[int, int, SizesAt] | None:
        """The fast path's one ``flatten`` and what reads the group's sizes, cached per rank; ``None`` sends every
        call of that rank on."""
        flatten = self.pattern.rules[0].plan(x, "argument 0").flatten_only
        span = None if flatten is None else (*flatten, sizes_at(range(flatten[0], flatten[1] + 1)))
        if not torch.compiler.is_compiling():  # a cache write while dynamo traces is a side effect of the graph
            if len(self._flatten_spans) >= MAX_RANKS:
                self._flatten_spans.clear()
            self._flatten_spans[x.ndim] = span
        return span


def _tracing() -> bool:
    """Whether a tracer runs this code: then no program is written, so that one trace runs one path throughout.

    Under dynamo a cache write is a side effect of the graph; ``torch.jit.trace`` traces twice and compares.
    """
    return torch.compiler.is_compiling() or torch.jit.is_tracing()  # type: ignore[attr-defined,no-untyped-call]


def _store(cache: dict[Structure, Any], key: Structure, value: Any) -> None:
    """Writes ``value`` under ``key``, emptying ``cache`` first when it is full: a bound on memory."""
    if len(cache) >= _MAX_STRUCTURES and key not in cache:
        cache.clear()
    cache[key] = value


def _any_jagged(args: Sequence[Any], kwargs: Mapping[str, Any], names: Mapping[str, Any]) -> bool:
    """Whether a tensor that the pattern folds is jagged; ``names`` are the keywords it folds."""
    for x in args:
        if type(x) is not torch.Tensor and isinstance(x, torch.Tensor) and is_jagged(x):
            return True
    for name in names:
        x = kwargs.get(name)
        if isinstance(x, torch.Tensor) and is_jagged(x):
            return True
    return False


def _require_default_unfold(pattern: CompiledPattern, feature: str, why: str) -> None:
    """Refuses ``feature`` with ``out=``, or for a pattern that folds nothing: it needs the folded dim."""
    if pattern.group_axes and pattern.outputs.out is None:
        return
    what = "with out=" if pattern.group_axes else "when the pattern folds no axes"
    raise fold_error(
        f"{feature} cannot be used {what}: {why}",
        pattern=pattern.text,
        hint="Use the default unfold (no out=) and rearrange the result afterwards.",
    )


def check_callable(fn: object, pattern: str) -> None:
    """Refuses what cannot be the wrapped module: ``None`` is allowed (a factory), anything else must be callable."""
    if fn is None or (callable(fn) and not isinstance(fn, type)):
        return
    what = f"the class {fn.__name__}" if isinstance(fn, type) else f"an object of type {type(fn).__name__}"
    raise fold_error(
        f"The wrapped module must be a module instance or another callable, not {what}.",
        pattern=pattern,
        hint="Pass an instance, for example nn.Linear(4, 5) rather than nn.Linear."
        if isinstance(fn, type)
        else "Pass the module or function as the second positional argument.",
    )
