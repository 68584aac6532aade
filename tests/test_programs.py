"""Programs: a call structure that the full path has folded once is replayed by later calls.

A replay must check and say exactly what the full path does: every error case below is raised once on a fresh
wrapper and then on one that has just run a good call of the same structure, and the messages must be equal.
"""

from __future__ import annotations

import collections
import copy
import gc
import pickle
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import einops
import pytest
import torch
from conftest import assert_exact, message
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import foldaxes
from foldaxes import Distribute, FoldError, distribute
from foldaxes._compiled import CompiledPattern
from foldaxes._program import InputProgram


class Switch:
    """A module whose output changes when told to: the same call structure, another output."""

    def __init__(self, good: Callable[[torch.Tensor], Any], bad: Callable[[torch.Tensor], Any]) -> None:
        self.good, self.bad, self.failing = good, bad, False

    def __call__(self, *tensors: torch.Tensor, **keywords: Any) -> Any:
        return (self.bad if self.failing else self.good)(tensors[0])


@dataclass(frozen=True)
class Case:
    """A wrapper, a call that works, and a call of the same structure (or a switched output) that fails."""

    build: Callable[[], Any]
    good: Callable[[Any], Any]
    bad: Callable[[Any], Any]


def x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def switched(pattern: str, good: Any, bad: Any, **options: Any) -> Callable[[], Any]:
    return lambda: Distribute(pattern, Switch(good, bad), **options)


def flip(wrapper: Any) -> Any:
    wrapper.module.failing = True
    return wrapper


class Marked(torch.Tensor):
    """A tensor subclass: programs check it as the full path does, rather than trusting torch's own checks."""


TWO = "b t d, b t e -> (b t) d, (b t) e"
ERROR_CASES = {
    "operands-disagree": Case(
        lambda: Distribute(TWO, lambda a, b: a),
        lambda w: w(x(2, 3, 4), x(2, 3, 5)),
        lambda w: w(x(2, 3, 4), x(2, 4, 5)),
    ),
    "arguments-disagree": Case(
        lambda: Distribute("b t d -> (b t) d", lambda a, b: a),
        lambda w: w(x(2, 3, 4), x(2, 3, 4)),
        lambda w: w(x(2, 3, 4), x(2, 4, 4)),
    ),
    "shared-axis-disagrees": Case(
        lambda: Distribute("b t s d, b t s e -> (b t) s d, (b t) s e", lambda a, b: a),
        lambda w: w(x(2, 3, 5, 4), x(2, 3, 5, 1)),
        lambda w: w(x(2, 3, 5, 4), x(2, 3, 6, 1)),
    ),
    "ellipsis-group-disagrees": Case(
        lambda: Distribute("... d -> (...) d", lambda a, b: a),
        lambda w: w(x(2, 3, 4), x(2, 3, 4)),
        lambda w: w(x(2, 3, 4), x(3, 2, 4)),
    ),
    "rank": Case(
        lambda: Distribute("b t d -> (b t) d", lambda a, b: a),
        lambda w: w(x(2, 3, 4), x(2, 3, 4)),
        lambda w: w(x(2, 3, 4), x(2, 3)),
    ),
    "rank-too-high": Case(
        lambda: Distribute(TWO, lambda a, b: a),
        lambda w: w(x(2, 3, 4), x(2, 3, 5)),
        lambda w: w(x(2, 3, 4), x(2, 3, 5, 1)),
    ),
    "rank-too-low-for-the-flatten": Case(
        lambda: Distribute(TWO, lambda a, b: a),
        lambda w: w(x(2, 3, 4), x(2, 3, 5)),
        lambda w: w(x(2, 3, 4), x(2)),
    ),
    "rank-differs-but-the-sizes-compared-agree": Case(
        lambda: Distribute("b t d, b t e -> (b t) d, (b t) e", lambda a, b: a),
        lambda w: w(x(2, 3, 4), x(2, 3, 5)),
        lambda w: w(x(2, 3, 4, 1), x(2, 3, 5)),
    ),
    "one-axis-compared": Case(
        lambda: Distribute("b t d, b s e -> (b t) d, (b s) e", lambda a, b: a),
        lambda w: w(x(2, 3, 4), x(2, 5, 6)),
        lambda w: w(x(2, 3, 4), x(3, 5, 6)),
    ),
    "output-of-a-subclass-with-one-row": Case(
        switched(
            "b t d -> (b t) d",
            lambda z: {"z": z.as_subclass(Marked)},
            lambda z: {"z": z[:1].as_subclass(Marked)},
        ),
        lambda w: w(x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4)),
    ),
    "output-of-a-subclass-ending-before-the-folded-dim": Case(
        switched(
            "b t d -> b (t) d",
            lambda z: (z.as_subclass(Marked), "label"),
            lambda z: (z[:, 0, 0].as_subclass(Marked), "label"),
        ),
        lambda w: w(x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4)),
    ),
    "non-tensor-where-a-tensor-was": Case(
        lambda: Distribute(TWO, lambda *a: a[0]),
        lambda w: w(x(2, 3, 4), x(2, 3, 5)),
        lambda w: w(x(2, 3, 4), 5.0),
    ),
    "keyword-not-a-tensor": Case(
        lambda: Distribute("b t d -> (b t) d", lambda a, b, mask: a, fold_kwargs={"mask": "b t -> (b t)"}),
        lambda w: w(x(2, 3, 4), x(2, 3, 4), mask=x(2, 3)),
        lambda w: w(x(2, 3, 4), x(2, 3, 4), mask=[1, 2]),
    ),
    "keyword-disagrees-with-a-second-operand": Case(
        lambda: Distribute(TWO, lambda a, b, m: a, fold_kwargs={"m": "b t e -> (b t) e"}),
        lambda w: w(x(2, 3, 4), x(2, 3, 5), m=x(2, 3, 5)),
        lambda w: w(x(2, 3, 4), x(2, 3, 5), m=x(2, 3, 6)),
    ),
    "keyword-disagrees": Case(
        lambda: Distribute("b t d -> (b t) d", lambda a, b, mask: a, fold_kwargs={"mask": "b t -> (b t)"}),
        lambda w: w(x(2, 3, 4), x(2, 3, 4), mask=x(2, 3)),
        lambda w: w(x(2, 3, 4), x(2, 3, 4), mask=x(2, 4)),
    ),
    "given-length": Case(
        lambda: Distribute("b (t v) d -> (b t v) d", lambda a, b: a, v=2),
        lambda w: w(x(2, 6, 4), x(2, 6, 4)),
        lambda w: w(x(2, 5, 4), x(2, 5, 4)),
    ),
    "sparse-after-dense": Case(
        lambda: Distribute(TWO, lambda a, b: a),
        lambda w: w(x(2, 3, 4), x(2, 3, 5)),
        lambda w: w(x(2, 3, 4).to_sparse(), x(2, 3, 5)),
    ),
    "output-rows": Case(
        switched("b t d -> (b t) d", lambda z: (z, z), lambda z: (z, z[1:])),
        lambda w: w(x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4)),
    ),
    "output-rows-of-a-second-argument": Case(
        switched("b t d -> (b t) d", lambda z: z, lambda z: z[1:]),
        lambda w: w(x(2, 3, 4), x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4), x(2, 3, 4)),
    ),
    "output-rank": Case(
        switched("b t d -> (b t) d", lambda z: {"z": z}, lambda z: {"z": z[0]}),
        lambda w: w(x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4)),
    ),
    "output-rows-beside-a-plain-value": Case(
        switched("b t d -> (b t) d", lambda z: (z, "label"), lambda z: (z[1:], "label")),
        lambda w: w(x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4)),
    ),
    "output-ending-before-the-folded-dim": Case(
        switched("b t d -> b (t) d", lambda z: (z, "label"), lambda z: (z[:, 0, 0], "label")),
        lambda w: w(x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4)),
    ),
    "second-output-ending-before-the-folded-dim": Case(
        switched("b t d -> b (t) d", lambda z: (z, z), lambda z: (z, z[:, 0, 0])),
        lambda w: w(x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4)),
    ),
    "out-pattern-rank": Case(
        switched("b t d -> (b t) d", lambda z: (z,), lambda z: (z[..., None],), out="(b t) d -> t b d"),
        lambda w: w(x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4)),
    ),
    "out-pattern-size": Case(
        switched("b t d -> (b t) d", lambda z: (z,), lambda z: (z[1:],), out="(b t) d -> t b d"),
        lambda w: w(x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4)),
    ),
    "out-split-size": Case(
        switched("b t d -> (b t) d", lambda z: (z,), lambda z: (z[1:],), out="(b t) d -> b t d"),
        lambda w: w(x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4)),
    ),
    "out-rank": Case(
        switched("b t d -> (b t) d", lambda z: (z,), lambda z: (z[..., None],), out="(b t) d -> b t d"),
        lambda w: w(x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4)),
    ),
    "out-structure": Case(
        switched("b t d -> (b t) d", lambda z: (z, z), lambda z: z, out=("(b t) d -> b t d", None)),
        lambda w: w(x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4)),
    ),
    "out-keys": Case(
        switched("b t d -> (b t) d", lambda z: {"a": z}, lambda z: {"b": z}, out={"a": "(b t) d -> b t d"}),
        lambda w: w(x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4)),
    ),
    "opaque-output": Case(
        switched("b t d -> (b t) d", lambda z: (z, "label"), lambda z: (z, {z})),
        lambda w: w(x(2, 3, 4)),
        lambda w: flip(w)(x(2, 3, 4)),
    ),
}


class TestErrorsOnAHit:
    @pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
    def test_same_error_after_a_good_call_of_the_same_structure(self, case: Case) -> None:
        expected = message(lambda: case.bad(case.build()))  # the full path
        wrapped = case.build()
        for _ in range(2):
            case.good(wrapped)
            case.good(wrapped)  # the second good call runs the recorded program
            assert message(lambda: case.bad(wrapped)) == expected
            if isinstance(wrapped.module, Switch):
                wrapped.module.failing = False

    @pytest.mark.parametrize("count", [1, 2], ids=["one-tensor", "two-tensors"])
    def test_the_module_error_has_the_same_note(self, count: int) -> None:
        def module(*tensors: torch.Tensor) -> torch.Tensor:
            if tensors[0].shape[-1] == 5:
                raise ValueError("five")
            return tensors[0]

        def notes(wrapped: Any, *arguments: torch.Tensor) -> list[str]:
            with pytest.raises(ValueError, match="five") as info:
                wrapped(*arguments)
            return list(info.value.__notes__)

        wrapped = Distribute("b t d -> (b t) d", module)
        bad = [x(2, 3, 5) for _ in range(count)]
        expected = notes(Distribute("b t d -> (b t) d", module), *bad)
        for _ in range(2):
            wrapped(*[x(2, 3, 4) for _ in range(count)])
            wrapped(*[x(2, 3, 4) for _ in range(count)])
            assert notes(wrapped, *bad) == expected
        assert "(6, 5)" in expected[0] and "(2, 3, 5)" in expected[0]

    def test_the_module_error_has_the_same_note_when_nothing_is_folded(self) -> None:
        def module(a: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
            if a.shape[-1] == 5:
                raise ValueError("five")
            return a

        def notes(wrapped: Any, a: torch.Tensor) -> list[str]:
            with pytest.raises(ValueError, match="five") as info:
                wrapped(a, scale=x(2, 3))
            return list(info.value.__notes__)

        wrapped = Distribute("b t d -> b t d", module)
        expected = notes(Distribute("b t d -> b t d", module), x(2, 3, 5))
        for _ in range(2):
            wrapped(x(2, 3, 4), scale=x(2, 3))
            assert notes(wrapped, x(2, 3, 5)) == expected
        assert "keyword argument 'scale': shape (2, 3), passed unfolded" in expected[0]

    def test_an_error_after_the_fold_is_raised_again(self) -> None:
        """The first call records its program before the rows are chunked; the program's call must still refuse."""
        wrapped = Distribute("b t d, b s e -> (b t) d, (b s) e", lambda a, b: a, chunk_size=2)
        expected = message(lambda: wrapped(x(2, 3, 4), x(2, 5, 4)))
        assert message(lambda: wrapped(x(2, 3, 4), x(2, 5, 4))) == expected

    @pytest.mark.parametrize("position", [0, 1], ids=["first", "second"])
    def test_strided_nested_tensor_after_dense(self, position: int) -> None:
        """A nested tensor of strided layout says it is one, although torch's own layout says strided."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's "prototype" notice
            nested = torch.nested.nested_tensor([x(3, 4), x(2, 4)])
        arguments = [x(2, 3, 4), x(2, 3, 5)]
        arguments[position] = nested
        wrapped = Distribute(TWO, lambda a, b: a)
        expected = message(lambda: Distribute(TWO, lambda a, b: a)(*arguments))
        for _ in range(2):
            wrapped(x(2, 3, 4), x(2, 3, 5))
            wrapped(x(2, 3, 4), x(2, 3, 5))
            assert message(lambda: wrapped(*arguments)) == expected

    @pytest.mark.parametrize(
        "output",
        [lambda a, rows: a[:rows], lambda a, rows: {"a": a, "b": a[:rows]}, lambda a, rows: (a, a[:rows])],
        ids=["tensor", "dict", "tuple"],
    )
    @pytest.mark.parametrize("count", [1, 2], ids=["one-tensor", "two-tensors"])
    def test_same_error_under_compile(self, output: Callable[[torch.Tensor, int], Any], count: int) -> None:
        """Under dynamo the outputs are checked before they are split: torch's own error would become dynamo's."""
        rows = [6]
        wrapped = Distribute("b t d -> (b t) d", lambda a, *rest: output(a, rows[0]))
        cold = Distribute("b t d -> (b t) d", lambda a, *rest: output(a, 5))
        arguments = [x(2, 3, 4) for _ in range(count)]
        wrapped(*arguments)
        wrapped(*arguments)  # warm: the fast path or a flatten program, and an output program
        rows[0] = 5
        torch._dynamo.reset()
        assert message(lambda: torch.compile(wrapped, backend="eager")(*arguments)) == message(lambda: cold(*arguments))


def jagged(lengths: list[int], width: int) -> torch.Tensor:
    return torch.nested.nested_tensor([torch.randn(n, width) for n in lengths], layout=torch.jagged)


def outcome(wrapped: Callable[..., Any], *arguments: Any) -> Any:
    """What a call returns, or the message of the FoldError it raises."""
    try:
        return wrapped(*arguments)
    except FoldError as error:
        return str(error)


class TestSequencesOfShapes:
    """A wrapper that has run calls of other shapes answers each call as a fresh wrapper does."""

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(
        shapes=st.lists(
            st.tuples(
                st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
                st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
            ),
            min_size=1,
            max_size=8,
        ),
        pattern=st.sampled_from([TWO, "b t d, b s d -> (b t) d, (b s) d", "b t d -> (b t) d"]),
    )
    def test_each_call_as_on_a_fresh_wrapper(
        self, shapes: list[tuple[tuple[int, ...], tuple[int, ...]]], pattern: str
    ) -> None:
        def module(a: torch.Tensor, b: torch.Tensor) -> Any:
            return {"a": a * 2, "rows": torch.arange(a.shape[0])}

        wrapped = Distribute(pattern, module)
        for first, second in shapes:
            arguments = (x(*first), x(*second))
            expected = outcome(Distribute(pattern, module), *arguments)
            actual = outcome(wrapped, *arguments)
            if isinstance(expected, str):
                assert actual == expected
            else:
                same(actual, expected)
                assert_exact(actual["a"], arguments[0] * 2)


class TestOtherPathsAfterAHit:
    def test_jagged_input_takes_the_jagged_path(self) -> None:
        wrapped = Distribute(TWO, lambda a, b: a * 2)
        wrapped(x(2, 3, 4), x(2, 3, 5))
        wrapped(x(2, 3, 4), x(2, 3, 5))
        nt = jagged([3, 1], 4)
        other = torch.nested.nested_tensor_from_jagged(torch.randn(4, 5), nt.offsets())
        y = wrapped(nt, other)
        assert y.is_nested and torch.equal(y.values(), nt.values() * 2)

    @pytest.mark.parametrize("refuses", [False, True], ids=["works", "raises"])
    def test_a_tensor_subclass_takes_the_general_program(self, refuses: bool) -> None:
        """Only plain tensors fold by a flatten program: a subclass's own code runs once, on the general path."""
        calls: list[str] = []

        class Logged(torch.Tensor):
            @classmethod
            def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                if getattr(func, "__name__", "") == "flatten":
                    calls.append("flatten")
                    if refuses:
                        raise RuntimeError("no flatten here")
                return super().__torch_function__(func, types, args, kwargs or {})

        wrapped = Distribute(TWO, lambda a, b: a + b[..., :4])
        a, b = x(2, 3, 4), x(2, 3, 5)
        wrapped(a, b)
        wrapped(a, b)
        if refuses:
            with pytest.raises(RuntimeError, match="no flatten here"):
                wrapped(a.as_subclass(Logged), b)
        else:
            assert_exact(wrapped(a.as_subclass(Logged), b).as_subclass(torch.Tensor), a + b[..., :4])
        assert calls == ["flatten"]

    def test_masked_call_takes_the_rows_path(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", lambda a, b: a + b, fill_value=-1.0)
        a, b = x(2, 3, 4), x(2, 3, 4)
        wrapped(a, b)
        wrapped(a, b)
        y = wrapped(a, b, fold_lengths=[3, 1])
        assert torch.equal(y[1, 1:], torch.full((2, 4), -1.0)) and torch.equal(y[0], a[0] + b[0])

    def test_row_keywords_given_as_none_never_reach_the_module(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", lambda a, b, **keywords: (a, sorted(keywords)))
        for _ in range(3):
            assert wrapped(x(2, 3, 4), x(2, 3, 4), fold_mask=None, fold_lengths=None, other=1)[1] == ["other"]

    @pytest.mark.usefixtures("float64")
    def test_another_rank_and_back(self) -> None:
        wrapped = Distribute("... d -> (...) d", lambda a, b: a - b)
        for shape in [(2, 3, 4), (2, 3, 5, 4), (6, 4), (2, 3, 4), (2, 3, 5, 4), (7, 2, 1, 1, 4)]:
            a, b = x(*shape), x(*shape)
            assert_exact(wrapped(a, b), a - b)

    def test_a_keyword_that_folds_no_group_never_carries_the_rows(self) -> None:
        wrapped = Distribute(TWO, lambda a, b, m: a * 2, fold_kwargs={"m": "b s -> b s"})
        a, b, m = x(2, 3, 4), x(2, 3, 5), x(2, 7)
        for _ in range(3):
            assert_exact(wrapped(a, b, m=m), a * 2)


class Pair(NamedTuple):
    first: Any
    second: Any


@st.composite
def output_structures(draw: st.DrawFn, depth: int = 0) -> Any:
    """A nested output made of the leaves "tensor", "row" (one value per row), atoms and containers."""
    kinds = ["tensor", "row", "atom"] + (["tuple", "list", "dict", "pair"] if depth < 3 else [])
    kind = draw(st.sampled_from(kinds))
    if kind in ("tensor", "row"):
        return kind
    if kind == "atom":
        return draw(st.sampled_from([None, 3, 2.5, "label", True]))
    children = [draw(output_structures(depth + 1)) for _ in range(2 if kind == "pair" else draw(st.integers(0, 3)))]
    if kind == "dict":
        return {f"k{i}": child for i, child in enumerate(children)}
    return Pair(*children) if kind == "pair" else tuple(children) if kind == "tuple" else children


def build_output(structure: Any, z: torch.Tensor, counter: list[int]) -> Any:
    """The structure with its tensor leaves filled from ``z``: each leaf another function of it."""
    if structure == "tensor":
        counter[0] += 1
        return z * counter[0]
    if structure == "row":
        counter[0] += 1
        return z.sum(-1) + counter[0]
    if isinstance(structure, dict):
        return {key: build_output(value, z, counter) for key, value in structure.items()}
    if isinstance(structure, Pair):
        return Pair(*(build_output(value, z, counter) for value in structure))
    if isinstance(structure, tuple | list):
        return type(structure)(build_output(value, z, counter) for value in structure)
    return structure


def unfolded(structure: Any, y: Any, b: int, t: int) -> Any:
    """The reference unfold of ``y``: every tensor leaf's dim 0 split into (b, t)."""
    if isinstance(y, torch.Tensor):
        return y.unflatten(0, (b, t))
    if isinstance(y, dict):
        return {key: unfolded(structure, value, b, t) for key, value in y.items()}
    if isinstance(y, tuple | list):
        return (
            type(y)(*(unfolded(structure, v, b, t) for v in y))
            if isinstance(y, Pair)
            else type(y)(unfolded(structure, v, b, t) for v in y)
        )
    return y


def same(actual: Any, expected: Any) -> None:
    assert type(actual) is type(expected)
    if isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected) and actual.stride() == expected.stride()
    elif isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            same(actual[key], expected[key])
    elif isinstance(expected, tuple | list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            same(a, e)
    else:
        assert actual == expected


class Labels(tuple[str, str]):
    """A tuple subclass that is no NamedTuple: the full path passes it through whole, and so must a program."""

    def __new__(cls, first: str, second: str) -> Labels:
        return super().__new__(cls, (first, second))


class TestOutputsOnAHit:
    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(structure=output_structures(), two_tensors=st.booleans())
    def test_any_output_structure(self, structure: Any, two_tensors: bool) -> None:
        def fn(*tensors: torch.Tensor) -> Any:
            return build_output(structure, tensors[0], [0])

        a = x(2, 3, 4)
        args = (a, x(2, 3, 4)) if two_tensors else (a,)
        expected = unfolded(structure, fn(a.flatten(0, 1)), 2, 3)
        wrapped = distribute("b t d -> (b t) d", fn)
        for _ in range(3):
            same(wrapped(*args), expected)

    @pytest.mark.parametrize(
        "make",
        [
            lambda z: torch.max(z, dim=-1),
            lambda z: collections.OrderedDict(z=z),
            lambda z: (z, [z, {"deep": (z, None)}], "label"),
            lambda z: {"second": z, "first": z * 2},
        ],
        ids=["return-types", "ordered-dict", "nested", "dict-order"],
    )
    @pytest.mark.parametrize("kind", [torch.Tensor, Marked], ids=["tensor", "subclass"])
    def test_containers_come_back_alike(self, make: Callable[[torch.Tensor], Any], kind: type) -> None:
        def module(z: torch.Tensor) -> Any:
            return make(z.as_subclass(kind))

        a = x(2, 3, 4)
        expected = foldaxes.unfold(module(a.flatten(0, 1)), foldaxes.fold(a, "b t d -> (b t) d")[1])
        wrapped = distribute("b t d -> (b t) d", module)
        for _ in range(3):
            same(wrapped(a), expected)

    @pytest.mark.parametrize(
        ("out", "returns"),
        [
            (
                None,
                [
                    lambda z: (z, "x"),
                    lambda z: (None, "x"),  # a tensor's place holds something else
                    lambda z: [z, "x"],  # another container
                    lambda z: (z, "x", "y"),  # another length
                    lambda z: (z, None),
                    lambda z: (z, z),  # a tensor where None was
                    lambda z: (z, None),  # None where a tensor was, beside a tensor
                    lambda z: {"a": z, "b": z},
                    lambda z: {"a": z, "b": None},
                ],
            ),
            ("(b t) d -> t b d", [lambda z: (z,), lambda z: (None,), lambda z: (z * 2,)]),
            ("(b t) d -> b t d", [lambda z: (z,), lambda z: (None,), lambda z: (z * 2,)]),
        ],
        ids=["default", "out-rearranges", "out-splits"],
    )
    def test_each_output_comes_back_as_the_full_path_gives_it(
        self, out: str | None, returns: list[Callable[[torch.Tensor], Any]]
    ) -> None:
        """Every output is returned twice in a row, so that the second one meets the program the first recorded."""
        module = Switch(returns[0], returns[0])
        wrapped = Distribute("b t d -> (b t) d", module, out=out)
        a = x(2, 3, 4)
        for make in returns:
            module.good = make
            expected = Distribute("b t d -> (b t) d", make, out=out)(a)  # a new wrapper: the full path
            for _ in range(2):
                same(wrapped(a), expected)

    @pytest.mark.parametrize(
        ("first", "then"),
        [
            (lambda z: (z, z * 2), lambda z: [z, z * 2]),  # every part a split
            (lambda z: (z * 2, "label"), lambda z: [z * 2, "label"]),  # a split beside a plain value
        ],
        ids=["splits", "mixed"],
    )
    def test_a_list_after_a_tuple_of_the_same_length(
        self, first: Callable[[torch.Tensor], Any], then: Callable[[torch.Tensor], Any]
    ) -> None:
        module = Switch(first, then)
        wrapped = Distribute("b t d -> (b t) d", module)
        a = x(2, 3, 4)
        for _ in range(2):
            assert type(wrapped(a)) is tuple
        module.failing = True
        for _ in range(2):
            y = wrapped(a)
            assert type(y) is list and torch.equal(y[0], a * 2 if isinstance(y[1], str) else a)

    @pytest.mark.parametrize(
        ("out", "lengths", "reference"),
        [
            ("(g c) (b t) -> g c b t", {"g": 2}, "(b t) (g c) -> g c b t"),
            ("n (g c) -> n g c", {"g": 3}, "n (g c) -> n g c"),
            ("n c -> c n", {}, "n c -> c n"),
        ],
        ids=["two-splits", "a-split-of-other-axes", "no-split"],
    )
    def test_out_patterns_that_split_other_axes_or_none(
        self, out: str, lengths: dict[str, int], reference: str
    ) -> None:
        a = x(2, 3, 6)
        module = (lambda z: z.transpose(0, 1)) if out.startswith("(g c)") else (lambda z: z)
        wrapped = Distribute("b t d -> (b t) d", lambda z: (module(z), "label"), out=(out, None), **lengths)
        for _ in range(3):
            y, label = wrapped(a)
            assert label == "label"
            named = {name: size for name, size in {"b": 2, "t": 3, **lengths}.items() if name in reference.split()}
            assert torch.equal(y, einops.rearrange(a.flatten(0, 1), reference, **named))

    def test_a_tuple_subclass_of_plain_values_passes_through(self) -> None:
        wrapped = distribute("b t d -> (b t) d", lambda z: (z, Labels("a", "b")))
        a = x(2, 3, 4)
        for _ in range(3):
            y, labels = wrapped(a)
            assert_exact(y, a)
            assert type(labels) is Labels and labels == ("a", "b")

    def test_a_unit_group_is_squeezed(self) -> None:
        a = x(3, 1, 4)  # one more unit dim, which stays
        wrapped = Distribute("c h w -> () c h w", lambda z: (z * 2, {"z": z, "label": "x"}))
        for _ in range(3):
            y, rest = wrapped(a)
            assert torch.equal(y, a * 2) and torch.equal(rest["z"], a) and rest["label"] == "x"
        pair = Distribute("c h w -> () c h w", lambda z: (z * 2, z))
        for _ in range(3):
            same(pair(a), (a * 2, a))

    def test_out_structures_come_back_in_out_order(self) -> None:
        a = x(2, 3, 4)
        out = {"b": "(b t) d -> t b d", "a": None}
        wrapped = Distribute("b t d -> (b t) d", lambda z: {"a": z, "b": z + 1}, out=out)
        for _ in range(3):
            y = wrapped(a)
            assert list(y) == ["b", "a"]
            assert torch.equal(y["b"], (a + 1).transpose(0, 1)) and torch.equal(y["a"], a.flatten(0, 1))


class TestProgramsAreUsed:
    def test_a_recorded_structure_skips_the_full_fold_and_unfold(self, monkeypatch: pytest.MonkeyPatch) -> None:
        wrapped = Distribute(TWO, lambda a, b, *rest: (a, {"b": b}))
        pattern = wrapped._caller.pattern
        calls: list[str] = []
        fold, unfold = pattern.fold, pattern.outputs.unfold
        monkeypatch.setattr(pattern, "fold", lambda *a: calls.append("fold") or fold(*a))
        monkeypatch.setattr(pattern.outputs, "unfold", lambda *a: calls.append("unfold") or unfold(*a))
        for _ in range(3):
            wrapped(x(2, 3, 4), x(2, 3, 5))
        assert calls == ["fold", "unfold"]
        wrapped(x(2, 3, 4), x(2, 3, 5), "another structure")
        assert calls == ["fold", "unfold", "fold", "unfold"]

    @pytest.mark.parametrize(
        ("pattern", "shapes"),
        [
            (TWO, [(2, 3, 4), (2, 3, 5)]),
            ("b t d, b s d -> (b t) d, (b s) d", [(2, 3, 4), (2, 5, 4)]),
            ("b t d, b s e -> (b t) d, (b s) e", [(2, 3, 4), (2, 5, 6)]),
            ("b t d -> (b t) d", [(2, 3, 4), (2, 3, 4), (2, 3, 4)]),
            ("... d -> (...) d", [(2, 3, 4), (2, 3, 4)]),
        ],
        ids=["two-operands", "a-shared-axis-after-a-gap", "one-shared-axis", "three-of-one-operand", "ellipsis"],
    )
    @pytest.mark.parametrize("crop", [False, True], ids=["contiguous", "inner-crop"])
    def test_positional_tensors_folded_by_views_skip_the_general_program(
        self, monkeypatch: pytest.MonkeyPatch, pattern: str, shapes: list[tuple[int, ...]], crop: bool
    ) -> None:
        calls: list[str] = []
        fold = InputProgram.fold
        monkeypatch.setattr(InputProgram, "fold", lambda *a: calls.append("general") or fold(*a))
        wrapped = Distribute(pattern, lambda *tensors: tensors[0] * 2)
        for _ in range(3):
            arguments = [x(*shape[:-1], 2 * shape[-1])[..., ::2] if crop else x(*shape) for shape in shapes]
            assert_exact(wrapped(*arguments), arguments[0] * 2)
        assert calls == []

    def test_a_copy_takes_the_general_program(self, monkeypatch: pytest.MonkeyPatch) -> None:
        calls: list[str] = []
        fold = InputProgram.fold
        monkeypatch.setattr(InputProgram, "fold", lambda *a: calls.append("general") or fold(*a))
        wrapped = Distribute(TWO, lambda a, b: (a, b))
        for shapes in [((2, 3, 4), (2, 3, 5)), ((2, 3, 4), (2, 3, 5)), ((4, 1, 4), (4, 1, 6))]:
            a, b = x(*shapes[0]), x(*shapes[1])
            same(wrapped(a, b), (a, b))
        assert calls == []
        a, b = x(2, 3, 4), x(2, 3, 5)
        same(wrapped(a.transpose(0, 1).contiguous().transpose(0, 1), b), (a, b))  # no view: the general program
        assert calls == ["general"]

    def test_a_structure_keeps_the_programs_of_four_ranks_and_structures_their_own(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        wrapped = Distribute("... d -> (...) d", lambda *a: a[0])
        pattern = wrapped._caller.pattern
        calls: list[str] = []
        fold = pattern.fold
        monkeypatch.setattr(pattern, "fold", lambda *a: calls.append("fold") or fold(*a))
        shapes = [(2, 4), (2, 3, 4), (2, 3, 1, 4), (2, 1, 3, 1, 4)]
        for _ in range(3):
            for shape in shapes:
                wrapped(x(*shape), x(*shape))  # one structure, four ranks
                wrapped(x(*shape), x(*shape), x(*shape))  # another structure
        assert calls == ["fold"] * 8

    @pytest.mark.parametrize(
        ("out", "make"),
        [
            (None, lambda z: (z, "label", None, 3)),
            (None, lambda z: [z, {"a": z, "b": (z, None)}]),
            (None, lambda z: Pair(z, [z])),
            (None, lambda z: torch.max(z, dim=-1)),
            ("(b t) d -> t b d", lambda z: (z, {"a": z})),
            ("(b t) ... -> b t ...", lambda z: [z, z[:, 0]]),
            (("(b t) d -> t b d", None), lambda z: (z, "label")),
            (("(b t) d -> t b d", None), lambda z: [z, z]),
            (("(b t) d -> t b d", None), lambda z: Pair(z, z)),
            (("(b t) d -> b t d", ("(b t) d -> t b d", None)), lambda z: (z, (z, None))),
            (("(b t) ... -> t b ...", None), lambda z: torch.max(z, dim=-1)),
            ({"a": "(b t) d -> t b d", "b": None}, lambda z: {"a": z, "b": z}),
            ({"a": "(b t) d -> t b d", "b": (None, "(b t) d -> b t d")}, lambda z: {"b": (3, z), "a": z}),
            ({"a": ("(b t) d -> t b d", None)}, lambda z: {"a": Pair(z, [z])}),
        ],
        ids=[
            "tuple-with-plain-values",
            "nested-list-and-dict",
            "namedtuple",
            "structseq",
            "one-pattern-over-a-tuple",
            "one-pattern-over-a-list-of-ranks",
            "tuple-out",
            "tuple-out-over-a-list",
            "tuple-out-over-a-namedtuple",
            "nested-out",
            "tuple-out-over-a-structseq",
            "dict-out",
            "nested-dict-out-in-another-order",
            "namedtuple-in-a-dict-out",
        ],
    )
    def test_a_recorded_output_structure_skips_the_full_unfold(
        self, monkeypatch: pytest.MonkeyPatch, out: Any, make: Callable[[torch.Tensor], Any]
    ) -> None:
        wrapped = Distribute("b t d -> (b t) d", make, out=out)
        calls: list[str] = []
        unfold = wrapped._caller.pattern.outputs.unfold
        monkeypatch.setattr(wrapped._caller.pattern.outputs, "unfold", lambda *a: calls.append("unfold") or unfold(*a))
        a = x(2, 3, 4)
        expected = Distribute("b t d -> (b t) d", make, out=out)(a)
        if isinstance(out, dict) and "b" not in out:
            assert type(expected["a"]) is Pair  # out= tuples take the output's tuple type, inside a dict too
        for _ in range(3):
            same(wrapped(a), expected)
        assert calls == ["unfold"]

    @pytest.mark.parametrize(
        ("out", "kind", "order"),
        [
            (None, collections.OrderedDict, ["b", "a"]),
            ("(b t) d -> t b d", collections.OrderedDict, ["b", "a"]),
            ({"a": "(b t) d -> t b d", "b": None}, dict, ["a", "b"]),  # an out= dict gives its own keys and order
        ],
        ids=["default", "one-pattern", "dict-out"],
    )
    def test_a_mapping_of_another_type_comes_back_alike(self, out: Any, kind: type, order: list[str]) -> None:
        make = lambda z: collections.OrderedDict(b=z, a=z + 1)  # noqa: E731
        wrapped = Distribute("b t d -> (b t) d", make, out=out)
        a = x(2, 3, 4)
        expected = Distribute("b t d -> (b t) d", make, out=out)(a)
        for _ in range(3):
            y = wrapped(a)
            assert type(y) is kind and list(y) == order
            same(y, expected)

    def test_an_output_no_program_can_unfold_is_examined_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        recorded: list[Any] = []
        record = foldaxes._call.record_outputs
        monkeypatch.setattr(foldaxes._call, "record_outputs", lambda *a: recorded.append(1) or record(*a))
        wrapped = Distribute(TWO, lambda a, b: (a, frozenset({"label"})))
        for _ in range(3):
            wrapped(x(2, 3, 4), x(2, 3, 5))
        assert recorded == [1]

    def test_a_structure_with_a_keyword_tensor_too(self, monkeypatch: pytest.MonkeyPatch) -> None:
        wrapped = Distribute(
            TWO, lambda a, b, m=None: a if m is None else a * m[:, None], fold_kwargs={"m": "b t -> (b t)"}
        )
        pattern = wrapped._caller.pattern
        calls: list[str] = []
        fold = pattern.fold
        monkeypatch.setattr(pattern, "fold", lambda *a: calls.append("fold") or fold(*a))
        a, m = x(2, 3, 4), x(2, 3)
        for _ in range(3):
            assert_exact(wrapped(a, x(2, 3, 5), m=m), a * m[..., None])
        assert calls == ["fold"]
        for _ in range(3):  # the keyword left out: the same structure, another program
            assert_exact(wrapped(a, x(2, 3, 5), m=None), a)
        assert_exact(wrapped(a, x(2, 3, 5), m=m), a * m[..., None])  # the newest program does not fit: the first
        assert calls == ["fold", "fold"]

    def test_the_function_form_with_a_plain_value(self, monkeypatch: pytest.MonkeyPatch) -> None:
        calls: list[str] = []
        fold = CompiledPattern.fold
        monkeypatch.setattr(CompiledPattern, "fold", lambda *a: calls.append("fold") or fold(*a))
        scaled = distribute("b t d -> (b t) d", lambda z, k: z * k)
        for _ in range(3):
            a = x(2, 3, 4)
            assert_exact(scaled(a, 5), a * 5)
        assert calls == ["fold"]

    @pytest.mark.parametrize(
        "make", [lambda: x(2, 3, 4), lambda: x(2, 3, 8)[..., ::2]], ids=["contiguous", "inner-crop"]
    )
    @pytest.mark.parametrize("extra", [(), ("plain value",)], ids=["flatten-program", "general-program"])
    def test_views_stay_views(self, make: Callable[[], torch.Tensor], extra: tuple[Any, ...]) -> None:
        seen: list[torch.Tensor] = []
        wrapped = Distribute(TWO, lambda a, b, *rest: seen.append(a) or a)
        for _ in range(3):
            a = make()
            wrapped(a, x(2, 3, 5), *extra)
            assert seen[-1].data_ptr() == a.data_ptr() and seen[-1].stride() == (a.stride(1), a.stride(2))

    @pytest.mark.parametrize("extra", [(), ("plain value",)], ids=["flatten-program", "general-program"])
    def test_channels_last_frames_stay_views(self, extra: tuple[Any, ...]) -> None:
        """A copy would keep the frames' layout too: only the storage tells a view from a copy here."""
        seen: list[torch.Tensor] = []
        wrapped = Distribute("b t c h w, b t e -> (b t) c h w, (b t) e", lambda a, b, *rest: seen.append(a) or a)
        for _ in range(3):
            a = x(2, 3, 4, 5, 6).permute(0, 1, 4, 2, 3)  # frames (c, h, w) in channels_last
            wrapped(a, x(2, 3, 7), *extra)
            assert seen[-1].data_ptr() == a.data_ptr() and seen[-1].is_contiguous(memory_format=torch.channels_last)


class FirstTwo(nn.Module):
    """A module that pickles: it returns its first two arguments."""

    def forward(self, *arguments: Any) -> Any:
        return arguments[:2]


class TestCaches:
    def test_bounded(self) -> None:
        wrapped = Distribute("... d -> (...) d", lambda *a: (a[0],))
        caller = wrapped._caller
        for count in range(1, 80):  # 79 structures: a tensor and count - 1 plain values
            wrapped(x(2, 4), *range(count - 1))
            assert 0 < len(caller._inputs) <= 64 and 0 < len(caller._outputs) <= 64
        for rank in range(2, 9):  # 7 ranks of one structure
            wrapped(x(*[1] * rank), x(*[1] * rank))
            assert all(len(programs) <= 4 for programs in caller._inputs.values())

    @pytest.mark.parametrize(
        "duplicate", [copy.deepcopy, lambda w: pickle.loads(pickle.dumps(w))], ids=["deepcopy", "pickle"]
    )
    def test_copies_start_with_empty_caches(self, duplicate: Callable[[Any], Any]) -> None:
        """Caches are rebuilt by the next call, not copied: some hold closures, which do not pickle."""
        wrapped = Distribute(TWO, FirstTwo())
        a, b = x(2, 3, 4), x(2, 3, 5)
        for _ in range(2):
            wrapped(a, b)
            wrapped(a, b, 1.0)  # another structure: a general program, not a flatten program
        copied = duplicate(wrapped)
        caches = ("_flatten_spans", "_inputs", "_flattens", "_outputs")
        assert all(getattr(wrapped._caller, name) for name in ("_inputs", "_flattens", "_outputs"))
        assert all(getattr(copied._caller, name) == {} for name in caches)
        for _ in range(2):
            same(copied(a, b), wrapped(a, b))
        assert copied._caller._flattens and copied._caller._inputs

    def test_programs_keep_no_tensor_alive(self) -> None:
        """A program records the structure of a call, not its tensors: they are freed once the caller drops them."""
        wrapped = Distribute(TWO, lambda a, b: {"a": a, "b": b})
        for _ in range(2):
            a, b = x(2, 3, 4), x(2, 3, 5)
            out = wrapped(a, b)
            refs = [weakref.ref(t) for t in (a, b, out["a"], out["b"])]
            del a, b, out
            gc.collect()
            assert all(ref() is None for ref in refs)
        assert wrapped._caller._inputs and wrapped._caller._outputs

    def test_nothing_is_recorded_while_compiling(self) -> None:
        torch._dynamo.reset()
        wrapped = Distribute(TWO, lambda a, b: (a, b))
        compiled = torch.compile(wrapped, fullgraph=True, backend="eager")
        a, b = x(2, 3, 4), x(2, 3, 5)
        assert_exact(compiled(a, b), (a, b))
        assert wrapped._caller._inputs == {} and wrapped._caller._outputs == {}

    # torch 2.13 deprecates jit.trace itself; the size checks read traced sizes (a TracerWarning each).
    @pytest.mark.filterwarnings(r"ignore:`torch\.jit\.trace(_method)?` is deprecated:DeprecationWarning")
    @pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
    def test_nothing_is_recorded_while_jit_traces(self) -> None:
        """jit.trace's check traces again and compares: a program written by the first trace would change the second."""
        wrapped = Distribute(TWO, lambda a, b: (a * 2, {"b": b}))
        a, b = x(2, 3, 4), x(2, 3, 5)
        traced = torch.jit.trace(wrapped, (a, b), strict=False, check_trace=False)  # the check's eager run records
        assert wrapped._caller._inputs == {} and wrapped._caller._outputs == {}
        same(traced(a, b), (a * 2, {"b": b}))

    def test_strict_export_of_a_cold_wrapper_has_no_side_effects(self) -> None:
        """Nothing is cached while dynamo traces: strict export warns of any write, and warnings fail the tests."""
        wrapped = Distribute(TWO, lambda a, b: (a * 2, {"b": b}))
        a, b = x(2, 3, 4), x(2, 3, 5)
        exported = torch.export.export(wrapped, (a, b), strict=True)
        same(exported.module()(a, b), wrapped(a, b))

    def test_strict_export_of_the_functional_pair_with_a_new_pattern(self) -> None:
        class Model(nn.Module):
            def forward(self, z: torch.Tensor) -> Any:
                folded, spec = foldaxes.fold(z, "b t exported_once -> (b t) exported_once")
                return foldaxes.unfold(folded * 2, spec)

        a = x(2, 3, 4)
        same(torch.export.export(Model(), (a,), strict=True).module()(a), a * 2)

    def test_a_warm_wrapper_compiles_to_the_same_result(self) -> None:
        torch._dynamo.reset()
        wrapped = Distribute(TWO, lambda a, b: (a * 2, {"b": b}))
        a, b = x(2, 3, 4), x(2, 3, 5)
        wrapped(a, b)
        wrapped(a, b)
        expected = wrapped(a, b)
        compiled = torch.compile(wrapped, fullgraph=True, backend="eager")(a, b)
        same(compiled, expected)

    def test_a_warm_wrapper_compiles_once_for_every_shape(self) -> None:
        """Under dynamo no flatten program runs: comparing symbolic shapes with the last call's would pin them."""
        compiles = 0

        def counting(graph: torch.fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
            nonlocal compiles
            compiles += 1
            return graph.forward

        wrapped = Distribute(TWO, lambda a, b: a * 2)
        wrapped(x(2, 3, 4), x(2, 3, 5))
        wrapped(x(2, 3, 4), x(2, 3, 5))  # warm: a flatten program, and the shapes of this call
        torch._dynamo.reset()
        compiled = torch.compile(wrapped, backend=counting, dynamic=True, fullgraph=True)
        for b, t in [(2, 3), (3, 5), (4, 2)]:
            a = x(b, t, 4)
            assert_exact(compiled(a, x(b, t, 5)), a * 2)
        assert compiles == 1

    def test_a_flatten_program_compiled_alone_writes_nothing(self) -> None:
        """Dynamo may trace a program's frame while it runs its caller eagerly: the program keeps no shapes then."""
        wrapped = Distribute(TWO, lambda a, b: a)
        wrapped(x(2, 3, 4), x(2, 3, 5))
        wrapped(x(2, 3, 4), x(2, 3, 5))
        program = wrapped._caller._flattens[2]
        kept = program._agreed
        torch._dynamo.reset()
        folded, sizes = torch.compile(program.fold, backend="eager", fullgraph=True)((x(3, 2, 4), x(3, 2, 5)))
        assert sizes == (3, 2) and [f.shape for f in folded] == [(6, 4), (6, 5)]
        assert program._agreed is kept

    def test_threads_share_one_wrapper(self) -> None:
        wrapped = Distribute("... d -> (...) d", lambda a, *rest: (a * 2, rest))
        barrier, errors = threading.Barrier(8), []

        def work(index: int) -> None:
            try:
                barrier.wait()
                generator = torch.Generator().manual_seed(index)
                for step in range(40):
                    shape = [*torch.randint(1, 4, (index % 3 + 1,), generator=generator).tolist(), 4]
                    a = torch.randn(shape, generator=generator)
                    extras = tuple(torch.randn(shape, generator=generator) for _ in range(step % 3))
                    y, rest = wrapped(a, *extras)
                    assert torch.equal(y, einops.rearrange(a * 2, "... d -> ... d"))
                    assert all(torch.equal(r, e) for r, e in zip(rest, extras, strict=True))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors[0]


def test_fold_error_types_are_unchanged() -> None:
    """A program never raises: errors on a hit come from the full path, so they stay FoldErrors."""
    wrapped = Distribute(TWO, lambda a, b: a)
    wrapped(x(2, 3, 4), x(2, 3, 5))
    with pytest.raises(FoldError):
        wrapped(x(2, 3, 4), x(3, 3, 5))
