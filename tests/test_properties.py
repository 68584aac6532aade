"""Property tests: random valid patterns and shapes, each checked against a reference that never calls
foldaxes.

The references are ``einops.rearrange`` (for the fold, and for the unfold via the same pattern with the folded
group's parentheses removed) and a Python loop that calls the function on one slice of the folded axes at a
time.
"""

from __future__ import annotations

import itertools
import keyword
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import einops
import pytest
import torch
from conftest import allocations, assert_exact
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import foldaxes

DTYPE = torch.float64
ELLIPSIS = "..."
UNIT = "1"

PROPERTY = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],  # generation is slow on a loaded CI machine, not wrong
)


# ------------------------------------------------------------------------------------------------------------
# Generated cases
# ------------------------------------------------------------------------------------------------------------

Element = str | tuple[str, ...]
"""One element of a composition: an axis name, ``"..."``, or a parenthesised group of those."""


def _text(composition: Sequence[Element]) -> str:
    return " ".join(element if isinstance(element, str) else "(" + " ".join(element) + ")" for element in composition)


@dataclass(frozen=True)
class Case:
    """One generated operand: the pattern, a matching input shape, and what the fold should produce.

    Attributes:
        lhs: The input composition.
        rhs: The folded composition; ``rhs[group_index]`` is the folded group.
        group_index: Index in ``rhs`` of the folded group (its first parenthesised element).
        sizes: The size of every axis name.
        ellipsis: The sizes of the axes that ``...`` stands for.
        lengths: The axis lengths passed as keywords.
    """

    lhs: tuple[Element, ...]
    rhs: tuple[Element, ...]
    group_index: int
    sizes: dict[str, int] = field(hash=False)
    ellipsis: tuple[int, ...]
    lengths: dict[str, int] = field(hash=False)

    @property
    def pattern(self) -> str:
        return f"{_text(self.lhs)} -> {_text(self.rhs)}"

    @property
    def unfolded_pattern(self) -> str:
        """The pattern without the folded group's parentheses: einops then gives the expected unfold."""
        rhs = list(self.rhs)
        rhs[self.group_index : self.group_index + 1] = self.rhs[self.group_index]
        return f"{_text(self.lhs)} -> {_text(rhs)}"

    def _dims(self, element: Element) -> tuple[int, ...]:
        if element == ELLIPSIS:
            return self.ellipsis
        if element == UNIT:
            return (1,)
        if isinstance(element, str):
            return (self.sizes[element],)
        return (math.prod(size for name in element for size in self._dims(name)),)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(size for element in self.lhs for size in self._dims(element))

    @property
    def group_dim(self) -> int:
        """Where the folded group sits in the folded tensor (``...`` outside it counts its dims)."""
        return sum(len(self._dims(element)) for element in self.rhs[: self.group_index])

    @property
    def group_sizes(self) -> tuple[int, ...]:
        """The sizes the folded dim splits back into, in group order (``...`` inside it expanded)."""
        group = self.rhs[self.group_index]
        assert isinstance(group, tuple)
        return tuple(size for name in group for size in self._dims(name))

    def __repr__(self) -> str:
        return f"Case({self.pattern!r}, shape={self.shape}, lengths={self.lengths})"


# ``out=`` is a keyword-only option of Distribute: an axis named ``out`` cannot take its length as a keyword.
# Positional parameters can be axis names: TestAxisNamedLikeAParameter.
SHADOWED = frozenset({"out"})


def _is_axis_name(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name) and name != "axis" and name not in SHADOWED


names_st = st.one_of(
    st.sampled_from(["b", "t", "v", "c", "h", "w", "batch", "time", "view", "x1"]),
    st.from_regex(r"[a-z][a-z0-9_]{0,3}[a-z0-9]|[a-z]", fullmatch=True).filter(_is_axis_name),
)
size_st = st.sampled_from([2, 3, 1])  # 1 is rarer: a size-1 axis hides transposition mistakes


@st.composite
def _names(draw: st.DrawFn, count: int) -> list[str]:
    return draw(st.lists(names_st, min_size=count, max_size=count, unique=True))


@st.composite
def _lhs_groups(draw: st.DrawFn, lhs: list[Element], sizes: dict[str, int]) -> tuple[list[Element], dict[str, int]]:
    """Parenthesises runs of adjacent names on the left, giving all lengths but (at most) one as keywords."""
    lengths: dict[str, int] = {}
    out: list[Element] = []
    i = 0
    while i < len(lhs):
        run = 0
        while i + run < len(lhs) and lhs[i + run] != ELLIPSIS:
            run += 1
        width = draw(st.integers(1, min(run, 3))) if run >= 2 else 1
        if width == 1:
            name = lhs[i]
            if name != ELLIPSIS and draw(st.integers(0, 5)) == 0:
                lengths[name] = sizes[name]  # a plain axis with its length given: einops checks it
            out.append(name)
            i += 1
            continue
        group = tuple(lhs[i : i + width])
        unknown = draw(st.integers(-1, width - 1))  # -1: every length given
        lengths.update((name, sizes[name]) for j, name in enumerate(group) if j != unknown)
        out.append(group)  # type: ignore[arg-type]
        i += width
    return out, lengths


@st.composite
def fold_cases(draw: st.DrawFn, lhs_groups: bool = True, second_group: bool = True, units: bool = True) -> Case:
    """A single-operand pattern: 1-5 named dims, maybe ``...``, 1-3 folded axes anywhere, in any order.

    Maybe also groups on the left (lengths as keywords), a second group on the right after the folded one, and
    unit axes (``1``) on either side, outside the folded group.
    """
    names = draw(_names(draw(st.integers(1, 5))))
    sizes = {name: draw(size_st) for name in names}
    use_ellipsis = draw(st.booleans())
    ellipsis = tuple(draw(st.lists(size_st, max_size=2))) if use_ellipsis else ()
    lhs: list[Element] = list(names)
    if use_ellipsis:
        lhs.insert(draw(st.integers(0, len(lhs))), ELLIPSIS)

    folded = draw(st.permutations(names))[: draw(st.integers(1, min(3, len(names))))]
    group: list[str] = list(folded)
    if use_ellipsis and draw(st.booleans()):
        group.insert(draw(st.integers(0, len(group))), ELLIPSIS)
    rest: list[Element] = [element for element in lhs if element not in group]
    if draw(st.booleans()):
        rest = list(draw(st.permutations(rest)))
    at = draw(st.integers(0, len(rest)))
    rhs: list[Element] = [*rest[:at], tuple(group), *rest[at:]]
    # Maybe merge two adjacent elements after the folded group: einops merges them, the unfold leaves them.
    after = [j for j in range(at + 1, len(rhs) - 1) if isinstance(rhs[j], str) and isinstance(rhs[j + 1], str)]
    if second_group and after and draw(st.booleans()):
        j = draw(st.sampled_from(after))
        rhs[j : j + 2] = [(rhs[j], rhs[j + 1])]  # type: ignore[list-item]
    lengths: dict[str, int] = {}
    if lhs_groups and draw(st.integers(0, 2)):
        lhs, lengths = draw(_lhs_groups(lhs, sizes))
    if units and draw(st.integers(0, 3)) == 0:
        lhs.insert(draw(st.integers(0, len(lhs))), UNIT)  # a size-1 input dim that the fold drops
    if units and draw(st.integers(0, 3)) == 0:
        where = draw(st.integers(0, len(rhs)))
        rhs.insert(where, UNIT)  # a new size-1 dim in the folded tensor
        at += where <= at
    return Case(tuple(lhs), tuple(rhs), at, sizes, ellipsis, lengths)


def _tensor(shape: Sequence[int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=DTYPE)


# ------------------------------------------------------------------------------------------------------------
# The slice-by-slice reference
# ------------------------------------------------------------------------------------------------------------


def loop_over_group(
    fn: Callable[..., Any],
    unfolded: Sequence[torch.Tensor],
    dims: Sequence[int],
    sizes: Sequence[int],
    out_dim: int,
) -> Any:
    """Calls ``fn`` on one index of the folded axes at a time and assembles the results.

    ``unfolded[i]`` holds the folded axes as separate dims starting at ``dims[i]``. Its slice is passed with a
    dim of size 1 at ``dims[i]`` (the batch the function sees). Every tensor in ``fn``'s output must have its
    batch dim at ``out_dim``; the assembled output has the folded axes there, in order.
    """
    results = []
    for index in itertools.product(*(range(size) for size in sizes)):
        parts = [t[(slice(None),) * dim + index].unsqueeze(dim) for t, dim in zip(unfolded, dims, strict=True)]
        results.append(fn(*parts))
    return _assemble(results, out_dim, sizes)


def _assemble(results: list[Any], dim: int, sizes: Sequence[int]) -> Any:
    first = results[0]
    if isinstance(first, torch.Tensor):
        k = len(sizes)
        stacked = torch.stack([r.select(dim, 0) for r in results]).unflatten(0, tuple(sizes))
        return stacked.movedim(tuple(range(k)), tuple(range(dim, dim + k)))
    if isinstance(first, dict):
        return {key: _assemble([r[key] for r in results], dim, sizes) for key in first}
    return type(first)(_assemble([r[i] for r in results], dim, sizes) for i in range(len(first)))


def per_sample_fn(dim: int, ndim: int, last_size: int, seed: int, nested: bool) -> Callable[..., Any]:
    """A function that treats ``dim`` as its batch: each output entry depends only on its own sample.

    It doubles its input, adds the sample's sum over every other dim, and, when the last dim is not the batch,
    maps the last dim through a fixed random matrix (changing its size). With ``nested`` it also returns a
    reduction over the last dim inside a tuple and a dict.
    """
    others = [d for d in range(ndim) if d != dim]
    generator = torch.Generator().manual_seed(seed)
    last_is_batch = dim == ndim - 1
    weight = None if last_is_batch else torch.randn(last_size, last_size + 1, generator=generator, dtype=DTYPE)

    def fn(t: torch.Tensor) -> Any:
        out = t * 2 + (t.sum(dim=others, keepdim=True) if others else t.square())
        if weight is not None:
            out = out @ weight
        if not nested:
            return out
        reduced = out.amax(dim=-1) if weight is not None else out.neg()
        return out, {"reduced": reduced, "sum": out.sum(dim=others, keepdim=True) if others else out}

    return fn


# ------------------------------------------------------------------------------------------------------------
# The properties
# ------------------------------------------------------------------------------------------------------------


class TestFoldMatchesEinops:
    """``fold(x, p)[0]`` is ``einops.rearrange(x, p)``: the same values, the same shape."""

    @PROPERTY
    @given(case=fold_cases(), seed=st.integers(0, 2**16))
    def test_fold_equals_rearrange(self, case: Case, seed: int) -> None:
        x = _tensor(case.shape, seed)
        folded, spec = foldaxes.fold(x, case.pattern, **case.lengths)
        expected = einops.rearrange(x, case.pattern, **case.lengths)
        assert folded.shape == expected.shape
        assert torch.equal(folded, expected)
        assert spec.dim == case.group_dim
        assert tuple(spec.sizes) == case.group_sizes

    @PROPERTY
    @given(case=fold_cases(lhs_groups=False), seed=st.integers(0, 2**16), step=st.integers(2, 3))
    def test_fold_of_a_strided_input_equals_rearrange(self, case: Case, seed: int, step: int) -> None:
        # The same input seen through a crop of its last dim and a transposed layout in memory.
        base = _tensor((*case.shape[:-1], case.shape[-1] * step), seed)[..., ::step]
        x = base.transpose(0, -1).contiguous().transpose(0, -1)
        for tensor in (base, x):
            folded, _ = foldaxes.fold(tensor, case.pattern, **case.lengths)
            assert torch.equal(folded, einops.rearrange(tensor, case.pattern, **case.lengths))


LAYOUTS = {
    "contiguous": lambda t: t,
    "reversed-memory": lambda t: t.permute(*reversed(range(t.ndim))).contiguous().permute(*reversed(range(t.ndim))),
    "last-dim-crop": lambda t: torch.cat([t, t], dim=-1)[..., ::2],
    "first-dim-step": lambda t: torch.cat([t, t], dim=0)[::2],
}


class TestFoldCopiesOnlyWhenItMust:
    """The fold is a view exactly when einops' rearrange is one (torch's reshape rules); else one copy."""

    @settings(PROPERTY, max_examples=150)
    @given(case=fold_cases(), seed=st.integers(0, 2**16), layout=st.sampled_from(sorted(LAYOUTS)))
    def test_view_exactly_when_einops_views(self, case: Case, seed: int, layout: str) -> None:
        x = LAYOUTS[layout](_tensor(case.shape, seed))
        expected = einops.rearrange(x, case.pattern, **case.lengths)
        einops_views = expected.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
        (folded, _), allocated = allocations(lambda: foldaxes.fold(x, case.pattern, **case.lengths))
        assert torch.equal(folded, expected)
        if einops_views:
            assert allocated == []
            assert folded.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
        else:
            assert allocated == [folded.numel() * folded.element_size()]


class TestUnfoldInvertsFold:
    """``unfold(fold(x, p)[0], spec)`` is the rearranged tensor with the folded group split in place."""

    @PROPERTY
    @given(case=fold_cases(), seed=st.integers(0, 2**16))
    def test_unfold_equals_rearrange_without_the_group(self, case: Case, seed: int) -> None:
        x = _tensor(case.shape, seed)
        folded, spec = foldaxes.fold(x, case.pattern, **case.lengths)
        unfolded = foldaxes.unfold(folded, spec)
        expected = einops.rearrange(x, case.unfolded_pattern, **case.lengths)
        assert unfolded.shape == expected.shape
        assert torch.equal(unfolded, expected)
        assert unfolded.untyped_storage().data_ptr() == folded.untyped_storage().data_ptr()

    @PROPERTY
    @given(case=fold_cases(), seed=st.integers(0, 2**16))
    def test_unfold_of_a_module_output_splits_the_group_dim(self, case: Case, seed: int) -> None:
        # An output with other trailing dims than the input: only the folded dim is split.
        x = _tensor(case.shape, seed)
        folded, spec = foldaxes.fold(x, case.pattern, **case.lengths)
        y = torch.stack([-folded, folded], dim=-1)
        expected_shape = (
            *folded.shape[: case.group_dim],
            *case.group_sizes,
            *folded.shape[case.group_dim + 1 :],
            2,
        )
        unfolded = foldaxes.unfold(y, spec)
        assert tuple(unfolded.shape) == expected_shape
        assert torch.equal(unfolded[..., 1], einops.rearrange(x, case.unfolded_pattern, **case.lengths))


class TestDistributeMatchesLoop:
    """``Distribute(p, f)(x)`` equals calling ``f`` on one slice of the folded axes at a time."""

    @PROPERTY
    @given(case=fold_cases(), seed=st.integers(0, 2**16), nested=st.booleans())
    def test_single_tensor(self, case: Case, seed: int, nested: bool) -> None:
        x = _tensor(case.shape, seed)
        unfolded = einops.rearrange(x, case.unfolded_pattern, **case.lengths)
        folded_shape = einops.rearrange(x, case.pattern, **case.lengths).shape
        fn = per_sample_fn(case.group_dim, len(folded_shape), folded_shape[-1], seed, nested)
        expected = loop_over_group(fn, [unfolded], [case.group_dim], case.group_sizes, case.group_dim)
        wrapped = foldaxes.Distribute(case.pattern, fn, **case.lengths)
        assert_exact(wrapped(x), expected, tolerance=1e-10)
        assert_exact(wrapped(x), expected, tolerance=1e-10)  # the second call may take the cached fast path

    @PROPERTY
    @given(case=fold_cases(second_group=False), seed=st.integers(0, 2**16))
    def test_one_pattern_applies_to_every_argument(self, case: Case, seed: int) -> None:
        x, z = _tensor(case.shape, seed), _tensor(case.shape, seed + 1)
        folded_shape = einops.rearrange(x, case.pattern, **case.lengths).shape
        single = per_sample_fn(case.group_dim, len(folded_shape), folded_shape[-1], seed, nested=False)

        def fn(a: torch.Tensor, b: torch.Tensor) -> Any:
            return single(a) - 3 * single(b), b

        unfolded = [einops.rearrange(t, case.unfolded_pattern, **case.lengths) for t in (x, z)]
        expected = loop_over_group(fn, unfolded, [case.group_dim] * 2, case.group_sizes, case.group_dim)
        wrapped = foldaxes.Distribute(case.pattern, fn, **case.lengths)
        for _ in range(2):  # the second call replays the program the first one recorded
            assert_exact(wrapped(x, z), expected, tolerance=1e-10)


# ------------------------------------------------------------------------------------------------------------
# Several operands
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiCase:
    """Several operands that fold the same axes, in the same group order, each with its own other axes."""

    operands: tuple[Case, ...]

    @property
    def pattern(self) -> str:
        return ", ".join(_text(c.lhs) for c in self.operands) + " -> " + ", ".join(_text(c.rhs) for c in self.operands)

    def __repr__(self) -> str:
        return f"MultiCase({self.pattern!r}, shapes={[c.shape for c in self.operands]})"


@st.composite
def multi_cases(draw: st.DrawFn) -> MultiCase:
    count = draw(st.integers(2, 3))
    names = draw(_names(count * 2 + 4))
    sizes = {name: draw(size_st) for name in names}
    group = tuple(names[: draw(st.integers(1, 3))])
    shared = names[3:4] if draw(st.booleans()) else []  # a non-folded axis every operand has
    own = names[4:]
    operands = []
    for i in range(count):
        private = own[2 * i : 2 * i + draw(st.integers(0, 2))]
        lhs = tuple(draw(st.permutations([*group, *shared, *private])))
        rest = [name for name in lhs if name not in group]
        at = draw(st.integers(0, len(rest)))
        rhs = (*rest[:at], group, *rest[at:])
        operands.append(Case(lhs, rhs, at, sizes, (), {}))
    return MultiCase(tuple(operands))


def _multi_fn(cases: Sequence[Case], seed: int) -> Callable[..., Any]:
    """Mixes all operands per sample; returns a tensor shaped like the first operand, twice, in a dict."""
    generator = torch.Generator().manual_seed(seed)
    weights = [
        torch.randn(math.prod(c.shape) // math.prod(c.group_sizes), generator=generator, dtype=DTYPE) for c in cases
    ]
    dims = [c.group_dim for c in cases]

    def fn(*tensors: torch.Tensor) -> Any:
        mix = sum(t.movedim(d, 0).reshape(t.shape[d], -1) @ w for t, d, w in zip(tensors, dims, weights, strict=True))
        first = tensors[0]
        mix = mix.reshape([-1 if d == dims[0] else 1 for d in range(first.ndim)])
        return {"out": first * 2 + mix, "scaled": (first * mix,)}

    return fn


class TestSeveralOperands:
    """Multi-operand patterns: each operand rearranged by its own pattern, the function called once."""

    @PROPERTY
    @given(case=multi_cases(), seed=st.integers(0, 2**16))
    def test_fold_equals_rearrange_per_operand(self, case: MultiCase, seed: int) -> None:
        xs = [_tensor(c.shape, seed + i) for i, c in enumerate(case.operands)]
        folded, spec = foldaxes.fold(xs, case.pattern)
        assert len(folded) == len(xs)
        for c, x, f in zip(case.operands, xs, folded, strict=True):
            assert torch.equal(f, einops.rearrange(x, c.pattern))
            assert f.shape == einops.rearrange(x, c.pattern).shape
        first = case.operands[0]
        assert spec.dim == first.group_dim
        assert tuple(spec.sizes) == first.group_sizes
        assert torch.equal(foldaxes.unfold(folded[0], spec), einops.rearrange(xs[0], first.unfolded_pattern))

    @PROPERTY
    @given(case=multi_cases(), seed=st.integers(0, 2**16))
    def test_distribute_equals_loop(self, case: MultiCase, seed: int) -> None:
        xs = [_tensor(c.shape, seed + i) for i, c in enumerate(case.operands)]
        fn = _multi_fn(case.operands, seed)
        first = case.operands[0]
        unfolded = [einops.rearrange(x, c.unfolded_pattern) for c, x in zip(case.operands, xs, strict=True)]
        dims = [c.group_dim for c in case.operands]
        expected = loop_over_group(fn, unfolded, dims, first.group_sizes, first.group_dim)
        wrapped = foldaxes.Distribute(case.pattern, fn)
        for _ in range(2):  # the second call replays the program the first one recorded
            assert_exact(wrapped(*xs), expected, tolerance=1e-10)


def _f2(a: torch.Tensor, b: torch.Tensor) -> Any:
    """Combines a frame's ``x`` features with its ``y`` features; per sample along dim 0."""
    return a * b.sum(dim=-1, keepdim=True), torch.cat([a, b.flip(-1)], dim=-1).cumsum(-1)


@pytest.mark.parametrize(
    ("b", "t", "x", "y"),
    [(1, 1, 1, 1), (2, 3, 4, 5), (3, 1, 2, 2), (1, 4, 3, 1)],
    ids=["all-ones", "distinct", "t-is-1", "b-is-1"],
)
class TestTwoOperandsBT:
    """The documented case ``"b t x, b t y -> (b t) x, (b t) y"`` against a loop over ``b`` and ``t``."""

    PATTERN = "b t x, b t y -> (b t) x, (b t) y"

    def test_distribute_equals_loop(self, b: int, t: int, x: int, y: int) -> None:
        a, c = _tensor((b, t, x), 1), _tensor((b, t, y), 2)
        result = foldaxes.Distribute(self.PATTERN, _f2)(a, c)
        expected = loop_over_group(_f2, [a, c], [0, 0], (b, t), 0)
        assert_exact(result, expected, tolerance=1e-10)
        assert result[0].shape == (b, t, x)
        assert result[1].shape == (b, t, x + y)

    def test_time_major_operand_order(self, b: int, t: int, x: int, y: int) -> None:
        # The second operand stored time-major: the same samples must meet.
        a, c = _tensor((b, t, x), 3), _tensor((t, b, y), 4)
        result = foldaxes.Distribute("b t x, t b y -> (b t) x, (b t) y", _f2)(a, c)
        expected = loop_over_group(_f2, [a, c.transpose(0, 1)], [0, 0], (b, t), 0)
        assert_exact(result, expected, tolerance=1e-10)

    def test_first_operand_not_folded(self, b: int, t: int, x: int, y: int) -> None:
        # The folded group is the first one in the text, here in the second operand: outputs split as (b t).
        def fn(a: torch.Tensor, c: torch.Tensor) -> Any:
            return _f2(a.repeat_interleave(c.shape[0] // a.shape[0], dim=0), c)

        a, c = _tensor((b, x), 5), _tensor((b, t, y), 6)
        result = foldaxes.Distribute("b x, b t y -> b x, (b t) y", fn)(a, c)
        expected = loop_over_group(fn, [a[:, None].expand(b, t, x), c], [0, 0], (b, t), 0)
        assert_exact(result, expected, tolerance=1e-10)


# ------------------------------------------------------------------------------------------------------------
# Named patterns, for readable failures
# ------------------------------------------------------------------------------------------------------------

KNOWN = [
    pytest.param("b t c h w -> (b t) c h w", (2, 3, 4, 2, 3), {}, "b t c h w -> b t c h w", 0, id="video-bt"),
    pytest.param("t b d -> (t b) d", (3, 2, 4), {}, "t b d -> t b d", 0, id="time-major"),
    pytest.param("b c t h w -> (b t) c h w", (2, 3, 4, 2, 2), {}, "b c t h w -> b t c h w", 0, id="non-adjacent"),
    pytest.param("b t v c -> (v b t) c", (2, 3, 2, 4), {}, "b t v c -> v b t c", 0, id="three-axes-reordered"),
    pytest.param(
        "b t c h w -> (t b) c (h w)",
        (2, 3, 2, 2, 3),
        {},
        "b t c h w -> t b c (h w)",
        0,
        id="second-group-stays",
    ),
    pytest.param("b (t v) d -> (b t v) d", (2, 6, 3), {"v": 2}, "b (t v) d -> b t v d", 0, id="lhs-group"),
    pytest.param("b ... d -> (b ...) d", (2, 3, 2, 4), {}, "b ... d -> b ... d", 0, id="ellipsis-in-group"),
    pytest.param("b t x -> x (b t)", (2, 3, 4), {}, "b t x -> x b t", 1, id="group-last"),
    pytest.param("... t d -> ... d (t)", (2, 3, 4, 5), {}, "... t d -> ... d t", 3, id="group-after-ellipsis"),
    pytest.param("n c t -> c (t n)", (4, 3, 2), {}, "n c t -> c t n", 1, id="group-not-leading"),
    pytest.param("b t c -> 1 (b t) c", (2, 3, 4), {}, "b t c -> 1 b t c", 1, id="unit-before-group"),
    pytest.param("b 1 t c -> (b t) c 1", (2, 1, 3, 4), {}, "b 1 t c -> b t c 1", 0, id="unit-dropped-and-added"),
    pytest.param("b t c -> (b t c)", (2, 3, 4), {}, "b t c -> b t c", 0, id="everything-folded"),
]


class TestKnownPatterns:
    """The generated properties, on named patterns; the group's sizes are read off einops' own result."""

    @pytest.mark.parametrize(("pattern", "shape", "lengths", "unfolded_pattern", "dim"), KNOWN)
    def test_fold_unfold_and_distribute(
        self, pattern: str, shape: tuple[int, ...], lengths: dict[str, int], unfolded_pattern: str, dim: int
    ) -> None:
        x = _tensor(shape, 0)
        expected_folded = einops.rearrange(x, pattern, **lengths)
        unfolded = einops.rearrange(x, unfolded_pattern, **lengths)
        sizes = tuple(unfolded.shape[dim : dim + unfolded.ndim - expected_folded.ndim + 1])

        folded, spec = foldaxes.fold(x, pattern, **lengths)
        assert folded.shape == expected_folded.shape
        assert torch.equal(folded, expected_folded)
        assert (spec.dim, tuple(spec.sizes)) == (dim, sizes)
        assert torch.equal(foldaxes.unfold(folded, spec), unfolded)

        fn = per_sample_fn(dim, folded.ndim, folded.shape[-1], 0, nested=True)
        wrapped = foldaxes.Distribute(pattern, fn, **lengths)
        expected = loop_over_group(fn, [unfolded], [dim], sizes, dim)
        for _ in range(2):  # the first call builds the plan, the second may take the fast path
            assert_exact(wrapped(x), expected, tolerance=1e-10)


class TestAxisNamedLikeAParameter:
    """An axis may be called ``x``, ``pattern``, ``module`` or ``fn`` and still be given a length."""

    @pytest.mark.parametrize("name", ["x", "pattern"], ids=["x", "pattern"])
    def test_fold(self, name: str) -> None:
        t = _tensor((2, 6), 0)
        pattern = f"b ({name} v) -> (b {name}) v"
        folded, spec = foldaxes.fold(t, pattern, **{name: 2})
        assert torch.equal(folded, t.reshape(4, 3))  # not einops: its own parameter is called `pattern`
        assert tuple(spec.sizes) == (2, 2)

    @pytest.mark.parametrize("name", ["pattern", "module"], ids=["pattern", "module"])
    def test_distribute_module(self, name: str) -> None:
        t = _tensor((2, 6), 0)
        wrapped = foldaxes.Distribute(f"b ({name} v) -> (b {name}) v", torch.neg, **{name: 2})
        assert torch.equal(wrapped(t), -t.unflatten(1, (2, 3)))

    @pytest.mark.parametrize("name", ["pattern", "fn"], ids=["pattern", "fn"])
    def test_distribute_function(self, name: str) -> None:
        t = _tensor((2, 6), 0)
        wrapped = foldaxes.distribute(f"b ({name} v) -> (b {name}) v", torch.neg, **{name: 2})
        assert torch.equal(wrapped(t), -t.unflatten(1, (2, 3)))
