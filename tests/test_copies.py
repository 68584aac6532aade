"""Copies: a fold that must copy keeps each frame's memory format, and ``copy=`` forbids or forces copies.

References are ``einops.rearrange`` in float64; whether a tensor is a copy is read off its storage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import einops
import pytest
import torch
from conftest import Recorder, assert_exact, message
from torch import nn

import foldaxes
from foldaxes import Distribute, TimeDistributed, distribute

PATTERN = "b t c h w -> (b t) c h w"


def time_major(b: int, t: int, *frame: int, memory_format: torch.memory_format = torch.contiguous_format) -> Any:
    """A (B, T, ...) view of a time-major (T*B, ...) buffer, each frame stored in ``memory_format``."""
    buffer = torch.randn(t * b, *frame, dtype=torch.float64).contiguous(memory_format=memory_format)
    return buffer.unflatten(0, (t, b)).transpose(0, 1)


def shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class TestCopiesKeepTheFramesLayout:
    @pytest.mark.parametrize(
        ("frame", "memory_format", "folded_format"),
        [
            ((3, 8, 8), torch.channels_last, torch.channels_last),
            ((3, 4, 8, 8), torch.channels_last_3d, torch.channels_last_3d),
            ((3, 8, 8), torch.contiguous_format, torch.contiguous_format),
        ],
        ids=["channels-last", "channels-last-3d", "contiguous"],
    )
    def test_time_major_frames(
        self, frame: tuple[int, ...], memory_format: torch.memory_format, folded_format: torch.memory_format
    ) -> None:
        x = time_major(2, 3, *frame, memory_format=memory_format)
        pattern = "b t c h w -> (b t) c h w" if len(frame) == 3 else "b t c d h w -> (b t) c d h w"
        folded, spec = foldaxes.fold(x, pattern)
        assert not shares_storage(folded, x)
        assert folded.is_contiguous(memory_format=folded_format)
        assert torch.equal(folded, einops.rearrange(x, pattern))
        assert torch.equal(foldaxes.unfold(folded, spec), x)

    def test_a_conv_keeps_channels_last_through_the_wrapper(self) -> None:
        x = time_major(2, 3, 3, 8, 8, memory_format=torch.channels_last)
        conv = nn.Conv2d(3, 4, 3).double().to(memory_format=torch.channels_last)
        recorder = Recorder(conv)
        wrapped = Distribute(PATTERN, recorder)
        for _ in range(2):  # the second call replays the recorded program
            y = wrapped(x)
            assert recorder.inputs[-1].is_contiguous(memory_format=torch.channels_last)
            assert recorder.outputs[-1].is_contiguous(memory_format=torch.channels_last)
            assert shares_storage(y, recorder.outputs[-1])  # the unfold is still a view
            assert_exact(y, einops.rearrange(conv(einops.rearrange(x, PATTERN)), "(b t) c h w -> b t c h w", b=2))

    def test_gradients_flow_through_the_copy(self) -> None:
        x = time_major(2, 3, 3, 4, 4, memory_format=torch.channels_last).requires_grad_()
        folded, _ = foldaxes.fold(x, PATTERN)
        (folded * torch.arange(folded.numel(), dtype=torch.float64).reshape(folded.shape)).sum().backward()
        expected = einops.rearrange(
            torch.arange(folded.numel(), dtype=torch.float64).reshape(folded.shape), "(b t) c h w -> b t c h w", b=2
        )
        assert_exact(x.grad, expected)

    @pytest.mark.parametrize(
        ("pattern", "make"),
        [
            (
                "b c t h w -> (b t) c h w",
                lambda: torch.randn(2, 3, 4, 5, 5),
            ),
            ("b t c h w -> c (b t) h w", lambda: time_major(2, 3, 3, 5, 5, memory_format=torch.channels_last)),
        ],
        ids=["frames-not-channels-last", "group-not-first"],
    )
    def test_other_copies_are_contiguous(self, pattern: str, make: Callable[[], torch.Tensor]) -> None:
        x = make()
        folded, _ = foldaxes.fold(x, pattern)
        assert folded.is_contiguous() and torch.equal(folded, einops.rearrange(x, pattern))


NOT_VIEWS = {
    "axes-apart": ("b c t h w -> (b t) c h w", lambda: torch.randn(2, 3, 4, 5, 5), "c lies between them"),
    "time-major": (PATTERN, lambda: time_major(2, 3, 3, 5, 5), "Writing the group as (t b)"),
    "crop": (PATTERN, lambda: torch.randn(2, 6, 3, 5, 5)[:, :3], "There is a gap in memory"),
    "expanded": (PATTERN, lambda: torch.randn(2, 1, 3, 5, 5).expand(2, 4, 3, 5, 5), "t has stride 0"),
    "time-major-around-a-unit-axis": (  # the unit axis has no say: b and t still cannot merge
        "b u t c -> (b u t) c",
        lambda: torch.randn(3, 2, 4).transpose(0, 1).unsqueeze(1),
        "Writing the group as (u t b)",
    ),
}


class TestCopyFalse:
    @pytest.mark.parametrize(("pattern", "make", "hint"), NOT_VIEWS.values(), ids=NOT_VIEWS.keys())
    @pytest.mark.parametrize(
        "call",
        [
            lambda p, x: foldaxes.fold(x, p, copy=False),
            lambda p, x: Distribute(p, nn.Identity(), copy=False)(x),
            lambda p, x: distribute(p, lambda z: z, copy=False)(x),
            lambda p, x: Distribute(p, lambda z, w: z, copy=False)(x, x),
        ],
        ids=["fold", "distribute-module", "distribute-function", "two-tensors"],
    )
    def test_raises_with_explains_reason(self, pattern: str, make: Callable[[], Any], hint: str, call: Any) -> None:
        x = make()
        text = message(lambda: call(pattern, x))
        report = foldaxes.explain(pattern, x)
        assert text.startswith("argument 0 cannot be folded without a copy, and copy=False forbids one. ")
        assert report.reason in text and hint in text
        assert f"argument 0 (strides {tuple(x.stride())}): shape {tuple(x.shape)}" in text

    def test_an_empty_input_is_always_a_view(self) -> None:
        x = time_major(2, 0, 3, 5, 5)
        folded, _ = foldaxes.fold(x, PATTERN, copy=False)
        assert folded.shape == (0, 3, 5, 5)

    def test_names_the_pattern_that_would_be_a_view(self) -> None:
        text = message(lambda: foldaxes.fold(time_major(2, 3, 3, 5, 5), PATTERN, copy=False))
        assert "Distribute('b t c h w -> (t b) c h w', module, out='(t b) ... -> b t ...') folds without a copy" in text

    def test_the_pattern_that_would_be_a_view_has_the_lengths_it_needs(self) -> None:
        x = torch.randn(6, 4)
        text = message(lambda: foldaxes.fold(x, "(t b) c -> (b t) c", b=2, copy=False))
        assert "Distribute('(t b) c -> (t b) c', module, b=2, out='(t b) ... -> b t ...') folds without a copy" in text
        recorder = Recorder(lambda z: z * 2)
        view = Distribute("(t b) c -> (t b) c", recorder, b=2, out="(t b) ... -> b t ...", copy=False)
        assert torch.equal(view(x), einops.rearrange(x * 2, "(t b) c -> b t c", b=2))
        assert shares_storage(recorder.inputs[-1], x)

    def test_keyword_tensors_too(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", lambda z, mask: z, fold_kwargs={"mask": "b t -> (b t)"}, copy=False)
        mask = torch.ones(3, 2, dtype=torch.bool).transpose(0, 1)
        assert message(lambda: wrapped(torch.randn(2, 3, 4), mask=mask)).startswith("keyword argument 'mask' cannot")

    @pytest.mark.parametrize(
        ("pattern", "make"),
        [
            (PATTERN, lambda: torch.randn(2, 3, 3, 5, 5)),
            (
                PATTERN,
                lambda: torch.randn(6, 3, 5, 5).contiguous(memory_format=torch.channels_last).unflatten(0, (2, 3)),
            ),
            ("b t c h w -> (t b) c h w", lambda: time_major(2, 3, 3, 5, 5)),
            (PATTERN, lambda: torch.randn(2, 3, 3, 5, 8)[..., ::2]),
        ],
        ids=["contiguous", "channels-last-frames", "time-major-as-(t b)", "inner-crop"],
    )
    def test_views_pass(self, pattern: str, make: Callable[[], torch.Tensor]) -> None:
        x = make()
        recorder = Recorder(lambda z: z * 2)
        wrapped = Distribute(pattern, recorder, copy=False)
        expected = einops.rearrange(x * 2, pattern.replace("(", "").replace(")", ""))  # the group split in place
        for _ in range(2):
            y = wrapped(x)
            assert shares_storage(recorder.inputs[-1], x)
            assert torch.equal(y, expected)


class InPlace(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.mul_(2)


class TestCopyTrueLayout:
    def test_a_view_that_is_not_contiguous_becomes_a_contiguous_copy(self) -> None:
        x = torch.randn(2, 3, 5, 4).permute(0, 1, 3, 2)  # (b t) merges by a view, c and d are swapped
        folded, _ = foldaxes.fold(x, "b t c d -> (b t) c d", copy=True)
        assert folded.is_contiguous() and folded.data_ptr() != x.data_ptr()
        assert torch.equal(folded, x.flatten(0, 1))

    def test_channels_last_frames_around_a_unit_axis(self) -> None:
        frames = torch.randn(3 * 2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
        x = frames.unflatten(0, (3, 2)).transpose(0, 1).unsqueeze(1)  # (b, u=1, t, c, h, w), time-major
        folded, _ = foldaxes.fold(x, "b u t c h w -> (b u t) c h w")
        assert folded.is_contiguous(memory_format=torch.channels_last) and not folded.is_contiguous()
        assert torch.equal(folded, x.reshape(6, 3, 4, 4))


class TestCopyTrue:
    @pytest.mark.parametrize(
        "wrap",
        [
            lambda m: Distribute(PATTERN, m, copy=True),
            lambda m: TimeDistributed(m, True, copy=True),
            lambda m: distribute(PATTERN, m, copy=True),
            lambda m: Distribute(PATTERN, copy=True)(m),
            lambda m: Distribute(PATTERN, m, copy=True, chunk_size=2),
        ],
        ids=["distribute-module", "time-distributed", "distribute-function", "factory", "chunked"],
    )
    @pytest.mark.parametrize("module", [lambda: nn.ReLU(inplace=True), InPlace], ids=["relu-inplace", "mul_"])
    def test_in_place_modules_leave_the_input_alone(self, wrap: Any, module: Callable[[], nn.Module]) -> None:
        x = torch.randn(2, 3, 3, 4, 4)
        before = x.clone()
        wrapped = wrap(module())
        for _ in range(2):
            y = wrapped(x)
            assert torch.equal(x, before)
            assert not shares_storage(y, x)

    def test_without_it_in_place_modules_write_through(self) -> None:
        x = torch.randn(2, 3, 3, 4, 4)
        before = x.clone()
        Distribute(PATTERN, InPlace())(x)
        assert torch.equal(x, before * 2)

    def test_copies_keep_the_frames_layout(self) -> None:
        x = torch.randn(6, 3, 5, 5).contiguous(memory_format=torch.channels_last).unflatten(0, (2, 3))
        folded, _ = foldaxes.fold(x, PATTERN, copy=True)
        assert not shares_storage(folded, x) and folded.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(folded, x.flatten(0, 1))

    def test_keyword_tensors_and_several_operands(self) -> None:
        seen: list[torch.Tensor] = []

        def record(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            seen.extend((a, b, mask))
            return a

        a, b, mask = torch.randn(2, 3, 4), torch.randn(2, 3, 5), torch.ones(2, 3)
        wrapped = Distribute(
            "b t x, b t y -> (b t) x, (b t) y", record, fold_kwargs={"mask": "b t -> (b t)"}, copy=True
        )
        for _ in range(2):
            wrapped(a, b, mask=mask)
            assert not any(shares_storage(folded, given) for folded, given in zip(seen[-3:], (a, b, mask), strict=True))

    def test_jagged_frames_are_copied(self) -> None:
        nt = torch.nested.nested_tensor([torch.randn(3, 4), torch.randn(2, 4)], layout=torch.jagged)
        before = nt.values().clone()
        y = Distribute("b t d -> (b t) d", InPlace(), copy=True)(nt)
        assert torch.equal(nt.values(), before) and torch.equal(y.values(), before * 2)

    def test_masked_calls(self) -> None:
        x = torch.randn(2, 3, 4)
        before = x.clone()
        y = Distribute("b t d -> (b t) d", InPlace(), copy=True)(x, fold_lengths=[3, 1])
        assert torch.equal(x, before) and torch.equal(y[0], before[0] * 2)

    def test_rows_computed_once(self) -> None:
        image = torch.randn(2, 1, 4)
        before = image.clone()
        y = Distribute("b t d -> (b t) d", InPlace(), copy=True, compute_repeats_once=True)(image.expand(2, 3, 4))
        assert torch.equal(image, before) and torch.equal(y, (before * 2).expand(2, 3, 4))


class TestBadCopy:
    @pytest.mark.parametrize("value", [1, "yes", torch.tensor(True)], ids=["int", "string", "tensor"])
    @pytest.mark.parametrize(
        "build",
        [
            lambda v: Distribute(PATTERN, nn.Identity(), copy=v),
            lambda v: TimeDistributed(nn.Identity(), copy=v),
            lambda v: distribute(PATTERN, copy=v),
            lambda v: foldaxes.fold(torch.zeros(2, 3, 3, 4, 4), PATTERN, copy=v),
        ],
        ids=["distribute-module", "time-distributed", "distribute-function", "fold"],
    )
    def test_refused(self, value: object, build: Any) -> None:
        text = message(lambda: build(value))
        assert text.startswith("copy must be None, True or False, not ") and "tensor(" not in text
