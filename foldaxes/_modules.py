"""``Distribute`` and its ``TimeDistributed`` preset: the ``nn.Module`` face of a ``Folding``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from torch import nn

from ._call import Caller, check_callable
from ._checkpoint import CHILD, fqn_modifiers, hide_child_prefix
from ._compiled import CompiledPattern
from ._errors import flag, fold_error, shown
from ._execution import Execution
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
        chunk_size: Run the module on at most this many rows of the folded batch per call, and put the outputs
            together (one copy of them): bounds the activation memory of inference. Needs the default unfold.
        checkpoint: Checkpoint each call (``torch.utils.checkpoint``, non-reentrant) when gradients are enabled,
            so that with ``chunk_size`` training keeps only one chunk's activations at a time.
        fill_value: The value of the padded rows in the outputs of a call with ``fold_mask`` or ``fold_lengths``.
        allow_batch_statistics: Let a BatchNorm that normalises with batch statistics run on part of the folded
            batch (in chunks, on the valid rows, or twice under checkpointing); without it that raises.
        compute_repeats_once: Run the module once on rows that repeat along a folded axis (stride 0, as
            ``expand`` makes them) and expand its outputs back, instead of on every copy. Exact only for a module
            that computes each row from that row alone and draws no random numbers, so it is off by default; see
            ``docs/ragged.md`` for how it is guarded. Needs the default unfold.
        copy: When the module gets copies of the tensor arguments, with the array API's meaning: ``None`` copies
            only where the strides leave no view, ``False`` never copies (a fold that needs one raises a
            ``FoldError`` that says which stride blocks the view), ``True`` always gives the module tensors of its
            own, so that an in-place module leaves the caller's tensors alone. A copy is laid out as each frame
            is: channels_last frames give a channels_last batch.
        **axes_lengths: Lengths of axes that cannot be read off the shapes, as in einops. ``pattern`` and
            ``module`` are positional-only, so any axis name (the keywords above aside) can be given.

    At call time the wrapper consumes two keywords, which never reach the module: ``fold_mask``, a bool tensor
    with the folded group's sizes in group order (``(B, T)`` for ``(b t)``), marks the valid rows; or
    ``fold_lengths``, for a group of two axes, gives one length per index of its first axis (a 1-D integer tensor
    or a sequence of ints; the rows ``t < lengths[b]`` are valid). Only the valid rows reach the module, and the
    other rows of every output hold ``fill_value``.

    A jagged nested tensor (``layout=torch.jagged``) whose ragged dim is folded with the batch dim
    (``"b j ... -> (b j) ..."``) is folded to its packed frames, with no padding and no copy, and every output
    comes back jagged with the same offsets. See ``docs/ragged.md``.

    An exception raised inside the module passes through unchanged, with a note (Python 3.11+) that shows how
    the call was folded: each tensor argument's shape before and after.

    Raises:
        FoldError: the pattern, ``out``, ``fold_kwargs`` or an execution keyword is malformed (when built), or a
            call's tensors or mask do not fit the pattern, or an output cannot be unfolded (when called).

    Examples:
        >>> import torch, foldaxes
        >>> conv = foldaxes.Distribute("b t c h w -> (b t) c h w", torch.nn.Conv2d(3, 16, 3))
        >>> conv(torch.randn(2, 8, 3, 32, 32)).shape
        torch.Size([2, 8, 16, 30, 30])
        >>> views = foldaxes.Distribute("b (t v) d -> (b t v) d", torch.nn.Linear(4, 5), v=2)
        >>> views(torch.randn(2, 6, 4)).shape
        torch.Size([2, 3, 2, 5])

        Padded clips, with only the real frames computed, and a long clip in chunks of 16 frames:

        >>> linear = foldaxes.Distribute("b t d -> (b t) d", torch.nn.Linear(4, 5), fill_value=0.0)
        >>> y = linear(torch.randn(2, 3, 4), fold_lengths=[3, 1])
        >>> y.shape, bool((y[1, 1:] == 0).all())
        (torch.Size([2, 3, 5]), True)
        >>> conv = foldaxes.Distribute("b t c h w -> (b t) c h w", torch.nn.Conv2d(3, 8, 3), chunk_size=16)
        >>> conv(torch.randn(1, 40, 3, 8, 8)).shape
        torch.Size([1, 40, 8, 6, 6])
    """

    def __init__(
        self,
        pattern: str,
        module: Callable[..., Any] | None = None,
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
    ) -> None:
        """Wraps ``module``, or makes a factory for one when it is left out; the class docstring has the arguments.

        Raises:
            FoldError: the pattern, ``out``, ``fold_kwargs`` or an execution keyword is malformed.
        """
        super().__init__()
        execution = Execution.checked(
            pattern, chunk_size, checkpoint, fill_value, allow_batch_statistics, compute_repeats_once, copy
        )
        compiled = CompiledPattern(pattern, out=out, fold_kwargs=fold_kwargs, lengths=axes_lengths)
        self._caller = Caller(compiled, execution)
        check_callable(module, pattern)
        self._out = out
        self._fold_kwargs = fold_kwargs
        self._lengths = axes_lengths
        self.module = module
        hide_child_prefix(self)

    @property
    def pattern(self) -> str:
        """The pattern as given."""
        return self._caller.pattern.text

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Folds the tensor arguments, calls the wrapped module once, and unfolds its output."""
        # nn.Module.__getattr__ costs more than a whole fold, so the child is looked up directly.
        module: Callable[..., Any] | None = self._modules.get(CHILD)
        if module is None:
            module = self.module
            if module is None:
                return self._bind(args, kwargs)
        return self._caller.call(module, args, kwargs)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Distribute:
        if len(args) != 1 or kwargs or not callable(args[0]):
            raise fold_error(
                "This Distribute wraps no module yet: call it with the module to wrap, not with tensors.",
                pattern=self.pattern,
                hint="Write Distribute(pattern, module), or Distribute(pattern)(module).",
            )
        execution = self._caller.execution
        return Distribute(
            self.pattern,
            args[0],
            out=self._out,
            fold_kwargs=self._fold_kwargs,
            chunk_size=execution.chunk_size,
            checkpoint=execution.checkpoint,
            fill_value=execution.fill_value,
            allow_batch_statistics=execution.allow_batch_statistics,
            compute_repeats_once=execution.compute_repeats_once,
            copy=execution.copy,
            **self._lengths,
        )

    def _fqn_modifiers(self) -> dict[str, str]:
        """For ``torch.distributed.checkpoint.state_dict``: the keys that leave out ``module.``."""
        return fqn_modifiers(self)

    def extra_repr(self) -> str:
        parts = [repr(self.pattern)]
        parts += [f"{key}={value!r}" for key, value in self._lengths.items()]
        parts += [
            f"{key}={value!r}" for key, value in [("out", self._out), ("fold_kwargs", self._fold_kwargs)] if value
        ]
        execution, defaults = self._caller.execution, Execution()
        parts += [
            f"{key}={getattr(execution, key)!r}"
            for key in (
                "chunk_size",
                "checkpoint",
                "fill_value",
                "allow_batch_statistics",
                "compute_repeats_once",
                "copy",
            )
            if getattr(execution, key) != getattr(defaults, key)
        ]
        if self.module is None:
            parts.append("no module yet: call it with the module to wrap")
        elif not isinstance(self.module, nn.Module):
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
        chunk_size: As for ``Distribute``.
        checkpoint: As for ``Distribute``.
        fill_value: As for ``Distribute``.
        allow_batch_statistics: As for ``Distribute``.
        compute_repeats_once: As for ``Distribute``.
        copy: As for ``Distribute``.

    Calls take ``fold_mask`` and ``fold_lengths`` as ``Distribute`` does. ``fold_mask`` has the input's first two
    sizes, ``(B, T)`` or ``(T, B)``; ``fold_lengths`` has one length per sample (batch element) in either order,
    as ``pack_padded_sequence`` takes them. A jagged nested tensor ``(B, j, ...)`` is accepted in either order.

    Examples:
        >>> import torch, foldaxes
        >>> foldaxes.TimeDistributed(torch.nn.Linear(10, 5))(torch.randn(5, 3, 10)).shape
        torch.Size([5, 3, 5])
        >>> foldaxes.TimeDistributed(torch.nn.Conv2d(3, 16, 3), True)(torch.randn(2, 3, 3, 16, 16)).shape
        torch.Size([2, 3, 16, 14, 14])
        >>> steps = foldaxes.TimeDistributed(torch.nn.Linear(10, 5), chunk_size=4)
        >>> y = steps(torch.randn(5, 3, 10), fold_lengths=[5, 2, 0])  # time-major: (T, B, ...)
        >>> y.shape, bool((y[2:, 1] == 0).all()), bool((y[:, 2] == 0).all())
        (torch.Size([5, 3, 5]), True, True)
    """

    def __init__(
        self,
        module: Callable[..., Any],
        batch_first: bool = False,
        *,
        out: OutSpec = None,
        fold_kwargs: Mapping[str, str] | None = None,
        chunk_size: int | None = None,
        checkpoint: bool = False,
        fill_value: float = 0.0,
        allow_batch_statistics: bool = False,
        compute_repeats_once: bool = False,
        copy: bool | None = None,
    ) -> None:
        """Wraps ``module`` to apply it at every time step; the class docstring has the arguments.

        Raises:
            FoldError: ``module`` is missing or not callable, or a keyword is malformed.
        """
        pattern = "b t ... -> (b t) ..." if batch_first else "t b ... -> (t b) ..."
        if flag(batch_first) is None:
            raise fold_error(
                f"batch_first must be True or False, not {shown(batch_first)}.",
                pattern=pattern,
                hint="Both fold the first two axes; the flag names them (b t) or (t b) in messages.",
            )
        if module is None:
            raise fold_error(
                "TimeDistributed needs the module to apply at every time step.",
                pattern=pattern,
                hint="Write TimeDistributed(module, batch_first).",
            )
        super().__init__(
            pattern,
            module,
            out=out,
            fold_kwargs=fold_kwargs,
            chunk_size=chunk_size,
            checkpoint=checkpoint,
            fill_value=fill_value,
            allow_batch_statistics=allow_batch_statistics,
            compute_repeats_once=compute_repeats_once,
            copy=copy,
        )
        self.batch_first = bool(batch_first)
        # fold_lengths has one length per sample: the folded group's second axis when it is (t b).
        caller = self._caller
        self._caller = Caller(caller.pattern, replace(caller.execution, sample_axis=0 if batch_first else 1))
