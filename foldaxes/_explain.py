"""``explain``: what a pattern does to a tensor of a given shape and layout, without allocating the tensor.

The example tensor lives on the ``meta`` device: it has sizes and strides but no storage. The fold itself is
``foldaxes.fold``, so whether it is a view is read off the result, not predicted. The strides of each merged
group only supply the reason.
"""

from __future__ import annotations

import operator
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._arrays import element_strides, namespace
from ._errors import fold_error, positive_int, shown
from ._fold import fold_by, unfold
from ._pattern import parse_pattern
from ._plan import Rule, SizeMismatch
from ._strides import elementary_axes, group_text, shown_name, view_recipe
from ._strides import reason as why

__all__ = ["Explanation", "explain", "explain_layout"]

_WIDTH = 100
_LABEL = 10
_UNBROKEN = re.compile(r"\([^()]*\)|(?<=[(=])'[^']*'")
"""Parenthesised groups and quoted patterns: the report is never wrapped inside one."""
_GLUE = "\0"
"""Stands for a space inside what ``_UNBROKEN`` matches while the report is wrapped, so that none is split."""


@dataclass(frozen=True)
class Explanation:
    """What ``explain`` found: the fold of one example tensor and the unfold of a matching output.

    ``str()`` gives the report that ``python -m foldaxes explain`` prints. Shapes and strides count elements,
    as ``Tensor.stride()`` does.

    Attributes:
        pattern: The pattern explained.
        layout: How the input is stored, in words read off its strides (``"contiguous"``, ``"every (c h w) frame
            stored channels_last"``, ``"dense but permuted: x.permute(1, 0, 2) is contiguous"``...).
        input_shape: The sizes of the example input.
        input_strides: Its strides.
        folded_shape: The sizes of the tensor the module receives.
        folded_strides: Its strides.
        folded_layout: ``"contiguous"``, ``"channels_last"`` (a 4-D tensor stored so) or ``"strided"``.
        folded_dim: Where the folded group sits in the folded tensor; ``None`` when the pattern folds nothing.
        folded_axes: The axes of the folded group, in order (``"...[0]"`` for the first axis of ``...``).
        folded_sizes: Their sizes.
        is_view: Whether the folded tensor shares the input's storage (no copy).
        reason: Why it is a view or a copy, with the strides involved.
        hint: How the pattern could fold without a copy, when a reordering would; otherwise ``None``.
        output_shape: The example module output: a tensor of the folded shape.
        unfolded_shape: What the unfold makes of it (the same as ``output_shape`` when nothing is folded).
        unfold_is_view: Whether that unfold is a view of the output (it always is).

    Examples:
        >>> import foldaxes
        >>> report = foldaxes.explain("b c t h w -> (b t) c h w", (2, 3, 8, 16, 16))
        >>> report.is_view, report.hint
        (False, 'They are not adjacent in memory: c lies between them.')
        >>> print(report)
        pattern:  b c t h w -> (b t) c h w
        input:    shape (2, 3, 8, 16, 16), strides (6144, 2048, 256, 16, 1): contiguous
        folded:   shape (16, 3, 16, 16), strides (768, 256, 16, 1) (contiguous); the folded group (b t),
                  b=2, t=8, is dim 0
        fold:     one copy, laid out contiguous. (b t) cannot be one axis: b's stride 6144 (= c*t*h*w) would
                  have to be t's size 8 times t's stride 256 (= h*w), 2048. They are not adjacent in memory:
                  c lies between them.
        unfold:   an output (16, 3, 16, 16) comes back as (2, 8, 3, 16, 16), a view of it. Any output with
                  16 at dim 0 has that dim split into b=2, t=8.
    """

    pattern: str
    layout: str
    input_shape: tuple[int, ...]
    input_strides: tuple[int, ...]
    folded_shape: tuple[int, ...]
    folded_strides: tuple[int, ...]
    folded_layout: str
    folded_dim: int | None
    folded_axes: tuple[str, ...]
    folded_sizes: tuple[int, ...]
    is_view: bool
    reason: str
    hint: str | None
    output_shape: tuple[int, ...]
    unfolded_shape: tuple[int, ...]
    unfold_is_view: bool

    def __str__(self) -> str:
        if self.folded_dim is None:
            group = "the pattern folds no axes"
            unfolds = (
                f"nothing is folded, so an output such as {self.output_shape} comes back as the module returns it."
            )
        else:
            group = (
                f"the folded group {group_text(self.folded_axes)}, {_sizes(self.folded_axes, self.folded_sizes)}, "
                if self.folded_axes
                else "the unit batch () "
            ) + f"is dim {self.folded_dim}"
            rows = self.folded_shape[self.folded_dim]
            split = f"split into {_sizes(self.folded_axes, self.folded_sizes)}" if self.folded_axes else "removed"
            unfolds = (
                f"an output {self.output_shape} comes back as {self.unfolded_shape}, "
                + ("a view of it." if self.unfold_is_view else "a copy.")
                + f" Any output with {rows} at dim {self.folded_dim} has that dim {split}."
            )
        if self.is_view:
            fold_text = "a view. " + self.reason
        else:
            frames = "" if self.folded_layout == "contiguous" else ", as each frame is"
            fold_text = f"one copy, laid out {self.folded_layout}{frames}. " + self.reason
        if self.hint:
            fold_text += " " + self.hint
        lines = [
            ("pattern", self.pattern),
            ("input", f"shape {self.input_shape}, strides {self.input_strides}: {self.layout}"),
            (
                "folded",
                f"shape {self.folded_shape}, strides {self.folded_strides} ({self.folded_layout}); {group}",
            ),
            ("fold", fold_text),
            ("unfold", unfolds),
        ]
        return "\n".join(
            textwrap.fill(
                _UNBROKEN.sub(lambda match: match[0].replace(" ", _GLUE), text),
                _WIDTH,
                initial_indent=f"{label + ':':<{_LABEL}}",
                subsequent_indent=" " * _LABEL,
                break_on_hyphens=False,
            ).replace(_GLUE, " ")
            for label, text in lines
        )


def explain(
    pattern: str,
    x: Any,
    /,
    *,
    channels_last: bool = False,
    time_major: bool = False,
    strides: Sequence[int] | None = None,
    **axes_lengths: int,
) -> Explanation:
    """Says whether ``pattern`` folds a tensor, or one of a given shape and layout, by a view or a copy, and why.

    Given a tensor, ``explain`` reads its shape and strides (and so its memory layout) and nothing else: the
    tensor is neither folded nor copied, so ``explain(pattern, x)`` is ``explain(pattern, x.shape,
    strides=x.stride())``. Given a shape, the example is a ``meta`` tensor of that shape and the layout the
    keywords describe, so no memory is allocated however large ``shape`` is; view and copy follow the same rules
    on the meta device as on any other. The fold is ``foldaxes.fold`` itself, and the verdict is read off its
    result.

    Args:
        pattern: A single-operand pattern such as ``"b t c h w -> (b t) c h w"``.
        x: The input tensor, of which only the shape and strides are read, or its sizes, for example
            ``(2, 8, 3, 224, 224)``.
        channels_last: Store each frame (the last three dims, ``c h w``) channels_last, as a channels_last
            convolution returns it; only with a shape.
        time_major: Store the first two axes swapped: the input is ``buffer.transpose(0, 1)`` of a contiguous
            ``(T, B, ...)`` buffer, which is what a time-major pipeline hands to a batch-first pattern; only
            with a shape.
        strides: Explicit strides for the input, for example ``x.stride()``; only with a shape, and not with
            the two flags above.
        **axes_lengths: Lengths of axes that cannot be read off the shape, as for ``fold``.

    Returns:
        An ``Explanation``; ``print`` it for the report.

    Raises:
        FoldError: the pattern is malformed or has several operands, or the input does not fit it, or the layout
            keywords do not fit the shape (or come with a tensor, whose own strides say its layout).

    Examples:
        >>> import torch, foldaxes
        >>> buffer = torch.zeros(8, 2, 3, 32, 32)  # (time, batch, ...), as a time-major pipeline stores it
        >>> x = buffer.transpose(0, 1)  # the same memory seen batch-first
        >>> report = foldaxes.explain("b t c h w -> (b t) c h w", x)
        >>> report.is_view, report.folded_shape
        (False, (16, 3, 32, 32))
        >>> print(report.layout)
        time-major, x.transpose(0, 1) of a contiguous buffer whose first two axes are swapped
        >>> report == foldaxes.explain("b t c h w -> (b t) c h w", x.shape, strides=x.stride())
        True
        >>> foldaxes.explain("b t c h w -> (t b) c h w", x).is_view
        True

        A shape alone, with its layout as keywords, answers for a tensor too large to make:

        >>> report = foldaxes.explain("b t c h w -> (b t) c h w", (2, 8, 3, 224, 224), time_major=True)
        >>> print(report.reason)
        (b t) cannot be one axis: b's stride 150528 (= c*h*w) would have to be t's size 8 times t's stride
        301056 (= b*c*h*w), 2408448.
    """
    return explain_layout(pattern, x, strides, channels_last, time_major, axes_lengths)


def explain_layout(
    pattern: str,
    x: torch.Tensor | Sequence[int],
    strides: Sequence[int] | None,
    channels_last: bool,
    time_major: bool,
    lengths: Mapping[str, int],
    label: str = "the input",
) -> Explanation:
    """``explain`` with the lengths as a mapping, so that an axis may be named like a keyword of ``explain``.

    ``label`` names the input in messages: the command line passes ``"--shape 2,8,3"``, as its user wrote it.
    """
    if not isinstance(pattern, str):
        raise fold_error(
            f"explain takes the pattern first, then the tensor or its shape, but the pattern is {_described(pattern)}.",
            pattern=None,
            hint="Write foldaxes.explain(pattern, x), for example explain('b t c -> (b t) c', x).",
        )
    for name, length in lengths.items():
        if positive_int(length) is None:
            raise fold_error(
                f"The length of axis '{name}' must be a positive int, not {_described(length)}.",
                pattern=pattern,
                hint=f"For example {name}=2.",
            )
    parsed = parse_pattern(pattern, frozenset(lengths))
    if len(parsed.operands) != 1:
        parts = zip(pattern.split("->")[0].split(","), pattern.split("->")[1].split(","), strict=True)
        each = ", then ".join(f"'{lhs.strip()} -> {rhs.strip()}'" for lhs, rhs in parts)
        raise fold_error(
            f"explain describes one tensor, but this pattern has {len(parsed.operands)} operands.",
            pattern=pattern,
            hint=f"Explain each operand on its own: {each}.",
        )
    sizes, steps = _sizes_and_strides(pattern, label, x, strides, channels_last, time_major)
    try:
        example = torch.empty_strided(sizes, steps, device="meta")
    except (RuntimeError, TypeError):  # sizes or strides beyond int64, or a numel that overflows it
        raise fold_error(
            "No tensor can have this shape and these strides: a size, a stride or the number of elements "
            "does not fit in 64 bits.",
            pattern=pattern,
            shapes=[(label, sizes)],
            hint="Give sizes whose product fits in 64 bits.",
        ) from None

    # The plan is checked here, before fold, so that a message names the input as the caller gave it.
    plan = Rule(pattern, parsed.operands[0], frozenset(lengths)).plan(example, label)
    try:
        plan.apply(example, lengths)
    except SizeMismatch as mismatch:
        raise fold_error(
            f"{label} does not fit the pattern: {mismatch.what}.",
            pattern=pattern,
            span=parsed.operands[0].span("lhs", mismatch.name),
            shapes=[(label, sizes)],
            sizes=plan.sizes_read_off(sizes),
            given=lengths,
            hint="Give a shape whose sizes match, or correct the axis lengths.",
        ) from None
    folded, spec = fold_by(example, pattern, lengths)
    assert isinstance(folded, torch.Tensor)
    output = torch.empty(folded.shape, device="meta")
    unfolded = unfold(output, spec)
    is_view = _root(folded) is example

    axes = elementary_axes(plan, example, lengths)
    reason, hint, reordered = why(plan, axes, is_view, example.numel() == 0)
    recipe = None if reordered is None else view_recipe(pattern, parsed.operands[0], plan, reordered, lengths)
    if recipe is not None:
        hint = f"{hint} {recipe} folds without a copy and returns the outputs in the original order."
    members = axes[plan.group[0] : plan.group[1]] if plan.group is not None else []
    group = tuple(shown_name(axis.name) for axis in members)
    return Explanation(
        pattern=pattern,
        layout=_layout_words(example),
        input_shape=tuple(sizes),
        input_strides=tuple(example.stride()),
        folded_shape=tuple(folded.shape),
        folded_strides=tuple(folded.stride()),
        folded_layout=_memory_format(folded),
        folded_dim=spec.dim,
        folded_axes=group,
        folded_sizes=spec.sizes,
        is_view=is_view,
        reason=reason,
        hint=hint,
        output_shape=tuple(output.shape),
        unfolded_shape=tuple(unfolded.shape),
        unfold_is_view=_root(unfolded) is output,
    )


def _sizes_and_strides(
    pattern: str,
    label: str,
    x: torch.Tensor | Sequence[int],
    strides: Sequence[int] | None,
    channels_last: bool,
    time_major: bool,
) -> tuple[list[int], list[int]]:
    """The input's sizes and strides: read off the tensor, or the shape given with its strides or layout flags."""
    if isinstance(x, torch.Tensor) or namespace(x) is not None:
        if strides is not None or channels_last or time_major:
            raise fold_error(
                "A tensor's own strides say how it is stored: give strides, channels_last or time_major "
                "with a shape only.",
                pattern=pattern,
                hint="Pass x alone, or x.shape with the layout to explain.",
            )
        return _read_off(pattern, x)
    sizes = _checked_ints(pattern, "shape", x)
    if strides is None:
        return sizes, _layout(pattern, label, sizes, channels_last, time_major)
    if channels_last or time_major:
        raise fold_error(
            "Give either the strides or the channels_last / time_major flags, not both.",
            pattern=pattern,
            hint="The strides describe the whole layout.",
        )
    steps = _checked_ints(pattern, "strides", strides)
    if len(steps) != len(sizes):
        raise fold_error(
            f"The shape has {len(sizes)} dims but {len(steps)} strides were given.",
            pattern=pattern,
            shapes=[(label, sizes)],
            hint="Give one stride per dim, as x.stride() returns them.",
        )
    return sizes, steps


def _layout(pattern: str, label: str, sizes: list[int], channels_last: bool, time_major: bool) -> list[int]:
    """The strides of the layout the flags describe, after checking that the shape has the dims they need."""
    ndim = len(sizes)
    for flag, needed, what in ((channels_last, 3, "channels_last frames (c h w)"), (time_major, 2, "time_major")):
        if flag and ndim < needed:
            raise fold_error(
                f"{what} needs at least {needed} dims, but the shape has {ndim}.",
                pattern=pattern,
                shapes=[(label, sizes)],
                hint="Give the full shape of the tensor, or drop the flag.",
            )
    return _flag_strides(sizes, channels_last, time_major)


def _flag_strides(sizes: list[int], channels_last: bool, time_major: bool) -> list[int]:
    """Dense strides with each frame (the last three dims) channels_last and the first two axes stored swapped."""
    ndim = len(sizes)
    order = list(range(ndim))  # dims from outermost to innermost in memory
    if time_major:
        order[0], order[1] = 1, 0
    if channels_last:
        order[-3:] = [ndim - 2, ndim - 1, ndim - 3]  # h, w, c
    strides = [0] * ndim
    step = 1
    for dim in reversed(order):
        strides[dim] = step
        step *= max(sizes[dim], 1)
    return strides


_FLAG_LAYOUTS = (
    (True, False, 3, "every (c h w) frame stored channels_last"),
    (False, True, 2, "time-major, x.transpose(0, 1) of a contiguous buffer whose first two axes are swapped"),
    (
        True,
        True,
        3,
        "time-major, x.transpose(0, 1) of a contiguous buffer whose first two axes are swapped, "
        "every (c h w) frame stored channels_last",
    ),
)
"""``(channels_last, time_major, dims needed, words)``: the layouts the flags make, named as the flags name them."""


def _layout_words(x: torch.Tensor) -> str:
    """How ``x`` is stored, in words read off its strides alone, so that a shape with strides reads as its tensor."""
    if x.is_contiguous():
        return "contiguous"
    sizes, strides = list(x.shape), x.stride()
    for channels_last, time_major, needed, words in _FLAG_LAYOUTS:
        flagged = _flag_strides(sizes, channels_last, time_major) if len(sizes) >= needed else None
        # Only the strides of dims longer than 1 say anything about where elements lie, as for is_contiguous.
        if flagged is not None and all(a == b for a, b, size in zip(strides, flagged, sizes, strict=True) if size > 1):
            return words
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return "channels_last_3d"
    order = sorted(range(x.dim()), key=lambda dim: -strides[dim])
    repeated = [dim for dim in range(x.dim()) if strides[dim] == 0 and sizes[dim] > 1]
    if repeated:
        return f"not dense: it repeats along dim {repeated[0]} (stride 0), as expand() makes"
    step = 1
    for dim in reversed(order):
        if sizes[dim] == 1:
            continue
        if strides[dim] < step:
            return "not dense: its elements overlap in memory, as as_strided() can make"
        if strides[dim] > step:
            return "not dense: there are gaps in memory between its elements, as a crop or a step (x[..., ::2]) makes"
        step *= sizes[dim]
    return f"dense but permuted: x.permute{tuple(order)} is contiguous"


def _read_off(pattern: str, x: Any) -> tuple[list[int], list[int]]:
    """The sizes and strides of a strided tensor or array, the only things ``explain`` reads from it.

    NumPy-style strides count bytes; they are read as elements, as torch counts them.
    """
    if not isinstance(x, torch.Tensor):
        strides = element_strides(x)
        if strides is None:
            raise fold_error(
                f"explain reads an array's strides, but this {type(x).__module__.split('.')[0]} array does not show "
                "them (or they are not whole elements).",
                pattern=pattern,
                hint="Explain its shape instead, with the layout as keywords: explain(pattern, x.shape).",
            )
        return [int(size) for size in x.shape], strides
    if x.is_nested or x.layout != torch.strided:
        kind = "nested" if x.is_nested else str(x.layout).replace("torch.", "")
        raise fold_error(
            f"explain reads the strides of a strided (dense) tensor, but this is a {kind} tensor of dtype {x.dtype}.",
            pattern=pattern,
            hint="Explain the dense tensor it would become, for example x.to_dense() or x.to_padded_tensor(0).",
        )
    return list(x.shape), list(x.stride())


def _checked_ints(pattern: str, what: str, values: object) -> list[int]:
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise fold_error(
            f"The {what} must be a sequence of non-negative ints, not {_described(values)}.",
            pattern=pattern,
            hint="For example shape (2, 8, 3, 224, 224), or the tensor itself: explain(pattern, x).",
        )
    checked = []
    for index, value in enumerate(values):
        number = _as_int(value)
        if number is None or number < 0:
            raise fold_error(
                f"The {what} must be non-negative ints, but item {index} is {_described(value)}.",
                pattern=pattern,
                hint="For example shape (2, 8, 3, 224, 224), or the tensor itself: explain(pattern, x).",
            )
        checked.append(number)
    return checked


def _as_int(value: object) -> int | None:
    """``value`` as an int when it is an integer (a NumPy integer too), else ``None``; a bool is not a size."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _described(value: object) -> str:
    """``value`` as a message shows it: a tensor or array by its dtype and shape, a container by its type alone.

    A container is not shown by its ``repr``, which would print the values of any tensor inside it.
    """
    if (hasattr(value, "shape") and hasattr(value, "dtype")) or value is None or isinstance(value, int | float | str):
        return shown(value)
    return f"a {type(value).__name__}"


def _root(x: torch.Tensor) -> torch.Tensor:
    """The tensor whose storage ``x`` views: ``x`` itself unless it is a view."""
    base = x._base
    return x if base is None else base


def _memory_format(x: torch.Tensor) -> str:
    if x.is_contiguous():
        return "contiguous"
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "strided"


def _sizes(names: tuple[str, ...], sizes: tuple[int, ...]) -> str:
    return ", ".join(f"{name}={size}" for name, size in zip(names, sizes, strict=True))
