"""Storage identity: a fold is a view whenever the strides allow one (one copy otherwise), and an unfold is
always a view of the module's output, so the module's memory format survives the round trip.

"Allocates nothing" is measured with the CPU profiler's memory events, independently of any storage pointer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import einops
import pytest
import torch
from conftest import Recorder, allocations
from torch import nn

import foldaxes

DTYPE = torch.float64
CL = torch.channels_last


def storage(t: torch.Tensor) -> int:
    return int(t.untyped_storage().data_ptr())


def leaves(tree: Any) -> list[torch.Tensor]:
    """The tensors of a nested tuple/list, in order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    return [leaf for part in tree for leaf in leaves(part)]


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=DTYPE)


# (make the input, pattern, TimeDistributed's batch_first)
VIEW_CASES = [
    pytest.param(lambda: _randn(2, 3, 4, 5, 6), "b t c h w -> (b t) c h w", True, id="contiguous-btchw"),
    pytest.param(lambda: _randn(2, 3, 4, 5, 12)[..., ::2], "b t c h w -> (b t) c h w", True, id="inner-crop"),
    pytest.param(lambda: _randn(2, 6, 4, 5, 6)[:, 1::2], "b t c h w -> (b t) c h w", True, id="time-step-crop"),
    pytest.param(
        lambda: _randn(6, 4, 5, 7).contiguous(memory_format=CL).unflatten(0, (2, 3)),
        "b t c h w -> (b t) c h w",
        True,
        id="channels-last-frames",
    ),
    pytest.param(
        lambda: _randn(2, 3, 5, 7, 4).permute(0, 1, 4, 2, 3),
        "b t c h w -> (b t) c h w",
        True,
        id="bthwc-permuted",
    ),
    pytest.param(lambda: _randn(5, 2, 8), "t b d -> (t b) d", False, id="time-major-tbd"),
    pytest.param(lambda: _randn(2, 3, 2, 4, 5, 6), "b t v c h w -> (b t v) c h w", True, id="multi-axis-btv"),
]

# Inputs whose folded axes no view can merge: (make the input, pattern).
COPY_CASES = [
    pytest.param(lambda: _randn(2, 4, 3, 5, 6), "b c t h w -> (b t) c h w", id="non-adjacent-bcthw"),
    pytest.param(lambda: _randn(3, 2, 4).transpose(0, 1), "b t d -> (b t) d", id="transposed-bt"),
    pytest.param(lambda: _randn(2, 3, 4, 5), "b t c d -> (t b) c d", id="reversed-group"),
]


class TestFoldIsAView:
    """Foldable strides: the folded tensor is the input's memory, and nothing is allocated."""

    @pytest.mark.parametrize(("make", "pattern", "batch_first"), VIEW_CASES)
    def test_fold(self, make: Callable[[], torch.Tensor], pattern: str, batch_first: bool) -> None:
        x = make()
        folded, allocated = allocations(lambda: foldaxes.fold(x, pattern)[0])
        assert allocated == []
        assert storage(folded) == storage(x)
        assert folded.data_ptr() == x.data_ptr()
        assert torch.equal(folded, einops.rearrange(x, pattern))

    @pytest.mark.parametrize(("make", "pattern", "batch_first"), VIEW_CASES)
    def test_unfold_of_the_fold_is_the_input(
        self, make: Callable[[], torch.Tensor], pattern: str, batch_first: bool
    ) -> None:
        x = make()
        folded, spec = foldaxes.fold(x, pattern)
        back, allocated = allocations(lambda: foldaxes.unfold(folded, spec))
        assert allocated == []
        assert (back.data_ptr(), back.shape, back.stride()) == (x.data_ptr(), x.shape, x.stride())

    @pytest.mark.parametrize(("make", "pattern", "batch_first"), VIEW_CASES)
    @pytest.mark.parametrize("wrapper", ["Distribute", "TimeDistributed"])
    def test_wrappers(self, make: Callable[[], torch.Tensor], pattern: str, batch_first: bool, wrapper: str) -> None:
        x = make()
        recorder = Recorder(lambda t: t)
        if wrapper == "Distribute":
            wrapped: torch.nn.Module = foldaxes.Distribute(pattern, recorder)
            expected = foldaxes.fold(x, pattern)[0].shape
        else:
            wrapped = foldaxes.TimeDistributed(recorder, batch_first)
            expected = torch.Size((x.shape[0] * x.shape[1], *x.shape[2:]))
        for call in range(2):  # the first call builds the plan; the second may take the cached fast path
            out, allocated = allocations(lambda: wrapped(x))
            (seen,), _, _ = recorder.calls[call]
            assert allocated == [], f"call {call}"
            assert storage(seen) == storage(x) and seen.data_ptr() == x.data_ptr()
            assert seen.shape == expected
            assert (out.data_ptr(), out.shape, out.stride()) == (x.data_ptr(), x.shape, x.stride())


class TestFoldCopiesOnce:
    """Strides that no view can fold: exactly one copy, of the folded size, with einops' values."""

    @pytest.mark.parametrize(("make", "pattern"), COPY_CASES)
    def test_fold(self, make: Callable[[], torch.Tensor], pattern: str) -> None:
        x = make()
        folded, allocated = allocations(lambda: foldaxes.fold(x, pattern)[0])
        assert allocated == [folded.numel() * folded.element_size()]
        assert storage(folded) != storage(x)
        assert torch.equal(folded, einops.rearrange(x, pattern))

    @pytest.mark.parametrize(("make", "pattern"), COPY_CASES)
    def test_distribute(self, make: Callable[[], torch.Tensor], pattern: str) -> None:
        x = make()
        recorder = Recorder(lambda t: t)
        wrapped = foldaxes.Distribute(pattern, recorder)
        for call in range(2):
            out, allocated = allocations(lambda: wrapped(x))
            (seen,), _, _ = recorder.calls[call]
            assert allocated == [x.numel() * x.element_size()], f"call {call}"
            assert storage(seen) != storage(x)
            assert storage(out) == storage(seen)  # the unfold adds no second copy
            assert torch.equal(seen, einops.rearrange(x, pattern))


def _channels_last_frames(b: int, t: int, c: int, h: int, w: int) -> torch.Tensor:
    return _randn(b * t, c, h, w).contiguous(memory_format=CL).unflatten(0, (b, t))


class TestOutputIsAViewOfTheModuleOutput:
    """The unfold never copies: each output tensor is the module's own output, split, with its strides."""

    @pytest.mark.parametrize(
        "wrap",
        [
            pytest.param(lambda m: foldaxes.Distribute("b t c h w -> (b t) c h w", m), id="Distribute"),
            pytest.param(lambda m: foldaxes.TimeDistributed(m, batch_first=True), id="TimeDistributed"),
        ],
    )
    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(lambda: _channels_last_frames(2, 3, 4, 6, 5), id="channels-last-frames"),
            pytest.param(lambda: _randn(2, 3, 6, 5, 4).permute(0, 1, 4, 2, 3), id="bthwc-permuted"),
        ],
    )
    def test_conv2d_channels_last(
        self, wrap: Callable[[nn.Module], nn.Module], make: Callable[[], torch.Tensor]
    ) -> None:
        x = make()
        b, t = x.shape[:2]
        conv = nn.Conv2d(4, 8, 3, padding=1).to(dtype=DTYPE, memory_format=CL)
        recorder = Recorder(conv)
        wrapped = wrap(recorder)
        for call in range(2):
            out = wrapped(x)
            (seen,), _, module_out = recorder.calls[call]
            assert storage(seen) == storage(x)
            assert seen.is_contiguous(memory_format=CL)
            assert module_out.is_contiguous(memory_format=CL)  # what the module gave, for the checks below
            assert storage(out) == storage(module_out)
            assert out.data_ptr() == module_out.data_ptr()
            assert out.stride() == module_out.unflatten(0, (b, t)).stride()
            assert out.flatten(0, 1).is_contiguous(memory_format=CL)
            assert out.shape == (b, t, 8, *x.shape[3:])
        expected = torch.stack([torch.stack([conv(x[i, j][None])[0] for j in range(t)]) for i in range(b)])
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize(
        ("pattern", "lstm_batch_first", "out", "shape"),
        [
            pytest.param("s b t d -> s (b t) d", False, None, (4, 2, 3, 5), id="time-major-default-unfold"),
            pytest.param(
                "b t s d -> (b t) s d",
                True,
                ("(b t) s h -> b t s h", ("l (b t) h -> l b t h", "l (b t) h -> l b t h")),
                (2, 3, 4, 5),
                id="batch-first-out-patterns",
            ),
        ],
    )
    def test_lstm_nested_output(self, pattern: str, lstm_batch_first: bool, out: Any, shape: tuple[int, ...]) -> None:
        lstm = nn.LSTM(5, 6, num_layers=2, batch_first=lstm_batch_first).to(DTYPE)
        recorder = Recorder(lstm)
        wrapped = foldaxes.Distribute(pattern, recorder, out=out)
        x = _randn(*shape)
        for call in range(2):
            result = wrapped(x)
            module_out = recorder.outputs[call]
            got, given = leaves(result), leaves(module_out)
            assert len(got) == len(given) == 3
            for leaf, module_leaf in zip(got, given, strict=True):
                assert storage(leaf) == storage(module_leaf)
                assert leaf.data_ptr() == module_leaf.data_ptr()
        b, t = (shape[1], shape[2]) if not lstm_batch_first else (shape[0], shape[1])
        output, (h_n, c_n) = result
        assert output.shape == ((4, b, t, 6) if not lstm_batch_first else (b, t, 4, 6))
        assert h_n.shape == c_n.shape == (2, b, t, 6)
        # Each (b, t) sequence on its own gives the same numbers.
        for i in range(b):
            for j in range(t):
                seq = x[:, i, j, None] if not lstm_batch_first else x[i, j][None]
                one, (h_one, c_one) = lstm(seq)
                got_out = output[:, i, j] if not lstm_batch_first else output[i, j]
                torch.testing.assert_close(got_out, one[:, 0] if not lstm_batch_first else one[0])
                torch.testing.assert_close(h_n[:, i, j], h_one[:, 0])
                torch.testing.assert_close(c_n[:, i, j], c_one[:, 0])
