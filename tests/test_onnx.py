"""ONNX: ``torch.onnx.export(..., dynamo=True)`` with dynamic batch and time, run by onnxruntime.

A view fold adds no Transpose to the graph: only ``Reshape``s, so onnxruntime never moves a rank-5 or rank-6 tensor.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from foldaxes import Distribute, TimeDistributed

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
onnxruntime = pytest.importorskip("onnxruntime")

pytestmark = [
    pytest.mark.slow,
    # Raised inside torch.export's own deepcopy of its module call graph on torch 2.13, for any model.
    pytest.mark.filterwarnings(
        r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning",
    ),
]

SIZES = [(2, 3), (5, 4), (1, 7)]
"""(batch, time) at which onnxruntime runs each graph; the graph is exported at the first."""


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class PerFrameCNN(nn.Module):
    """A CNN per frame via Distribute, a mean over time, then a Linear: (B, T, 3, 8, 8) -> (B, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = Distribute("b t c h w -> (b t) c h w", cnn())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.frames(x).mean(1))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.frames.module(x.flatten(0, 1)).unflatten(0, x.shape[:2]).mean(1))


class ViewsAndHead(nn.Module):
    """Folds three axes, then a TimeDistributed head: (B, T, 2, 3, 8, 8) -> (B, T, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = Distribute("b t v c h w -> (b t v) c h w", cnn())
        self.head = TimeDistributed(nn.Linear(4, 2), batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.frames(x).mean(2))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        features = self.frames.module(x.flatten(0, 2)).unflatten(0, x.shape[:3]).mean(2)
        return self.head.module(features.flatten(0, 1)).unflatten(0, x.shape[:2])


class SwapHW(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(2, 3)


class TransposesInside(nn.Module):
    """The wrapped module transposes its own rank-4 frames: those Transposes are the module's, not the fold's."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = Distribute("b t c h w -> (b t) c h w", nn.Sequential(SwapHW(), nn.Conv2d(3, 4, 3), SwapHW()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frames(x)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.frames.module(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class NonAdjacentFold(nn.Module):
    """Folds ``b`` and ``t`` across ``c``: the one copy a fold can need, so a rank-5 Transpose is expected."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = Distribute("b c t h w -> (b t) c h w", nn.Conv2d(3, 4, 3), out="(b t) c h w -> b c t h w")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frames(x).mean((3, 4))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.frames.module(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        return y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4).mean((3, 4))


@dataclass(frozen=True)
class Case:
    make: Callable[[], nn.Module]
    shape: Callable[[int, int], tuple[int, ...]]
    dims: tuple[int, int]  # where batch and time are in the input
    largest_transpose: int  # the longest Transpose perm the exported graph may hold (0: no Transpose at all)


CASES = {
    "per-frame-cnn": Case(PerFrameCNN, lambda b, t: (b, t, 3, 8, 8), (0, 1), 0),
    "views-and-time-distributed-head": Case(ViewsAndHead, lambda b, t: (b, t, 2, 3, 8, 8), (0, 1), 0),
    "module-transposes-rank-4": Case(TransposesInside, lambda b, t: (b, t, 3, 8, 6), (0, 1), 4),
    "non-adjacent-fold-copies": Case(NonAdjacentFold, lambda b, t: (b, 3, t, 8, 8), (0, 2), 5),
}
CASE_IDS = list(CASES)


@functools.cache
def exported(name: str) -> tuple[nn.Module, onnx.ModelProto]:
    """The eager model and its ONNX graph, exported once per module with dynamic batch and time."""
    case = CASES[name]
    torch.manual_seed(0)
    model = case.make().eval()
    batch, time = case.dims
    dynamic = ({batch: torch.export.Dim("batch"), time: torch.export.Dim("time")},)
    example = (torch.randn(case.shape(*SIZES[0])),)
    program = torch.onnx.export(model, example, dynamo=True, dynamic_shapes=dynamic, verbose=False)
    assert program is not None
    return model, program.model_proto


def transposes(graph: onnx.GraphProto) -> list[list[int]]:
    """The perm of every Transpose node, subgraphs included."""
    perms = []
    for node in graph.node:
        if node.op_type == "Transpose":
            perms.append(next(list(a.ints) for a in node.attribute if a.name == "perm"))
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                perms += transposes(attribute.g)
    return perms


class TestOnnx:
    @pytest.mark.parametrize("name", CASE_IDS)
    def test_onnxruntime_matches_eager_at_three_sizes(self, name: str) -> None:
        model, proto = exported(name)
        onnx.checker.check_model(proto)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        (input_name,) = [i.name for i in session.get_inputs()]
        for b, t in SIZES:
            x = torch.randn(CASES[name].shape(b, t))
            (got,) = session.run(None, {input_name: x.numpy()})
            with torch.no_grad():
                expected = model.reference(x)
            torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=1e-5)

    @pytest.mark.parametrize("name", CASE_IDS)
    def test_batch_and_time_are_symbolic(self, name: str) -> None:
        _, proto = exported(name)
        (graph_input,) = proto.graph.input
        shape = graph_input.type.tensor_type.shape.dim
        batch, time = CASES[name].dims
        assert shape[batch].dim_param and shape[time].dim_param
        assert shape[batch].dim_param != shape[time].dim_param
        static = [d.dim_value for i, d in enumerate(shape) if i not in (batch, time)]
        assert static == [s for i, s in enumerate(CASES[name].shape(0, 0)) if i not in (batch, time)]

    @pytest.mark.parametrize("name", CASE_IDS)
    def test_a_view_fold_adds_no_transpose(self, name: str) -> None:
        """No Transpose when neither the fold nor the module needs one; none above rank 4 on a view fold.

        The non-adjacent fold is the control: its copy is a rank-5 Transpose, which this check would catch.
        """
        _, proto = exported(name)
        perms = transposes(proto.graph)
        largest = CASES[name].largest_transpose
        assert max(map(len, perms), default=0) == largest, perms
