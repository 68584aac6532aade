"""Inputs repeated along a folded axis (stride 0, as ``expand`` makes them).

By default every copy is computed, exactly as the dense call on a contiguous copy of the input, whatever the module
does: draw random numbers, mix rows. With ``compute_repeats_once=True`` the module runs once per distinct slice and
the output is expanded back; modules that would make copies differ are computed densely or refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import CARRIERS, Recorder, assert_exact, loop_reference, message
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from foldaxes import Distribute, FoldError, TimeDistributed, distribute

ONCE = {"compute_repeats_once": True}


def conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))


class DropPath(nn.Module):
    """Drops whole samples in training, as timm's ``DropPath`` does: one Bernoulli draw per row."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class StochasticDepth(nn.Module):
    """torchvision's ``StochasticDepth`` in "row" mode: a residual branch kept or dropped per row."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.branch = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        survival = 1 - self.p
        noise = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(survival).div_(survival)
        return x + self.branch(x) * noise if self.training else x + self.branch(x)


class Sampler(nn.Module):
    """Draws noise in every mode, as a VAE's reparameterisation does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


def functional_dropout(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.dropout(x, 0.5, training=True)


RANDOM_MODULES = [
    pytest.param(lambda: DropPath(0.5), id="droppath-training"),
    pytest.param(lambda: StochasticDepth(0.5), id="stochastic-depth-training"),
    pytest.param(lambda: Sampler().eval(), id="sampler-eval"),
    pytest.param(lambda: functional_dropout, id="functional-dropout"),
    pytest.param(lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)), id="dropout-training"),
]


class TestEveryCopyByDefault:
    @pytest.mark.usefixtures("float64")
    def test_every_row_is_computed(self) -> None:
        recorder = Recorder(conv_net())
        x = torch.randn(2, 1, 3, 8, 8).expand(2, 5, 3, 8, 8)
        y = Distribute("b t c h w -> (b t) c h w", recorder)(x)
        assert recorder.rows == [10]
        assert_exact(y, loop_reference(recorder.fn, [x.contiguous()], [0, 1]))

    @pytest.mark.parametrize("make", RANDOM_MODULES)
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_random_modules_give_what_the_dense_call_gives(self, make: Callable[[], Any], seed: int) -> None:
        module = make()
        x = torch.randn(2, 1, 4).expand(2, 8, 4)
        torch.manual_seed(seed)
        y = Distribute("b t d -> (b t) d", module)(x)
        torch.manual_seed(seed)
        expected = module(x.contiguous().flatten(0, 1)).unflatten(0, (2, 8))
        assert torch.equal(y, expected)
        assert any(not torch.equal(y[:, 0], y[:, t]) for t in range(1, 8))  # the copies drew differently

    def test_module_that_mixes_rows(self) -> None:
        def centre(z: torch.Tensor) -> torch.Tensor:
            return z - z.sum(0)  # depends on how many copies there are

        x = torch.randn(2, 1, 4).expand(2, 3, 4)
        assert torch.equal(distribute("b t d -> (b t) d", centre)(x), centre(x.flatten(0, 1)).unflatten(0, (2, 3)))

    @pytest.mark.parametrize(
        "wrap",
        [
            lambda m: TimeDistributed(m, True),
            lambda m: distribute("b t d -> (b t) d", m),
            lambda m: Distribute("b t d -> (b t) d")(m),
            lambda m: Distribute("b t d -> (b t) d", m, chunk_size=4),
        ],
        ids=["time-distributed", "distribute", "factory", "chunked"],
    )
    def test_every_form(self, wrap: Callable[[nn.Module], Callable[..., torch.Tensor]]) -> None:
        recorder = Recorder(nn.Linear(4, 3))
        wrap(recorder)(torch.randn(2, 1, 4).expand(2, 5, 4))
        assert sum(recorder.rows) == 10


@pytest.mark.usefixtures("float64")
class TestOneCopyWhenAsked:
    def test_image_broadcast_over_time(self) -> None:
        recorder = Recorder(conv_net())
        image = torch.randn(2, 1, 3, 8, 8)
        x = image.expand(2, 5, 3, 8, 8)
        y = Distribute("b t c h w -> (b t) c h w", recorder, **ONCE)(x)
        assert recorder.rows == [2]
        assert y.shape == (2, 5, 2, 4, 4) and y.stride(1) == 0
        assert_exact(y, loop_reference(recorder.fn, [x.contiguous()], [0, 1]))

    def test_every_folded_axis_repeats(self) -> None:
        recorder = Recorder(nn.Linear(4, 3))
        x = torch.randn(4).expand(2, 3, 4)
        y = TimeDistributed(recorder, True, **ONCE)(x)
        assert recorder.rows == [1] and y.stride()[:2] == (0, 0)
        assert_exact(y, recorder.fn(x.contiguous()))

    def test_repeated_batch_axis_and_ellipsis_group(self) -> None:
        recorder = Recorder(nn.Linear(4, 3))
        x = torch.randn(1, 3, 2, 4).expand(5, 3, 2, 4)
        y = Distribute("... d -> (...) d", recorder, **ONCE)(x)
        assert recorder.rows == [6] and y.stride(0) == 0
        assert_exact(y, recorder.fn(x.contiguous()))

    def test_permuted_operand(self) -> None:
        recorder = Recorder(nn.Linear(4, 3))
        x = torch.randn(1, 2, 4).expand(6, 2, 4)  # (t, b, d), folded as (b t)
        y = Distribute("t b d -> (b t) d", recorder, **ONCE)(x)
        assert recorder.rows == [2] and y.shape == (2, 6, 3) and y.stride(1) == 0
        assert_exact(y, recorder.fn(x.contiguous()).transpose(0, 1))

    def test_several_arguments_repeating_alike(self) -> None:
        recorder = Recorder(lambda a, b: a * b.sum(-1, keepdim=True))
        a, b = torch.randn(2, 1, 4).expand(2, 3, 4), torch.randn(2, 1, 5).expand(2, 3, 5)
        y = Distribute("b t x, b t y -> (b t) x, (b t) y", recorder, **ONCE)(a, b)
        assert recorder.rows == [2]
        assert_exact(y, a * b.sum(-1, keepdim=True))

    def test_an_operand_that_folds_no_group_comes_first(self) -> None:
        recorder = Recorder(lambda s, a: a * s.sum())
        s, a = torch.randn(2, 5), torch.randn(2, 1, 4).expand(2, 3, 4)
        y = Distribute("b s, b t d -> b s, (b t) d", recorder, **ONCE)(s, a)
        assert [args[1].shape[0] for args, _, _ in recorder.calls] == [2]
        assert_exact(y, a * s.sum())

    def test_keyword_tensors(self) -> None:
        recorder = Recorder(lambda a, *, scale: a * scale)
        a, scale = torch.randn(2, 1, 4).expand(2, 3, 4), torch.randn(2, 1, 1).expand(2, 3, 1)
        wrapped = Distribute("b t d -> (b t) d", recorder, fold_kwargs={"scale": "b t d -> (b t) d"}, **ONCE)
        y = wrapped(a, scale=scale)
        assert recorder.rows == [2]
        assert_exact(y, a * scale)

    def test_after_a_dense_call_of_the_same_structure(self) -> None:
        recorder = Recorder(lambda a, b: a * b)
        wrapped = Distribute("b t d -> (b t) d", recorder, **ONCE)
        a, b = torch.randn(2, 3, 4), torch.randn(2, 1, 4)
        for _ in range(2):
            assert_exact(wrapped(a, b.expand(2, 3, 4)), a * b)  # a varies along t: every row is computed
        recorder.calls.clear()
        for _ in range(2):
            assert_exact(wrapped(a[:, :1].expand(2, 3, 4), b.expand(2, 3, 4)), (a[:, :1] * b).expand(2, 3, 4))
        assert recorder.rows == [2, 2]

    def test_nested_outputs_and_chunks(self) -> None:
        recorder = Recorder(lambda z: {"z": z, "n": (z.norm(dim=-1), "label")})
        x = torch.randn(3, 1, 4).expand(3, 8, 4)
        y = Distribute("b t d -> (b t) d", recorder, chunk_size=2, **ONCE)(x)
        assert recorder.rows == [2, 1]
        assert_exact(y["z"], x)
        assert_exact(y["n"][0], x.norm(dim=-1))
        assert y["n"][1] == "label"

    def test_output_is_an_expanded_view(self) -> None:
        y = Distribute("b t d -> (b t) d", nn.Linear(4, 3), **ONCE)(torch.randn(2, 1, 4).expand(2, 3, 4))
        with pytest.raises(RuntimeError, match="single memory location"):
            y.add_(1)
        y = y.clone()
        y[:, 0] = 0
        assert not y[:, 0].any() and y[:, 1].any()

    @pytest.mark.parametrize(
        "wrap",
        [
            lambda m: TimeDistributed(m, True, **ONCE),
            lambda m: distribute("b t d -> (b t) d", m, **ONCE),
            lambda m: distribute("b t d -> (b t) d", **ONCE)(m),
            lambda m: Distribute("b t d -> (b t) d", **ONCE)(m),
        ],
        ids=["time-distributed", "distribute", "decorator", "factory"],
    )
    def test_every_form(self, wrap: Callable[[nn.Module], Callable[..., torch.Tensor]]) -> None:
        recorder = Recorder(nn.Linear(4, 3))
        x = torch.randn(2, 1, 4).expand(2, 5, 4)
        assert_exact(wrap(recorder)(x), recorder.fn(x.contiguous()))
        assert recorder.rows == [2]

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
        y = Distribute("a b c d -> (a b c) d", recorder, **ONCE)(x)
        assert recorder.rows == [int(torch.tensor(stored).prod())]
        assert_exact(y, linear(x.contiguous()))


def test_compiled_code_computes_every_copy() -> None:
    """Dynamo cannot trace the check for random draws, so under compile the dense path runs, and gives the same."""
    torch._dynamo.reset()
    recorder = Recorder(nn.Conv2d(3, 4, 3))
    wrapped = Distribute("b t c h w -> (b t) c h w", recorder, **ONCE)
    x = torch.randn(2, 1, 3, 8, 8).expand(2, 5, 3, 8, 8)
    compiled = torch.compile(wrapped, fullgraph=True, backend="eager")(x)
    assert recorder.rows == [10]
    torch.testing.assert_close(compiled, wrapped(x))
    assert recorder.rows == [10, 2]


@pytest.mark.usefixtures("float64")
class TestGradients:
    def test_gradcheck(self) -> None:
        wrapped = Distribute("b t c h w -> (b t) c h w", nn.Conv2d(2, 2, 3), **ONCE)

        def call(image: torch.Tensor) -> torch.Tensor:
            return wrapped(image.expand(2, 3, 2, 5, 5))  # type: ignore[no-any-return]

        assert torch.autograd.gradcheck(call, (torch.randn(2, 1, 2, 5, 5, requires_grad=True),))

    def test_gradients_sum_over_copies_as_the_dense_call(self) -> None:
        net = conv_net()
        image = torch.randn(2, 1, 3, 8, 8, requires_grad=True)
        weights = torch.randn(2, 5, 2, 4, 4)
        (Distribute("b t c h w -> (b t) c h w", net, **ONCE)(image.expand(2, 5, 3, 8, 8)) * weights).sum().backward()
        grads = [image.grad.clone(), *(p.grad.clone() for p in net.parameters())]
        image.grad = None
        net.zero_grad()
        (loop_reference(net, [image.expand(2, 5, 3, 8, 8)], [0, 1]) * weights).sum().backward()
        for actual, expected in zip(grads, [image.grad, *(p.grad for p in net.parameters())], strict=True):
            assert_exact(actual, expected)


class _Carrier(nn.Module):
    """A linear layer that also holds ``extra``, which it never calls: only what the model holds is judged."""

    def __init__(self, extra: nn.Module) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # type: ignore[no-any-return]


def training_inside_eval(layer: nn.Module) -> nn.Module:
    """``layer`` in training mode inside a model in eval mode."""
    model = _Carrier(layer).eval()
    layer.train()
    return model


class TestGuardsWhenAsked:
    @pytest.mark.parametrize(
        "make",
        [
            lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)),
            lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)),
            lambda: nn.BatchNorm1d(4, track_running_stats=False).eval(),
            lambda: training_inside_eval(nn.Dropout(0.5)),
            lambda: training_inside_eval(nn.LSTM(4, 4, num_layers=2, dropout=0.5)),
            lambda: training_inside_eval(nn.MultiheadAttention(4, 2, dropout=0.5)),
        ],
        ids=[
            "dropout",
            "batchnorm-training",
            "batchnorm-without-running-stats",
            "dropout-training-inside-eval",
            "lstm-dropout-training-inside-eval",
            "attention-dropout-training-inside-eval",
        ],
    )
    def test_torch_layers_whose_copies_differ_run_densely(self, make: Callable[[], nn.Module]) -> None:
        recorder = Recorder(make())
        Distribute("b t d -> (b t) d", recorder, **ONCE)(torch.randn(2, 1, 4).expand(2, 3, 4))
        assert recorder.rows == [6]

    @pytest.mark.parametrize("carry", CARRIERS)
    def test_guards_see_the_module_a_callable_carries(self, carry: Callable[[nn.Module], Any]) -> None:
        recorder = Recorder(nn.Linear(4, 4))
        dropout = nn.Sequential(recorder, nn.Dropout(0.5))
        Distribute("b t d -> (b t) d", carry(dropout), **ONCE)(torch.randn(2, 1, 4).expand(2, 3, 4))
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
        out = Distribute("b t s d -> (b t) s d", recorder, **ONCE)(torch.randn(2, 1, 5, 4).expand(2, 3, 5, 4))
        assert recorder.rows == [rows] and out.shape == (2, 3, 5, 4)

    @pytest.mark.parametrize(
        "make",
        [
            lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).eval(),
            lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval(),
            lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0)),
            lambda: DropPath(0.5).eval(),
        ],
        ids=["dropout-eval", "batchnorm-eval", "dropout-zero", "droppath-eval"],
    )
    def test_the_same_modules_when_deterministic(self, make: Callable[[], nn.Module]) -> None:
        recorder = Recorder(make())
        Distribute("b t d -> (b t) d", recorder, **ONCE)(torch.randn(2, 1, 4).expand(2, 3, 4))
        assert recorder.rows == [2]

    @pytest.mark.parametrize("make", RANDOM_MODULES[:4])
    def test_any_other_draw_is_refused(self, make: Callable[[], Any]) -> None:
        text = message(lambda: Distribute("b t d -> (b t) d", make(), **ONCE)(torch.randn(2, 1, 4).expand(2, 3, 4)))
        assert text.startswith("The module drew random numbers while it computed the rows repeated along t once")
        assert "Leave compute_repeats_once off" in text

    def test_draws_on_other_rows_are_not_blamed(self) -> None:
        x = torch.randn(2, 1, 4).expand(2, 3, 4)
        y = Distribute("b t d -> (b t) d", DropPath(0.5), **ONCE)(x.contiguous())
        assert y.shape == (2, 3, 4)  # not repeated: the dense path, where drawing is fine

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
        call(Distribute("b t d -> (b t) d", recorder, **ONCE))
        assert recorder.rows == [rows]

    def test_axes_with_given_lengths(self) -> None:
        recorder = Recorder(nn.Linear(4, 3))
        Distribute("b t d -> (b t) d", recorder, t=3, **ONCE)(torch.randn(2, 1, 4).expand(2, 3, 4))
        assert recorder.rows == [6]

    def test_masks_compute_only_the_valid_rows(self) -> None:
        recorder = Recorder(nn.Linear(4, 3))
        x = torch.randn(2, 1, 4).expand(2, 3, 4)
        Distribute("b t d -> (b t) d", recorder, **ONCE)(x, fold_lengths=[3, 1])
        assert recorder.rows == [4]


class TestErrors:
    def test_needs_the_default_unfold(self) -> None:
        text = message(lambda: Distribute("b t d -> (b t) d", nn.Identity(), out="(b t) d -> t b d", **ONCE))
        assert text.startswith("compute_repeats_once cannot be used with out=")

    @pytest.mark.parametrize("value", [2, "yes", None], ids=["int", "string", "none"])
    def test_must_be_a_bool(self, value: object) -> None:
        text = message(lambda: Distribute("b t d -> (b t) d", nn.Identity(), compute_repeats_once=value))
        assert text.startswith(f"compute_repeats_once must be True or False, not {value!r}.")

    def test_arguments_that_disagree(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", lambda a, b: a, **ONCE)
        with pytest.raises(FoldError, match="argument 1 disagrees with argument 0 on axis 't': 4 here, 3 there"):
            wrapped(torch.randn(2, 1, 4).expand(2, 3, 4), torch.randn(2, 1, 4).expand(2, 4, 4))

    def test_output_without_rows_names_the_repeat(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", lambda z: z.sum(), **ONCE)
        text = message(lambda: wrapped(torch.randn(2, 1, 4).expand(2, 3, 4)))
        assert "The output cannot be unfolded" in text
        assert "The input repeats (stride 0) along t, so the module ran on one copy" in text
