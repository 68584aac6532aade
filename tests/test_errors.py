"""Every way a fold can go wrong raises one FoldError that says what, where, and what to do."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import einops
import pytest
import torch
from conftest import message
from torch import nn

import foldaxes
from foldaxes import Distribute, FoldError


@dataclasses.dataclass
class Holder:
    value: torch.Tensor


class TestBadPatterns:
    @pytest.mark.parametrize(
        ("pattern", "lengths", "expected"),
        [
            ("b t c h w", {}, "exactly one '->'"),
            ("b t c -> (b t) c -> b t c", {}, "exactly one '->'"),
            ("b t, c -> (b t c)", {}, "2 operands left of '->' but 1"),
            ("b t c -> ((b t)) c", {}, "one-level"),
            ("b t c! -> (b t) c", {}, "Unknown character"),
            ("b t c -> (b t) c d", {}, "d appears on one side only"),
            ("b t 2 -> (b t) 2", {}, "cannot be written as numbers"),
            ("b (t ...) -> (b t) ...", {}, "'...' cannot stand inside parentheses"),
            ("b b c -> (b b) c", {}, "duplicate dimension"),
            ("b (t v) c -> (b t v) c", {}, "more than one axis of unknown length"),
            ("b t c -> (b t) c", {"q": 3}, "Axis 'q' was given a length"),
            ("b (t v) c -> (b t v) c", {"v": 0}, "must be a positive int"),
        ],
        ids=[
            "no-arrow",
            "two-arrows",
            "operand-count",
            "nested-groups",
            "bad-character",
            "one-sided-axis",
            "anonymous-axis",
            "ellipsis-in-left-group",
            "duplicate-axis",
            "two-unknowns",
            "unused-length",
            "zero-length",
        ],
    )
    def test_raised_when_built(self, pattern: str, lengths: dict[str, int], expected: str) -> None:
        text = message(lambda: Distribute(pattern, nn.Identity(), **lengths))
        assert expected in text
        assert f"pattern: {pattern}" in text

    def test_caret_points_at_the_axis(self) -> None:
        text = message(lambda: Distribute("b t c -> (b t) c d", nn.Identity()))
        pattern_line, caret_line = text.splitlines()[1:3]
        assert caret_line.index("^") == pattern_line.index(" d") + 1

    def test_is_an_einops_error(self) -> None:
        with pytest.raises(einops.EinopsError):
            Distribute("b t c", nn.Identity())

    def test_not_a_string(self) -> None:
        assert "must be a string" in message(lambda: Distribute(3, nn.Identity()))  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("options", "expected"),
        [
            ({"out": "(b t) c"}, "In out=: The pattern needs exactly one '->'"),
            ({"out": ("(b t) c -> b t c", 3)}, "must be a pattern string or None, not int"),
            ({"out": "(b t) c, x -> b t c, x"}, "must describe one tensor"),
            ({"out": "(b t q r) c -> b t q r c"}, "more than one axis of unknown length"),
            ({"fold_kwargs": ["mask"]}, "fold_kwargs must map keyword names to patterns"),
            ({"fold_kwargs": {"mask": 3}}, "fold_kwargs['mask'] must be a pattern string"),
            ({"fold_kwargs": {"mask": "b t s"}}, "In fold_kwargs['mask']"),
        ],
        ids=[
            "out-no-arrow",
            "out-bad-leaf",
            "out-two-operands",
            "out-unknowns",
            "kwargs-not-mapping",
            "kwargs-not-string",
            "kwargs-bad-pattern",
        ],
    )
    def test_bad_options(self, options: dict[str, Any], expected: str) -> None:
        assert expected in message(lambda: Distribute("b t c -> (b t) c", nn.Identity(), **options))

    @pytest.mark.parametrize(
        ("pattern", "options"),
        [
            ("b t c, b t n -> (b t) c, (t b) n", {}),
            ("b t c -> (b t) c", {"fold_kwargs": {"mask": "b t s -> (t b) s"}}),
        ],
        ids=["operands", "keyword"],
    )
    def test_groups_in_another_order(self, pattern: str, options: dict[str, Any]) -> None:
        text = message(lambda: Distribute(pattern, nn.Identity(), **options))
        assert "folds the axes of (b t) in another order" in text and "row i" in text

    @pytest.mark.parametrize(
        ("build", "expected"),
        [
            (lambda: Distribute(["b t -> (b t)"], nn.Identity()), "must be a string"),
            (
                lambda: Distribute("b t -> (b t)", "conv"),
                "a module instance or another callable, not an object of type str",
            ),
            (lambda: Distribute("b t -> (b t)", nn.Linear), "not the class Linear"),
            (lambda: foldaxes.distribute("b t -> (b t)", 5), "not an object of type int"),
            (lambda: foldaxes.TimeDistributed(nn.Identity(), "yes"), "batch_first must be True or False"),
            (lambda: foldaxes.TimeDistributed(None), "needs the module"),  # type: ignore[arg-type]
            (lambda: foldaxes.fold(torch.zeros(2, 6), "b (t v) -> (b t) v", v=[2]), "must be a positive int"),
            (lambda: foldaxes.fold(3, "b t -> (b t)"), "takes a tensor or an array, or a sequence of them, not int"),
            (lambda: foldaxes.fold([torch.zeros(2), 3], "b -> (b)"), "not list"),
            (lambda: foldaxes.unfold(torch.zeros(2), "b t -> (b t)"), "needs the FoldSpec that fold returned"),
            (lambda: Distribute("b t -> (b t)", nn.Identity(), t=True), "must be a positive int"),
        ],
        ids=[
            "pattern-list",
            "module-str",
            "module-class",
            "function-int",
            "batch-first-str",
            "time-distributed-none",
            "unhashable-length",
            "fold-int",
            "fold-mixed-sequence",
            "unfold-not-a-spec",
            "bool-length",
        ],
    )
    def test_bad_argument_types(self, build: Any, expected: str) -> None:
        assert expected in message(build)

    def test_integer_like_lengths_are_accepted(self) -> None:
        import numpy as np

        folded, spec = foldaxes.fold(torch.zeros(2, 6), "b (t v) -> (b t) v", v=np.int64(2))
        assert folded.shape == (6, 2) and spec.lengths == (("v", 2),)

    def test_out_pattern_may_use_a_length_the_input_does_not(self) -> None:
        Distribute("b t c -> (b t) c", nn.Identity(), out="(b t) (g c) -> b t g c", g=2)


class TestBadInputs:
    def test_rank(self) -> None:
        text = message(lambda: Distribute("b t c h w -> (b t) c h w", nn.Identity())(torch.zeros(2, 3, 4)))
        assert "argument 0 has 3 dims, but 'b t c h w' expects 5" in text
        assert "shape (2, 3, 4)" in text and "'...'" in text

    def test_rank_with_ellipsis(self) -> None:
        text = message(lambda: foldaxes.TimeDistributed(nn.Identity())(torch.zeros(3)))
        assert "expects at least 2" in text

    def test_given_length_disagrees(self) -> None:
        text = message(lambda: Distribute("b t c -> (b t) c", nn.Identity(), t=4)(torch.zeros(2, 3, 5)))
        assert "axis 't' has size 3 but was given as 4" in text
        assert "shape (2, 3, 5)" in text and "axis sizes: b=2, t=3, c=5" in text and "lengths given: t=4" in text

    def test_group_cannot_be_split(self) -> None:
        text = message(lambda: Distribute("b (t v) c -> (b t v) c", nn.Identity(), v=4)(torch.zeros(2, 6, 3)))
        assert "dim 1 of size 6 cannot be split into (t v) with v=4" in text

    def test_unit_axis_is_not_one(self) -> None:
        text = message(lambda: Distribute("b 1 c -> (b) c", nn.Identity())(torch.zeros(2, 3, 4)))
        assert "dim 1 is written as 1 but has size 3" in text

    def test_shared_axes_disagree(self) -> None:
        wrapped = Distribute("b t x, b t y -> (b t) x, (b t) y", lambda a, b: a)
        text = message(lambda: wrapped(torch.zeros(2, 3, 4), torch.zeros(2, 4, 5)))
        assert "argument 1 disagrees with argument 0 on axis 't': 4 here, 3 there" in text
        assert "shape (2, 4, 5)" in text

    def test_shared_non_folded_axes_disagree(self) -> None:
        wrapped = Distribute("b t x, b t x -> (b t) x, (b t) x", lambda a, b: a)
        text = message(lambda: wrapped(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)))
        assert "on axis 'x'" in text

    def test_one_operand_arguments_disagree_on_folded_axes(self) -> None:
        wrapped = Distribute("b t c -> (b t) c", lambda a, b: a)
        wrapped(torch.zeros(2, 3, 4), torch.zeros(2, 3, 7))
        text = message(lambda: wrapped(torch.zeros(2, 3, 4), torch.zeros(2, 5, 4)))
        assert "argument 1 disagrees with argument 0 on axis 't'" in text

    def test_ellipsis_group_disagrees(self) -> None:
        wrapped = Distribute("... c -> (...) c", lambda a, b: a)
        text = message(lambda: wrapped(torch.zeros(2, 3, 4), torch.zeros(3, 2, 4)))
        assert "the axes of '...'" in text and "(3, 2) here, (2, 3) there" in text

    def test_keyword_tensor_disagrees(self) -> None:
        wrapped = Distribute("b t c -> (b t) c", lambda a, mask: a, fold_kwargs={"mask": "b t -> (b t)"})
        text = message(lambda: wrapped(torch.zeros(2, 3, 4), mask=torch.zeros(2, 4)))
        assert "keyword argument 'mask' disagrees with argument 0 on axis 't'" in text

    def test_keyword_not_a_tensor(self) -> None:
        wrapped = Distribute("b t c -> (b t) c", lambda a, mask: a, fold_kwargs={"mask": "b t -> (b t)"})
        assert "is of type list, not a tensor" in message(lambda: wrapped(torch.zeros(2, 3, 4), mask=[1]))

    @pytest.mark.parametrize(
        ("pattern", "args", "expected"),
        [
            (
                "b t x, b t y -> (b t) x, (b t) y",
                (torch.zeros(2, 3, 4),),
                "The pattern has 2 operands, one per positional tensor argument, but 1 positional tensor came",
            ),
            ("b t x -> (b t) x", (3,), "needs at least one tensor to fold, but none came: the positional arguments"),
            ("b t x -> (b t) x", (), "The pattern needs at least one tensor to fold, but none came.\n"),
        ],
        ids=["too-few-for-operands", "no-tensor", "nothing"],
    )
    def test_operand_count(self, pattern: str, args: tuple[Any, ...], expected: str) -> None:
        assert expected in message(lambda: Distribute(pattern, lambda *a: a)(*args))

    def test_unbound_factory_called_with_tensors(self) -> None:
        text = message(lambda: Distribute("b t c -> (b t) c")(torch.zeros(2, 3, 4)))
        assert "wraps no module yet" in text


class TestUnsupportedLayouts:
    @pytest.mark.parametrize(
        "make",
        [
            lambda: torch.nested.nested_tensor([torch.randn(3, 4), torch.randn(2, 4)]),  # strided layout
            lambda: torch.randn(2, 3, 4).to_sparse(),
        ],
        ids=["nested-strided", "sparse"],
    )
    @pytest.mark.parametrize("warm", [False, True], ids=["first-call", "after-a-dense-call"])
    def test_clear_error(self, make: Any, warm: bool) -> None:
        wrapped = Distribute("b t c -> (b t) c", lambda z: z)
        if warm:
            wrapped(torch.zeros(2, 3, 4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's "prototype" and "beta" notices
            x = make()
        assert "foldaxes folds strided (dense) tensors only" in message(lambda: wrapped(x))


class TestBadOutputs:
    def test_leaf_that_cannot_be_unfolded(self) -> None:
        wrapped = Distribute("b t x -> (b t) x", lambda a: {"a": a, "stats": (a.mean(), a[:1])})
        text = message(lambda: wrapped(torch.zeros(2, 3, 4)))
        assert "Output ['stats'][0]" in text and "no such dim" in text
        assert "out=" in text and "axis sizes: b=2, t=3" in text

    def test_leaf_of_the_wrong_size(self) -> None:
        wrapped = Distribute("b t x -> (b t) x", lambda a: (a, a[:5]))
        text = message(lambda: wrapped(torch.zeros(2, 3, 4)))
        assert "Output [1]" in text and "of size 6, but it has size 5" in text and "shape (5, 4)" in text

    def test_single_tensor_output_of_the_wrong_size(self) -> None:
        wrapped = Distribute("b t x -> (b t) x", lambda a: a[:5])
        wrapped(torch.zeros(2, 3, 4)[:, :2])
        text = message(lambda: wrapped(torch.zeros(2, 3, 4)))
        assert "of size 6, but it has size 5" in text

    def test_out_structure_for_a_single_tensor(self) -> None:
        wrapped = Distribute("b t x -> (b t) x", lambda a: a, out=("(b t) x -> b t x", None))
        assert "the output is a single tensor" in message(lambda: wrapped(torch.zeros(2, 3, 4)))

    def test_one_dim_shapes_print_as_tuples(self) -> None:
        wrapped = Distribute("b t x -> (b t) x", lambda a: (a, a.sum(-1)[:5]))
        assert "shape (5,)" in message(lambda: wrapped(torch.zeros(2, 3, 4)))

    def test_keys_keep_their_case(self) -> None:
        wrapped = Distribute("b t x -> (b t) x", lambda a: {"Logits": a[:1]})
        assert "Output ['Logits']" in message(lambda: wrapped(torch.zeros(2, 3, 4)))

    @pytest.mark.parametrize("make", [lambda z: {z}, lambda z: Holder(z)], ids=["set", "dataclass"])
    def test_containers_foldaxes_cannot_see_into(self, make: Any) -> None:
        wrapped = Distribute("b t x -> (b t) x", lambda a: (a, make(a)))
        assert "Output [1] is of type" in message(lambda: wrapped(torch.zeros(2, 3, 4)))
        whole = Distribute("b t x -> (b t) x", make)
        assert "The output is of type" in message(lambda: whole(torch.zeros(2, 3, 4)))

    def test_hint_uses_the_folded_axes(self) -> None:
        wrapped = Distribute("b v x -> (b v) x", lambda a: a[:1])
        assert "'(b v) n -> b v n'" in message(lambda: wrapped(torch.zeros(2, 3, 4)))

    def test_out_structure_mismatch(self) -> None:
        wrapped = Distribute("b t x -> (b t) x", lambda a: (a, a), out=("(b t) x -> b t x",))
        text = message(lambda: wrapped(torch.zeros(2, 3, 4)))
        assert "out= does not match the structure" in text and "[0], [1]" in text

    def test_out_pattern_size_mismatch(self) -> None:
        wrapped = Distribute("b t x -> (b t) x", lambda a: a[:5], out="(b t) x -> b t x")
        text = message(lambda: wrapped(torch.zeros(2, 3, 4)))
        assert "dim 0 of size 5 cannot be split into (b t) with b=2, t=3" in text
        assert "fold pattern: b t x -> (b t) x" in text


class TestUnderCompile:
    def test_output_of_the_wrong_size(self) -> None:
        torch._dynamo.reset()
        wrapped = Distribute("b t c -> (b t) c", lambda y: y[:1])
        with pytest.raises(FoldError, match="cannot be unfolded"):
            torch.compile(wrapped, backend="eager")(torch.zeros(2, 3, 4))


VALUES = torch.full((3,), 987654.25)
"""A tensor whose value a message would show if it printed tensors: messages name dtype and shape instead."""


class TestNoTensorValuesInMessages:
    @pytest.mark.parametrize(
        "fail",
        [
            lambda: foldaxes.fold(torch.zeros(2, 3), VALUES),  # type: ignore[arg-type]
            lambda: Distribute(VALUES, nn.Identity()),  # type: ignore[arg-type]
            lambda: Distribute("b t -> (b t)", nn.Identity(), t=VALUES),
            lambda: Distribute("b t -> (b t)", nn.Identity(), t=[VALUES]),
            lambda: Distribute("b t -> (b t)", nn.Identity(), out=VALUES),
            lambda: Distribute("b t -> (b t)", nn.Identity(), out=(VALUES, None)),
            lambda: Distribute("b t -> (b t)", nn.Identity(), chunk_size=VALUES),
            lambda: Distribute("b t -> (b t)", nn.Identity(), fill_value=VALUES),
            lambda: Distribute("b t -> (b t)", nn.Identity(), checkpoint=VALUES),
            lambda: Distribute("b t d -> (b t) d", nn.Identity())(torch.zeros(2, 3, 4), fold_lengths=VALUES),
            lambda: foldaxes.unfold(torch.zeros(6), VALUES),  # type: ignore[arg-type]
            lambda: Distribute("b t d -> (b t) d", nn.Identity(), out=("(b t) d -> b t d", None))(torch.zeros(2, 3, 4)),
        ],
        ids=[
            "fold-pattern",
            "pattern",
            "length",
            "length-list",
            "out",
            "out-leaf",
            "chunk-size",
            "fill-value",
            "checkpoint",
            "fold-lengths",
            "unfold-spec",
            "out-structure",
        ],
    )
    def test_named_by_dtype_and_shape(self, fail: Any) -> None:
        text = message(fail)
        assert "987654" not in text and "tensor(" not in text


class TestModuleErrorsPassThrough:
    def test_module_error_is_not_wrapped(self) -> None:
        conv = nn.Conv2d(3, 4, 3)
        with pytest.raises(RuntimeError) as info:
            Distribute("b t c h w -> (b t) c h w", conv)(torch.zeros(2, 3, 5, 8, 8))
        assert not isinstance(info.value, FoldError)

    def test_custom_exception_is_the_same_object(self) -> None:
        class Boom(Exception):
            pass

        boom = Boom("inside the module")

        def fail(x: torch.Tensor) -> torch.Tensor:
            raise boom

        wrapped = Distribute("b t c -> (b t) c", fail)
        for _ in range(2):
            with pytest.raises(Boom) as info:
                wrapped(torch.zeros(2, 3, 4))
            assert info.value is boom and info.value.__cause__ is None
