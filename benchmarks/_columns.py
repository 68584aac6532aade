"""The ways of running a module over (batch, time) that the benchmark compares, one column each.

Every column is built from the module to run and the workload's pattern, and returns a call on the input. The
peers' recipes are written here from their documented behaviour; Keras and fastai are used as installed, and
their columns are left out when they are not.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import einops
import torch
from torch import nn

import foldaxes

HAND_WRITTEN = "hand-written"
THINNEST = "thinnest module"
FOLDAXES = ("Distribute", "TimeDistributed")
CLASSIC, EINOPS = "classic recipe", "einops rearrange"
TB_RECIPE = "(t b) recipe"
KERAS, KERAS_FOLDED = "Keras TimeDistributed", "Keras pre-folded layer"

Call = Callable[[torch.Tensor], Any]


@dataclass(frozen=True)
class Folds:
    """What a column needs to know about a workload: its pattern, whether time comes first, and whether the input
    is a (b, t) view of time-major storage (which adds the (t b) recipe's column)."""

    pattern: str
    time_major: bool = False
    time_major_storage: bool = False


class Thinnest(nn.Module):
    """The least a wrapping ``nn.Module`` can do: the floor that every module wrapper is measured against."""

    def __init__(self, module: Callable[..., Any]) -> None:
        super().__init__()
        self.m = module

    def forward(self, x: torch.Tensor) -> Any:
        return self.m(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class ClassicRecipe(nn.Module):
    """The copied TimeDistributed snippet: ``contiguous().view`` on the way in and on the way out."""

    def __init__(self, module: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> Any:
        first, second = x.shape[:2]
        y = self.module(x.contiguous().view(first * second, *x.shape[2:]))
        return y.contiguous().view(first, second, *y.shape[1:])


def torch_columns(module: Callable[..., Any], folds: Folds) -> dict[str, Call]:
    """The columns that run a torch module: foldaxes, the hand-written fold and the torch-based peers."""

    def hand_written(x: torch.Tensor) -> Any:
        return module(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def einops_rearrange(x: torch.Tensor) -> Any:
        y = module(einops.rearrange(x, "a b ... -> (a b) ..."))
        return einops.rearrange(y, "(a b) ... -> a b ...", a=x.shape[0])

    def einops_pack(x: torch.Tensor) -> Any:
        packed, shapes = einops.pack([x], "* " + " ".join(f"d{i}" for i in range(x.ndim - 2)))
        (y,) = einops.unpack(module(packed), shapes, "* " + " ".join(f"e{i}" for i in range(packed.ndim - 1)))
        return y

    columns: dict[str, Call] = {
        HAND_WRITTEN: hand_written,
        THINNEST: Thinnest(module),
        "Distribute": foldaxes.Distribute(folds.pattern, module),
        "TimeDistributed": foldaxes.TimeDistributed(module, batch_first=not folds.time_major),
        CLASSIC: ClassicRecipe(module),
        EINOPS: einops_rearrange,
        "einops pack/unpack": einops_pack,
        "torch.func.vmap": torch.func.vmap(torch.func.vmap(module)),
    }
    if folds.time_major_storage:
        # Folding in storage order makes the fold a view; out= puts (b t) back first as a permuted view.
        tb_pattern = folds.pattern.replace("(b t)", "(t b)")
        columns[TB_RECIPE] = foldaxes.Distribute(tb_pattern, module, out="(t b) ... -> b t ...")
    fastai = fastai_time_distributed()
    if fastai is not None:
        columns["fastai TimeDistributed"] = fastai(module)
    return columns


def fastai_time_distributed() -> Callable[[Callable[..., Any]], Call] | None:
    """fastai's ``TimeDistributed`` class, or ``None`` when fastai is not installed."""
    if importlib.util.find_spec("fastai") is None:
        return None
    with warnings.catch_warnings():  # fastai scripts functions at import time, which torch 2.13 deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        from fastai.layers import TimeDistributed

    return TimeDistributed  # type: ignore[no-any-return]


def keras_available() -> bool:
    """Whether Keras 3 is installed; it must run on the torch backend, which is chosen before its import."""
    if importlib.util.find_spec("keras") is None:
        return False
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    return bool(keras.backend.backend() == "torch")


def keras_columns(make_layer: Callable[[Any], Any], example: torch.Tensor) -> dict[str, Call]:
    """Keras' ``TimeDistributed`` beside the same Keras layer called on pre-folded input.

    Keras runs a different implementation of the layer, so its column is a ratio to its own layer, not to
    the torch module.
    """
    import keras

    layer = make_layer(keras.layers)
    wrapped = keras.layers.TimeDistributed(layer)
    wrapped(example)  # builds the layer's weights outside the timed calls

    def pre_folded(x: torch.Tensor) -> Any:
        return layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    return {KERAS: wrapped, KERAS_FOLDED: pre_folded}
