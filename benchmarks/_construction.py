"""Workload H: what building a ``Distribute`` costs, and what its first call at a new shape costs.

Building parses the pattern (once per pattern text, then cached) and checks it; the first call at a new input
rank builds that rank's plan. Both are timed on fresh objects, with ``time.perf_counter`` around each one.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

import foldaxes

BUILD_LIMIT = 200e-6
FIRST_CALL_LIMIT = 100e-6


@dataclass(frozen=True)
class ConstructionResult:
    """Seconds: for each measure, the best of several blocks' medians."""

    build_new_pattern: float
    build_cached_pattern: float
    first_call_extra: float
    steady_call: float


def run(repeats: int, blocks: int = 5) -> ConstructionResult:
    """Builds ``repeats`` wrappers with new pattern texts and as many with a cached one, and calls each twice.

    The repeats come in ``blocks`` half a second apart, and each figure is the best of the blocks' medians:
    these are absolute times, and one slow second of a shared machine would otherwise decide them.
    """
    block_results = []
    for block in range(blocks):
        if block:
            time.sleep(0.5)
        block_results.append(_block(repeats // blocks, offset=block * repeats))
    return ConstructionResult(*(min(values) for values in zip(*block_results, strict=True)))


def _block(repeats: int, offset: int) -> tuple[float, float, float, float]:
    module = nn.Linear(16, 16)
    new_pattern, cached_pattern, first_extra, steady = [], [], [], []
    foldaxes.Distribute("b t c -> (b t) c", module)
    with torch.no_grad():
        for index in range(offset, offset + repeats):
            # A fresh axis name makes a pattern text the parser has not seen.
            pattern = f"b t{index} c -> (b t{index}) c"
            start = time.perf_counter()
            wrapper = foldaxes.Distribute(pattern, module)
            new_pattern.append(time.perf_counter() - start)

            start = time.perf_counter()
            foldaxes.Distribute("b t c -> (b t) c", module)
            cached_pattern.append(time.perf_counter() - start)

            x = torch.randn(2 + index % 5, 4, 16)
            start = time.perf_counter()
            wrapper(x)
            first = time.perf_counter() - start
            start = time.perf_counter()
            wrapper(x)
            second = time.perf_counter() - start
            first_extra.append(first - second)
            steady.append(second)
    median = statistics.median
    return median(new_pattern), median(cached_pattern), median(first_extra), median(steady)


def targets(result: ConstructionResult) -> list[tuple[str, bool]]:
    return [
        (
            f"H: building a Distribute (new pattern) < {BUILD_LIMIT * 1e6:.0f} us",
            result.build_new_pattern < BUILD_LIMIT,
        ),
        (
            f"H: first call at a new shape < {FIRST_CALL_LIMIT * 1e6:.0f} us beyond the steady call",
            result.first_call_extra < FIRST_CALL_LIMIT,
        ),
    ]
