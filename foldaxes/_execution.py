"""How a wrapper runs its module over the folded rows: the keywords that are not about the pattern."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._errors import flag, fold_error, positive_int, shown

__all__ = ["Execution", "checked_copy", "why_partial"]


@dataclass(frozen=True)
class Execution:
    """How the module is run over the folded rows; the defaults run it once, on every row.

    Attributes:
        chunk_size: Rows per module call, or ``None`` for one call.
        checkpoint: Whether each call is checkpointed (when gradients are enabled).
        fill_value: What the rows left out by a mask are filled with in the outputs.
        allow_batch_statistics: Whether a BatchNorm that uses batch statistics may see part of the batch.
        compute_repeats_once: Whether rows that repeat along a folded axis (stride 0) are computed once.
        copy: When the folded tensors are copies: ``None`` where no view exists, ``True`` always, ``False`` never.
        sample_axis: The axis of a two-axis folded group that ``fold_lengths`` has one entry per.
    """

    chunk_size: int | None = None
    checkpoint: bool = False
    fill_value: float = 0.0
    allow_batch_statistics: bool = False
    compute_repeats_once: bool = False
    copy: bool | None = None
    sample_axis: int = 0

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
        compute_repeats_once: bool,
        copy: bool | None = None,
    ) -> Execution:
        """Validates the keywords of a wrapper.

        Raises:
            FoldError: a keyword has a value of the wrong kind.
        """
        if chunk_size is not None:
            size = positive_int(chunk_size)
            if size is None:
                raise fold_error(
                    f"chunk_size must be a positive int (rows of the folded batch per call), not {shown(chunk_size)}.",
                    pattern=pattern,
                    hint="Pass for example chunk_size=64, or None to run the module once.",
                )
            chunk_size = size
        flags = {
            "checkpoint": checkpoint,
            "allow_batch_statistics": allow_batch_statistics,
            "compute_repeats_once": compute_repeats_once,
        }
        for name, value in flags.items():
            if flag(value) is None:
                raise fold_error(f"{name} must be True or False, not {shown(value)}.", pattern=pattern)
        if isinstance(fill_value, bool) or not isinstance(fill_value, int | float):
            raise fold_error(
                f"fill_value must be a number, not {shown(fill_value)}.",
                pattern=pattern,
                hint="It fills the rows that a mask leaves out, for example fill_value=0.0 or float('nan').",
            )
        return cls(
            chunk_size,
            bool(checkpoint),
            fill_value,
            bool(allow_batch_statistics),
            bool(compute_repeats_once),
            checked_copy(pattern, copy),
        )


def checked_copy(pattern: str, copy: object) -> bool | None:
    """``copy`` once it is known to be ``None``, ``True`` or ``False``.

    Raises:
        FoldError: it is anything else.
    """
    if copy is None or copy is True or copy is False:
        return copy
    raise fold_error(
        f"copy must be None, True or False, not {shown(copy)}.",
        pattern=pattern,
        hint="None copies only where no view exists, True always gives the module its own tensors, False never "
        "copies and raises where a copy would be needed.",
    )


def why_partial(execution: Execution, masked: bool) -> str | None:
    """Why a call may show the module only part of the folded batch, or ``None`` when it will not."""
    if masked:
        return "fold_mask / fold_lengths runs it on the valid rows only"
    if execution.chunk_size is not None:
        return f"chunk_size={execution.chunk_size} runs it on that many rows at a time"
    if execution.checkpoint and torch.is_grad_enabled():
        return "checkpoint=True runs it a second time during the backward pass"
    return None
