"""Which wrapped modules change meaning when they run on part of the folded batch, or on one of identical rows.

The layer checks know the public ``torch.nn`` classes: BatchNorm with batch statistics, Dropout, and the dropout of
recurrent layers and ``nn.MultiheadAttention``. They look at the module wrapped, or at the modules that a bound
method, a ``functools.partial``, a decorated function or a closure carries. ``random_state`` covers what no class
check can: any draw from torch's default generators, by comparing their states around a call.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ._errors import fold_error

__all__ = ["batch_statistics", "check_batch_statistics", "per_copy_randomness", "random_state"]

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
_DEPTH = 4
"""How many wrappers (bound methods, partials, decorators, closures) deep the modules of a callable are looked for."""


def carried_modules(fn: Any) -> list[nn.Module]:
    """The modules that ``fn`` is or carries, each once.

    A bound method carries its object; a ``functools.partial`` its function and arguments; a decorated function
    (``__wrapped__``) the function it wraps; a Python function the values its closure holds.
    """
    found: dict[int, nn.Module] = {}
    _collect(fn, found, _DEPTH)
    return list(found.values())


def _collect(value: Any, found: dict[int, nn.Module], depth: int) -> None:
    if isinstance(value, nn.Module):
        found.setdefault(id(value), value)
        return
    if depth == 0:
        return
    for inner in _carried(value):
        _collect(inner, found, depth - 1)


def _carried(value: Any) -> Iterator[Any]:
    if isinstance(value, functools.partial):
        yield value.func
        yield from value.args
        yield from value.keywords.values()
        return
    owner = getattr(value, "__self__", None)
    if owner is not None and callable(value):
        yield owner
    wrapped = getattr(value, "__wrapped__", None)
    if wrapped is not None:
        yield wrapped
    for cell in getattr(value, "__closure__", None) or ():
        try:
            yield cell.cell_contents
        except ValueError:  # a cell not yet filled
            continue


def batch_statistics(fn: Any) -> str | None:
    """Names the first BatchNorm that ``fn`` carries which normalises with the statistics of the batch it is given.

    That is a BatchNorm in training mode, or one without running statistics (``track_running_stats=False``) in
    any mode. Returns ``None`` when there is none.
    """
    for name, module in _named_modules(carried_modules(fn)):
        if isinstance(module, _BATCH_NORMS) and (module.training or not module.track_running_stats):
            return _describe(name, module)
    return None


def per_copy_randomness(fn: Any) -> bool:
    """Whether ``fn`` carries a torch layer whose result would differ between identical rows.

    Dropout layers in training mode draw one mask per row, as do the ``dropout`` of recurrent layers and of
    ``nn.MultiheadAttention``; batch statistics (see ``batch_statistics``) depend on how many copies there are.
    """
    for _, module in _named_modules(carried_modules(fn)):
        if isinstance(module, _BATCH_NORMS) and (module.training or not module.track_running_stats):
            return True
        if not module.training:
            continue
        if isinstance(module, _DROPOUTS) and module.p > 0:
            return True
        if isinstance(module, nn.RNNBase | nn.MultiheadAttention) and module.dropout > 0:
            return True
    return False


def check_batch_statistics(fn: Any, allowed: bool, why: str, pattern: str) -> None:
    """Refuses a BatchNorm that uses batch statistics when the module will see only part of the folded batch.

    Raises:
        FoldError: there is one, and ``allowed`` (``allow_batch_statistics``) is off.
    """
    if allowed:
        return
    found = batch_statistics(fn)
    if found is not None:
        raise fold_error(
            f"The module's {found} normalises with the statistics of the batch it is given, but {why}: its "
            "results, and its running averages, would differ from one call on the whole folded batch.",
            pattern=pattern,
            hint="Call .eval() on the module first (running statistics treat rows independently), or pass "
            "allow_batch_statistics=True to the wrapper to accept statistics over each part.",
        )


def random_state(devices: Iterable[torch.device]) -> list[torch.Tensor]:
    """The states of torch's default generators: the CPU's, and that of each accelerator in ``devices``.

    Every draw from a default generator changes its state, so two equal readings around a call prove that the call
    drew nothing from them. A ``torch.Generator`` of the module's own is not seen.
    """
    states = [torch.get_rng_state()]
    for device in dict.fromkeys(devices):
        if device.type not in ("cpu", "meta"):
            read = getattr(torch.get_device_module(device.type), "get_rng_state", None)
            if read is not None:
                states.append(read(device))
    return states


def _named_modules(modules: list[nn.Module]) -> Iterator[tuple[str, nn.Module]]:
    for module in modules:
        yield from module.named_modules()


def _describe(name: str, module: nn.Module) -> str:
    mode = "training mode" if module.training else "no running statistics"
    return f"{type(module).__name__}" + (f" at '{name}'" if name else "") + f" ({mode})"
