"""``Distribute`` and its ``TimeDistributed`` preset: the ``nn.Module`` face of a ``Folding``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ._checkpoint import CHILD, hide_child_prefix
from ._errors import FoldError, format_message
from ._folding import Folding, check_callable
from ._unfold import OutSpec

__all__ = ["Distribute", "TimeDistributed"]


class Distribute(nn.Module):
    """Folds named axes into the batch axis, runs a module once, and unfolds every output.

    Each tensor positional argument is rearranged from the left side of ``pattern`` to the right side, the
    module runs once on the result, and every tensor in its output (any nesting of tuples, lists, dicts and
    NamedTuples) has the folded dim split back. The folded group is the first parenthesised group on the right
    that holds an axis (an empty ``()`` only when none does); by default each output is split at that same dim
    into the group's axes, in group order.

    Folding is a view whenever the input's strides allow it (contiguous tensors, inner crops, channels_last
    frames, ``(t b)`` on time-major tensors); otherwise it is one copy. Unfolding is always a view, so the
    module's output keeps its memory format. ``state_dict()`` keys are those of the wrapped module, without a
    prefix, so checkpoints load with and without the wrapper; ``named_parameters()`` keeps the ``module.``
    prefix, so give ``torch.func.functional_call`` ``dict(wrapper.named_parameters())``.

    Args:
        pattern: An einops expression ``"lhs -> rhs"``, with one comma-separated operand per tensor argument, or
            a single operand applied to every tensor argument. Names, ``...``, parenthesised groups, ``1`` and
            ``()`` work as in ``einops.rearrange``.
        module: The module or any callable to wrap. Leave it out to get a factory: ``Distribute(p)(module)``.
        out: Overrides the default unfold: a pattern such as ``"(b t) c h w -> b c t h w"`` for every output
            tensor (the folded axes and the keyword lengths are known; other names are read off the output), or
            a structure matching the module's output with a pattern or ``None`` (returned as is) at each leaf.
        fold_kwargs: Keyword arguments to fold too, each with its own pattern, for example
            ``{"key_padding_mask": "b t s -> (b t) s"}``. Other keyword arguments pass through untouched.
        **axes_lengths: Lengths of axes that cannot be read off the shapes, as in einops. ``pattern`` and
            ``module`` are positional-only, so any axis name (``out`` and ``fold_kwargs`` aside) can be given.

    Raises:
        FoldError: the pattern, ``out`` or ``fold_kwargs`` is malformed (when built), or a call's tensors do not
            fit the pattern, or an output cannot be unfolded (when called).

    Example:
        >>> import torch, foldaxes
        >>> conv = foldaxes.Distribute("b t c h w -> (b t) c h w", torch.nn.Conv2d(3, 16, 3))
        >>> conv(torch.randn(2, 8, 3, 32, 32)).shape
        torch.Size([2, 8, 16, 30, 30])
        >>> views = foldaxes.Distribute("b (t v) d -> (b t v) d", torch.nn.Linear(4, 5), v=2)
        >>> views(torch.randn(2, 6, 4)).shape
        torch.Size([2, 3, 2, 5])
    """

    def __init__(
        self,
        pattern: str,
        module: Callable[..., Any] | None = None,
        /,
        *,
        out: OutSpec = None,
        fold_kwargs: Mapping[str, str] | None = None,
        **axes_lengths: int,
    ) -> None:
        super().__init__()
        self._folding = Folding(pattern, out=out, fold_kwargs=fold_kwargs, lengths=axes_lengths)
        check_callable(module, pattern)
        self._out = out
        self._fold_kwargs = fold_kwargs
        self._lengths = axes_lengths
        self.module = module
        hide_child_prefix(self)

    @property
    def pattern(self) -> str:
        """The pattern as given."""
        return self._folding.pattern

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Folds the tensor arguments, calls the wrapped module once, and unfolds its output."""
        # nn.Module.__getattr__ costs more than a whole fold, so the child is looked up directly.
        module: Callable[..., Any] | None = self._modules.get(CHILD)
        if module is None:
            module = self.module
            if module is None:
                return self._bind(args, kwargs)
        return self._folding(module, args, kwargs)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Distribute:
        if len(args) != 1 or kwargs or not callable(args[0]):
            raise FoldError(
                format_message(
                    "This Distribute wraps no module yet: call it with the module to wrap, not with tensors.",
                    pattern=self.pattern,
                    hint="Write Distribute(pattern, module), or Distribute(pattern)(module).",
                )
            )
        return Distribute(self.pattern, args[0], out=self._out, fold_kwargs=self._fold_kwargs, **self._lengths)

    def extra_repr(self) -> str:
        parts = [repr(self.pattern)]
        parts += [f"{key}={value!r}" for key, value in self._lengths.items()]
        parts += [
            f"{key}={value!r}" for key, value in [("out", self._out), ("fold_kwargs", self._fold_kwargs)] if value
        ]
        if self.module is not None and not isinstance(self.module, nn.Module):
            parts.append(f"fn={self.module!r}")
        return ", ".join(parts)


class TimeDistributed(Distribute):
    """Applies a module to every time step: folds the first two axes into one, and splits them back after.

    A drop-in for the ``TimeDistributed(module, batch_first)`` class that is copied between projects: same
    arguments, same results, but no copies where a view exists, several inputs and nested outputs. Merging the
    first two axes is the same operation in either order, so ``batch_first`` only names the axes in messages and
    ``repr`` (``"b t ... -> (b t) ..."`` or ``"t b ... -> (t b) ..."``); it defaults to ``False`` as in that
    recipe. Checkpoints of that recipe (keys under ``module.``) load as they are. A 2-D input is folded too, to
    ``(B*T,)``, so an ``nn.Embedding`` over token ids works; some copies of the recipe instead passed inputs of
    at most 2 dims to the module unchanged.

    Args:
        module: The module or callable to apply per time step.
        batch_first: Whether inputs are ``(batch, time, ...)`` rather than ``(time, batch, ...)``.
        out: As for ``Distribute``.
        fold_kwargs: As for ``Distribute``.

    Example:
        >>> import torch, foldaxes
        >>> foldaxes.TimeDistributed(torch.nn.Linear(10, 5))(torch.randn(5, 3, 10)).shape
        torch.Size([5, 3, 5])
        >>> foldaxes.TimeDistributed(torch.nn.Conv2d(3, 16, 3), True)(torch.randn(2, 3, 3, 16, 16)).shape
        torch.Size([2, 3, 16, 14, 14])
    """

    def __init__(
        self,
        module: Callable[..., Any],
        batch_first: bool = False,
        *,
        out: OutSpec = None,
        fold_kwargs: Mapping[str, str] | None = None,
    ) -> None:
        pattern = "b t ... -> (b t) ..." if batch_first else "t b ... -> (t b) ..."
        if batch_first not in (True, False):
            raise FoldError(
                format_message(
                    f"batch_first must be True or False, not {batch_first!r}.",
                    pattern=pattern,
                    hint="Both fold the first two axes; the flag names them (b t) or (t b) in messages.",
                )
            )
        if module is None:
            raise FoldError(
                format_message(
                    "TimeDistributed needs the module to apply at every time step.",
                    pattern=pattern,
                    hint="Write TimeDistributed(module, batch_first).",
                )
            )
        super().__init__(pattern, module, out=out, fold_kwargs=fold_kwargs)
        self.batch_first = bool(batch_first)
