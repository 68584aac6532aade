"""Workloads I to L: the general call path (several tensors in, tuples, nested tuples and dicts out, ``out=``).

Each workload times foldaxes beside the thinnest hand-written wrapper that does the same fold, call and unfold
by hand, and beside the peers that can run the case: einops by hand (a ``rearrange`` of each input and of each
output leaf), ``torch.func.vmap`` twice over the two folded axes, and fastai's ``TimeDistributed`` when it is
installed. A peer that raises is reported as failing; fastai, which unfolds a tensor or a flat tuple of tensors
only, is reported as not applicable to nested and dict outputs. For I and J the graphs that
``torch.compile(fullgraph=True)`` hands to its compiler are compared too, foldaxes' against the hand-written one's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import einops
import torch
from torch import nn

import foldaxes

from ._columns import fastai_time_distributed
from ._compiled import aten_ops, functional_graph_ops
from ._harness import Rounds, interleaved, rounds_within

THINNEST = "thinnest hand-written"
EINOPS = "einops by hand"
VMAP = "torch.func.vmap"
FASTAI = "fastai TimeDistributed"
RATIO_LIMIT = 1.10
FASTAI_NOT_APPLICABLE = "n/a: fastai unfolds a tensor or a flat tuple of tensors, not this output"

Column = Callable[..., Any]


@dataclass(frozen=True)
class Built:
    """One workload's inputs and its columns, each a call on the inputs; ``unavailable`` says why a peer is missing."""

    inputs: tuple[torch.Tensor, ...]
    columns: dict[str, Column]
    unavailable: dict[str, str]


@dataclass(frozen=True)
class Case:
    """One workload of the general call path.

    Attributes:
        key: ``I``, ``J``, ``K`` or ``L``.
        title: What runs on what.
        foldaxes_name: The foldaxes column: ``Distribute`` or ``distribute``.
        build: Builds the inputs and the columns in a dtype, from a fixed seed.
        compiled: Whether the compiled graphs are compared.
    """

    key: str
    title: str
    foldaxes_name: str
    build: Callable[[torch.dtype], Built]
    compiled: bool = False


@dataclass
class GeneralResult:
    """What one workload measured: each column's rounds, the peers that could not run, and the compiled graphs.

    ``graphs`` maps the hand-written and the foldaxes column to their ATen ops, or to the error that stopped the
    compile; it is empty where the case compares no graphs.
    """

    case: Case
    rounds: dict[str, Rounds]
    unavailable: dict[str, str]
    graphs: dict[str, list[str] | str]

    def ratio(self, column: str) -> float:
        return self.rounds[column].ratio_to(self.rounds[THINNEST])


class AttentionByHand(nn.Module):
    """I's thinnest hand-written wrapper: flatten q, k and v, call, unflatten both outputs."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.m = attention

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sizes = q.shape[:2]
        out, weights = self.m(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1))
        return out.unflatten(0, sizes), weights.unflatten(0, sizes)


class LSTMByHand(nn.Module):
    """J's thinnest hand-written wrapper: the states keep the layer axis first, so they unflatten at dim 1."""

    def __init__(self, lstm: nn.Module) -> None:
        super().__init__()
        self.m = lstm

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        sizes = x.shape[:2]
        out, (h, c) = self.m(x.flatten(0, 1))
        return out.unflatten(0, sizes), (h.unflatten(1, sizes), c.unflatten(1, sizes))


def _built(inputs: tuple[torch.Tensor, ...], columns: dict[str, Column], fn: Column, fastai_applies: bool) -> Built:
    """Adds fastai's ``TimeDistributed`` of ``fn`` when it is installed, or says why it cannot run the case."""
    fastai = fastai_time_distributed()
    if fastai is None:
        return Built(inputs, columns, {})
    if not fastai_applies:
        return Built(inputs, columns, {FASTAI: FASTAI_NOT_APPLICABLE})
    return Built(inputs, {**columns, FASTAI: fastai(fn)}, {})


def attention(dtype: torch.dtype) -> Built:
    """I: self-attention over (b t), three tensors in, (out, weights) out."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).to(dtype).eval()
    q = torch.randn(2, 4, 10, 32, dtype=dtype)

    def einops_by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = q.shape[:2]
        out, weights = mha(*(einops.rearrange(x, "b t s e -> (b t) s e") for x in (q, k, v)))
        return (
            einops.rearrange(out, "(b t) s e -> b t s e", b=b, t=t),
            einops.rearrange(weights, "(b t) s r -> b t s r", b=b, t=t),
        )

    columns: dict[str, Column] = {
        THINNEST: AttentionByHand(mha),
        "Distribute": foldaxes.Distribute("b t s e -> (b t) s e", mha),
        EINOPS: einops_by_hand,
        VMAP: torch.func.vmap(torch.func.vmap(mha)),
    }
    return _built((q, q, q), columns, mha, fastai_applies=True)


def lstm(dtype: torch.dtype) -> Built:
    """J: an LSTM over (b v), whose states (layers, batch, hidden) unfold through ``out=``."""
    torch.manual_seed(0)
    rnn = nn.LSTM(32, 32, batch_first=True).to(dtype).eval()
    x = torch.randn(2, 3, 10, 32, dtype=dtype)
    state = "l (b v) h -> l b v h"

    def einops_by_hand(x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, v = x.shape[:2]
        out, (h, c) = rnn(einops.rearrange(x, "b v s e -> (b v) s e"))
        return (
            einops.rearrange(out, "(b v) s e -> b v s e", b=b, v=v),
            (einops.rearrange(h, state, b=b, v=v), einops.rearrange(c, state, b=b, v=v)),
        )

    # An unbatched LSTM returns states (layers, hidden); each vmap puts its axis where the states' batch goes.
    in_place = (0, (1, 1))
    vmap = torch.func.vmap(torch.func.vmap(rnn, out_dims=in_place), out_dims=in_place)
    columns: dict[str, Column] = {
        THINNEST: LSTMByHand(rnn),
        "Distribute": foldaxes.Distribute("b v s e -> (b v) s e", rnn, out=("(b v) s e -> b v s e", (state, state))),
        EINOPS: einops_by_hand,
        VMAP: vmap,
    }
    return _built((x,), columns, rnn, fastai_applies=False)


def dict_out(dtype: torch.dtype) -> Built:
    """K: a function returning a dict of four tensors, one of them a reduction and one the input itself."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 16).to(dtype)

    def f(x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = lin(x)
        return {"y": y, "relu": y.relu(), "x": x, "sum": y.sum(-1)}

    def by_hand(x: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes = x.shape[:2]
        return {name: value.unflatten(0, sizes) for name, value in f(x.flatten(0, 1)).items()}

    def einops_by_hand(x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, t = x.shape[:2]
        out = f(einops.rearrange(x, "b t d -> (b t) d"))
        return {name: einops.rearrange(value, "(b t) ... -> b t ...", b=b, t=t) for name, value in out.items()}

    columns: dict[str, Column] = {
        THINNEST: by_hand,
        "distribute": foldaxes.distribute("b t d -> (b t) d", f),
        EINOPS: einops_by_hand,
        VMAP: torch.func.vmap(torch.func.vmap(f)),
    }
    return _built((torch.randn(2, 4, 16, dtype=dtype),), columns, f, fastai_applies=False)


def two_inputs(dtype: torch.dtype) -> Built:
    """L: a function of two tensors, both folded."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 16).to(dtype)

    def f(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lin(x) + y

    def by_hand(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return f(x.flatten(0, 1), y.flatten(0, 1)).unflatten(0, x.shape[:2])

    def einops_by_hand(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        folded = (einops.rearrange(x, "b t d -> (b t) d"), einops.rearrange(y, "b t e -> (b t) e"))
        return einops.rearrange(f(*folded), "(b t) d -> b t d", b=b, t=t)

    columns: dict[str, Column] = {
        THINNEST: by_hand,
        "distribute": foldaxes.distribute("b t d, b t e -> (b t) d, (b t) e", f),
        EINOPS: einops_by_hand,
        VMAP: torch.func.vmap(torch.func.vmap(f)),
    }
    inputs = (torch.randn(2, 4, 16, dtype=dtype), torch.randn(2, 4, 16, dtype=dtype))
    return _built(inputs, columns, f, fastai_applies=True)


CASES = (
    Case(
        "I",
        "MultiheadAttention(32, 4), q = k = v (2, 4, 10, 32) folded as (b t); returns (out, weights)",
        "Distribute",
        attention,
        compiled=True,
    ),
    Case(
        "J",
        "LSTM(32, 32), x (2, 3, 10, 32) folded as (b v); returns (out, (h, c)), unfolded by out=",
        "Distribute",
        lstm,
        compiled=True,
    ),
    Case("K", "a function returning a dict of 4 tensors (Linear(16, 16) inside), x (2, 4, 16)", "distribute", dict_out),
    Case("L", "lin(x) + y, two inputs (2, 4, 16) each", "distribute", two_inputs),
)


def run(case: Case, rounds: int | None, min_run_time: float, budget: float) -> GeneralResult:
    """Times every column of ``case`` that runs (``rounds``, or as many as fit in ``budget`` seconds) and, for
    I and J, records the compiled graphs."""
    built = case.build(torch.float32)
    unavailable = dict(built.unavailable)
    calls: dict[str, Callable[[], Any]] = {}
    with torch.no_grad():
        for name, column in built.columns.items():
            call = _call(column, built.inputs)
            try:
                call()  # warm-up: first-call costs are workload H's business
            except Exception as error:  # a peer that cannot run the case is a result, not a crash of the benchmark
                unavailable[name] = f"fails: `{type(error).__name__}: {str(error).splitlines()[0][:90]}`"
                continue
            calls[name] = call
        rounds = rounds or rounds_within(budget, calls, min_run_time, 3 if budget < 5 else 9)
        measured = interleaved(calls, rounds, min_run_time)
        graphs = compiled_graphs(case, built) if case.compiled else {}
    return GeneralResult(case, measured, unavailable, graphs)


def _call(column: Column, inputs: tuple[torch.Tensor, ...]) -> Callable[[], Any]:
    return lambda: column(*inputs)


def compiled_graphs(case: Case, built: Built) -> dict[str, list[str] | str]:
    """The ATen ops that ``torch.compile(fullgraph=True)`` of the hand-written and the foldaxes column produce.

    Each column is called eagerly first, so that foldaxes' caches are warm, as they are in a model compiled after
    an eager step; ``functional_graph_ops`` resets dynamo before each recording.
    """
    graphs: dict[str, list[str] | str] = {}
    # Dynamo refuses to trace nn.LSTM unless told to.
    with torch.no_grad(), torch._dynamo.config.patch(allow_rnn=True):
        for name in (THINNEST, case.foldaxes_name):
            column = built.columns[name]
            try:
                column(*built.inputs)
                graphs[name] = aten_ops(functional_graph_ops(column, *built.inputs))
            except Exception as error:  # as for workload G: a failing compile is reported
                graphs[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
    torch._dynamo.reset()
    return graphs


def targets(result: GeneralResult) -> list[tuple[str, bool]]:
    """foldaxes within 1.10x of the thinnest hand-written wrapper; for I and J, the same compiled ops."""
    case = result.case
    ratio = result.ratio(case.foldaxes_name) if case.foldaxes_name in result.rounds else float("inf")
    checks = [(f"{case.key}: {case.foldaxes_name} <= {RATIO_LIMIT:.2f}x {THINNEST}", ratio <= RATIO_LIMIT)]
    if case.compiled:
        reference, graph = result.graphs.get(THINNEST), result.graphs.get(case.foldaxes_name)
        same = isinstance(graph, list) and graph == reference
        checks.append((f"{case.key}: {case.foldaxes_name} compiles to the hand-written wrapper's ops", same))
    return checks
