"""Exceptions raised inside the wrapped module pass through as they are, with one note on how the call was folded."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from foldaxes import Distribute, FoldError, TimeDistributed, distribute

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need Python 3.11")


class Boom(Exception):
    """An exception of the module's own."""


def boom(*args: Any, **kwargs: Any) -> Any:
    raise Boom("the module's own words")


def raised(call: Callable[[], Any], error: type[BaseException] = Exception) -> BaseException:
    with pytest.raises(error) as info:
        call()
    return info.value


def notes(error: BaseException) -> list[str]:
    return list(getattr(error, "__notes__", []))


def jagged(lengths: list[int], width: int) -> torch.Tensor:
    return torch.nested.nested_tensor([torch.randn(n, width) for n in lengths], layout=torch.jagged)


class TestTheNote:
    def test_wrong_channel_count(self) -> None:
        error = raised(lambda: Distribute("b t c h w -> (b t) c h w", nn.Conv2d(3, 4, 3))(torch.zeros(2, 4, 5, 8, 8)))
        assert type(error) is RuntimeError and "expected input[8, 5, 8, 8]" in str(error)
        assert notes(error) == [
            "foldaxes: raised inside the module, which was called on arguments folded by 'b t c h w -> (b t) c h w'\n"
            "  argument 0: shape (2, 4, 5, 8, 8) -> (8, 5, 8, 8)"
        ]

    def test_keyword_tensor_passed_unfolded(self) -> None:
        def masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return x.masked_fill(mask[..., None], 0)

        wrapped = Distribute("b t s e -> (b t) s e", masked)
        error = raised(lambda: wrapped(torch.zeros(2, 4, 5, 8), mask=torch.zeros(2, 4, 5, dtype=torch.bool)))
        assert notes(error) == [
            "foldaxes: raised inside the module, which was called on arguments folded by 'b t s e -> (b t) s e'\n"
            "  argument 0: shape (2, 4, 5, 8) -> (8, 5, 8)\n"
            "  keyword argument 'mask': shape (2, 4, 5), passed unfolded; its leading sizes (2, 4) are those of the "
            "folded axes (b t), so fold_kwargs={'mask': 'b t ... -> (b t) ...'} would fold it too"
        ]

    def test_keyword_tensors_folded_or_not_matching(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", boom, fold_kwargs={"scale": "b t d -> (b t) d"})
        error = raised(lambda: wrapped(torch.zeros(2, 3, 4), scale=torch.ones(2, 3, 1), bias=torch.zeros(4)), Boom)
        assert notes(error)[0].splitlines()[1:] == [
            "  argument 0: shape (2, 3, 4) -> (6, 4)",
            "  keyword argument 'scale': shape (2, 3, 1) -> (6, 1)",
            "  keyword argument 'bias': shape (4,), passed unfolded",
        ]

    def test_group_with_an_ellipsis_names_no_pattern(self) -> None:
        wrapped = Distribute("... d -> (...) d", boom)
        error = raised(lambda: wrapped(torch.zeros(2, 3, 4), mask=torch.zeros(2, 3)), Boom)
        assert notes(error)[0].splitlines()[-1] == (
            "  keyword argument 'mask': shape (2, 3), passed unfolded; its leading sizes (2, 3) are those of the "
            "folded axes (...), so a fold_kwargs entry for it would fold it too"
        )

    def test_pattern_that_folds_nothing(self) -> None:
        error = raised(lambda: Distribute("b t c h w -> b t c h w", nn.Conv2d(3, 4, 3))(torch.zeros(2, 4, 3, 8, 8)))
        assert "Expected 3D (unbatched) or 4D (batched) input to conv2d" in str(error)
        assert notes(error)[0].splitlines()[1:] == [
            "  argument 0: shape (2, 4, 3, 8, 8) -> (2, 4, 3, 8, 8)",
            "  The pattern folds no axes: its right side has no parenthesised group of axes, so the module got each "
            "tensor whole. Write the axes to fold in parentheses, for example '(b t) c h w'.",
        ]

    def test_rows_run_in_parts(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", boom, chunk_size=4)
        error = raised(lambda: wrapped(torch.zeros(2, 3, 4)), Boom)
        assert notes(error)[0].splitlines()[-1] == (
            "  The module ran on part of the folded rows at a time: chunk_size=4 runs it on that many rows at a time."
        )

    def test_valid_rows_only(self) -> None:
        error = raised(lambda: Distribute("b t d -> (b t) d", boom)(torch.zeros(2, 3, 4), fold_lengths=[3, 1]), Boom)
        assert notes(error)[0].splitlines()[-1] == (
            "  The module ran on part of the folded rows at a time: fold_mask / fold_lengths runs it on the valid rows "
            "only."
        )

    @pytest.mark.parametrize(
        ("options", "more"),
        [
            ({}, []),
            (
                {"chunk_size": 2},
                [
                    "  The module ran on part of the folded rows at a time: chunk_size=2 runs it on that many rows "
                    "at a time."
                ],
            ),
        ],
        ids=["once", "chunks"],
    )
    def test_jagged_frames(self, options: dict[str, Any], more: list[str]) -> None:
        wrapped = Distribute("b t d -> (b t) d", boom, fold_kwargs={"scale": "b t d -> (b t) d"}, **options)
        x = jagged([3, 1], 4)
        scale = torch.nested.nested_tensor_from_jagged(torch.ones(4, 1), x.offsets())
        error = raised(lambda: wrapped(x, scale=scale, bias=torch.zeros(2, 5)), Boom)
        ragged = str(x.shape[1])  # torch's name for the ragged size
        assert notes(error)[0].splitlines()[1:] == [
            f"  argument 0: shape (2, {ragged}, 4) -> (4, 4)",
            f"  keyword argument 'scale': shape (2, {ragged}, 1) -> (4, 1)",
            "  keyword argument 'bias': shape (2, 5), passed unfolded",
            *more,
        ]


class TestEveryPath:
    @pytest.mark.parametrize(
        ("wrap", "call"),
        [
            (lambda: Distribute("b t d -> (b t) d", boom), lambda w: w(torch.zeros(2, 3, 4))),
            (lambda: TimeDistributed(boom), lambda w: w(torch.zeros(3, 2, 4))),
            (lambda: distribute("b t d -> (b t) d", boom), lambda w: w(torch.zeros(2, 3, 4))),
            (lambda: Distribute("b t d, b t e -> (b t) d, (b t) e", boom), lambda w: w(*[torch.zeros(2, 3, 4)] * 2)),
            (lambda: Distribute("b t d -> (b t) d", boom, out="(b t) d -> t b d"), lambda w: w(torch.zeros(2, 3, 4))),
            (lambda: Distribute("b t d -> (b t) d", boom, chunk_size=2), lambda w: w(torch.zeros(2, 3, 4))),
            (
                lambda: Distribute("b t d -> (b t) d", boom),
                lambda w: w(torch.zeros(2, 3, 4), fold_lengths=[3, 1]),
            ),
            (lambda: Distribute("b t d -> (b t) d", boom), lambda w: w(jagged([3, 1], 4))),
            (
                lambda: Distribute("b t d -> (b t) d", boom, compute_repeats_once=True),
                lambda w: w(torch.zeros(2, 1, 4).expand(2, 3, 4)),
            ),
        ],
        ids=["fast", "time-distributed", "distribute", "operands", "out", "chunks", "mask", "jagged", "repeated"],
    )
    def test_same_object_type_and_traceback_with_one_note(self, wrap: Callable[[], Any], call: Any) -> None:
        error = raised(lambda: call(wrap()), Boom)
        assert type(error) is Boom and error.args == ("the module's own words",)
        assert error.__cause__ is None and error.__context__ is None
        assert traceback.extract_tb(error.__traceback__)[-1].name == "boom"
        assert len(notes(error)) == 1 and notes(error)[0].startswith("foldaxes: raised inside the module")

    def test_the_same_exception_raised_twice_gets_one_note(self) -> None:
        once = Boom("raised on every call")

        def fail(x: torch.Tensor) -> torch.Tensor:
            raise once

        wrapped = Distribute("b t d -> (b t) d", fail)
        for _ in range(2):
            assert raised(lambda: wrapped(torch.zeros(2, 3, 4)), Boom) is once
        assert len(notes(once)) == 1


class TestNoNote:
    def test_fold_errors_of_a_nested_wrapper(self) -> None:
        inner = Distribute("n s e d -> (n s e) d", nn.Linear(4, 4))  # one dim more than the outer one gives it
        outer = Distribute("b t s d -> (b t) s d", inner)
        error = raised(lambda: outer(torch.zeros(2, 3, 5, 4)), FoldError)
        assert str(error).startswith("argument 0 has 3 dims, but 'n s e d' expects 4.")
        assert notes(error) == []

    def test_fold_errors_of_the_wrapper(self) -> None:
        error = raised(lambda: Distribute("b t d -> (b t) d", nn.Linear(4, 4))(torch.zeros(2, 4)), FoldError)
        assert notes(error) == []

    def test_nested_wrappers_note_each_fold(self) -> None:
        inner = Distribute("n s d -> (n s) d", boom)
        outer = Distribute("b t s d -> (b t) s d", inner)
        error = raised(lambda: outer(torch.zeros(2, 3, 5, 4)), Boom)
        assert [note.splitlines()[1] for note in notes(error)] == [
            "  argument 0: shape (6, 5, 4) -> (30, 4)",
            "  argument 0: shape (2, 3, 5, 4) -> (6, 5, 4)",
        ]

    def test_a_note_that_cannot_be_written_is_left_out(self) -> None:
        class Odd:
            """Looks like an array to foldaxes, but its shape cannot be read."""

            def __array_namespace__(self) -> Any:
                return sys.modules[__name__]

            @property
            def shape(self) -> Any:
                raise RuntimeError("no shape")

        error = raised(lambda: Distribute("b t d -> (b t) d", boom)(torch.zeros(2, 3, 4), Odd()), Boom)
        assert error.args == ("the module's own words",) and notes(error) == []

    def test_keyboard_interrupt_passes_untouched(self) -> None:
        def interrupt(x: torch.Tensor) -> torch.Tensor:
            raise KeyboardInterrupt

        error = raised(lambda: Distribute("b t d -> (b t) d", interrupt)(torch.zeros(2, 3, 4)), KeyboardInterrupt)
        assert notes(error) == []
