"""fold_mask and fold_lengths: only the valid rows of a padded input reach the module, and every output has
fill_value at the padded rows. References are loops over the valid positions that never call foldaxes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from conftest import Recorder, assert_exact, message
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

import foldaxes
from foldaxes import Distribute, TimeDistributed


def masked_loop(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mask: torch.Tensor, fill: float) -> Any:
    """``fn`` on each valid slice ``x[index]`` (over the mask's leading dims) alone; ``fill`` elsewhere."""
    template = fn(x[(0,) * mask.ndim].unsqueeze(0))[0]
    out = torch.full((*mask.shape, *template.shape), fill, dtype=template.dtype)
    for index in itertools.product(*map(range, mask.shape)):
        if mask[index]:
            out[index] = fn(x[index].unsqueeze(0))[0]
    return out


def lengths_mask(lengths: Sequence[int], steps: int) -> torch.Tensor:
    return torch.tensor([[t < length for t in range(steps)] for length in lengths], dtype=torch.bool)


@pytest.mark.usefixtures("float64")
class TestOnlyValidRowsAreComputed:
    @pytest.mark.parametrize("fill", [0.0, -1.5, float("nan")], ids=["zero", "negative", "nan"])
    def test_conv_matches_the_loop(self, fill: float) -> None:
        conv = nn.Conv2d(3, 4, 3)
        x = torch.randn(2, 4, 3, 6, 6)
        mask = lengths_mask([3, 1], 4)
        y = Distribute("b t c h w -> (b t) c h w", conv, fill_value=fill)(x, fold_mask=mask)
        torch.testing.assert_close(y, masked_loop(conv, x, mask, fill), equal_nan=True, rtol=1e-12, atol=1e-12)

    def test_module_sees_exactly_the_valid_rows(self) -> None:
        recorder = Recorder(nn.Linear(3, 2))
        x = torch.randn(3, 4, 3)
        mask = torch.rand(3, 4) > 0.5
        Distribute("b t d -> (b t) d", recorder)(x, fold_mask=mask)
        assert torch.equal(recorder.inputs[0], x[mask])

    @pytest.mark.parametrize(
        "lengths",
        [[3, 1, 0], (3, 1, 0), torch.tensor([3, 1, 0]), torch.tensor([3, 1, 0], dtype=torch.int32)],
        ids=["list", "tuple", "tensor", "int32"],
    )
    def test_lengths_are_a_prefix_mask(self, lengths: Any) -> None:
        linear = nn.Linear(3, 2)
        x = torch.randn(3, 4, 3)
        wrapped = Distribute("b t d -> (b t) d", linear)
        assert_exact(wrapped(x, fold_lengths=lengths), wrapped(x, fold_mask=lengths_mask([3, 1, 0], 4)))
        assert_exact(wrapped(x, fold_lengths=lengths), masked_loop(linear, x, lengths_mask([3, 1, 0], 4), 0.0))

    @pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "time-major"])
    def test_time_distributed_lengths_count_per_sample(self, batch_first: bool) -> None:
        linear = nn.Linear(3, 2)
        x = torch.randn(2, 5, 3)  # (B, T, D)
        mask = lengths_mask([4, 2], 5)
        expected = masked_loop(linear, x, mask, 0.0)
        if batch_first:
            y = TimeDistributed(linear, True)(x, fold_lengths=[4, 2])
        else:
            y = TimeDistributed(linear)(x.transpose(0, 1), fold_lengths=[4, 2]).transpose(0, 1)
        assert_exact(y, expected)

    def test_mask_follows_the_group_order(self) -> None:
        linear = nn.Linear(3, 2)
        x = torch.randn(5, 2, 3)  # (t, b, d), folded as (b t): the mask is (B, T)
        mask = lengths_mask([4, 2], 5)
        y = Distribute("t b d -> (b t) d", linear)(x, fold_mask=mask)
        assert_exact(y, masked_loop(linear, x.transpose(0, 1), mask, 0.0))

    def test_three_folded_axes(self) -> None:
        linear = nn.Linear(3, 2)
        x = torch.randn(2, 3, 2, 3)
        mask = torch.rand(2, 3, 2) > 0.4
        y = Distribute("b t v d -> (b t v) d", linear)(x, fold_mask=mask)
        assert_exact(y, masked_loop(linear, x, mask, 0.0))

    def test_lstm_rows_at_dim_one(self) -> None:
        lstm = nn.LSTM(3, 2)
        x = torch.randn(2, 3, 4, 3)  # (b, v, t, d) -> (t, (b v), d)
        mask = torch.tensor([[True, False, True], [False, True, True]])
        out, (h, c) = Distribute("b v t d -> t (b v) d", lstm)(x, fold_mask=mask)
        for b, v in itertools.product(range(2), range(3)):
            if mask[b, v]:
                expected, (expected_h, _) = lstm(x[b, v].unsqueeze(1))
                assert_exact(out[:, b, v], expected[:, 0])
                assert_exact(h[:, b, v], expected_h[:, 0])
            else:
                assert not out[:, b, v].any() and not h[:, b, v].any() and not c[:, b, v].any()

    def test_every_output_and_keyword_tensor(self) -> None:
        def fn(a: torch.Tensor, *, scale: torch.Tensor, mask: Any = None) -> Any:
            assert mask == "the module's own"
            return {"scaled": a * scale, "pair": (a.sum(-1), "label")}

        wrapped = Distribute("b t d -> (b t) d", fn, fold_kwargs={"scale": "b t () -> (b t) ()"}, fill_value=7.0)
        a, scale = torch.randn(2, 3, 4), torch.randn(2, 3, 1)
        valid = lengths_mask([2, 3], 3)
        y = wrapped(a, scale=scale, mask="the module's own", fold_lengths=[2, 3])
        assert y["pair"][1] == "label"
        expected = torch.where(valid[..., None], a * scale, 7.0)
        assert_exact(y["scaled"], expected)
        assert_exact(y["pair"][0], torch.where(valid, a.sum(-1), 7.0))

    def test_chunked_valid_rows(self) -> None:
        recorder = Recorder(nn.Linear(3, 2))
        x = torch.randn(3, 4, 3)
        mask = lengths_mask([4, 3, 0], 4)
        y = Distribute("b t d -> (b t) d", recorder, chunk_size=3)(x, fold_mask=mask)
        assert recorder.rows == [3, 3, 1]
        assert_exact(y, masked_loop(recorder.fn, x, mask, 0.0))

    def test_integer_output_is_filled_too(self) -> None:
        y = Distribute("b t d -> (b t) d", lambda z: z.argmax(-1))(torch.randn(2, 3, 4), fold_lengths=[1, 3])
        assert y.dtype == torch.int64 and not y[0, 1:].any()

    def test_channels_last_output_stays_channels_last(self) -> None:
        conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
        x = torch.randn(6, 3, 8, 8).contiguous(memory_format=torch.channels_last).unflatten(0, (2, 3))
        y = Distribute("b t c h w -> (b t) c h w", conv)(x, fold_lengths=[2, 1])
        assert y.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)

    @given(
        lengths=st.lists(st.integers(0, 4), min_size=1, max_size=4),
        chunk_size=st.one_of(st.none(), st.integers(1, 5)),
        seed=st.integers(0, 2**16),
    )
    @settings(max_examples=60, deadline=None, derandomize=True)
    @example(lengths=[4, 4, 4], chunk_size=None, seed=0)  # every clip full: the plain call
    @example(lengths=[0, 0], chunk_size=3, seed=0)  # no valid row at all
    def test_any_lengths_match_the_loop(self, lengths: list[int], chunk_size: int | None, seed: int) -> None:
        torch.manual_seed(seed)
        linear = nn.Linear(3, 2)
        x = torch.randn(len(lengths), 4, 3)
        y = Distribute("b t d -> (b t) d", linear, chunk_size=chunk_size, fill_value=-2.0)(x, fold_lengths=lengths)
        assert_exact(y, masked_loop(linear, x, lengths_mask(lengths, 4), -2.0))


class TestEdgeMasks:
    @pytest.mark.parametrize(
        ("make", "shape"),
        [(lambda: nn.Linear(4, 2), (2, 3, 4)), (lambda: nn.Conv2d(4, 2, 3), (2, 3, 4, 5, 5))],
        ids=["linear", "conv"],
    )
    def test_no_valid_rows(self, make: Callable[[], nn.Module], shape: tuple[int, ...]) -> None:
        recorder = Recorder(make())
        pattern = "b t d -> (b t) d" if len(shape) == 3 else "b t c h w -> (b t) c h w"
        y = Distribute(pattern, recorder, fill_value=3.0)(torch.randn(shape), fold_lengths=[0, 0])
        assert recorder.rows[0] == 0
        assert y.shape[:2] == (2, 3) and bool((y == 3.0).all())

    def test_no_valid_rows_and_a_module_that_refuses_them(self) -> None:
        def needs_rows(z: torch.Tensor) -> torch.Tensor:
            if not len(z):
                raise ValueError("no rows to normalise")
            return z

        with pytest.raises(ValueError) as info:
            Distribute("b t d -> (b t) d", needs_rows)(
                torch.randn(2, 3, 4), fold_mask=torch.zeros(2, 3, dtype=torch.bool)
            )
        assert info.value.args == ("no rows to normalise",)

    def test_all_rows_valid_is_the_plain_call(self) -> None:
        recorder = Recorder(nn.Identity())
        x = torch.randn(2, 3, 4)
        y = Distribute("b t d -> (b t) d", recorder)(x, fold_lengths=[3, 3])
        assert y.data_ptr() == x.data_ptr() and torch.equal(y, x)

    def test_none_is_no_mask(self) -> None:
        x = torch.randn(2, 3, 4)
        y = Distribute("b t d -> (b t) d", lambda z: z)(x, fold_mask=None, fold_lengths=None)
        assert y.data_ptr() == x.data_ptr()


@pytest.mark.usefixtures("float64")
class TestGradients:
    @pytest.mark.parametrize("chunk_size", [None, 2], ids=["whole", "chunked"])
    def test_gradcheck_input_and_parameters(self, chunk_size: int | None) -> None:
        wrapped = Distribute("b t d -> (b t) d", nn.Linear(3, 2), chunk_size=chunk_size, fill_value=0.5)
        mask = lengths_mask([2, 0, 3], 3)

        def call(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            parameters = {"module.weight": weight, "module.bias": bias}
            return torch.func.functional_call(wrapped, parameters, (x,), {"fold_mask": mask})  # type: ignore[no-any-return]

        inputs = (torch.randn(3, 3, 3), wrapped.module.weight.detach(), wrapped.module.bias.detach())
        assert torch.autograd.gradcheck(call, tuple(t.clone().requires_grad_() for t in inputs))

    def test_gradients_reach_only_valid_rows(self) -> None:
        conv = nn.Conv2d(3, 2, 3)
        x = torch.randn(2, 4, 3, 6, 6, requires_grad=True)
        mask = lengths_mask([3, 1], 4)
        Distribute("b t c h w -> (b t) c h w", conv)(x, fold_mask=mask).square().sum().backward()
        grad, weight_grad = x.grad.clone(), conv.weight.grad.clone()
        assert not grad[~mask].any() and grad[mask].abs().sum() > 0
        x.grad, conv.weight.grad = None, None
        masked_loop(conv, x, mask, 0.0).square().sum().backward()
        assert_exact(grad, x.grad)
        assert_exact(weight_grad, conv.weight.grad)


class TestMaskErrors:
    @pytest.mark.parametrize(
        ("keywords", "expected"),
        [
            (
                {"fold_mask": torch.ones(2, 4, dtype=torch.bool)},
                "fold_mask has shape (2, 4), but the folded axes (b t)",
            ),
            ({"fold_mask": torch.ones(3, 2, dtype=torch.bool)}, "shape (3, 2)"),
            ({"fold_mask": torch.ones(2, 3)}, "must be a bool tensor over the folded axes (b t), not a torch.float32"),
            ({"fold_mask": [[True] * 3] * 2}, "must be a bool tensor over the folded axes (b t), not list"),
            (
                {"fold_mask": torch.ones(2, 3, dtype=torch.bool), "fold_lengths": [1, 2]},
                "Both fold_mask and fold_lengths",
            ),
            ({"fold_lengths": [1, 2, 3]}, "fold_lengths has shape (3,), but there are 2 samples"),
            ({"fold_lengths": [[1], [2]]}, "fold_lengths has shape (2, 1)"),
            ({"fold_lengths": [1, 4]}, "must lie between 0 and 3 (the time axis), but its entries range from 1 to 4"),
            ({"fold_lengths": [-1, 2]}, "must lie between 0 and 3"),
            ({"fold_lengths": [1.5, 2.0]}, "fold_lengths must be integers"),
            ({"fold_lengths": [True, False]}, "fold_lengths must be integers"),
            ({"fold_lengths": "12"}, "fold_lengths must be integers"),
        ],
        ids=[
            "mask-shape",
            "mask-transposed",
            "mask-float",
            "mask-list",
            "both",
            "lengths-count",
            "lengths-2d",
            "lengths-too-long",
            "lengths-negative",
            "lengths-float",
            "lengths-bool",
            "lengths-string",
        ],
    )
    def test_bad_mask_or_lengths(self, keywords: dict[str, Any], expected: str) -> None:
        text = message(lambda: Distribute("b t d -> (b t) d", nn.Linear(4, 2))(torch.randn(2, 3, 4), **keywords))
        assert expected in text
        assert "pattern: b t d -> (b t) d" in text

    def test_mask_shape_error_shows_both_shapes(self) -> None:
        text = message(
            lambda: Distribute("b t d -> (b t) d", nn.Linear(4, 2))(
                torch.randn(2, 3, 4), fold_mask=torch.ones(2, 4, dtype=torch.bool)
            )
        )
        assert "fold_mask: shape (2, 4)" in text and "folded axes (b t): shape (2, 3)" in text

    def test_lengths_need_two_axes(self) -> None:
        wrapped = Distribute("b t v d -> (b t v) d", nn.Linear(4, 2))
        text = message(lambda: wrapped(torch.randn(2, 3, 2, 4), fold_lengths=[1, 2]))
        assert "needs a folded group of two axes" in text and "(b t v) has 3" in text

    @pytest.mark.parametrize(
        ("pattern", "out", "expected"),
        [
            ("b t d -> (b t) d", "(b t) d -> t b d", "cannot be used with out="),
            ("b t d -> t b d", None, "cannot be used when the pattern folds no axes"),
        ],
        ids=["out", "nothing-folded"],
    )
    def test_masks_need_the_default_unfold(self, pattern: str, out: str | None, expected: str) -> None:
        wrapped = Distribute(pattern, lambda z: z, out=out)
        assert expected in message(lambda: wrapped(torch.randn(2, 3, 4), fold_lengths=[1, 2]))

    def test_output_without_rows(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", lambda z: (z, z.sum()))
        text = message(lambda: wrapped(torch.randn(2, 3, 4), fold_lengths=[1, 2]))
        assert "Output [1] cannot be put together" in text

    def test_batchnorm_in_training_is_refused(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
        text = message(lambda: wrapped(torch.randn(2, 3, 4), fold_lengths=[3, 3]))
        assert "BatchNorm1d at '1' (training mode)" in text and "runs it on the valid rows only" in text
        wrapped.eval()
        wrapped(torch.randn(2, 3, 4), fold_lengths=[3, 1])

    def test_batchnorm_opt_in_uses_the_valid_rows(self) -> None:
        norm = nn.BatchNorm1d(4, momentum=1.0)
        x = torch.randn(2, 3, 4)
        Distribute("b t d -> (b t) d", norm, allow_batch_statistics=True)(x, fold_lengths=[3, 1])
        torch.testing.assert_close(norm.running_mean, x[lengths_mask([3, 1], 3)].mean(0))

    def test_distribute_decorator(self) -> None:
        @foldaxes.distribute("b t d -> (b t) d", fill_value=-1.0)
        def double(z: torch.Tensor) -> torch.Tensor:
            return z * 2

        x = torch.randn(2, 3, 4)
        assert torch.equal(double(x, fold_lengths=[3, 0]), torch.cat([x[:1] * 2, torch.full((1, 3, 4), -1.0)]))
