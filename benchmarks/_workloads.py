"""The eager workloads A to F, D2 and E2: what runs, on which input, and the targets each must meet.

Each workload times the columns of ``_columns`` on one input (every one, or those it names), then profiles one
call of each to count the bytes the wrapper copied, the peak memory, and whether the module was given and
returned channels_last and the output kept it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._columns import (
    CLASSIC,
    EINOPS,
    FOLDAXES,
    HAND_WRITTEN,
    KERAS,
    KERAS_FOLDED,
    TB_RECIPE,
    THINNEST,
    Folds,
    keras_available,
    keras_columns,
)
from ._columns import torch_columns as build_torch_columns
from ._harness import Footprint, Marked, Rounds, footprint, interleaved, rounds_within

CONV_PATTERN = "b t c h w -> (b t) c h w"
CONV_FOLDS = Folds(CONV_PATTERN)
SLOW_CALL = 0.001  # seconds: calls this long are paired with the hand-written fold


@dataclass(frozen=True)
class Workload:
    """One row of the benchmark.

    Attributes:
        key: Short name used in tables and on the command line (``A-Linear``, ``B``...).
        title: What runs on what.
        make_input: Builds the input tensor.
        make_module: Builds the torch module.
        folds: The pattern for ``Distribute`` and whether the input is time-major.
        keras_layer: Builds the same layer from ``keras.layers``, or ``None`` where Keras has no counterpart.
        keeps_channels_last: Whether the wrappers must give the module channels_last frames and keep its
            channels_last output.
        ratio_limit: The most a checked column may cost, as a multiple of ``limit_of``'s time; ``None``: no limit.
        limit_of: The column the limit is measured against.
        zero_copy: Whether the checked columns must copy nothing outside the module.
        columns: The columns to run, in order; ``None``: every torch column (and Keras' where it applies).
        checked: The columns the targets apply to.
    """

    key: str
    title: str
    make_input: Callable[[], torch.Tensor]
    make_module: Callable[[], nn.Module]
    folds: Folds = CONV_FOLDS
    keras_layer: Callable[[Any], Any] | None = None
    keeps_channels_last: bool = False
    ratio_limit: float | None = 1.03
    limit_of: str = HAND_WRITTEN
    zero_copy: bool = True
    columns: tuple[str, ...] | None = None
    checked: tuple[str, ...] = FOLDAXES


@dataclass
class Result:
    """What one workload measured, column by column."""

    workload: Workload
    rounds: dict[str, Rounds]
    footprints: dict[str, Footprint] = field(default_factory=dict)
    channels_last: dict[str, bool] = field(default_factory=dict)
    module_channels_last: dict[str, tuple[bool, bool]] = field(default_factory=dict)

    def ratio(self, column: str, to: str = HAND_WRITTEN) -> float:
        if column == KERAS:
            to = KERAS_FOLDED
        return self.rounds[column].ratio_to(self.rounds[to])


def _conv() -> nn.Module:
    return nn.Conv2d(3, 16, kernel_size=3, padding=1)


def _conv_net() -> nn.Module:
    return nn.Sequential(_conv(), nn.ReLU(), nn.Conv2d(16, 16, kernel_size=3, padding=1))


def _keras_conv(layers: Any) -> Any:
    return layers.Conv2D(16, 3, padding="same", data_format="channels_first")


def _keras_conv_net(layers: Any) -> Any:
    import keras

    return keras.Sequential(
        [
            layers.Conv2D(16, 3, padding="same", data_format="channels_first", activation="relu"),
            layers.Conv2D(16, 3, padding="same", data_format="channels_first"),
        ]
    )


def _channels_last_conv() -> nn.Module:
    return _conv().to(memory_format=torch.channels_last)


def _channels_last_frames() -> torch.Tensor:
    return torch.randn(32, 3, 64, 64).contiguous(memory_format=torch.channels_last).unflatten(0, (4, 8))


def time_major_view(buffer: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """A (B, T, ...) view of ``buffer``, which holds the (T*B) frames time-major: (b t) must copy, (t b) need not."""
    return buffer.unflatten(0, (-1, batch)).transpose(0, 1)


E2_COLUMNS = (HAND_WRITTEN, "Distribute", TB_RECIPE, CLASSIC, EINOPS)


def workloads(scale: int = 1) -> list[Workload]:
    """Every eager workload; ``scale`` > 1 divides the spatial sizes, for smoke runs."""
    side, large = 64 // scale, 112 // scale
    return [
        Workload(
            "A-Identity",
            "Identity, x (2, 4, 16)",
            lambda: torch.randn(2, 4, 16),
            nn.Identity,
            Folds("b t c -> (b t) c"),
            keras_layer=lambda layers: layers.Identity(),
            ratio_limit=1.10,
            limit_of=THINNEST,
            zero_copy=False,
        ),
        Workload(
            "A-Linear",
            "Linear(16, 16), x (2, 4, 16)",
            lambda: torch.randn(2, 4, 16),
            lambda: nn.Linear(16, 16),
            Folds("b t c -> (b t) c"),
            keras_layer=lambda layers: layers.Dense(16),
            ratio_limit=1.05,
            limit_of=THINNEST,
            zero_copy=False,
        ),
        Workload(
            "B",
            f"Conv2d(3, 16, 3, p=1), x (4, 8, 3, {side}, {side})",
            lambda: torch.randn(4, 8, 3, side, side),
            _conv,
            keras_layer=_keras_conv,
        ),
        Workload(
            "C",
            f"Conv2d, inner-axis crop base[..., ::2] -> (4, 8, 3, {side}, {side})",
            lambda: torch.randn(4, 8, 3, side, 2 * side)[..., ::2],
            _conv,
            keras_layer=_keras_conv,
        ),
        Workload(
            "D",
            f"channels_last Conv2d, per-frame channels_last x (4, 8, 3, {side}, {side})",
            _channels_last_frames if scale == 1 else lambda: _channels_last_frames()[..., ::scale, ::scale],
            _channels_last_conv,
            keeps_channels_last=True,
        ),
        Workload(
            "D2",
            f"channels_last Conv2d, x (4, 8, 3, {side}, {side}) viewed from channels_last time-major storage",
            lambda: time_major_view(torch.randn(32, 3, side, side).contiguous(memory_format=torch.channels_last)),
            _channels_last_conv,
            keeps_channels_last=True,
            ratio_limit=1.0,
            limit_of=EINOPS,
            zero_copy=False,
            columns=(HAND_WRITTEN, "Distribute", CLASSIC, EINOPS),
            checked=("Distribute",),
        ),
        Workload(
            "E",
            f"Conv2d, time-major x (8, 4, 3, {side}, {side}) folded as (t b)",
            lambda: torch.randn(8, 4, 3, side, side),
            _conv,
            Folds("t b c h w -> (t b) c h w", time_major=True),
        ),
        Workload(
            "E2-Conv",
            f"Conv2d(3, 16, 3, p=1), x (4, 8, 3, {side}, {side}) viewed from time-major storage",
            lambda: time_major_view(torch.randn(32, 3, side, side)),
            _conv,
            Folds(CONV_PATTERN, time_major_storage=True),
            ratio_limit=0.92,
            limit_of="Distribute",
            columns=E2_COLUMNS,
            checked=(TB_RECIPE,),
        ),
        Workload(
            "E2-Linear",
            "Linear(256, 256), x (4, 8, 256) viewed from time-major storage",
            lambda: time_major_view(torch.randn(32, 256)),
            lambda: nn.Linear(256, 256),
            Folds("b t d -> (b t) d", time_major_storage=True),
            ratio_limit=None,
            columns=E2_COLUMNS,
            checked=(TB_RECIPE,),
        ),
        Workload(
            "F",
            f"2-layer conv net, x (8, 16, 3, {large}, {large})",
            lambda: torch.randn(8, 16, 3, large, large),
            _conv_net,
            keras_layer=_keras_conv_net,
        ),
    ]


def run(workload: Workload, rounds: int | None, min_run_time: float, budget: float, keras: bool = True) -> Result:
    """Times every column of ``workload`` (``rounds``, or as many as fit in ``budget`` seconds), then profiles
    one call of each."""
    torch.manual_seed(0)
    x, module = workload.make_input(), workload.make_module()
    calls = _calls(torch_columns(module, workload), x)
    if keras and workload.keras_layer is not None and keras_available():
        calls.update(_calls(keras_columns(workload.keras_layer, x), x))
    with torch.no_grad():
        for call in calls.values():
            call()  # warm-up: first-call costs are workload H's business
        start = time.perf_counter()
        calls[HAND_WRITTEN]()
        # A round of calls of milliseconds lasts seconds; pairing keeps each ratio's two timings close together.
        paired = HAND_WRITTEN if time.perf_counter() - start > SLOW_CALL else None
        rounds = rounds or rounds_within(budget / (2 if paired else 1), calls, min_run_time, 3 if budget < 5 else 9)
        result = Result(workload, interleaved(calls, rounds, min_run_time, paired))
        watched = Watched(module)
        for name, column in torch_columns(watched, workload).items():
            watched.seen = (False, False)
            output, result.footprints[name] = footprint(lambda column=column: column(x))
            result.channels_last[name] = _is_channels_last(output)
            result.module_channels_last[name] = watched.seen
    return result


def torch_columns(module: Callable[..., Any], workload: Workload) -> dict[str, Callable[[torch.Tensor], Any]]:
    """The torch columns of ``workload`` that run ``module``: every one, or those the workload names."""
    columns = build_torch_columns(module, workload.folds)
    return columns if workload.columns is None else {name: columns[name] for name in workload.columns}


class Watched(nn.Module):
    """Runs a module ``Marked``, noting whether its last call was given and returned channels_last frames."""

    seen: tuple[bool, bool] = (False, False)

    def __init__(self, module: Callable[..., Any]) -> None:
        super().__init__()
        self.inner = Marked(module)

    def forward(self, x: torch.Tensor) -> Any:
        y = self.inner(x)
        self.seen = (_is_channels_last(x), _is_channels_last(y))
        return y


def _calls(columns: dict[str, Callable[[torch.Tensor], Any]], x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    return {name: (lambda column=column: column(x)) for name, column in columns.items()}


def _is_channels_last(y: Any) -> bool:
    """Whether each frame of ``y`` (..., C, H, W) has channels innermost, as a channels_last conv writes it."""
    return isinstance(y, torch.Tensor) and y.ndim >= 4 and y.stride(-3) == 1 and y.shape[-3] > 1


def targets(result: Result) -> list[tuple[str, bool]]:
    """The workload's targets, each with whether it holds."""
    workload, checks = result.workload, []
    for column in workload.checked:
        if workload.ratio_limit is not None:
            # With paired timings, two columns compare through their neighbouring hand-written timings.
            ratio = result.ratio(column, workload.limit_of)
            limit = f"{workload.key}: {column} <= {workload.ratio_limit:.2f}x {workload.limit_of}"
            checks.append((limit, ratio <= workload.ratio_limit))
        if workload.zero_copy:
            copied = result.footprints[column].copied
            checks.append((f"{workload.key}: {column} copies 0 bytes", copied == 0))
        if workload.keeps_channels_last:
            kept = result.channels_last[column] and all(result.module_channels_last[column])
            checks.append((f"{workload.key}: {column} keeps channels_last", kept))
    if workload.key.startswith("A"):
        peers = [name for name in result.rounds if name not in (*FOLDAXES, HAND_WRITTEN, THINNEST, KERAS_FOLDED)]
        slowest_foldaxes = max(result.ratio(column) for column in FOLDAXES)
        for peer in peers:
            checks.append((f"{workload.key}: foldaxes below {peer}", slowest_foldaxes < result.ratio(peer)))
    return checks
