"""The functional form: ``fold`` a tensor, run anything on it, ``unfold`` the result with the spec it returned."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar, overload

import torch

from ._arrays import library_of, namespace, reshape
from ._cache import bounded_cache
from ._call import Caller, check_callable
from ._compiled import CompiledPattern
from ._errors import fold_error, shown
from ._execution import Execution, checked_copy
from ._pattern import ELLIPSIS
from ._plan import mergeable, product
from ._unfold import OutputRules, OutSpec, is_array, split_leaf

__all__ = ["FoldSpec", "distribute", "fold", "fold_by", "unfold"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class FoldSpec:
    """What ``unfold`` needs to split a folded dim back: small, immutable and picklable.

    Attributes:
        pattern: The pattern that made the fold.
        dim: The position of the folded group in the folded tensor, or ``None`` when nothing was folded.
        axes: The names in the folded group, ``"..."`` standing for the axes of an ellipsis.
        sizes: The size of each folded axis, in order (the ellipsis expanded).
        lengths: The axis lengths given as keywords, as sorted ``(name, length)`` pairs.

    Examples:
        >>> import torch, foldaxes
        >>> _, spec = foldaxes.fold(torch.randn(2, 8, 3), "b t c -> (b t) c")
        >>> spec.dim, spec.axes, spec.sizes
        (0, ('b', 't'), (2, 8))
    """

    pattern: str
    dim: int | None
    axes: tuple[str, ...]
    sizes: tuple[int, ...]
    lengths: tuple[tuple[str, int], ...] = ()


_STRIDED = torch.strided
_FLATTENS: dict[tuple[str, type, int | None], tuple[int, int, dict[tuple[int, ...], FoldSpec]]] = {}
"""``(start, end, specs)`` per pattern, type and rank whose fold is one flatten of dims ``start`` to ``end``.

``specs`` holds the specs made so far, by the sizes of the folded group, and under ``()`` one whose other fields
every spec of this fold shares."""


def _remember(specs: dict[tuple[int, ...], FoldSpec], spec: FoldSpec) -> FoldSpec:
    """Keeps ``spec`` for later folds of its sizes: a spec is immutable, so one serves them all."""
    if torch.compiler.is_compiling():  # a cache write while dynamo traces is a side effect of the graph
        return spec
    if len(specs) >= 64:
        template = specs[()]
        specs.clear()
        specs[()] = template
    specs[spec.sizes] = spec
    return spec


@bounded_cache(256)
def _compiled(pattern: str, lengths: tuple[tuple[str, int], ...]) -> CompiledPattern:
    return CompiledPattern(pattern, lengths=dict(lengths))


@bounded_cache(256)
def _output_rules(
    pattern: str, axes: tuple[str, ...], lengths: tuple[tuple[str, int], ...], out: OutSpec
) -> OutputRules:
    """Cached for patterns; an ``out=`` structure of lists or dicts is unhashable and built anew each call."""
    group_axes = tuple(ELLIPSIS if axis == "..." else axis for axis in axes)
    return OutputRules(pattern, out, group_axes, dict(lengths))


@overload
def fold(
    x: torch.Tensor, pattern: str, /, *, copy: bool | None = None, **axes_lengths: int
) -> tuple[torch.Tensor, FoldSpec]: ...
@overload
def fold(
    x: Sequence[torch.Tensor], pattern: str, /, *, copy: bool | None = None, **axes_lengths: int
) -> tuple[tuple[torch.Tensor, ...], FoldSpec]: ...
@overload
def fold(x: Any, pattern: str, /, *, copy: bool | None = None, **axes_lengths: int) -> tuple[Any, FoldSpec]: ...
def fold(x: Any, pattern: str, /, *, copy: bool | None = None, **axes_lengths: int) -> tuple[Any, FoldSpec]:
    """Rearranges ``x`` by ``pattern`` and returns it with the spec that ``unfold`` needs.

    The fold is a view whenever the strides allow one; otherwise it is exactly one copy, laid out as each frame of
    ``x`` is (a channels_last copy of channels_last frames).

    Args:
        x: A tensor, or a sequence of tensors (one per operand of a multi-operand pattern, or all folded by a
            single-operand pattern).
        pattern: An einops pattern such as ``"b t c h w -> (b t) c h w"``.
        copy: ``None`` copies only where the strides leave no view; ``False`` never copies and raises a
            ``FoldError`` where a copy would be needed; ``True`` always returns a new tensor.
        **axes_lengths: Lengths of axes that cannot be read off the shape, as in einops. ``x`` and ``pattern``
            are positional-only, so any axis name but ``copy`` can be given a length.

    Returns:
        The folded tensor (a tuple for a sequence), and a ``FoldSpec``.

    Raises:
        FoldError: the pattern is malformed or ``x`` does not fit it.

    Examples:
        >>> import torch, foldaxes
        >>> x = torch.randn(2, 8, 3, 32, 32)
        >>> folded, spec = foldaxes.fold(x, "b t c h w -> (b t) c h w")
        >>> folded.shape, folded.data_ptr() == x.data_ptr()
        (torch.Size([16, 3, 32, 32]), True)
        >>> y = torch.nn.Conv2d(3, 4, 3)(folded)
        >>> foldaxes.unfold(y, spec).shape
        torch.Size([2, 8, 4, 30, 30])
    """
    if copy is None and not axes_lengths:
        # A pattern and rank whose fold was one flatten: that flatten again, when it is a view of this input.
        flatten = _FLATTENS.get((pattern, type(x), getattr(x, "ndim", None)))
        if flatten is not None:
            start, end, specs = flatten
            shape = x.shape
            sizes = tuple(shape[start : end + 1])
            spec = specs.get(sizes) or _remember(specs, replace(specs[()], sizes=sizes))
            if not isinstance(x, torch.Tensor):
                return reshape(x, (*shape[:start], math.prod(sizes), *shape[end + 1 :])), spec
            if (
                x.layout is _STRIDED
                and not x.is_nested
                and (x.is_contiguous() or mergeable(shape, x.stride(), start, end))
            ):
                return x.flatten(start, end), spec
    return fold_by(x, pattern, axes_lengths, copy)


def fold_by(x: Any, pattern: str, axes_lengths: Mapping[str, int], copy: bool | None = None) -> tuple[Any, FoldSpec]:
    """``fold`` with the lengths as a mapping, so that any axis may be given one (``copy`` included)."""
    lengths = tuple(sorted(axes_lengths.items()))
    compiled = _compiled(pattern, lengths)
    copy = checked_copy(pattern, copy)
    single = isinstance(x, torch.Tensor) or namespace(x) is not None
    if not single and not (isinstance(x, Sequence) and all(is_array(t) for t in x)):
        raise fold_error(
            f"fold takes a tensor or an array, or a sequence of them, not {type(x).__name__}.",
            pattern=pattern,
            hint="Pass the tensor first and the pattern second: fold(x, pattern).",
        )
    tensors: tuple[Any, ...] = (x,) if single else tuple(x)
    xp = library_of(tensors, {}, (), pattern)
    call = compiled.fold(tensors, {}, copy, xp)
    axes = tuple("..." if axis == ELLIPSIS else axis for axis in compiled.group_axes or ())
    spec = FoldSpec(pattern=pattern, dim=call.dim, axes=axes, sizes=tuple(call.group_sizes), lengths=lengths)
    span = compiled.rules[0].plan(x, "argument 0").flatten_only if single and compiled.single else None
    if span is not None and not lengths and copy is None and not torch.compiler.is_compiling():
        if len(_FLATTENS) >= 256:
            _FLATTENS.clear()
        _FLATTENS[(pattern, type(x), x.ndim)] = (*span, {(): replace(spec, sizes=())})
    return (call.args[0] if single else call.args), spec


def unfold(y: Any, spec: FoldSpec, out: OutSpec = None) -> Any:
    """Splits the folded dim of every tensor in ``y`` back into the axes recorded in ``spec``.

    Args:
        y: A tensor, or any nesting of tuples, lists, dicts and NamedTuples; non-tensor leaves pass through.
        spec: The ``FoldSpec`` that ``fold`` returned.
        out: As for ``Distribute``: a pattern such as ``"(b t) c h w -> b c t h w"`` (the folded axes are known),
            or a structure matching ``y`` with a pattern or ``None`` at each leaf.

    Returns:
        ``y`` with each tensor unfolded: a view of it.

    Raises:
        FoldError: a tensor's folded dim does not have the folded size.

    Examples:
        >>> import torch, foldaxes
        >>> folded, spec = foldaxes.fold(torch.randn(4, 5, 10), "t b d -> (t b) d")
        >>> foldaxes.unfold((folded, {"sum": folded.sum(-1)}), spec)[1]["sum"].shape
        torch.Size([4, 5])
    """
    if not isinstance(spec, FoldSpec):
        raise fold_error(
            f"unfold needs the FoldSpec that fold returned, not {shown(spec)}.",
            pattern=None,
            hint="Write folded, spec = fold(x, pattern), then unfold(y, spec).",
        )
    dim, sizes = spec.dim, spec.sizes
    if out is None and dim is not None:
        # One tensor or array whose folded dim fits: one split, without looking up the output rules.
        split = split_leaf(y, dim, sizes, product(sizes))
        if split is not None:
            return split
    return _output_rules(spec.pattern, spec.axes, spec.lengths, out).unfold(y, dim, sizes)


@overload
def distribute(
    pattern: str,
    fn: None = None,
    /,
    *,
    out: OutSpec = None,
    fold_kwargs: Mapping[str, str] | None = None,
    chunk_size: int | None = None,
    checkpoint: bool = False,
    fill_value: float = 0.0,
    allow_batch_statistics: bool = False,
    compute_repeats_once: bool = False,
    copy: bool | None = None,
    **axes_lengths: int,
) -> Callable[[F], F]: ...
@overload
def distribute(
    pattern: str,
    fn: F,
    /,
    *,
    out: OutSpec = None,
    fold_kwargs: Mapping[str, str] | None = None,
    chunk_size: int | None = None,
    checkpoint: bool = False,
    fill_value: float = 0.0,
    allow_batch_statistics: bool = False,
    compute_repeats_once: bool = False,
    copy: bool | None = None,
    **axes_lengths: int,
) -> F: ...
def distribute(
    pattern: str,
    fn: Callable[..., Any] | None = None,
    /,
    *,
    out: OutSpec = None,
    fold_kwargs: Mapping[str, str] | None = None,
    chunk_size: int | None = None,
    checkpoint: bool = False,
    fill_value: float = 0.0,
    allow_batch_statistics: bool = False,
    compute_repeats_once: bool = False,
    copy: bool | None = None,
    **axes_lengths: int,
) -> Any:
    """Wraps a plain function so that its tensor arguments are folded and its results unfolded.

    The function form of ``Distribute``: use it as a decorator, or call it with the function.

    Args:
        pattern: As for ``Distribute``.
        fn: The function to wrap; leave it out to get a decorator.
        out: As for ``Distribute``.
        fold_kwargs: As for ``Distribute``.
        chunk_size: As for ``Distribute``.
        checkpoint: As for ``Distribute``.
        fill_value: As for ``Distribute``.
        allow_batch_statistics: As for ``Distribute``.
        compute_repeats_once: As for ``Distribute``.
        copy: As for ``Distribute``.
        **axes_lengths: As for ``Distribute``.

    The wrapped function takes ``fold_mask`` and ``fold_lengths`` as ``Distribute`` does.

    Returns:
        The wrapped function, or a decorator when ``fn`` is not given.

    Raises:
        FoldError: the pattern is malformed (at decoration time).

    Examples:
        >>> import torch, foldaxes
        >>> @foldaxes.distribute("b t c h w -> (b t) c h w")
        ... def pool(frames):
        ...     return torch.nn.functional.avg_pool2d(frames, 2)
        >>> pool(torch.randn(2, 3, 4, 8, 8)).shape
        torch.Size([2, 3, 4, 4, 4])
        >>> @foldaxes.distribute("b t d -> (b t) d", chunk_size=2)
        ... def norm(x):
        ...     return x / x.norm(dim=-1, keepdim=True)
        >>> norm(torch.randn(2, 3, 4), fold_mask=torch.tensor([[True, True, False], [True, False, False]]))[0, 2]
        tensor([0., 0., 0., 0.])
    """
    execution = Execution.checked(
        pattern, chunk_size, checkpoint, fill_value, allow_batch_statistics, compute_repeats_once, copy
    )
    compiled = CompiledPattern(pattern, out=out, fold_kwargs=fold_kwargs, lengths=axes_lengths)
    caller = Caller(compiled, execution, arrays=True)
    check_callable(fn, pattern)

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        check_callable(function, pattern)

        call = caller.call

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return call(function, args, kwargs)

        return wrapper

    return decorate if fn is None else decorate(fn)
