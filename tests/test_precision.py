"""Mixed precision and memory formats: autocast reaches the wrapped module, and channels_last (2-D and 3-D) survives
the fold and the unfold with nothing copied.

References call the unwrapped module on the input folded by hand, under the same autocast, or loop over the slices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import Fuse, Recorder, allocations, assert_exact, loop_reference
from torch import nn

from foldaxes import Distribute, TimeDistributed

CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


# (make the wrapped model, make its inputs, fold the inputs by hand)
AUTOCAST_CASES = [
    pytest.param(
        lambda: Distribute("b t c h w -> (b t) c h w", nn.Conv2d(3, 4, 3)),
        lambda: (torch.randn(2, 3, 3, 8, 8),),
        lambda xs: (xs[0].flatten(0, 1),),
        id="conv",
    ),
    pytest.param(
        lambda: TimeDistributed(nn.Linear(4, 6)),
        lambda: (torch.randn(5, 2, 4),),
        lambda xs: (xs[0].flatten(0, 1),),
        id="time-distributed-linear",
    ),
    pytest.param(
        lambda: Distribute("b t c h w, t b n -> (b t) c h w, (b t) n", Fuse()),
        lambda: (torch.randn(2, 3, 3, 8, 8), torch.randn(3, 2, 5)),
        lambda xs: (xs[0].flatten(0, 1), xs[1].transpose(0, 1).flatten(0, 1)),
        id="multi-operand",
    ),
]


def _unfold_like(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return y.unflatten(0, x.shape[:2])


def _check_autocast(
    device: str, dtype: torch.dtype, make: Callable[[], nn.Module], inputs: Callable[[], Any], hand: Any
) -> None:
    model = make().to(device)
    xs = tuple(x.to(device) for x in inputs())
    with torch.autocast(device, dtype=dtype):
        out = model(*xs)
        expected = _unfold_like(model.module(*hand(xs)), xs[0])
    assert out.dtype == expected.dtype == dtype
    if device == "cpu":
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    else:  # the same kernels, but a GPU library may pick another algorithm for another call
        torch.testing.assert_close(out, expected)
    full = _unfold_like(model.module(*hand(xs)), xs[0])  # float32, outside autocast
    torch.testing.assert_close(out.float(), full, rtol=0.05, atol=0.05)


class TestAutocast:
    @pytest.mark.parametrize(("make", "inputs", "hand"), AUTOCAST_CASES)
    def test_cpu_bfloat16(self, make: Any, inputs: Any, hand: Any) -> None:
        _check_autocast("cpu", torch.bfloat16, make, inputs, hand)

    def test_cpu_bfloat16_gradients(self) -> None:
        conv = nn.Conv2d(3, 4, 3)
        wrapped = Distribute("b t c h w -> (b t) c h w", conv)
        x = torch.randn(2, 3, 3, 8, 8, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = wrapped(x).float().square().mean()
        loss.backward()
        grads = (x.grad, conv.weight.grad)
        x.grad, conv.weight.grad = None, None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = conv(x.flatten(0, 1)).unflatten(0, (2, 3)).float().square().mean()
        loss.backward()
        assert grads[0].dtype == grads[1].dtype == torch.float32
        assert_exact(grads, (x.grad, conv.weight.grad), 0)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
    @pytest.mark.parametrize(
        ("make", "inputs", "hand"), [pytest.param(*p.values, id=p.id, marks=CUDA) for p in AUTOCAST_CASES]
    )
    def test_cuda(self, make: Any, inputs: Any, hand: Any, dtype: torch.dtype) -> None:
        _check_autocast("cuda", dtype, make, inputs, hand)


def _frames(b: int, t: int, shape: tuple[int, ...], memory_format: torch.memory_format, dtype: torch.dtype) -> Any:
    """A (B, T, ...) tensor whose every frame (or clip) is stored in ``memory_format``."""
    return torch.randn(b * t, *shape, dtype=dtype).contiguous(memory_format=memory_format).unflatten(0, (b, t))


# (conv, frame shape, memory format)
FORMAT_CASES = [
    pytest.param(lambda: nn.Conv2d(4, 6, 3, padding=1), (4, 7, 5), torch.channels_last, id="channels-last-conv2d"),
    pytest.param(
        lambda: nn.Conv3d(4, 6, 3, padding=1), (4, 3, 7, 5), torch.channels_last_3d, id="channels-last-3d-conv3d-clips"
    ),
]


class TestMemoryFormats:
    @pytest.mark.parametrize(("make", "shape", "memory_format"), FORMAT_CASES)
    def test_fold_and_unfold_keep_the_format_and_copy_nothing(
        self, make: Callable[[], nn.Module], shape: tuple[int, ...], memory_format: torch.memory_format
    ) -> None:
        """In float32: torch's float64 Conv3d on CPU returns a contiguous output whatever its input's format."""
        conv = make().to(memory_format=memory_format)
        recorder = Recorder(conv)
        wrapped = Distribute("b n c ... -> (b n) c ...", recorder)
        x = _frames(2, 3, shape, memory_format, torch.float32)
        wrapped(x)  # builds the plan
        out, allocated = allocations(lambda: wrapped(x))
        (seen,), _, module_out = recorder.calls[-1]
        assert seen.data_ptr() == x.data_ptr() and seen.is_contiguous(memory_format=memory_format)
        assert module_out.is_contiguous(memory_format=memory_format)
        assert out.data_ptr() == module_out.data_ptr()
        assert out.flatten(0, 1).is_contiguous(memory_format=memory_format)
        _, bare = allocations(lambda: conv(x.flatten(0, 1)))
        assert sorted(allocated) == sorted(bare)  # the conv's own output and workspace, nothing more
        with torch.no_grad():
            assert_exact(out, conv(x.flatten(0, 1)).unflatten(0, (2, 3)), 0)
            assert_exact(out, loop_reference(conv, [x], [0, 1]), 1e-5)

    @pytest.mark.parametrize(("make", "shape", "memory_format"), FORMAT_CASES)
    def test_under_cpu_autocast(
        self, make: Callable[[], nn.Module], shape: tuple[int, ...], memory_format: torch.memory_format
    ) -> None:
        conv = make().to(memory_format=memory_format)
        x = _frames(2, 3, shape, memory_format, torch.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = Distribute("b n c ... -> (b n) c ...", conv)(x)
            expected = conv(x.flatten(0, 1)).unflatten(0, (2, 3))
        assert out.dtype == torch.bfloat16
        assert out.flatten(0, 1).is_contiguous(memory_format=memory_format)
        assert_exact(out, expected, 0)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
    @pytest.mark.parametrize(
        ("make", "shape", "memory_format"), [pytest.param(*p.values, id=p.id, marks=CUDA) for p in FORMAT_CASES]
    )
    def test_cuda_autocast(
        self, make: Callable[[], nn.Module], shape: tuple[int, ...], memory_format: torch.memory_format, dtype: Any
    ) -> None:
        conv = make().to("cuda", memory_format=memory_format)
        recorder = Recorder(conv)
        x = _frames(2, 3, shape, memory_format, torch.float32).cuda()
        with torch.autocast("cuda", dtype=dtype):
            out = Distribute("b n c ... -> (b n) c ...", recorder)(x)
            expected = conv(x.flatten(0, 1)).unflatten(0, (2, 3))
        (seen,), _, module_out = recorder.calls[-1]
        assert seen.data_ptr() == x.data_ptr()
        assert out.dtype == dtype and out.data_ptr() == module_out.data_ptr()
        assert out.flatten(0, 1).is_contiguous(memory_format=memory_format)
        torch.testing.assert_close(out, expected)
