"""Jagged nested tensors: the module runs once on the packed real frames, with no padding and no copy, and every
per-frame output comes back jagged over the same offsets. References loop over samples and frames.
"""

from __future__ import annotations

import warnings
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


def jagged(lengths: Sequence[int], *trailing: int) -> torch.Tensor:
    """A jagged ``(B, j, *trailing)`` tensor with the given sample lengths, built from one packed tensor."""
    values = torch.randn(sum(lengths), *trailing)
    offsets = torch.tensor([0, *torch.tensor(lengths, dtype=torch.long).cumsum(0).tolist()])
    return torch.nested.nested_tensor_from_jagged(values, offsets)


def per_frame(fn: Callable[[torch.Tensor], Any], nt: torch.Tensor) -> list[torch.Tensor]:
    """``fn`` on one frame at a time of each sample, stacked per sample (the reference)."""
    out = []
    for sample in nt.unbind():
        frames = [fn(frame.unsqueeze(0))[0] for frame in sample]
        out.append(torch.stack(frames) if frames else None)
    return out


def assert_jagged_equal(actual: torch.Tensor, expected: list[torch.Tensor | None], offsets: torch.Tensor) -> None:
    assert actual.is_nested and actual.layout == torch.jagged
    assert actual.offsets() is offsets
    for sample, wanted in zip(actual.unbind(), expected, strict=True):
        if wanted is None:
            assert sample.shape[0] == 0
        else:
            assert_exact(sample, wanted)


@pytest.mark.usefixtures("float64")
class TestJaggedMatchesTheLoop:
    @pytest.mark.parametrize(
        ("make", "trailing"),
        [
            (lambda: nn.Linear(4, 3), (4,)),
            (lambda: nn.Conv2d(3, 2, 3), (3, 6, 6)),
            (lambda: nn.Sequential(nn.Conv2d(3, 5, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten()), (3, 7, 7)),
        ],
        ids=["linear", "conv", "conv-to-vector"],
    )
    def test_module(self, make: Callable[[], nn.Module], trailing: tuple[int, ...]) -> None:
        module = make()
        nt = jagged([3, 1, 2], *trailing)
        y = Distribute("b t ... -> (b t) ...", module)(nt)
        assert_jagged_equal(y, per_frame(module, nt), nt.offsets())

    def test_module_runs_once_on_the_packed_values(self) -> None:
        recorder = Recorder(nn.Linear(4, 3))
        nt = jagged([3, 0, 2], 4)
        Distribute("b t d -> (b t) d", recorder)(nt)
        (seen,) = recorder.inputs
        assert seen.shape == (5, 4) and not seen.is_nested
        assert seen.data_ptr() == nt.values().data_ptr()

    def test_nested_outputs_each_become_jagged(self) -> None:
        def fn(z: torch.Tensor) -> Any:
            return {"frames": z * 2, "both": (z.sum(-1), "label")}

        nt = jagged([2, 3], 4)
        y = Distribute("b t d -> (b t) d", fn)(nt)
        assert y["both"][1] == "label"
        assert_jagged_equal(y["frames"], [s * 2 for s in nt.unbind()], nt.offsets())
        assert_jagged_equal(y["both"][0], [s.sum(-1) for s in nt.unbind()], nt.offsets())

    def test_output_adds_to_the_input(self) -> None:
        nt = jagged([2, 3], 4)
        y = Distribute("b t d -> (b t) d", torch.tanh)(nt)
        assert_exact((y + nt).values(), nt.values().tanh() + nt.values())

    @pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "time-major"])
    def test_time_distributed(self, batch_first: bool) -> None:
        linear = nn.Linear(4, 3)
        nt = jagged([1, 3], 4)
        assert_jagged_equal(TimeDistributed(linear, batch_first)(nt), per_frame(linear, nt), nt.offsets())

    def test_several_arguments_sharing_offsets(self) -> None:
        a = jagged([2, 3], 4)
        b = torch.nested.nested_tensor_from_jagged(torch.randn(5, 2), a.offsets())
        same_lengths = jagged([2, 3], 2)  # equal offsets in another tensor
        wrapped = Distribute("b t x, b t y -> (b t) x, (b t) y", lambda p, q: p.sum(-1, keepdim=True) * q)
        for other in (b, same_lengths):
            y = wrapped(a, other)
            assert_exact(y.values(), a.values().sum(-1, keepdim=True) * other.values())
            assert y.offsets() is a.offsets()

    def test_a_jagged_keyword_tensor(self) -> None:
        nt = jagged([2, 3], 4)
        wrapped = Distribute("b t d -> (b t) d", lambda *, x: x * 2, fold_kwargs={"x": "b t d -> (b t) d"})
        y = wrapped(x=nt)
        assert_exact(y.values(), nt.values() * 2)
        assert y.offsets() is nt.offsets()

    def test_chunked(self) -> None:
        recorder = Recorder(nn.Linear(4, 3))
        nt = jagged([3, 0, 4], 4)
        y = TimeDistributed(recorder, True, chunk_size=3)(nt)
        assert recorder.rows == [3, 3, 1]
        assert_jagged_equal(y, per_frame(recorder.fn, nt), nt.offsets())

    @given(lengths=st.lists(st.integers(0, 4), min_size=1, max_size=4), seed=st.integers(0, 2**16))
    @settings(max_examples=50, deadline=None, derandomize=True)
    @example(lengths=[4, 4], seed=0)  # every clip full
    @example(lengths=[0, 0, 0], seed=0)  # no frame at all
    def test_any_lengths(self, lengths: list[int], seed: int) -> None:
        torch.manual_seed(seed)
        linear = nn.Linear(3, 2)
        nt = jagged(lengths, 3)
        y = Distribute("b t d -> (b t) d", linear)(nt)
        assert y.values().shape == (sum(lengths), 2)
        assert_jagged_equal(y, per_frame(linear, nt), nt.offsets())


class TestJaggedLengths:
    """Outputs keep the sample lengths torch caches on the input, so that padding them pads as the input does."""

    @pytest.mark.parametrize("lengths", [[7, 3, 5, 1], [1, 1], [0, 4, 2]], ids=["mixed", "ones", "empty-sample"])
    def test_padded_length_is_the_inputs(self, lengths: list[int]) -> None:
        nt = torch.nested.nested_tensor([torch.randn(n, 4) for n in lengths], layout=torch.jagged)
        linear = nn.Linear(4, 8)
        y = Distribute("b t d -> (b t) d", linear)(nt)
        padded = y.to_padded_tensor(0.0)
        assert padded.shape == linear(nt).to_padded_tensor(0.0).shape == (len(lengths), max(lengths), 8)
        assert padded.shape[1] == nt.to_padded_tensor(0.0).shape[1]

    def test_every_output_leaf_keeps_them(self) -> None:
        nt = torch.nested.nested_tensor([torch.randn(n, 4) for n in [5, 2]], layout=torch.jagged)
        out = Distribute("b t d -> (b t) d", lambda z: {"z": z, "pair": (z * 2, z.sum(-1))})(nt)
        for leaf in (out["z"], *out["pair"]):
            assert leaf.to_padded_tensor(0.0).shape[:2] == (2, 5)
            assert foldaxes._ragged.cached_seqlens(leaf) == (2, 5)

    def test_an_input_without_cached_lengths_gives_outputs_without_them(self) -> None:
        nt = jagged([2, 3], 4)  # built from values and offsets: torch caches no lengths
        y = Distribute("b t d -> (b t) d", lambda z: z)(nt)
        assert y.to_padded_tensor(0.0).shape == nt.to_padded_tensor(0.0).shape

    def test_the_private_attributes_foldaxes_reads(self) -> None:
        """Pins ``_maybe_min_seqlen`` and ``_maybe_max_seqlen``, read only by ``_ragged.cached_seqlens``."""
        nt = torch.nested.nested_tensor([torch.randn(n, 4) for n in [5, 2, 3]], layout=torch.jagged)
        assert (nt._maybe_min_seqlen, nt._maybe_max_seqlen) == (2, 5)
        assert jagged([2, 3], 4)._maybe_max_seqlen is None


@pytest.mark.usefixtures("float64")
class TestJaggedGradients:
    def test_gradcheck_through_values(self) -> None:
        linear = nn.Linear(3, 2)
        offsets = torch.tensor([0, 2, 2, 5])
        wrapped = Distribute("b t d -> (b t) d", linear)

        def call(values: torch.Tensor) -> torch.Tensor:
            return wrapped(torch.nested.nested_tensor_from_jagged(values, offsets)).values()  # type: ignore[no-any-return]

        assert torch.autograd.gradcheck(call, (torch.randn(5, 3, requires_grad=True),))

    def test_gradients_match_the_loop_with_a_new_trailing_shape(self) -> None:
        conv = nn.Conv2d(3, 2, 3, stride=2)
        values = torch.randn(6, 3, 7, 7, requires_grad=True)
        nt = torch.nested.nested_tensor_from_jagged(values, torch.tensor([0, 2, 3, 6]))
        Distribute("b t c h w -> (b t) c h w", conv, chunk_size=4)(nt).values().square().sum().backward()
        grad, weight_grad = values.grad.clone(), conv.weight.grad.clone()
        values.grad, conv.weight.grad = None, None
        torch.stack([conv(frame[None])[0] for frame in values]).square().sum().backward()
        assert_exact(grad, values.grad)
        assert_exact(weight_grad, conv.weight.grad)


class TestJaggedBatchStatistics:
    def test_one_call_normalises_over_the_real_frames(self) -> None:
        norm = nn.BatchNorm1d(4, momentum=1.0)
        nt = jagged([3, 1, 2], 4)
        Distribute("b t d -> (b t) d", norm)(nt)
        torch.testing.assert_close(norm.running_mean, nt.values().mean(0))

    def test_chunks_are_refused(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", nn.BatchNorm1d(4), chunk_size=2)
        assert "normalises with the statistics" in message(lambda: wrapped(jagged([3, 1], 4)))

    def test_chunks_when_allowed_normalise_each_chunk(self) -> None:
        nt = jagged([3, 1], 4)
        norm = nn.BatchNorm1d(4, affine=False)
        y = Distribute("b t d -> (b t) d", norm, chunk_size=2, allow_batch_statistics=True)(nt)
        frames = nt.values()
        expected = torch.cat([nn.functional.batch_norm(part, None, None, training=True) for part in frames.split(2)])
        assert_exact(y.values(), expected)


class TestJaggedErrors:
    @pytest.mark.parametrize(
        ("pattern", "make"),
        [
            ("b t d -> (t b) d", lambda: jagged([2, 3], 4)),
            ("b t d -> b (t d)", lambda: jagged([2, 3], 4)),
            ("b t d -> (b t d)", lambda: jagged([2, 3], 4)),
            ("b d t -> (b t) d", lambda: jagged([2, 3], 4).transpose(1, 2)),
            ("b t d -> (b t) d", lambda: jagged([2, 3], 4).transpose(1, 2)),
        ],
        ids=["reversed-group", "ragged-with-features", "everything", "ragged-last", "ragged-dim-moved"],
    )
    def test_unsupported_patterns(self, pattern: str, make: Callable[[], torch.Tensor]) -> None:
        nt = make()
        text = message(lambda: Distribute(pattern, lambda z: z)(nt))
        shape = ", ".join(map(str, nt.shape))  # the ragged size as torch names it, without quotes
        assert text.startswith(f"argument 0 of shape ({shape}) is not folded that way")
        assert "folded only by patterns of the shape 'b j ... -> (b j) ...'" in text
        assert f"pattern: {pattern}" in text and "fold_mask" in text

    def test_holes(self) -> None:
        padded = torch.randn(2, 5, 4)
        holes = torch.nested.narrow(padded, 1, torch.tensor([0, 1]), torch.tensor([3, 2]), layout=torch.jagged)
        text = message(lambda: Distribute("b t d -> (b t) d", lambda z: z)(holes))
        assert "has holes" in text and "x.contiguous()" in text

    def test_different_offsets(self) -> None:
        wrapped = Distribute("b t x, b t y -> (b t) x, (b t) y", lambda p, q: p)
        text = message(lambda: wrapped(jagged([2, 3], 4), jagged([3, 2], 4)))
        assert "argument 1 and argument 0 are jagged with different offsets" in text
        assert "sample 0 has 3 frames here, 2 there" in text

    def test_dense_beside_jagged(self) -> None:
        wrapped = Distribute("b t x, b t y -> (b t) x, (b t) y", lambda p, q: p)
        text = message(lambda: wrapped(jagged([2, 3], 4), torch.randn(2, 3, 4)))
        assert "argument 1 is a dense tensor beside a jagged one" in text
        text = message(lambda: wrapped(jagged([2, 3], 4), nn.Parameter(torch.randn(2, 3, 4))))
        assert "argument 1 is a dense tensor beside a jagged one" in text
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's "prototype" notice
            strided = torch.nested.nested_tensor([torch.randn(2, 4), torch.randn(3, 4)])
        text = message(lambda: wrapped(jagged([2, 3], 4), strided))
        assert "argument 1 is a nested tensor with layout=torch.strided beside a jagged one" in text

    def test_output_without_one_row_per_frame(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", lambda z: (z, z.mean()))
        text = message(lambda: wrapped(jagged([2, 3], 4)))
        assert "Output [1] cannot become a jagged tensor" in text and "one row per real frame (5)" in text
        assert "it has shape ()." in text
        wrapped = Distribute("b t d -> (b t) d", lambda z: (z, z[:2]))
        text = message(lambda: wrapped(jagged([2, 3], 4)))
        assert "one row per real frame (5) at dim 0, but it has shape (2, 4)." in text

    @pytest.mark.parametrize(
        ("keywords", "expected"),
        [({"fold_lengths": [1, 2]}, "a jagged tensor already holds only real frames")],
        ids=["lengths"],
    )
    def test_masks_are_for_padded_tensors(self, keywords: dict[str, Any], expected: str) -> None:
        assert expected in message(lambda: Distribute("b t d -> (b t) d", lambda z: z)(jagged([2, 3], 4), **keywords))

    def test_out_is_refused(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", lambda z: z, out="(b t) d -> b t d")
        assert "out= is not supported with jagged input" in message(lambda: wrapped(jagged([2, 3], 4)))

    def test_functional_fold_reports_the_layout(self) -> None:
        with pytest.raises(foldaxes.FoldError) as info:
            foldaxes.fold(jagged([2, 3], 4), "b t d -> (b t) d")
        assert type(info.value) is foldaxes.FoldError
        assert str(info.value) == (
            "argument 0 is a jagged nested tensor; foldaxes folds strided (dense) tensors only.\n"
            "  pattern: b t d -> (b t) d\n"
            "  fold() has no jagged form: Distribute and distribute run a module on a jagged tensor's packed "
            "frames; or pass x.values() (the packed frames) or x.to_padded_tensor(0)."
        )

    def test_strided_nested_tensor(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's "prototype" notice
            nt = torch.nested.nested_tensor([torch.randn(3, 4), torch.randn(2, 4)])
        wrapped = Distribute("b t d -> (b t) d", lambda z: z)
        for _ in range(2):  # also once a plan for this rank exists
            assert "layout=torch.jagged" in message(lambda: wrapped(nt))
            wrapped(torch.randn(2, 3, 4))
