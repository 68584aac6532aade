"""Shared by the tests: independent references (slice-by-slice loops that never call foldaxes) and helpers."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from foldaxes import FoldError


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def float64() -> Any:
    """Makes float64 the default dtype for one test, so modules and references compute in float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def loop_reference(fn: Callable[..., Any], tensors: Sequence[torch.Tensor], dims: Sequence[int]) -> Any:
    """Applies ``fn`` to one slice at a time over ``dims`` (moved to the front) and stacks the results.

    Each slice is passed with a leading batch dim of 1, and that dim is dropped from each output tensor.
    Outputs may be a tensor or a (nested) tuple of tensors; the stacked result has ``dims``' sizes in front.
    """
    moved = [t.movedim(tuple(dims), tuple(range(len(dims)))) for t in tensors]
    lead = moved[0].shape[: len(dims)]
    results = [fn(*(t[index].unsqueeze(0) for t in moved)) for index in itertools.product(*map(range, lead))]
    return _stack(results, lead)


def _stack(results: list[Any], lead: torch.Size) -> Any:
    first = results[0]
    if isinstance(first, torch.Tensor):
        return torch.stack([r[0] for r in results]).unflatten(0, lead)
    return type(first)(_stack([r[i] for r in results], lead) for i in range(len(first)))


def assert_exact(actual: Any, expected: Any, tolerance: float = 1e-12) -> None:
    """Same structure and shapes, and values equal to float64 rounding (``tolerance``), leaf by leaf."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), type(actual)
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)
        return
    assert type(actual) is type(expected)
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            assert_exact(actual[key], expected[key], tolerance)
        return
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert_exact(a, e, tolerance)


class Fuse(nn.Module):
    """Two inputs of different ranks in, one output: frames (N, 3, H, W) and features (N, 5) -> (N, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.proj = nn.Linear(5, 4)

    def forward(self, frames: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return self.conv(frames).mean((2, 3)) + self.proj(audio)  # type: ignore[no-any-return]


class Recorder(nn.Module):
    """Calls ``fn`` and keeps, for every call, the arguments it was given and what it returned.

    The wrapper under test calls the recorder in place of ``fn``, so the recorder sees exactly the folded tensors.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any], Any]] = []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        result = self.fn(*args, **kwargs)
        self.calls.append((args, kwargs, result))
        return result

    @property
    def inputs(self) -> list[Any]:
        """The first positional argument of each call."""
        return [args[0] for args, _, _ in self.calls]

    @property
    def outputs(self) -> list[Any]:
        """What each call returned."""
        return [result for _, _, result in self.calls]

    @property
    def rows(self) -> list[int]:
        """How many rows (the size of dim 0) the first argument of each call had."""
        return [x.shape[0] for x in self.inputs]


class _Proxy:
    """Carries its module only as ``__wrapped__``, as a decorator object does: no closure, no ``__self__``."""

    def __init__(self, module: Callable[..., Any]) -> None:
        self.__wrapped__ = module

    def __call__(self, *args: Any) -> Any:
        return self.__wrapped__(*args)


def _closure_with_an_empty_cell(module: Callable[..., Any]) -> Callable[..., Any]:
    """A closure whose first cell is never filled (``a_later`` is assigned after the return), the module's after."""

    def run(x: Any) -> Any:
        return module(x) if x is not None else a_later

    return run
    a_later = None  # never runs: its cell stays empty


CARRIERS = [
    pytest.param(lambda m: m.forward, id="bound-method"),
    pytest.param(lambda m: functools.partial(m), id="partial"),
    pytest.param(lambda m: functools.partial(lambda module, x: module(x), m), id="partial-argument"),
    pytest.param(lambda m: lambda x: m(x), id="closure"),
    pytest.param(lambda m: functools.wraps(m.forward)(lambda x: m.forward(x)), id="decorated"),
    pytest.param(_Proxy, id="wrapped-attribute"),
    pytest.param(_closure_with_an_empty_cell, id="closure-with-an-empty-cell"),
]
"""Callables that carry a module without being it: each makes one of a module ``m``."""


def message(fn: Callable[[], Any], error: type[Exception] = FoldError) -> str:
    """What ``fn`` raised as ``error`` (a ``FoldError`` by default) says; fails the test when it raises nothing."""
    with pytest.raises(error) as info:
        fn()
    return str(info.value)


def allocations(fn: Callable[[], Any]) -> tuple[Any, list[int]]:
    """Runs ``fn`` under the CPU profiler; returns its result and the size of each allocation it made."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    return result, [event.self_cpu_memory_usage for event in prof.events() if event.self_cpu_memory_usage > 0]
