"""Which wrapped modules change meaning when they run on part of the folded batch, or on one of identical rows.

Only the public ``torch.nn`` classes are recognised. A plain function, or a module that computes batch statistics
or draws random numbers by other means, cannot be seen: these checks are a guard for the common layers, not a
proof.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["batch_statistics", "per_copy_randomness"]

_BATCH_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def batch_statistics(fn: Any) -> str | None:
    """Names the first BatchNorm in ``fn`` that normalises with the statistics of the batch it is given.

    That is a BatchNorm in training mode, or one without running statistics (``track_running_stats=False``) in
    any mode. Returns ``None`` when there is none, or when ``fn`` is not an ``nn.Module``.
    """
    if not isinstance(fn, nn.Module):
        return None
    for name, module in fn.named_modules():
        if isinstance(module, _BATCH_NORMS) and (module.training or not module.track_running_stats):
            return _describe(name, module)
    return None


def per_copy_randomness(fn: Any) -> str | None:
    """Names the first part of ``fn`` whose result would differ between identical rows, or ``None``.

    Dropout layers in training mode draw one mask per row, as do the ``dropout`` of recurrent layers and of
    ``nn.MultiheadAttention``; batch statistics (see ``batch_statistics``) depend on how many copies there are.
    """
    if not isinstance(fn, nn.Module):
        return None
    for name, module in fn.named_modules():
        if isinstance(module, _BATCH_NORMS) and (module.training or not module.track_running_stats):
            return _describe(name, module)
        if not module.training:
            continue
        if isinstance(module, _DROPOUTS) and module.p > 0:
            return _describe(name, module)
        if isinstance(module, nn.RNNBase | nn.MultiheadAttention) and module.dropout > 0:
            return _describe(name, module)
    return None


def _describe(name: str, module: nn.Module) -> str:
    mode = "training mode" if module.training else "no running statistics"
    return f"{type(module).__name__}" + (f" at '{name}'" if name else "") + f" ({mode})"
