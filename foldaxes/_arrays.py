"""Arrays of other libraries in the functional API: NumPy, JAX, CuPy, Dask, array-api-strict...

An array that implements the array API standard (``__array_namespace__``) is folded through its own namespace, by
the same plan as a tensor: ``reshape`` for the splits and the merges (a view wherever the library gives one),
``permute_dims`` for the permute, ``squeeze`` and ``expand_dims`` for unit axes. Nothing here imports NumPy or JAX:
each namespace comes from an array. What needs torch (masks, chunks, checkpointing, repeated rows, jagged tensors)
stays torch's, and says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ._errors import fold_error
from ._execution import Execution
from ._masks import MASK, SAMPLE_LENGTHS, RowSelection
from ._plan import NoView, Plan, product

__all__ = [
    "apply_plan",
    "element_strides",
    "library_of",
    "meta_like",
    "namespace",
    "refuse_torch_features",
    "reshape",
    "split_dim",
]

_NAMESPACES: dict[type, Any] = {}
_NONE = object()
"""Stands, in ``_NAMESPACES``, for a type whose values are no arrays."""


def namespace(x: object) -> Any | None:
    """The array API namespace of ``x``, or ``None`` when ``x`` is not such an array (a torch tensor is not)."""
    kind = type(x)
    found = _NAMESPACES.get(kind)
    if found is None:
        is_array = not isinstance(x, torch.Tensor) and hasattr(kind, "__array_namespace__")
        found = x.__array_namespace__() if is_array else _NONE  # type: ignore[attr-defined]
        # A bound on memory (types are few); and no write while dynamo traces, where it is a side effect.
        if len(_NAMESPACES) < 256 and not torch.compiler.is_compiling():
            _NAMESPACES[kind] = found
    return None if found is _NONE else found


def element_strides(x: Any) -> list[int] | None:
    """The strides of ``x`` in elements, read off NumPy-style byte strides; ``None`` when the library hides them."""
    strides, itemsize = getattr(x, "strides", None), getattr(x, "itemsize", None)
    if strides is None or not itemsize or any(stride % itemsize for stride in strides):
        return None
    return [stride // itemsize for stride in strides]


def reshape(x: Any, shape: tuple[int, ...], xp: Any = None, copy: bool | None = None) -> Any:
    """``xp.reshape`` (``xp`` is ``x``'s namespace when not given); the array's own ``reshape`` method where it
    has one, which for NumPy costs a tenth of the function."""
    if copy is None and hasattr(type(x), "reshape"):
        return x.reshape(shape)
    xp = xp or namespace(x)
    return xp.reshape(x, shape) if copy is None else xp.reshape(x, shape, copy=copy)


def split_dim(x: Any, dim: int, sizes: Sequence[int], xp: Any) -> Any:
    """``x`` with dim ``dim`` split into ``sizes`` (removed when there are none): a view wherever one exists."""
    shape = tuple(x.shape)
    return reshape(x, (*shape[:dim], *sizes, *shape[dim + 1 :]), xp)


def apply_plan(plan: Plan, x: Any, lengths: Mapping[str, int], copy: bool | None, xp: Any) -> tuple[Any, Any, Any]:
    """``Plan.apply`` for an array of namespace ``xp``: the folded array, the group's sizes, the elementary sizes.

    Raises:
        SizeMismatch: a size of ``x`` disagrees with ``lengths`` or cannot be split.
        NoView: ``copy`` is ``False`` and the merges need a copy (known from NumPy-style strides, or from the
            library's ``reshape``, which refuses to copy).
    """
    for dim, sizes in plan.splits(tuple(x.shape), lengths):
        x = xp.squeeze(x, axis=dim) if sizes is None else split_dim(x, dim, sizes, xp)
    elementary = tuple(x.shape)
    if plan.permutation is not None:
        x = xp.permute_dims(x, plan.permutation)
    shape = tuple(x.shape)
    group_sizes = None if plan.group is None else shape[plan.group[0] : plan.group[1]]
    if plan.merges:
        if copy is False:
            strides = element_strides(x)
            if strides is not None:
                plan.check_views(shape, strides)
        merged = list(shape)
        for start, end in plan.merges:
            merged[start : end + 1] = [product(merged[start : end + 1])]
        try:
            x = reshape(x, tuple(merged), xp, False if copy is False else None)
        except (ValueError, AttributeError):
            # The array API's answer to copy=False where a copy is needed is a ValueError; array-api-strict, which
            # reshapes NumPy's array in place, raises the AttributeError that NumPy's shape assignment does.
            if copy is not False:
                raise
            raise NoView from None
    for dim in plan.unsqueezes:
        x = xp.expand_dims(x, axis=dim)
    if copy:
        x = xp.asarray(x, copy=True)
    return x, group_sizes, elementary


def refuse_torch_features(selection: RowSelection | None, execution: Execution, pattern: str) -> None:
    """Refuses what only tensors have, for a call that folds arrays of another library.

    Raises:
        FoldError: a mask, chunks, checkpointing or ``compute_repeats_once`` was asked for.
    """
    features = [
        (selection is not None, f"{MASK} and {SAMPLE_LENGTHS}", "work"),
        (execution.chunk_size is not None, "chunk_size", "works"),
        (execution.checkpoint, "checkpoint=True", "works"),
        (execution.compute_repeats_once, "compute_repeats_once=True", "works"),
    ]
    for asked, feature, verb in features:
        if asked:
            raise fold_error(
                f"{feature} {verb} on torch tensors only, but this call folds arrays of another library.",
                pattern=pattern,
                hint=f"Leave out {feature} for arrays, or pass torch tensors (torch.from_numpy(x) shares NumPy's "
                "memory).",
            )


def library_of(args: Sequence[Any], kwargs: Mapping[str, Any], names: Sequence[str], pattern: str) -> Any | None:
    """The namespace of the arrays a call would fold, or ``None`` when it holds none (torch tensors, say).

    Raises:
        FoldError: the call mixes arrays of several libraries, or arrays and torch tensors.
    """
    found: tuple[str, Any] | None = None
    tensor: str | None = None
    labelled = [(f"argument {i}", arg) for i, arg in enumerate(args)]
    labelled += [(f"keyword argument '{name}'", kwargs.get(name)) for name in names]
    for label, value in labelled:
        if isinstance(value, torch.Tensor):
            tensor = tensor or label
            continue
        xp = namespace(value)
        if xp is None:
            continue
        if found is None:
            found = (label, xp)
        elif xp is not found[1]:
            raise _mixed(pattern, f"{label} is from {xp.__name__}, {found[0]} from {found[1].__name__}")
    if found is not None and tensor is not None:
        raise _mixed(pattern, f"{found[0]} is from {found[1].__name__}, {tensor} is a torch tensor")
    return None if found is None else found[1]


def _mixed(pattern: str, what: str) -> Exception:
    return fold_error(
        f"One call folds arrays of one library: {what}.",
        pattern=pattern,
        hint="Convert them to one library first, for example with torch.from_numpy(x) or numpy.asarray(x).",
    )


def meta_like(shape: Sequence[int], strides: Sequence[int]) -> torch.Tensor:
    """A tensor with ``shape`` and ``strides`` and no storage, on which torch's verdicts and reasons can be read."""
    return torch.empty_strided(tuple(shape), tuple(strides), device="meta")
