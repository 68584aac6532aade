"""Workload N: the functional API on NumPy arrays, a fold and unfold round trip beside einops and a hand reshape.

A NumPy user who folds ``(B, T, F)`` into rows for a 2-D function and back writes either two ``reshape`` calls
(remembering the sizes) or two ``einops.rearrange`` calls; ``foldaxes.fold`` / ``unfold`` remember the sizes in the
spec. The target: foldaxes costs at most what einops costs, on small arrays (where the cost is all overhead) and
on large ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import einops
import numpy as np

import foldaxes

from ._harness import interleaved, rounds_within

Check = tuple[str, bool]
SIZES = {"small": (2, 4, 16), "large": (64, 128, 256)}
PATTERN = "b t f -> (b t) f"


def columns(x: np.ndarray) -> dict[str, Callable[[], Any]]:
    """The round trips: folded rows, then the same rows unfolded, three ways."""
    b, t, f = x.shape

    def hand_written() -> Any:
        return x.reshape(b * t, f).reshape(b, t, f)

    def einops_twice() -> Any:
        return einops.rearrange(einops.rearrange(x, PATTERN), "(b t) f -> b t f", b=b)

    def foldaxes_pair() -> Any:
        folded, spec = foldaxes.fold(x, PATTERN)
        return foldaxes.unfold(folded, spec)

    return {
        "hand-written reshape": hand_written,
        "einops rearrange twice": einops_twice,
        "foldaxes fold/unfold": foldaxes_pair,
    }


def run(rounds: int | None, min_run_time: float, budget: float) -> tuple[list[str], list[Check]]:
    """Times the three round trips on a small and a large array; returns the table and the targets."""
    lines = [
        "**N**: NumPy, a fold and unfold round trip of (B, T, F) through (B*T, F)",
        "",
        "| array | column | median us | x hand-written | x einops | spread |",
        "|---|---|---|---|---|---|",
    ]
    checks: list[Check] = []
    for name, shape in SIZES.items():
        x = np.random.default_rng(0).standard_normal(shape)
        calls = columns(x)
        for expected, call in zip(calls, calls.values(), strict=True):
            assert np.array_equal(call(), x), expected
        count = rounds or rounds_within(budget / 2, calls, min_run_time)
        measured = interleaved(calls, count, min_run_time)
        hand, einops_rounds = measured["hand-written reshape"], measured["einops rearrange twice"]
        for column, result in measured.items():
            lines.append(
                f"| {name} {shape} | {column} | {result.median * 1e6:.1f} | {result.ratio_to(hand):.2f} | "
                f"{result.ratio_to(einops_rounds):.2f} | {result.spread:.0%} |"
            )
        ours = measured["foldaxes fold/unfold"].ratio_to(einops_rounds)
        checks.append((f"N-{name}: foldaxes fold/unfold <= 1.00x einops rearrange twice", ours <= 1.0))
    return [*lines, ""], checks
