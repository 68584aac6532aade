"""``foldaxes.explain`` and ``python -m foldaxes explain``: shapes, view or copy, and why.

The verdicts are checked against real CPU tensors laid out with torch's own calls (``memory_format``,
``transpose``, slicing), folded by ``einops.rearrange`` and compared by storage pointer, never by foldaxes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import shlex
from pathlib import Path
from typing import Any

import einops
import numpy as np
import pytest
import torch
from conftest import allocations

import foldaxes
from foldaxes.__main__ import main

CL = torch.channels_last


def storage(t: torch.Tensor) -> int:
    return int(t.untyped_storage().data_ptr())


def real(shape: tuple[int, ...], channels_last: bool = False, time_major: bool = False) -> torch.Tensor:
    """A CPU tensor with the layout the flags describe, made the way a pipeline would make it."""
    stored = (shape[1], shape[0], *shape[2:]) if time_major else shape
    if channels_last:
        frames = torch.empty(math.prod(stored[:-3]), *stored[-3:], memory_format=CL)
        x = frames.view(stored)
    else:
        x = torch.empty(stored)
    return x.transpose(0, 1) if time_major else x


def rearranged_is_view(x: torch.Tensor, pattern: str, **lengths: int) -> bool:
    return storage(einops.rearrange(x, pattern, **lengths)) == storage(x)


# (pattern, shape, lengths, channels_last, time_major)
LAYOUT_CASES = [
    pytest.param("b t c h w -> (b t) c h w", (2, 8, 3, 6, 5), {}, False, False, id="contiguous"),
    pytest.param("b t c h w -> (b t) c h w", (2, 8, 3, 6, 5), {}, True, False, id="channels-last"),
    pytest.param("b t c h w -> (b t) c h w", (2, 8, 3, 6, 5), {}, False, True, id="time-major"),
    pytest.param("b t c h w -> (t b) c h w", (2, 8, 3, 6, 5), {}, False, True, id="time-major-as-tb"),
    pytest.param("b t c h w -> (b t) c h w", (2, 8, 3, 6, 5), {}, True, True, id="time-major-channels-last"),
    pytest.param("b t c h w -> (b t) (c h w)", (2, 8, 3, 6, 5), {}, True, False, id="channels-last-flat-frame"),
    pytest.param("b t c h w -> (b t) (h w c)", (2, 8, 3, 6, 5), {}, True, False, id="channels-last-hwc"),
    pytest.param("b c t h w -> (b t) c h w", (2, 3, 8, 6, 5), {}, False, False, id="not-adjacent"),
    pytest.param("b (t v) d -> (b t v) d", (2, 6, 4), {"v": 2}, False, False, id="lengths"),
    pytest.param("b (t v) d -> (b t v) d", (2, 6, 4), {"v": 2}, False, True, id="lengths-time-major"),
    pytest.param("t b d -> (t b) d", (5, 1, 4), {}, False, True, id="size-one-axis"),
    pytest.param("b ... -> b (...)", (2, 3, 4, 5), {}, False, False, id="ellipsis"),
    pytest.param("c h w -> () c h w", (3, 4, 5), {}, True, False, id="unit-batch"),
    pytest.param("b t d -> t b d", (2, 3, 4), {}, False, True, id="no-group"),
]


@pytest.mark.parametrize(("pattern", "shape", "lengths", "channels_last", "time_major"), LAYOUT_CASES)
def test_verdict_and_shapes_match_a_real_tensor(
    pattern: str, shape: tuple[int, ...], lengths: dict[str, Any], channels_last: bool, time_major: bool
) -> None:
    report = foldaxes.explain(pattern, shape, channels_last=channels_last, time_major=time_major, **lengths)
    x = real(shape, channels_last, time_major)
    assert report.input_strides == x.stride()
    assert foldaxes.explain(pattern, x, **lengths) == report  # the flags name the layout as the tensor's strides do
    assert report.is_view == rearranged_is_view(x, pattern, **lengths)
    folded, spec = foldaxes.fold(x, pattern, **lengths)
    assert report.folded_shape == folded.shape
    assert report.folded_strides == folded.stride()
    output = torch.empty(report.output_shape)
    unfolded = foldaxes.unfold(output, spec)
    assert report.unfolded_shape == unfolded.shape
    assert report.unfold_is_view == (storage(unfolded) == storage(output))
    assert report.unfold_is_view


def strided_inputs() -> list[torch.Tensor]:
    """Every axis order of a small 3-D buffer, each uncropped and cropped on each axis."""
    tensors = []
    base = torch.empty(2, 3, 4)
    for order in itertools.permutations(range(3)):
        permuted = base.permute(order)
        tensors.append(permuted)
        for dim in range(3):
            tensors.append(permuted.narrow(dim, 0, permuted.shape[dim] - 1))
            tensors.append(permuted[(slice(None),) * dim + (slice(None, None, 2),)])
    return tensors


@pytest.mark.parametrize("pattern", ["a b c -> (a b) c", "a b c -> a (b c)", "a b c -> (a b c)", "a b c -> (b a) c"])
def test_verdict_matches_real_tensors_for_any_strides(pattern: str) -> None:
    """Meta tensors decide view or copy as CPU tensors do, and a copy's reason names the blocking axes."""
    for x in strided_inputs():
        report = foldaxes.explain(pattern, x.shape, strides=x.stride())
        expected = rearranged_is_view(x, pattern)
        assert report.is_view == expected, (x.shape, x.stride(), str(report))
        assert ("cannot be one axis" not in report.reason) == expected, report.reason


# ---- a tensor instead of a shape --------------------------------------------------------------------------------


def contiguous() -> torch.Tensor:
    return torch.randn(2, 8, 3, 6, 5)


def channels_last_4d() -> torch.Tensor:
    return torch.randn(2, 3, 6, 5).contiguous(memory_format=CL)


def channels_last_frames() -> torch.Tensor:
    return torch.randn(16, 3, 6, 5).contiguous(memory_format=CL).view(2, 8, 3, 6, 5)


def time_major() -> torch.Tensor:
    return torch.randn(8, 2, 3, 6, 5).transpose(0, 1)


def sliced() -> torch.Tensor:
    return torch.randn(2, 8, 3, 6, 10)[:, 1:, :, :, ::2]


def cropped_in_time() -> torch.Tensor:
    return torch.randn(2, 8, 3, 6, 5)[:, :4]


def repeated() -> torch.Tensor:
    return torch.randn(2, 1, 3, 6, 5).expand(2, 8, 3, 6, 5)


def permuted() -> torch.Tensor:
    return torch.randn(6, 5, 2, 8, 3).permute(2, 3, 4, 0, 1)


def channels_last_3d() -> torch.Tensor:
    return torch.randn(2, 3, 4, 6, 5).contiguous(memory_format=torch.channels_last_3d)


TENSORS = [contiguous, channels_last_4d, channels_last_frames, time_major, sliced, cropped_in_time, repeated, permuted]
TENSOR_IDS = [make.__name__.replace("_", "-") for make in TENSORS]
PATTERNS = {4: "b c h w -> (b c) h w", 5: "b t c h w -> (b t) c h w"}


@pytest.mark.parametrize("make", TENSORS, ids=TENSOR_IDS)
def test_a_tensor_explains_as_its_shape_and_strides(make: Any) -> None:
    x = make()
    pattern = PATTERNS[x.dim()]
    report = foldaxes.explain(pattern, x)
    assert report == foldaxes.explain(pattern, x.shape, strides=x.stride())
    assert report.input_shape == tuple(x.shape)
    assert report.input_strides == x.stride()
    assert report.is_view == rearranged_is_view(x, pattern)
    folded, _ = foldaxes.fold(x, pattern)
    assert report.folded_shape == folded.shape
    assert report.folded_strides == folded.stride()


def test_a_tensor_is_read_not_folded_or_copied() -> None:
    x = time_major()  # its fold copies: explain must not make that copy, nor touch x
    before = x.clone()
    _, allocated = allocations(lambda: foldaxes.explain("b t c h w -> (b t) c h w", x))
    assert sum(allocated) < x.nbytes
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        pytest.param(contiguous, "contiguous", id="contiguous"),
        pytest.param(channels_last_4d, "every (c h w) frame stored channels_last", id="channels-last-4d"),
        pytest.param(channels_last_frames, "every (c h w) frame stored channels_last", id="channels-last-frames"),
        pytest.param(
            time_major,
            "time-major, x.transpose(0, 1) of a contiguous buffer whose first two axes are swapped",
            id="time-major",
        ),
        pytest.param(channels_last_3d, "channels_last_3d", id="channels-last-3d"),
        pytest.param(repeated, "not dense: it repeats along dim 1 (stride 0), as expand() makes", id="repeated"),
        pytest.param(sliced, "not dense: there are gaps in memory between its elements", id="sliced"),
        pytest.param(cropped_in_time, "not dense: there are gaps in memory between its elements", id="cropped"),
    ],
)
def test_the_layout_is_named_from_the_strides(make: Any, words: str) -> None:
    x = make()
    assert foldaxes.explain("b ... -> b (...)", x).layout.startswith(words)


def test_a_permuted_layout_names_the_permute_that_makes_it_contiguous() -> None:
    x = permuted()
    layout = foldaxes.explain("b ... -> b (...)", x).layout
    found = re.fullmatch(r"dense but permuted: x\.permute\(([\d, ]+)\) is contiguous", layout)
    assert found is not None, layout
    order = [int(dim) for dim in found[1].split(",")]
    assert sorted(order) == list(range(x.dim()))
    assert x.permute(order).is_contiguous()


def test_copy_reason_names_the_real_strides() -> None:
    report = foldaxes.explain("b t c h w -> (b t) c h w", (2, 8, 3, 224, 224), time_major=True)
    assert not report.is_view
    assert report.input_strides == (3 * 224 * 224, 2 * 3 * 224 * 224, 224 * 224, 224, 1)
    assert "b's stride 150528 (= c*h*w)" in report.reason
    assert "t's size 8 times t's stride 301056 (= b*c*h*w), 2408448" in report.reason
    assert report.hint is not None and "(t b)" in report.hint


def test_not_adjacent_hint_names_the_axis_between() -> None:
    report = foldaxes.explain("b c t h w -> (b t) c h w", (2, 3, 8, 6, 5))
    assert not report.is_view
    assert report.hint == "They are not adjacent in memory: c lies between them."


def test_view_reason_shows_the_stride_arithmetic() -> None:
    report = foldaxes.explain("b t c h w -> (b t) c h w", (2, 8, 3, 224, 224), channels_last=True)
    assert report.is_view
    assert report.folded_layout == "channels_last"
    assert (
        report.reason
        == "(b t) becomes one axis of stride 150528: b's stride 1204224 = t's size 8 times t's stride 150528."
    )
    assert report.hint is None


@pytest.mark.parametrize(
    ("pattern", "make", "lengths", "reason", "hint"),
    [
        (
            "b t c -> (b t) c",
            lambda: torch.zeros(1, 3, 4),
            {},
            "(b t) merges whatever the strides: only t has a size above 1.",
            None,
        ),
        (
            "b t c -> (b t) c",
            lambda: torch.zeros(1, 1, 4),
            {},
            "(b t) merges whatever the strides: none of its axes has a size above 1.",
            None,
        ),
        (
            "b t v c -> (b t v) c",
            lambda: torch.zeros(2, 3, 2, 4),
            {},
            "(b t v) becomes one axis of stride 4: b's stride 24 = t's size 3 times t's stride 8; t's stride 8 = "
            "v's size 2 times v's stride 4.",
            None,
        ),
        (
            "(t b v) c -> (b t v) c",
            lambda: torch.zeros(12, 4),
            {"b": 2, "v": 2},
            "(b t v) cannot be one axis: b's stride 8 (= v*c) would have to be t's size 3 times t's stride 16 "
            "(= b*v*c), 48.",
            "Writing the group as (t b v), the order of its axes in memory, would make it a view. "
            "Distribute('(t b v) c -> (t b v) c', module, b=2, v=2, out='(t b v) ... -> b t v ...') folds without "
            "a copy and returns the outputs in the original order.",
        ),
        (
            "x y b t c -> x y (b t) c",
            lambda: torch.zeros(2, 2, 3, 2, 4).transpose(2, 3),
            {},
            "(b t) cannot be one axis: b's stride 4 (= c) would have to be t's size 3 times t's stride 8 (= b*c), 24.",
            "Writing the group as (t b), the order of its axes in memory, would make it a view. "
            "Distribute('x y b t c -> x y (t b) c', module, out='d0 d1 (t b) ... -> d0 d1 b t ...') folds without "
            "a copy and returns the outputs in the original order.",
        ),
        (  # '...' stands for no axes here, but a pattern cannot write the group without it
            "b t ... -> (b t ...)",
            lambda: torch.zeros(3, 2).t(),
            {},
            "(b t) cannot be one axis: b's stride 1 would have to be t's size 3 times t's stride 2 (= b), 6.",
            "Writing the group as (t b), the order of its axes in memory, would make it a view.",
        ),
        (
            "b t ... c -> (b t) (...) c",
            lambda: torch.zeros(3, 2, 4, 5, 6).transpose(0, 1),
            {},
            "(b t) cannot be one axis: b's stride 120 (= ...[0]*...[1]*c) would have to be t's size 3 times t's "
            "stride 240 (= b*...[0]*...[1]*c), 720. (...[0] ...[1]) becomes one axis of stride 6: ...[0]'s stride 30 "
            "= ...[1]'s size 5 times ...[1]'s stride 6.",
            "Writing the group as (t b), the order of its axes in memory, would make it a view. "
            "Distribute('b t ... c -> (t b) (...) c', module, out='(t b) ... -> b t ...') folds without a copy and "
            "returns the outputs in the original order.",
        ),
        (
            "b t c -> (b t) c",
            lambda: torch.zeros(2, 1, 4).expand(2, 2, 4),
            {},
            "(b t) cannot be one axis: b's stride 4 would have to be t's size 2 times t's stride 0, 0.",
            "t has stride 0: the input repeats along it, as expand() makes. Distribute(..., "
            "compute_repeats_once=True) runs the module on one copy of such an input rather than folding every "
            "repeat.",
        ),
        (
            "b u t c -> b (u t c)",
            lambda: torch.zeros(40).as_strided((2, 1, 3, 4), (15, 0, 5, 1)),
            {},
            "(u t c) cannot be one axis: t's stride 5 would have to be c's size 4 times c's stride 1, 4.",
            "There is a gap in memory between them: the input is cropped or strided along an axis.",
        ),
        (
            "b t v c -> (b t) v c",
            lambda: torch.zeros(2, 2, 3, 5).transpose(1, 2),
            {},
            "(b t) cannot be one axis: b's stride 30 (= v*t*c) would have to be t's size 3 times t's stride 5 "
            "(= c), 15.",
            "They are not adjacent in memory: v lies between them.",
        ),
        (
            "b t v w c -> (b t) v w c",
            lambda: torch.zeros(2, 2, 2, 3, 5).permute(0, 3, 1, 2, 4),
            {},
            "(b t) cannot be one axis: b's stride 60 (= v*w*t*c) would have to be t's size 3 times t's stride 5 "
            "(= c), 15.",
            "They are not adjacent in memory: v and w lie between them.",
        ),
        (
            "b t c -> (b) t c",
            lambda: torch.zeros(2, 3, 4),
            {},
            "The pattern merges no axes: it only splits, reorders or adds unit axes, which are always views.",
            None,
        ),
        (
            "b t c -> (b t) c",
            lambda: torch.zeros(0, 3, 4),
            {},
            "The input is empty, and any reshape of an empty tensor is a view.",
            None,
        ),
        (
            "b t x y -> (b t) (x y)",
            lambda: torch.zeros(2, 3, 4, 6)[..., :5],
            {},
            "(b t) becomes one axis of stride 24: b's stride 72 = t's size 3 times t's stride 24. (x y) cannot be one "
            "axis: x's stride 6 would have to be y's size 5 times y's stride 1, 5.",
            "There is a gap in memory between them: the input is cropped or strided along an axis.",
        ),
        (
            "a b c d -> (a b) (c d)",
            lambda: torch.zeros(2, 3, 4, 5).permute(1, 0, 3, 2),
            {},
            "(a b) cannot be one axis: a's stride 20 (= d*c) would have to be b's size 2 times b's stride 60 "
            "(= a*d*c), 120. (c d) cannot be one axis: c's stride 1 would have to be d's size 4 times d's stride 5 "
            "(= c), 20.",
            "Writing the group as (b a), the order of its axes in memory, would make it a view. Writing the group "
            "as (d c), the order of its axes in memory, would make it a view. Distribute('a b c d -> (b a) (c d)', "
            "module, out='(b a) ... -> a b ...') folds without a copy and returns the outputs in the original order.",
        ),
    ],
    ids=[
        "one-axis-above-1",
        "no-axis-above-1",
        "three-axes",
        "given-lengths",
        "group-at-dim-2",
        "empty-ellipsis",
        "a-merged-ellipsis-after-the-group",
        "repeated",
        "a-gap-beside-a-unit-axis-of-stride-0",
        "one-axis-between",
        "two-axes-between",
        "no-merges",
        "empty",
        "the-second-merge-is-blocked",
        "both-merges-blocked",
    ],
)
def test_reason_and_hint_word_for_word(
    pattern: str, make: Any, lengths: dict[str, int], reason: str, hint: str | None
) -> None:
    report = foldaxes.explain(pattern, make(), **lengths)
    assert (report.reason, report.hint) == (reason, hint)


def test_nothing_is_allocated() -> None:
    """A shape of 2**42 elements would need 16 TiB on the CPU; the meta device needs nothing."""
    report = foldaxes.explain("b t c h w -> (b t) c h w", (64, 1024, 4, 2048, 2048), time_major=True)
    assert report.folded_shape == (64 * 1024, 4, 2048, 2048)
    assert not report.is_view


def test_report_text() -> None:
    report = foldaxes.explain("b t c h w -> (b t) c h w", (2, 8, 3, 224, 224), time_major=True)
    text = str(report)
    assert [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")] == [
        "pattern",
        "input",
        "folded",
        "fold",
        "unfold",
    ]
    assert "one copy, laid out contiguous." in text
    assert "Distribute('b t c h w -> (t b) c h w', module, out='(t b) ... -> b t ...')" in text  # never split
    assert "(2, 8, 3, 224, 224)" in text and "(16, 3, 224, 224)" in text
    assert "(b t)" in text  # a group is never split across lines
    assert all(len(line) <= 100 for line in text.splitlines())
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.is_view = True  # type: ignore[misc]


def test_an_axis_may_be_named_like_a_keyword() -> None:
    assert main(["explain", "b (t strides) d -> (b t strides) d", "--shape", "2,6,4", "--lengths", "strides=3"]) == 0


# ---- the command line ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "verdict", "strides"),
    [
        pytest.param([], "a view.", "(1204224, 150528, 50176, 224, 1)", id="contiguous"),
        pytest.param(["--channels-last"], "a view.", "(1204224, 150528, 1, 672, 3)", id="channels-last"),
        pytest.param(
            ["--time-major"], "one copy, laid out contiguous.", "(150528, 301056, 50176, 224, 1)", id="time-major"
        ),
        pytest.param(
            ["--time-major", "--channels-last"],
            "one copy, laid out channels_last, as each frame is.",
            "(150528, 301056, 1, 672, 3)",
            id="both-flags",
        ),
        pytest.param(["--strides", "1204224,150528,50176,224,1"], "a view.", "(1204224, 150528", id="strides"),
    ],
)
def test_cli_flags(flags: list[str], verdict: str, strides: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "b t c h w -> (b t) c h w", "--shape", "2,8,3,224,224", *flags]) == 0
    out = capsys.readouterr().out
    assert f"strides {strides}" in out
    assert f"fold:     {verdict}" in out
    assert "shape (16, 3, 224, 224)" in out
    assert "comes back as (2, 8, 3, 224, 224)" in out


def test_cli_lengths(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["explain", "b (t v) c h w -> (b t v) c h w", "--shape", "2,6,3,8,8", "--lengths", "v=2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "b=2, t=3, v=2" in out
    assert "comes back as (2, 3, 2, 3, 8, 8)" in out
    assert main(["explain", "b (t v) (h w) -> (b t v) h w", "--shape", "2 6 12", "--lengths", "v=2,h=3"]) == 0
    assert (
        main(["explain", "b (t v) (h w) -> (b t v) h w", "--shape", "2,6,12", "--lengths", "v=2", "--lengths", "h=3"])
        == 0
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["b t c -> b t c (", "--shape", "2,3,4"], "pattern", id="malformed-pattern"),
        pytest.param(["b t c", "--shape", "2,3,4"], "exactly one '->'", id="no-arrow"),
        pytest.param(["b t c -> (b t) c", "--shape", "2,3"], "has 2 dims", id="wrong-rank"),
        pytest.param(["b (t v) c -> (b t v) c", "--shape", "2,5,3", "--lengths", "v=2"], "cannot be split", id="split"),
        pytest.param(["b t c -> (b t) c", "--shape", "2,3,4", "--lengths", "q=2"], "no pattern uses it", id="unused"),
        pytest.param(["b t, b s -> (b t), (b s)", "--shape", "2,3"], "'b t -> (b t)', then 'b s -> (b s)'", id="two"),
        pytest.param(["b t -> (b t)", "--shape", "2,3", "--channels-last"], "at least 3 dims", id="cl-rank"),
        pytest.param(["b t -> (b t)", "--shape", "2,3", "--strides", "3,1", "--time-major"], "not both", id="both"),
        pytest.param(["b t -> (b t)", "--shape", "2,3", "--strides", "1"], "2 dims but 1 strides", id="strides"),
        pytest.param(
            ["b t -> (b t)", "--shape", "2,3", "--lengths", "b=2", "--lengths", "b=3"], "two lengths", id="dup"
        ),
        pytest.param(["b t -> (b t)", "--shape", f"{2**62},{2**62}"], "No tensor can have", id="overflow"),
        pytest.param(["b t -> (b t)", "--shape", f"{2**64},3"], "No tensor can have", id="beyond-int64"),
    ],
)
def test_bad_input_exits_2_with_the_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert message in captured.err
    assert "argument" not in captured.err  # the command line has options, not fold's positional arguments


@pytest.mark.parametrize(
    ("argv", "first_line"),
    [
        pytest.param(
            ["b t c -> (b t) c", "--shape", "2 3"], "error: --shape 2,3 has 2 dims, but 'b t c' expects 3.", id="rank"
        ),
        pytest.param(
            ["b (t v) c -> (b t v) c", "--shape", "2,5,3", "--lengths", "v=2"],
            "error: --shape 2,5,3 does not fit the pattern: dim 1 of size 5 cannot be split into (t v) with v=2.",
            id="split",
        ),
    ],
)
def test_cli_messages_name_the_input_by_its_option(
    argv: list[str], first_line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", *argv]) == 2
    assert capsys.readouterr().err.splitlines()[0] == first_line


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["b t -> (b t)"], id="no-shape"),
        pytest.param(["b t -> (b t)", "--shape", "2,x"], id="bad-shape"),
        pytest.param(["b t -> (b t)", "--shape", "2,-3"], id="negative"),
        pytest.param(["b t -> (b t)", "--shape", "2,3", "--lengths", "v"], id="bad-length"),
        pytest.param(["b t -> (b t)", "--shape", "2,3", "--strides", "3,1", "--channels-last"], id="exclusive"),
    ],
)
def test_bad_command_line_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["explain", *argv])
    assert excinfo.value.code == 2
    assert "usage: python -m foldaxes explain" in capsys.readouterr().err


# ---- messages ------------------------------------------------------------------------------------------------

SENTINEL = 987654.0
"""A value that a message would show if it printed a tensor's values."""


def filled(*shape: int) -> torch.Tensor:
    return torch.full(shape, SENTINEL)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        pytest.param(
            lambda: foldaxes.explain(filled(2, 3), "b t -> (b t)"), "Tensor of dtype torch.float32", id="swapped"
        ),
        pytest.param(
            lambda: foldaxes.explain("b t -> (b t)", [filled(), 3]), "Tensor of dtype torch.float32", id="shape-item"
        ),
        pytest.param(lambda: foldaxes.explain("b t -> (b t)", [[filled(2)], 3]), "item 0 is a list", id="shape-list"),
        pytest.param(lambda: foldaxes.explain("b t -> (b t)", {"b": filled(2)}), "not a dict", id="shape-dict"),
        pytest.param(
            lambda: foldaxes.explain("b t -> (b t)", (2, 3), strides=filled(2)), "shape (2,)", id="strides-tensor"
        ),
        pytest.param(
            lambda: foldaxes.explain("b (t v) -> (b t v)", (2, 6), v=filled(2)), "shape (2,)", id="length-tensor"
        ),
        pytest.param(lambda: foldaxes.explain("b t -> (b t)", filled(2, 3), time_major=True), "shape", id="with-flags"),
        pytest.param(lambda: foldaxes.explain("b t c -> (b t) c", filled(2, 3)), "shape (2, 3)", id="wrong-rank"),
        pytest.param(
            lambda: foldaxes.explain("b (t v) -> (b t v)", filled(2, 5), v=2), "shape (2, 5)", id="cannot-split"
        ),
        pytest.param(
            lambda: foldaxes.explain(
                "b j d -> (b j) d", torch.nested.nested_tensor([filled(2, 3), filled(4, 3)], layout=torch.jagged)
            ),
            "nested tensor of dtype torch.float32",
            id="nested",
        ),
    ],
)
def test_messages_name_a_tensor_by_dtype_and_shape_never_its_values(call: Any, named: str) -> None:
    with pytest.raises(foldaxes.FoldError) as excinfo:
        call()
    text = str(excinfo.value)
    assert "987654" not in text and "tensor([" not in text, text
    assert named in text, text
    assert "argument 0" not in text, text


def test_python_api_errors_are_fold_errors() -> None:
    with pytest.raises(foldaxes.FoldError, match="non-negative ints"):
        foldaxes.explain("b t -> (b t)", (2, -1))
    with pytest.raises(foldaxes.FoldError, match="time_major needs at least 2 dims"):
        foldaxes.explain("b -> (b)", (2,), time_major=True)


def test_the_docs_page_shows_what_the_command_prints(capsys: pytest.CaptureFixture[str]) -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "explain.md").read_text()
    found = re.search(r"```sh\n(python -m foldaxes explain .*?)\n```\n\nprints\n\n```text\n(.*?)```", page, re.DOTALL)
    assert found is not None
    command, shown = found.groups()
    assert main(shlex.split(command)[3:]) == 0
    assert capsys.readouterr().out == shown


def test_a_shape_of_numpy_integers_reads_as_ints() -> None:
    shape, strides = (np.int64(2), np.int32(3), 4), (np.int64(1), 2, np.int64(6))
    assert foldaxes.explain("b t c -> (b t) c", shape, strides=strides) == foldaxes.explain(
        "b t c -> (b t) c", (2, 3, 4), strides=(1, 2, 6)
    )
