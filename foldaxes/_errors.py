"""The one exception foldaxes raises, and the layout of its messages."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence

from einops import EinopsError

__all__ = ["FoldError", "flag", "fold_error", "format_shape", "positive_int", "shown"]


class FoldError(EinopsError):
    """Raised when a pattern, an input or a module output does not fit a fold.

    It subclasses ``einops.EinopsError``, so code that already catches einops errors keeps working.
    Errors raised by the wrapped module itself are never wrapped in a ``FoldError``.

    Examples:
        >>> import torch, einops, foldaxes
        >>> try:
        ...     foldaxes.fold(torch.zeros(2, 3), "b t c -> (b t) c")
        ... except foldaxes.FoldError as error:
        ...     print(error)
        argument 0 has 2 dims, but 'b t c' expects 3.
          pattern: b t c -> (b t) c
          argument 0: shape (2, 3)
          Pass a tensor of the rank the pattern describes, or change the pattern ('...' stands for any number of dims).
        >>> issubclass(foldaxes.FoldError, einops.EinopsError)
        True
    """


def shown(value: object, typed: bool = False) -> str:
    """``value`` as a message shows it: a tensor or array by its type, dtype and shape, never its values.

    Other values are shown by their ``repr`` (shortened), after their type's name when ``typed``.
    """
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    if shape is not None and dtype is not None:
        return f"{article} {kind} of dtype {dtype} and shape {format_shape(shape)}"
    if isinstance(value, list | tuple | set | frozenset | dict) and not all(map(_plain, value)):
        return f"{article} {kind} of {len(value)} item{'' if len(value) == 1 else 's'}"
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{type(value).__name__} ({text})" if typed else text


def _plain(value: object) -> bool:
    """Whether ``value`` is shown by its ``repr``: a number, a string or ``None``, never a tensor's values."""
    return value is None or isinstance(value, bool | int | float | complex | str | bytes)


def flag(value: object) -> bool | None:
    """``value`` as a bool when it is one, or the int 0 or 1 (which the classic recipe took); ``None`` otherwise."""
    if isinstance(value, bool):
        return value
    return bool(value) if type(value) is int and value in (0, 1) else None


def positive_int(value: object) -> int | None:
    """``value`` as an int when it is a positive integer (``bool`` is not); ``None`` otherwise."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None
    return None if isinstance(value, bool) or number < 1 else number


def fold_error(
    what: str,
    *,
    pattern: str | None,
    span: tuple[int, int] | None = None,
    shapes: Iterable[tuple[str, Sequence[int]]] = (),
    sizes: Mapping[str, int] | None = None,
    given: Mapping[str, int] | None = None,
    hint: str | None = None,
) -> FoldError:
    """A ``FoldError`` laid out as every one is: what is wrong, the pattern with a caret under ``span``, the shapes
    and axis sizes involved (with the lengths ``given`` as keywords), and what to do (``hint``)."""
    lines = [what] if pattern is None else [what, f"  pattern: {pattern}"]
    if span is not None:
        start, end = span
        lines.append("           " + " " * start + "^" * max(end - start, 1))
    lines.extend(f"  {label}: shape {format_shape(shape)}" for label, shape in shapes)
    if sizes:
        lines.append("  axis sizes: " + ", ".join(f"{name}={size}" for name, size in sizes.items()))
    if given:
        lines.append("  lengths given: " + ", ".join(f"{name}={size}" for name, size in given.items()))
    if hint:
        lines.append(f"  {hint}")
    return FoldError("\n".join(lines))


def format_shape(shape: Sequence[int]) -> str:
    """A shape as messages show it: ``(2, 3)``, with symbolic or ragged sizes as torch prints them."""
    return str(tuple(_size(size) for size in shape))


def _size(size: object) -> object:
    """An int where there is one; a symbolic or ragged size (a nested tensor's) as torch prints it."""
    try:
        return int(size)  # type: ignore[call-overload]
    except (TypeError, ValueError, AttributeError, RuntimeError):
        return size
