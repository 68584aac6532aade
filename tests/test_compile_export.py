"""Graph capture: torch.compile without graph breaks or per-shape recompiles, torch.export with dynamic batch and
time, and torch.jit.trace.

Every reference folds by hand (``flatten``/``unflatten`` or ``einops.rearrange``) and calls the unwrapped module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import einops
import pytest
import torch
from conftest import Fuse, assert_exact
from torch import nn

from foldaxes import Distribute, TimeDistributed

# torch.export warns that nn.LSTM assigns its flat weights while tracing; plain nn.LSTM does it too.
LSTM_EXPORT_WARNING = "ignore:The tensor attributes .*_flat_weights.* were assigned during export:UserWarning"


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Split(nn.Module):
    """A dict of two outputs, for ``out=`` structures."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.linear(x)
        return {"per_frame": y, "pooled": y.mean(0)}


@dataclass
class Case:
    """A wrapped model, how to make its inputs for a (batch, time), and an independent reference."""

    make: Callable[[], nn.Module]
    inputs: Callable[[int, int], tuple[torch.Tensor, ...]]
    reference: Callable[[nn.Module, tuple[torch.Tensor, ...]], Any]
    rnn: bool = False  # dynamo traces nn.LSTM only with torch._dynamo.config.allow_rnn


def _hand_fold(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The wrapped module on the first two axes folded by hand."""
    return model.module(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def _lstm_reference(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    (x,) = inputs
    b, v = x.shape[:2]
    out, (h, c) = model.module(einops.rearrange(x, "b v t d -> t (b v) d"))
    return out.unflatten(1, (b, v)), (h.unflatten(1, (b, v)), c.unflatten(1, (b, v)))


def _lstm_out_reference(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    (x,) = inputs
    out, hidden = model.module(einops.rearrange(x, "b t d -> t b d"))
    return einops.rearrange(out, "t b h -> b t h"), hidden


def _split_reference(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    (x,) = inputs
    y = model.module(x.flatten(0, 1))
    return {"per_frame": einops.rearrange(y["per_frame"], "(b t) h -> t b h", b=x.shape[0]), "pooled": y["pooled"]}


CASES = {
    "conv": Case(
        lambda: Distribute("b t c h w -> (b t) c h w", nn.Conv2d(3, 4, 3)),
        lambda b, t: (torch.randn(b, t, 3, 8, 8),),
        lambda m, xs: _hand_fold(m, xs[0]),
    ),
    "multi-axis": Case(
        lambda: Distribute("b t v c h w -> (b t v) c h w", cnn()),
        lambda b, t: (torch.randn(b, t, 2, 3, 8, 8),),
        lambda m, xs: m.module(xs[0].flatten(0, 2)).unflatten(0, xs[0].shape[:3]),
    ),
    "time-distributed": Case(
        lambda: TimeDistributed(nn.Linear(4, 2), True),
        lambda b, t: (torch.randn(b, t, 4),),
        lambda m, xs: _hand_fold(m, xs[0]),
    ),
    "permute-and-out-pattern": Case(
        lambda: Distribute("b c t h w -> (b t) c h w", nn.Conv2d(3, 4, 3), out="(b t) c h w -> b c t h w"),
        lambda b, t: (torch.randn(b, 3, t, 8, 8),),
        lambda m, xs: einops.rearrange(
            m.module(einops.rearrange(xs[0], "b c t h w -> (b t) c h w")), "(b t) c h w -> b c t h w", b=len(xs[0])
        ),
    ),
    "multi-operand": Case(
        lambda: Distribute("b t c h w, b t n -> (b t) c h w, (b t) n", Fuse()),
        lambda b, t: (torch.randn(b, t, 3, 8, 8), torch.randn(b, t, 5)),
        lambda m, xs: m.module(xs[0].flatten(0, 1), xs[1].flatten(0, 1)).unflatten(0, xs[0].shape[:2]),
    ),
    "lstm-nested-output": Case(
        lambda: Distribute("b v t d -> t (b v) d", nn.LSTM(4, 6)),
        lambda b, t: (torch.randn(b, 2, t, 4),),
        _lstm_reference,
        rnn=True,
    ),
    "lstm-out-structure": Case(
        lambda: Distribute("b t d -> t b d", nn.LSTM(4, 6), out=("t b h -> b t h", None)),
        lambda b, t: (torch.randn(b, t, 4),),
        _lstm_out_reference,
        rnn=True,
    ),
    "dict-out-structure": Case(
        lambda: Distribute("b t d -> (b t) d", Split(), out={"pooled": None, "per_frame": "(b t) h -> t b h"}),
        lambda b, t: (torch.randn(b, t, 4),),
        _split_reference,
    ),
}
CASE_PARAMS = [pytest.param(case, id=name) for name, case in CASES.items()]


@contextlib.contextmanager
def dynamo_for(case: Case) -> Iterator[None]:
    """A fresh dynamo cache, with nn.LSTM allowed for the cases that hold one."""
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(allow_rnn=case.rnn):
            yield
    finally:
        torch._dynamo.reset()


class TestCompile:
    @pytest.mark.parametrize("case", CASE_PARAMS)
    def test_fullgraph_one_graph_no_break(self, case: Case) -> None:
        model = case.make()
        inputs = case.inputs(2, 3)
        with dynamo_for(case):
            explanation = torch._dynamo.explain(model)(*inputs)
            assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
            compiled = torch.compile(model, fullgraph=True, backend="eager")
            assert_exact(compiled(*inputs), case.reference(model, inputs), 1e-6)

    @pytest.mark.parametrize(
        ("case", "warm"),
        [pytest.param(case, True, id=f"{name}-warm-plans") for name, case in CASES.items()]
        + [pytest.param(CASES[name], False, id=f"{name}-cold-plans") for name in ["conv", "lstm-nested-output"]],
    )
    def test_dynamic_does_not_recompile_per_shape(self, case: Case, warm: bool) -> None:
        """Four (batch, time) pairs: one compilation, or two when the plan cache is filled while tracing.

        The sizes differ from every other dim of the inputs and parameters, since dynamo gives equal sizes one symbol
        (a batch of 4 would be specialised by a Linear(4, ...)), and batch*time is at least 16, below which torch's
        own conv guards on the folded size.
        """
        model = case.make()
        if warm:
            model(*case.inputs(2, 3))
        graphs: list[torch.fx.GraphModule] = []

        def counting(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
            graphs.append(graph)
            return graph.forward

        with dynamo_for(case):
            compiled = torch.compile(model, backend=counting, dynamic=True, fullgraph=True)
            for b, t in [(7, 9), (9, 10), (11, 7), (10, 12)]:
                inputs = case.inputs(b, t)
                assert_exact(compiled(*inputs), case.reference(model, inputs), 1e-6)
        if warm:
            assert len(graphs) == 1
        else:
            assert 1 <= len(graphs) <= 2

    @pytest.mark.slow  # inductor compiles C++: about 9 s on a cold cache
    def test_inductor(self) -> None:
        case = CASES["conv"]
        model = case.make()
        x = torch.randn(2, 3, 3, 8, 8)
        with dynamo_for(case):
            compiled = torch.compile(model, fullgraph=True)
            torch.testing.assert_close(compiled(x), _hand_fold(model, x))


class VideoClassifier(nn.Module):
    """A CNN per frame, a TimeDistributed head, a mean over time: (B, T, 3, 8, 8) -> (B, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = Distribute("b t c h w -> (b t) c h w", cnn())
        self.head = TimeDistributed(nn.Linear(4, 2), batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.frames(x)).mean(1)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        features = self.frames.module(x.flatten(0, 1))
        return self.head.module(features).unflatten(0, x.shape[:2]).mean(1)


class Holder(nn.Module):
    """Holds a case's wrapped module as a child, so that ``dynamic_shapes`` names ``forward``'s arguments."""

    def __init__(self, wrapped: nn.Module) -> None:
        super().__init__()
        self.wrapped = wrapped

    def forward(self, *args: torch.Tensor) -> Any:
        return self.wrapped(*args)


class TestExport:
    @pytest.mark.parametrize(
        ("strict", "warm"),
        [
            pytest.param(False, False, id="non-strict"),
            pytest.param(True, True, id="strict-warm-plans"),
            pytest.param(True, False, id="strict-cold-plans"),
        ],
    )
    def test_video_classifier(self, strict: bool, warm: bool) -> None:
        model = VideoClassifier().eval()
        if warm:
            model(torch.randn(2, 3, 3, 8, 8))
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("time")}
        program = torch.export.export(model, (torch.randn(2, 3, 3, 8, 8),), dynamic_shapes=(dims,), strict=strict)
        for b, t in [(5, 7), (3, 2)]:
            x = torch.randn(b, t, 3, 8, 8)
            torch.testing.assert_close(program.module()(x), model.reference(x))

    @pytest.mark.parametrize(
        ("name", "positions"),
        [
            pytest.param("conv", [(0, 1)], id="conv"),
            pytest.param("multi-axis", [(0, 1)], id="multi-axis"),
            pytest.param("time-distributed", [(0, 1)], id="time-distributed"),
            pytest.param("permute-and-out-pattern", [(0, 2)], id="permute-and-out-pattern"),
            pytest.param("multi-operand", [(0, 1), (0, 1)], id="multi-operand"),
            pytest.param("dict-out-structure", [(0, 1)], id="dict-out-structure"),
        ],
    )
    def test_dynamic_batch_and_time(self, name: str, positions: list[tuple[int, int]]) -> None:
        case = CASES[name]
        model = case.make().eval()
        batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
        dynamic = tuple({b: batch, t: time} for b, t in positions)
        program = torch.export.export(Holder(model), case.inputs(2, 3), dynamic_shapes={"args": dynamic})
        for b, t in [(5, 7), (3, 2)]:
            inputs = case.inputs(b, t)
            assert_exact(program.module()(*inputs), case.reference(model, inputs), 1e-6)

    def test_a_bare_wrapper_takes_dynamic_shapes_for_its_args(self) -> None:
        model = CASES["conv"].make()
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("time")}
        program = torch.export.export(model, (torch.randn(2, 3, 3, 8, 8),), dynamic_shapes={"args": (dims,)})
        x = torch.randn(4, 5, 3, 8, 8)
        torch.testing.assert_close(program.module()(x), _hand_fold(model, x))

    @pytest.mark.filterwarnings(LSTM_EXPORT_WARNING)
    def test_lstm_nested_output_with_dynamic_folded_axes(self) -> None:
        """nn.LSTM unrolls over time when exported, so time stays static; the folded (b v) is dynamic."""
        case = CASES["lstm-nested-output"]
        model = case.make().eval()
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("views")}
        program = torch.export.export(model, (torch.randn(2, 3, 5, 4),), dynamic_shapes={"args": (dims,)})
        x = torch.randn(4, 2, 5, 4)
        assert_exact(program.module()(x), case.reference(model, (x,)), 1e-6)


class TestTrace:
    # torch 2.13 deprecates jit.trace itself. The size checks read traced sizes (a TracerWarning each); they hold for
    # every input the trace is later called with, which is what the test checks.
    @pytest.mark.filterwarnings(r"ignore:`torch\.jit\.trace(_method)?` is deprecated:DeprecationWarning")
    @pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
    @pytest.mark.parametrize(
        "name", ["conv", "time-distributed", "multi-operand", "permute-and-out-pattern", "lstm-nested-output"]
    )
    def test_jit_trace_generalises_to_other_sizes(self, name: str) -> None:
        case = CASES[name]
        model = case.make()
        traced = torch.jit.trace(model, case.inputs(2, 3))
        inputs = case.inputs(4, 5)
        assert_exact(traced(*inputs), case.reference(model, inputs), 1e-6)
