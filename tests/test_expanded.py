"""Inputs repeated along a folded axis (stride 0): the module runs once per distinct slice and the output is
expanded back, exactly as the dense call (on a contiguous copy of the input) computes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import assert_exact, loop_reference
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from foldaxes import Distribute, FoldError, TimeDistributed


class Recorder(nn.Module):
    def __init__(self, module: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        self.rows: list[int] = []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.rows.append(args[0].shape[0])
        return self.module(*args, **kwargs)


def conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))


@pytest.mark.usefixtures("float64")
class TestOneCopyIsComputed:
    def test_image_broadcast_over_time(self) -> None:
        recorder = Recorder(conv_net())
        image = torch.randn(2, 1, 3, 8, 8)
        x = image.expand(2, 5, 3, 8, 8)
        y = Distribute("b t c h w -> (b t) c h w", recorder)(x)
        assert recorder.rows == [2]
        assert y.shape == (2, 5, 2, 4, 4) and y.stride(1) == 0
        assert_exact(y, loop_reference(recorder.module, [x.contiguous()], [0, 1]))

    def test_every_folded_axis_repeats(self) -> None:
        recorder = Recorder(nn.Linear(4, 3))
        x = torch.randn(4).expand(2, 3, 4)
        y = TimeDistributed(recorder, True)(x)
        assert recorder.rows == [1] and y.stride()[:2] == (0, 0)
        assert_exact(y, recorder.module(x.contiguous()))

    def test_repeated_batch_axis_and_ellipsis_group(self) -> None:
        recorder = Recorder(nn.Linear(4, 3))
        x = torch.randn(1, 3, 2, 4).expand(5, 3, 2, 4)
        y = Distribute("... d -> (...) d", recorder)(x)
        assert recorder.rows == [6] and y.stride(0) == 0
        assert_exact(y, recorder.module(x.contiguous()))

    def test_permuted_operand(self) -> None:
        recorder = Recorder(nn.Linear(4, 3))
        x = torch.randn(1, 2, 4).expand(6, 2, 4)  # (t, b, d), folded as (b t)
        y = Distribute("t b d -> (b t) d", recorder)(x)
        assert recorder.rows == [2] and y.shape == (2, 6, 3) and y.stride(1) == 0
        assert_exact(y, recorder.module(x.contiguous()).transpose(0, 1))

    def test_several_arguments_repeating_alike(self) -> None:
        recorder = Recorder(lambda a, b: a * b.sum(-1, keepdim=True))
        a, b = torch.randn(2, 1, 4).expand(2, 3, 4), torch.randn(2, 1, 5).expand(2, 3, 5)
        y = Distribute("b t x, b t y -> (b t) x, (b t) y", recorder)(a, b)
        assert recorder.rows == [2]
        assert_exact(y, a * b.sum(-1, keepdim=True))

    def test_nested_outputs_and_chunks(self) -> None:
        recorder = Recorder(lambda z: {"z": z, "n": (z.norm(dim=-1), "label")})
        x = torch.randn(3, 1, 4).expand(3, 8, 4)
        y = Distribute("b t d -> (b t) d", recorder, chunk_size=2)(x)
        assert recorder.rows == [2, 1]
        assert_exact(y["z"], x)
        assert_exact(y["n"][0], x.norm(dim=-1))
        assert y["n"][1] == "label"

    def test_output_is_an_expanded_view(self) -> None:
        y = Distribute("b t d -> (b t) d", nn.Linear(4, 3))(torch.randn(2, 1, 4).expand(2, 3, 4))
        with pytest.raises(RuntimeError, match="single memory location"):
            y.add_(1)
        y = y.clone()
        y[:, 0] = 0
        assert not y[:, 0].any() and y[:, 1].any()

    @given(
        shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
        repeated=st.sets(st.integers(0, 2)),
        seed=st.integers(0, 2**16),
    )
    @settings(max_examples=50, deadline=None, derandomize=True)
    def test_any_repeated_axes(self, shape: tuple[int, int, int], repeated: set[int], seed: int) -> None:
        torch.manual_seed(seed)
        linear = nn.Linear(2, 3)
        stored = tuple(1 if axis in repeated else size for axis, size in enumerate(shape))
        x = torch.randn(*stored, 2).expand(*shape, 2)
        recorder = Recorder(linear)
        y = Distribute("a b c d -> (a b c) d", recorder)(x)
        assert recorder.rows == [int(torch.tensor(stored).prod())]
        assert_exact(y, linear(x.contiguous()))


def test_compiles_with_fullgraph() -> None:
    torch._dynamo.reset()
    recorder = Recorder(nn.Conv2d(3, 4, 3))
    wrapped = Distribute("b t c h w -> (b t) c h w", recorder)
    x = torch.randn(2, 1, 3, 8, 8).expand(2, 5, 3, 8, 8)
    torch.testing.assert_close(torch.compile(wrapped, fullgraph=True, backend="eager")(x), wrapped(x))
    assert recorder.rows[-1] == 2


@pytest.mark.usefixtures("float64")
class TestGradients:
    def test_gradcheck(self) -> None:
        wrapped = Distribute("b t c h w -> (b t) c h w", nn.Conv2d(2, 2, 3))

        def call(image: torch.Tensor) -> torch.Tensor:
            return wrapped(image.expand(2, 3, 2, 5, 5))  # type: ignore[no-any-return]

        assert torch.autograd.gradcheck(call, (torch.randn(2, 1, 2, 5, 5, requires_grad=True),))

    def test_gradients_sum_over_copies_as_the_dense_call(self) -> None:
        net = conv_net()
        image = torch.randn(2, 1, 3, 8, 8, requires_grad=True)
        weights = torch.randn(2, 5, 2, 4, 4)
        (Distribute("b t c h w -> (b t) c h w", net)(image.expand(2, 5, 3, 8, 8)) * weights).sum().backward()
        grads = [image.grad.clone(), *(p.grad.clone() for p in net.parameters())]
        image.grad = None
        net.zero_grad()
        (loop_reference(net, [image.expand(2, 5, 3, 8, 8)], [0, 1]) * weights).sum().backward()
        for actual, expected in zip(grads, [image.grad, *(p.grad for p in net.parameters())], strict=True):
            assert_exact(actual, expected)


class TestComputedDensely:
    @pytest.mark.parametrize(
        "make",
        [
            lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)),
            lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)),
            lambda: nn.BatchNorm1d(4, track_running_stats=False).eval(),
        ],
        ids=["dropout", "batchnorm-training", "batchnorm-without-running-stats"],
    )
    def test_modules_whose_copies_differ(self, make: Callable[[], nn.Module]) -> None:
        recorder = Recorder(make())
        Distribute("b t d -> (b t) d", recorder)(torch.randn(2, 1, 4).expand(2, 3, 4))
        assert recorder.rows == [6]

    @pytest.mark.parametrize(("dropout", "rows"), [(0.5, 6), (0.0, 2)], ids=["dropout", "no-dropout"])
    def test_recurrent_dropout(self, dropout: float, rows: int) -> None:
        class Outputs(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = nn.LSTM(4, 4, num_layers=2, dropout=dropout, batch_first=True)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.lstm(x)[0]  # type: ignore[no-any-return]

        recorder = Recorder(Outputs())
        out = Distribute("b t s d -> (b t) s d", recorder)(torch.randn(2, 1, 5, 4).expand(2, 3, 5, 4))
        assert recorder.rows == [rows] and out.shape == (2, 3, 5, 4)

    @pytest.mark.parametrize(
        "make",
        [
            lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).eval(),
            lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval(),
            lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0)),
        ],
        ids=["dropout-eval", "batchnorm-eval", "dropout-zero"],
    )
    def test_the_same_modules_when_deterministic(self, make: Callable[[], nn.Module]) -> None:
        recorder = Recorder(make())
        Distribute("b t d -> (b t) d", recorder)(torch.randn(2, 1, 4).expand(2, 3, 4))
        assert recorder.rows == [2]

    @pytest.mark.parametrize(
        ("call", "rows"),
        [
            (lambda w: w(torch.randn(2, 1, 4).expand(2, 3, 4), torch.randn(2, 3, 4)), 6),
            (lambda w: w(torch.randn(2, 1, 4).expand(2, 3, 4), torch.randn(2, 3, 1).expand(2, 3, 4)), 6),
            (lambda w: w(torch.randn(1, 3, 4).expand(2, 3, 4), torch.randn(2, 1, 4).expand(2, 3, 4)), 6),
            (lambda w: w(torch.randn(2, 1, 4).expand(2, 3, 4), torch.randn(1, 1, 4).expand(2, 3, 4)), 2),
        ],
        ids=["one-dense-argument", "repeats-elsewhere", "different-axes", "common-axis"],
    )
    def test_only_axes_every_argument_repeats(self, call: Callable[[nn.Module], Any], rows: int) -> None:
        recorder = Recorder(lambda a, b: a + b)
        call(Distribute("b t d -> (b t) d", recorder))
        assert recorder.rows == [rows]

    def test_axes_with_given_lengths_and_out(self) -> None:
        recorder = Recorder(nn.Linear(4, 3))
        x = torch.randn(2, 1, 4).expand(2, 3, 4)
        Distribute("b t d -> (b t) d", recorder, t=3)(x)
        Distribute("b t d -> (b t) d", recorder, out="(b t) e -> t b e")(x)
        assert recorder.rows == [6, 6]

    def test_masks_compute_only_the_valid_rows(self) -> None:
        recorder = Recorder(nn.Linear(4, 3))
        Distribute("b t d -> (b t) d", recorder)(torch.randn(2, 1, 4).expand(2, 3, 4), fold_lengths=[3, 1])
        assert recorder.rows == [4]


class TestErrors:
    def test_arguments_that_disagree(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", lambda a, b: a)
        with pytest.raises(FoldError, match="argument 1 disagrees with argument 0 on axis 't': 4 here, 3 there"):
            wrapped(torch.randn(2, 1, 4).expand(2, 3, 4), torch.randn(2, 1, 4).expand(2, 4, 4))

    def test_output_without_rows_names_the_repeat(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", lambda z: z.sum())
        with pytest.raises(FoldError) as info:
            wrapped(torch.randn(2, 1, 4).expand(2, 3, 4))
        assert "The output cannot be unfolded" in str(info.value)
        assert "The input repeats (stride 0) along t, so the module ran on one copy" in str(info.value)
