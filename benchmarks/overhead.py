"""Per-call overhead of foldaxes against the other ways of folding (batch, time) around a small module.

Run: ``python -m benchmarks.overhead`` from the repository root. Prints medians in microseconds and each
column's ratio to the hand-written fold ``m(x.flatten(0, 1)).unflatten(0, x.shape[:2])``, measured in one
process with interleaved rounds so that machine drift hits every column alike. Nothing here decides CI.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import einops
import torch
from torch import nn
from torch.utils.benchmark import Timer

import foldaxes


class Thinnest(nn.Module):
    """The least a wrapping nn.Module can do: the floor any module wrapper is measured against."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.m = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # type: ignore[no-any-return]


class ClassicRecipe(nn.Module):
    """The copy-pasted TimeDistributed: contiguous().view in, contiguous().view out."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time = x.shape[:2]
        y = self.module(x.contiguous().view(batch * time, *x.shape[2:]))
        return y.contiguous().view(batch, time, *y.shape[1:])  # type: ignore[no-any-return]


def candidates(module: nn.Module) -> dict[str, Callable[[torch.Tensor], Any]]:
    distribute = foldaxes.Distribute("b t c -> (b t) c", module)
    time_distributed = foldaxes.TimeDistributed(module, True)
    thinnest, classic = Thinnest(module), ClassicRecipe(module)

    def hand(x: torch.Tensor) -> torch.Tensor:
        return module(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # type: ignore[no-any-return]

    def einops_round_trip(x: torch.Tensor) -> torch.Tensor:
        y = module(einops.rearrange(x, "b t c -> (b t) c"))
        return einops.rearrange(y, "(b t) c -> b t c", b=x.shape[0])

    return {
        "hand-written": hand,
        "thinnest module": thinnest,
        "Distribute": distribute,
        "TimeDistributed": time_distributed,
        "classic recipe": classic,
        "einops round trip": einops_round_trip,
    }


def measure(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, seconds: float) -> float:
    return Timer("fn(x)", globals={"fn": fn, "x": x}).blocked_autorange(min_run_time=seconds).median * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.3, help="minimum run time per cell and round")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x = torch.randn(2, 4, 16)
    print(f"torch {torch.__version__}, foldaxes {foldaxes.__version__}, x {tuple(x.shape)}, 1 thread")
    for name, module in [("Identity", nn.Identity()), ("Linear(16, 16)", nn.Linear(16, 16))]:
        columns = candidates(module)
        times: dict[str, list[float]] = {label: [] for label in columns}
        with torch.no_grad():
            for _ in range(args.rounds):
                for label, fn in columns.items():
                    times[label].append(measure(fn, x, args.seconds))
        base = statistics.median(times["hand-written"])
        floor = statistics.median(times["thinnest module"])
        print(f"\n{name}\n| column | median us | x hand-written | x thinnest | spread |\n|---|---|---|---|---|")
        for label, samples in times.items():
            median = statistics.median(samples)
            spread = (max(samples) - min(samples)) / median
            print(f"| {label} | {median:.2f} | {median / base:.2f} | {median / floor:.3f} | {spread:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
