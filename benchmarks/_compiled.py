"""Workload G: workload B's conv under torch.compile, column by column.

For each column this records the graph that inductor receives after functionalization (the ATen ops, in
order), for B's contiguous input and for C's inner-axis crop; times the inductor-compiled columns against the
compiled hand-written fold; and counts how often ``dynamic=True`` compiles over three (B, T) sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from ._columns import FOLDAXES, HAND_WRITTEN, Folds, torch_columns
from ._harness import Rounds, interleaved, rounds_within
from ._workloads import CONV_PATTERN

COLUMNS = (HAND_WRITTEN, *FOLDAXES, "classic recipe", "einops rearrange", "einops pack/unpack", "torch.func.vmap")
DYNAMIC_SIZES = ((4, 8), (2, 5), (3, 7))
COPY_OPS = ("aten.clone", "aten.copy", "aten.cat", "aten._to_copy")


@dataclass
class CompiledResult:
    """Per column: the functional graphs (or the error that stopped the compile), timings and compile counts."""

    graphs: dict[str, dict[str, list[str]] | str]
    rounds: dict[str, Rounds]
    dynamic_compiles: dict[str, int | str]

    def ratio(self, column: str) -> float:
        return self.rounds[column].ratio_to(self.rounds[HAND_WRITTEN])


def functional_graph_ops(fn: Callable[..., Any], *inputs: torch.Tensor) -> list[str]:
    """The ATen ops of the graph that ``torch.compile(fn, fullgraph=True)`` hands to its compiler, called on ``inputs``.

    This is the only place in the benchmarks that touches a private torch API: ``aot_autograd`` is how a
    custom backend sees the functionalized ATen graph that inductor compiles.
    """
    from torch._dynamo.backends.common import aot_autograd

    graphs: list[fx.GraphModule] = []

    def record(graph: fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        graphs.append(graph)
        return graph

    torch._dynamo.reset()
    torch.compile(fn, backend=aot_autograd(fw_compiler=record), fullgraph=True)(*inputs)
    return [str(node.target) for graph in graphs for node in graph.graph.nodes if node.op == "call_function"]


def compile_count(fn: Callable[[torch.Tensor], Any], inputs: list[torch.Tensor]) -> int:
    """How many graphs ``torch.compile(fn, dynamic=True)`` builds to run every input."""
    compiles = 0

    def counting(graph: fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        nonlocal compiles
        compiles += 1
        return graph.forward

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=counting, dynamic=True, fullgraph=True)
    for x in inputs:
        compiled(x)
    return compiles


def run(rounds: int | None, min_run_time: float, budget: float, side: int = 64) -> CompiledResult:
    """Compiles each column of workload B, records its graphs, times it and counts its dynamic compiles."""
    torch.manual_seed(0)
    conv: nn.Module = nn.Conv2d(3, 16, kernel_size=3, padding=1)
    columns = {name: fn for name, fn in torch_columns(conv, Folds(CONV_PATTERN)).items() if name in COLUMNS}
    contiguous = torch.randn(4, 8, 3, side, side)
    inputs = {"contiguous": contiguous, "inner crop": torch.randn(4, 8, 3, side, 2 * side)[..., ::2]}
    graphs: dict[str, dict[str, list[str]] | str] = {}
    compiled: dict[str, Callable[[], Any]] = {}
    dynamic: dict[str, int | str] = {}
    with torch.no_grad():
        for name, fn in columns.items():
            try:
                graphs[name] = {label: aten_ops(functional_graph_ops(fn, x)) for label, x in inputs.items()}
            except Exception as error:  # a peer that cannot compile is a result, not a crash of the benchmark
                graphs[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
                continue
            dynamic[name] = compile_count(fn, [torch.randn(b, t, 3, side, side) for b, t in DYNAMIC_SIZES])
            torch._dynamo.reset()
            inductor = torch.compile(fn, fullgraph=True)
            inductor(contiguous)
            compiled[name] = lambda inductor=inductor: inductor(contiguous)
        measured = interleaved(compiled, rounds or rounds_within(budget, compiled, min_run_time), min_run_time)
    torch._dynamo.reset()
    return CompiledResult(graphs, measured, dynamic)


def aten_ops(ops: list[str]) -> list[str]:
    """The ATen ops of a recorded graph, without their ``.default`` overload names."""
    return [op.removesuffix(".default") for op in ops if op.startswith("aten.")]


def targets(result: CompiledResult) -> list[tuple[str, bool]]:
    """Same ops as the compiled hand-written fold, no copy op, and at most two dynamic compiles."""
    reference = result.graphs[HAND_WRITTEN]
    checks = []
    for column in FOLDAXES:
        graphs = result.graphs[column]
        same = isinstance(graphs, dict) and graphs == reference
        no_copy = isinstance(graphs, dict) and not any(op.startswith(COPY_OPS) for ops in graphs.values() for op in ops)
        compiles = result.dynamic_compiles.get(column)
        checks += [
            (f"G: {column} compiles to the hand-written fold's ops", same),
            (f"G: {column} graph has no clone or copy", no_copy),
            (f"G: {column} dynamic=True compiles <= 2 times for 3 sizes", isinstance(compiles, int) and compiles <= 2),
        ]
    return checks
