"""The CUDA checks, as one script: ``python benchmarks/gpu_check.py`` (exits 0 with a note when there is no GPU).

On a CUDA device it checks that the fold allocates nothing (``torch.cuda.memory_allocated`` before and after),
captures and replays a Distribute-wrapped conv in a CUDA graph, compiles one with torch.compile, and times
the wrapped module against the bare module on a pre-folded input and against the hand-written fold, with
CUDA events (median of many calls after warm-up), for workloads B and F in bfloat16 and float32. The tests
marked ``cuda`` (tests/test_benchmarks.py) run the same checks.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import foldaxes

PATTERN = "b t c h w -> (b t) c h w"
WORKLOADS = {
    "B": ((4, 8, 3, 64, 64), lambda: nn.Conv2d(3, 16, 3, padding=1)),
    "F": (
        (8, 16, 3, 112, 112),
        lambda: nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)),
    ),
}


def check_zero_copy(device: str = "cuda") -> int:
    """Folds a contiguous and a channels_last video on the GPU; returns the bytes the folds allocated (0)."""
    frames = torch.randn(32, 3, 64, 64, device=device)
    inputs = [frames.unflatten(0, (4, 8)), frames.contiguous(memory_format=torch.channels_last).unflatten(0, (4, 8))]
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    folded = [foldaxes.fold(x, PATTERN)[0] for x in inputs]
    torch.cuda.synchronize()
    allocated = torch.cuda.memory_allocated() - before
    assert all(f.data_ptr() == x.data_ptr() for f, x in zip(folded, inputs, strict=True))
    return allocated


def check_cuda_graph(device: str = "cuda") -> float:
    """Captures a Distribute-wrapped conv in a CUDA graph, replays it on new data; returns the max abs error."""
    conv = nn.Conv2d(3, 16, 3, padding=1).to(device)
    wrapped = foldaxes.Distribute(PATTERN, conv)
    static_input = torch.randn(4, 8, 3, 32, 32, device=device)
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                wrapped(static_input)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = wrapped(static_input)
        fresh = torch.randn_like(static_input)
        static_input.copy_(fresh)
        graph.replay()
        expected = conv(fresh.flatten(0, 1)).unflatten(0, fresh.shape[:2])
    return float((static_output - expected).abs().max())


def check_compile(device: str = "cuda") -> float:
    """Compiles a Distribute-wrapped conv with fullgraph=True; returns the max abs error against eager."""
    conv = nn.Conv2d(3, 16, 3, padding=1).to(device)
    wrapped = foldaxes.Distribute(PATTERN, conv)
    x = torch.randn(4, 8, 3, 32, 32, device=device)
    with torch.no_grad():
        compiled = torch.compile(wrapped, fullgraph=True)
        return float((compiled(x) - wrapped(x)).abs().max())


def cuda_median_ms(call: Callable[[], Any], repeats: int) -> float:
    """Median of ``repeats`` timed calls, each between two CUDA events, after a warm-up."""
    for _ in range(10):
        call()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def timing_table(repeats: int) -> list[str]:
    """Workloads B and F in float32 and bfloat16: the median of each way, and its ratio to the bare module."""
    lines = [
        "| workload | dtype | bare module ms | hand-written fold | Distribute | TimeDistributed |",
        "|---|---|---|---|---|---|",
    ]
    for key, (shape, make) in WORKLOADS.items():
        for dtype in (torch.float32, torch.bfloat16):
            module = make().to("cuda", dtype)
            x = torch.randn(*shape, device="cuda", dtype=dtype)
            with torch.no_grad():
                bare = cuda_median_ms(functools.partial(module, x.flatten(0, 1)), repeats)
                ratios = [cuda_median_ms(call, repeats) / bare for call in _wrapped_calls(module, x)]
            cells = " | ".join(f"{ratio:.3f}x" for ratio in ratios)
            lines.append(f"| {key} {tuple(shape)} | {str(dtype).removeprefix('torch.')} | {bare:.3f} | {cells} |")
    return lines


def _wrapped_calls(module: nn.Module, x: torch.Tensor) -> list[Callable[[], Any]]:
    """The hand-written fold, Distribute and TimeDistributed, each as a call on ``x``."""
    distribute = foldaxes.Distribute(PATTERN, module)
    time_distributed = foldaxes.TimeDistributed(module, batch_first=True)
    return [
        lambda: module(x.flatten(0, 1)).unflatten(0, x.shape[:2]),
        lambda: distribute(x),
        lambda: time_distributed(x),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per cell")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check.")
        return 0
    started = time.perf_counter()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"fold allocated {check_zero_copy()} bytes (expected 0)")
    print(f"CUDA graph replay: max abs error {check_cuda_graph():.2e}")
    print(f"torch.compile(fullgraph=True): max abs error {check_compile():.2e}")
    print("\n".join(timing_table(args.repeats)))
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
