"""The path of one call: fold the arguments, run the module by the first way that applies, unfold what it returns.

``Caller.call`` lists the ways in order, each chosen by a condition written where it is chosen:

1. fast: one dense tensor whose fold is a single ``flatten``, and the default unfold;
2. jagged: nested tensors with ``layout=torch.jagged``, run on their packed frames (``_ragged.py``);
3. repeated: with ``compute_repeats_once``, rows repeated along a folded axis run once (``_expanded.py``);
4. plain: every other call, folded by ``CompiledPattern.fold`` and run once on every row;
5. rows: chunks, checkpointing, or only the valid rows of ``fold_mask`` / ``fold_lengths`` (``_chunks.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ._chunks import call_rows
from ._compiled import CompiledPattern, is_jagged
from ._errors import fold_error
from ._execution import Execution, why_partial
from ._expanded import find_repeats, has_zero_stride
from ._masks import MASK, SAMPLE_LENGTHS, RowSelection
from ._notes import add_fold_note
from ._plan import MAX_RANKS, product
from ._ragged import call_jagged

__all__ = ["Caller", "check_callable"]

_STRIDED = torch.strided


class Caller:
    """A compiled pattern and how to run the module on it: what ``Distribute`` and ``distribute`` call.

    Args:
        pattern: The compiled pattern.
        execution: How to run the module over the folded rows.

    Raises:
        FoldError: ``chunk_size`` or ``compute_repeats_once`` is set where they need the default unfold.
    """

    def __init__(self, pattern: CompiledPattern, execution: Execution) -> None:
        self.pattern = pattern
        self.execution = execution
        if execution.chunk_size is not None:
            _require_default_unfold(
                pattern, "chunk_size", "the outputs of the chunks are put together at the folded dim of each output."
            )
        if execution.compute_repeats_once:
            _require_default_unfold(
                pattern, "compute_repeats_once", "the outputs are expanded back at the folded dim of each output."
            )
        self._fast = pattern.single and pattern.outputs.out is None and execution.plain
        self._repeats_once = execution.compute_repeats_once
        self._flatten_spans: dict[int, tuple[int, int] | None] = {}

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """Folds ``args`` and ``kwargs``, calls ``fn`` by the first path that applies, and unfolds its outputs."""
        # 1. Fast: one dense tensor whose fold is one flatten (a view), then one unflatten of the output.
        if self._fast and len(args) == 1 and not kwargs:
            x = args[0]
            if isinstance(x, torch.Tensor) and x.layout is _STRIDED and not x.is_nested:
                spans, ndim = self._flatten_spans, x.ndim
                span = spans[ndim] if ndim in spans else self._flatten_span(x)
                if span is not None and not (self._repeats_once and has_zero_stride(x, span)):
                    start, end = span
                    sizes, folded = x.shape[start : end + 1], x.flatten(start, end)
                    try:
                        y = fn(folded)
                    except Exception as error:
                        add_fold_note(error, self.pattern, args, kwargs, (folded,), {}, sizes)
                        raise
                    if isinstance(y, torch.Tensor) and y.ndim > start and y.shape[start] == product(sizes):
                        return torch.unflatten(y, start, sizes)
                    return self.pattern.outputs.unfold(y, start, sizes)
        pattern, execution = self.pattern, self.execution
        kwargs, selection = RowSelection.take(kwargs)
        if selection is not None and not _any_jagged(args, kwargs, pattern.kwarg_rules):
            _require_default_unfold(
                pattern,
                f"{MASK} and {SAMPLE_LENGTHS}",
                "the valid rows are gathered from the folded group and scattered back at the folded dim of each "
                "output.",
            )
        # 2. Jagged: nested tensors with layout=torch.jagged run on their packed frames, with no padding or copy.
        if _any_jagged(args, kwargs, pattern.kwarg_rules):
            arguments = pattern.tensor_arguments(args, kwargs)
            return call_jagged(
                fn,
                args,
                kwargs,
                arguments,
                execution,
                pattern.text,
                masked=selection is not None,
                out=pattern.outputs.out is not None,
                note=lambda error, packed_args, packed_kwargs: add_fold_note(
                    error, pattern, args, kwargs, packed_args, packed_kwargs, (), why_partial(execution, False)
                ),
            )
        # 3. Repeated: with compute_repeats_once, rows repeated along a folded axis (stride 0) run once. Dynamo cannot
        # trace the check for random draws, so compiled code computes every copy.
        repeats = None
        if execution.compute_repeats_once and selection is None and not torch.compiler.is_compiling():
            repeats = find_repeats(fn, pattern.tensor_arguments(args, kwargs), pattern.group_axes, pattern.lengths)
        call = pattern.fold(*repeats.narrowed(args, kwargs)) if repeats is not None else pattern.fold(args, kwargs)
        try:
            # 4. Plain: one call on every row.
            if execution.plain and selection is None:
                result = fn(*call.args, **call.kwargs)
            # 5. Rows: in chunks, checkpointed, or on the valid rows only.
            else:
                result = call_rows(fn, call, execution, selection, pattern.text, pattern.group_text)
        except Exception as error:
            how = why_partial(execution, selection is not None)
            add_fold_note(error, pattern, args, kwargs, call.args, call.kwargs, call.group_sizes, how)
            raise
        if repeats is not None:
            repeats.check_no_draws(pattern.text)
            return repeats.unfold(pattern.outputs, result, call)
        return pattern.outputs.unfold(result, call.dim, call.group_sizes)

    def _flatten_span(self, x: torch.Tensor) -> tuple[int, int] | None:
        """The fast path's one ``flatten``, cached per rank; ``None`` sends every call of that rank on."""
        span = self.pattern.rules[0].plan(x, "argument 0").flatten_only
        if not torch.compiler.is_compiling():  # a cache write while dynamo traces is a side effect of the graph
            if len(self._flatten_spans) >= MAX_RANKS:
                self._flatten_spans.clear()
            self._flatten_spans[x.ndim] = span
        return span


def _any_jagged(args: Sequence[Any], kwargs: Mapping[str, Any], names: Mapping[str, Any]) -> bool:
    """Whether a tensor that the pattern folds is jagged; ``names`` are the keywords it folds."""
    tensors = [*args, *(kwargs.get(name) for name in names)]
    return any(isinstance(x, torch.Tensor) and is_jagged(x) for x in tensors)


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
