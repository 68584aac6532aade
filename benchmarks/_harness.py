"""Timing and profiling: interleaved rounds of medians, and what one call copies and allocates.

Every column of a workload is timed once per round, the rounds interleaved and the column order rotated from
round to round, so that drift of the machine (other processes, frequency changes) hits every column alike. A
column's ratio is the median over rounds of its time divided by its baseline's time in the same round.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.benchmark import Timer

MODULE_MARK = "benchmarks::module"
COPY_OPS = frozenset({"aten::copy_", "aten::cat"})


def median_seconds(fn: Callable[[], Any], min_run_time: float) -> float:
    """The median time of one call of ``fn``, from ``torch.utils.benchmark``'s blocked autorange."""
    return float(Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median)


def rounds_within(budget: float, calls: Mapping[str, Callable[[], Any]], min_run_time: float, at_least: int = 5) -> int:
    """How many rounds of ``interleaved`` fit in about ``budget`` seconds: at least ``at_least``, at most 61.

    Many short rounds beat a few long ones on a machine whose speed drifts: the columns of one round are timed
    close together, so the ratios within a round see the same machine.
    """
    per_round = 0.0
    for call in calls.values():
        start = time.perf_counter()
        call()
        per_round += max(time.perf_counter() - start, min_run_time)
    return max(at_least, min(61, int(budget / per_round)))


def interleaved(
    calls: Mapping[str, Callable[[], Any]], rounds: int, min_run_time: float, paired_with: str | None = None
) -> dict[str, Rounds]:
    """Times every call once per round, rotating the order between rounds.

    Args:
        calls: The columns, each a call without arguments.
        rounds: How many rounds.
        min_run_time: Minimum run time of one column in one round, in seconds.
        paired_with: A column to time again right before each other column, for calls long enough that a
            round spans seconds: each ratio then compares two neighbouring timings.
    """
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    partners: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if paired_with is not None:
                if name == paired_with:
                    continue
                partner = median_seconds(calls[paired_with], min_run_time)
                samples[paired_with].append(partner)
                partners[name].append(partner)
            samples[name].append(median_seconds(calls[name], min_run_time))
    return {name: Rounds(tuple(samples[name]), tuple(partners[name]) or None) for name in names}


@dataclass(frozen=True)
class Rounds:
    """One column's median time in each round, in seconds.

    Attributes:
        times: The column's time in each round.
        paired: The paired column's time measured right before each of ``times``, when timings were paired.
    """

    times: tuple[float, ...]
    paired: tuple[float, ...] | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """The interquartile range of the rounds over their median: how much the machine moved meanwhile."""
        first, _, third = statistics.quantiles(self.times, n=4, method="inclusive")
        return (third - first) / self.median

    def ratio_to(self, other: Rounds) -> float:
        """The median over rounds of this column's time divided by ``other``'s in the same round.

        With paired timings each column is compared through its own neighbouring timings of the paired column.
        """
        if self.paired is None and other.paired is None:
            return statistics.median(mine / theirs for mine, theirs in zip(self.times, other.times, strict=True))
        if other.paired is None:  # other is the paired column
            return statistics.median(mine / theirs for mine, theirs in zip(self.times, self.paired or (), strict=True))
        if self.paired is None:
            return 1 / other.ratio_to(self)
        mine = (time / partner for time, partner in zip(self.times, self.paired, strict=True))
        theirs = (time / partner for time, partner in zip(other.times, other.paired, strict=True))
        return statistics.median(a / b for a, b in zip(mine, theirs, strict=True))


class Marked(nn.Module):
    """Runs a module inside a profiler range, so that what happens inside the module can be told apart."""

    def __init__(self, module: Callable[..., Any]) -> None:
        super().__init__()
        self.inner = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with record_function(MODULE_MARK):
            return self.inner(*args, **kwargs)


@dataclass(frozen=True)
class Footprint:
    """What one call did to memory, from the CPU profiler.

    Attributes:
        copied_in: Bytes written by copy ops (``aten::copy_``, ``aten::cat``) before the module ran.
        copied_out: The same after the module ran.
        peak: The most bytes held at once during the call, beyond what was held before it.
    """

    copied_in: int
    copied_out: int
    peak: int

    @property
    def copied(self) -> int:
        return self.copied_in + self.copied_out


@contextmanager
def _profiled() -> Iterator[profile]:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True) as prof:
        yield prof


def footprint(call: Callable[[], Any]) -> tuple[Any, Footprint]:
    """Runs ``call`` once under the profiler; a module to tell apart must be wrapped in ``Marked``.

    Copies inside the marked module are the module's own and are not counted.
    """
    with _profiled() as prof:
        result = call()
    events = sorted(prof.events(), key=lambda event: event.time_range.start)
    module_ranges = [event.time_range for event in events if event.name == MODULE_MARK]
    module_start = module_ranges[0].start if module_ranges else float("inf")
    copied_in = copied_out = 0
    held = peak = 0
    for event in events:
        held += event.self_cpu_memory_usage
        peak = max(peak, held)
        if event.name not in COPY_OPS or _inside_module(event):
            continue
        if event.time_range.start < module_start:
            copied_in += _bytes_written(event)
        else:
            copied_out += _bytes_written(event)
    return result, Footprint(copied_in, copied_out, peak)


def _inside_module(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == MODULE_MARK:
            return True
        parent = parent.cpu_parent
    return False


def _bytes_written(event: Any) -> int:
    """``copy_`` writes its first argument; ``cat`` writes the output it allocates (its list's shapes go unrecorded)."""
    if event.name == "aten::cat":
        return int(event.cpu_memory_usage)
    itemsize = torch.empty((), dtype=_dtype(event.input_dtypes[0])).element_size()
    return _numel(event.input_shapes[0]) * itemsize


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


_DTYPES = {
    "float": torch.float32,
    "double": torch.float64,
    "c10::Half": torch.float16,
    "c10::BFloat16": torch.bfloat16,
    "long int": torch.int64,
    "int": torch.int32,
    "bool": torch.bool,
}


def _dtype(name: str) -> torch.dtype:
    return _DTYPES.get(name, torch.get_default_dtype())
