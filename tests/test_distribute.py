"""Distribute and TimeDistributed against a slice-by-slice loop, in float64."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import einops
import pytest
import torch
from conftest import assert_exact, loop_reference, message
from torch import nn

import foldaxes
from foldaxes import Distribute, TimeDistributed, distribute

pytestmark = pytest.mark.usefixtures("float64")


class TestClassicRecipeExamples:
    def test_linear_over_time(self) -> None:
        linear = nn.Linear(10, 5)
        x = torch.randn(5, 3, 10)
        y = TimeDistributed(linear)(x)
        assert y.shape == (5, 3, 5)
        assert_exact(y, loop_reference(linear, [x], [0, 1]))

    def test_conv_over_time(self) -> None:
        conv = nn.Conv2d(3, 16, 3)
        x = torch.randn(5, 3, 3, 20, 20)
        y = TimeDistributed(conv)(x)
        assert y.shape == (5, 3, 16, 18, 18)
        assert_exact(y, loop_reference(conv, [x], [0, 1]))

    @pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
    def test_batch_first_only_names_the_axes(self, batch_first: bool) -> None:
        conv = nn.Conv2d(3, 4, 3)
        x = torch.randn(4, 2, 3, 8, 8)
        wrapped = TimeDistributed(conv, batch_first)
        assert_exact(wrapped(x), loop_reference(conv, [x], [0, 1]))
        assert ("b t ..." if batch_first else "t b ...") in repr(wrapped)

    def test_batch_first_as_an_int_like_the_recipe_allowed(self) -> None:
        assert TimeDistributed(nn.Identity(), 1).batch_first is True
        assert TimeDistributed(nn.Identity(), 0).batch_first is False

    def test_rank_two_input(self) -> None:
        embedding = nn.Embedding(10, 4)
        tokens = torch.randint(0, 10, (3, 7))
        assert_exact(TimeDistributed(embedding, True)(tokens), embedding(tokens))


class TestPatterns:
    @pytest.mark.parametrize(
        ("pattern", "shape", "dims", "lengths"),
        [
            ("b t c h w -> (b t) c h w", (2, 3, 3, 6, 6), [0, 1], {}),
            ("b t v c h w -> (b t v) c h w", (2, 3, 2, 3, 6, 6), [0, 1, 2], {}),
            ("b c t h w -> (b t) c h w", (2, 3, 4, 6, 6), [0, 2], {}),
            ("t b c h w -> (b t) c h w", (4, 2, 3, 6, 6), [1, 0], {}),
            ("b (t v) c h w -> (b t v) c h w", (2, 6, 3, 6, 6), [0, 1, 2], {"v": 2}),
            ("b h w c t -> (b t) c h w", (2, 6, 6, 3, 2), [0, 4], {}),
        ],
        ids=["leading", "three-axes", "non-adjacent", "reordered", "lhs-group", "channels-last-storage"],
    )
    def test_conv_matches_loop(self, pattern: str, shape: tuple[int, ...], dims: list[int], lengths: Any) -> None:
        conv = nn.Conv2d(3, 4, 3)
        x = torch.randn(shape)
        if lengths:
            x6 = einops.rearrange(x, "b (t v) c h w -> b t v c h w", **lengths)
            expected = loop_reference(conv, [x6], dims)
        elif pattern.startswith("b h w c t"):
            expected = loop_reference(conv, [x.permute(0, 4, 3, 1, 2)], [0, 1])
        else:
            expected = loop_reference(conv, [x], dims)
        assert_exact(Distribute(pattern, conv, **lengths)(x), expected)

    def test_time_major_lstm(self) -> None:
        lstm = nn.LSTM(4, 6, num_layers=2)
        x = torch.randn(2, 3, 5, 4)
        out, (h, c) = Distribute("b v t d -> t (b v) d", lstm)(x)
        assert out.shape == (5, 2, 3, 6) and h.shape == c.shape == (2, 2, 3, 6)
        for b in range(2):
            for v in range(3):
                ref_out, (ref_h, ref_c) = lstm(x[b, v].unsqueeze(1))
                assert_exact(out[:, b, v], ref_out[:, 0])
                assert_exact(h[:, b, v], ref_h[:, 0])
                assert_exact(c[:, b, v], ref_c[:, 0])

    def test_ellipsis_inside_the_group(self) -> None:
        linear = nn.Linear(4, 2)
        x = torch.randn(2, 3, 5, 4)
        y = Distribute("... d -> (...) d", linear)(x)
        assert_exact(y, loop_reference(linear, [x], [0, 1, 2]))

    def test_group_after_an_ellipsis(self) -> None:
        linear = nn.Linear(4, 2)
        x = torch.randn(2, 3, 5, 4)
        y = Distribute("... t d -> ... (t d)", lambda t: t * 2)(x)
        assert_exact(y, x * 2)
        assert_exact(Distribute("... t d -> ... t d", linear)(x), linear(x))

    def test_unit_axes(self) -> None:
        conv = nn.Conv2d(3, 2, 3)
        x = torch.randn(3, 6, 6)
        assert_exact(Distribute("c h w -> () c h w", conv)(x), conv(x.unsqueeze(0))[0])
        assert_exact(Distribute("b 1 c h w -> (b) c h w", conv)(x[None, None]), conv(x[None]))

    def test_a_group_with_axes_wins_over_an_empty_one(self) -> None:
        conv = nn.Conv3d(3, 4, (1, 3, 3))
        x = torch.randn(2, 3, 3, 6, 6)
        y = Distribute("b t c h w -> () c (b t) h w", conv)(x)
        expected = conv(x.flatten(0, 1).movedim(0, 1).unsqueeze(0))
        assert_exact(y, expected.unflatten(2, (2, 3)))

    def test_no_group_only_rearranges(self) -> None:
        seen = []
        y = Distribute("b c t -> b t c", lambda t: seen.append(t.shape) or t)(torch.randn(2, 3, 4))
        assert seen == [(2, 4, 3)] and y.shape == (2, 4, 3)


class TestArguments:
    def test_one_operand_folds_every_tensor(self) -> None:
        attention = nn.MultiheadAttention(8, 2, batch_first=True)
        q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8)
        out, weights = Distribute("b t l d -> (b t) l d", attention)(q, k, k)
        ref_out, ref_weights = loop_reference(lambda a, b: attention(a, b, b), [q, k], [0, 1])
        assert_exact(out, ref_out)
        assert_exact(weights, ref_weights)

    def test_several_operands(self) -> None:
        x, n = torch.randn(2, 3, 4), torch.randn(2, 3, 5)

        def combine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.cat([a, b.flip(-1)], -1) * a.sum(-1, keepdim=True)

        y = Distribute("b t c, b t n -> (b t) c, (b t) n", combine)(x, n)
        assert_exact(y, loop_reference(combine, [x, n], [0, 1]))

    def test_several_operands_with_different_layouts(self) -> None:
        x, n = torch.randn(2, 3, 4), torch.randn(3, 5, 2)
        y = Distribute("b t c, t n b -> (b t) c, (b t) n", lambda a, b: torch.cat([a, b], -1))(x, n)
        assert_exact(y, torch.cat([x, n.permute(2, 0, 1)], -1))

    def test_non_tensor_arguments_and_keywords_pass_through(self) -> None:
        calls: list[Any] = []

        def fn(x: torch.Tensor, scale: float, hx: Any = None, *, offset: torch.Tensor) -> torch.Tensor:
            calls.append((scale, hx, offset.shape))
            return x * scale + offset

        offset = torch.randn(4)
        y = Distribute("b t c -> (b t) c", fn)(torch.ones(2, 3, 4), 2.0, None, offset=offset)
        assert calls == [(2.0, None, (4,))]
        assert_exact(y, torch.ones(2, 3, 4) * 2 + offset)

    def test_fold_kwargs_folds_a_padding_mask(self) -> None:
        attention = nn.MultiheadAttention(8, 2, batch_first=True).eval()
        q = torch.randn(2, 3, 5, 8)
        mask = torch.zeros(2, 3, 5, dtype=torch.bool)
        mask[..., 3:] = True
        wrapped = Distribute("b t l d -> (b t) l d", attention, fold_kwargs={"key_padding_mask": "b t s -> (b t) s"})
        out, weights = wrapped(q, q, q, key_padding_mask=mask)
        for b in range(2):
            for t in range(3):
                ref_out, ref_w = attention(
                    q[b, t][None], q[b, t][None], q[b, t][None], key_padding_mask=mask[b, t][None]
                )
                assert_exact(out[b, t], ref_out[0])
                assert_exact(weights[b, t], ref_w[0])
        assert torch.all(weights[..., 3:] == 0)

    def test_fold_kwargs_leaves_none_alone(self) -> None:
        wrapped = Distribute(
            "b t c -> (b t) c", lambda x, mask=None: x if mask is None else x * 0, fold_kwargs={"mask": "b t -> (b t)"}
        )
        x = torch.randn(2, 3, 4)
        assert_exact(wrapped(x, mask=None), x)

    def test_keyword_tensors_may_differ_on_the_axes_they_keep(self) -> None:
        def attend(a: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return a * (q.sum(-1) + k.sum(-1))[:, None]

        rules = {"q": "b t s -> (b t) s", "k": "b t s -> (b t) s"}
        a, q, k = torch.randn(2, 3, 4), torch.randn(2, 3, 5), torch.randn(2, 3, 7)
        expected = a * (q.sum(-1) + k.sum(-1))[..., None]
        assert_exact(Distribute("b t c -> (b t) c", attend, fold_kwargs=rules)(a, q=q, k=k), expected)

    def test_outputs_unfold_at_the_folded_dim_of_the_positional_tensor(self) -> None:
        def fn(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return a * m.sum(0)[:, None]  # m comes as (s, b t): its rows are at dim 1

        a, m = torch.randn(2, 3, 4), torch.randn(2, 3, 5)
        wrapped = Distribute("b t c -> (b t) c", fn, fold_kwargs={"m": "b t s -> s (b t)"})
        for _ in range(2):  # the full fold, then the program it recorded
            assert_exact(wrapped(a, m=m), a * m.sum(-1)[..., None])

    def test_tensor_subclasses_fold_as_dense_tensors(self) -> None:
        a, b, scale = nn.Parameter(torch.randn(2, 3, 4)), nn.Parameter(torch.randn(2, 3, 4)), torch.randn(2, 3)
        wrapped = Distribute("b t c -> (b t) c", lambda x, y, s: x * y * s[:, None], fold_kwargs={"s": "b t -> (b t)"})
        with torch.no_grad():
            assert_exact(wrapped(a, b, s=nn.Parameter(scale)), a * b * scale[..., None])

    def test_any_callable(self) -> None:
        x = torch.randn(2, 3, 4)
        assert_exact(Distribute("b t c -> (b t) c", torch.sigmoid)(x), torch.sigmoid(x))
        assert_exact(Distribute("b t c -> (b t) c", torch.softmax)(x, -1), torch.softmax(x, -1))


class TestKeywordOnlyCalls:
    """A call whose only tensors are keywords named in fold_kwargs: their patterns decide the folded group."""

    @pytest.mark.usefixtures("float64")
    def test_allennlp_named_input(self) -> None:
        """AllenNLP's TimeDistributed test calls the wrapped embedding with ``input=`` only."""
        embedding = nn.Embedding(2, 2)
        with torch.no_grad():
            embedding.weight.copy_(torch.tensor([[0.4, 0.4], [0.5, 0.5]]))
        distributed = TimeDistributed(embedding, True, fold_kwargs={"input": "b t s -> (b t) s"})
        ids = torch.tensor([[[1, 0], [1, 1]]])
        assert_exact(distributed(input=ids), torch.tensor([[[[0.5, 0.5], [0.4, 0.4]], [[0.5, 0.5], [0.5, 0.5]]]]))

    @pytest.mark.parametrize(
        "wrap",
        [
            lambda f, k: Distribute("b t d -> (b t) d", f, fold_kwargs=k),
            lambda f, k: TimeDistributed(f, True, fold_kwargs=k),
            lambda f, k: foldaxes.distribute("b t d -> (b t) d", f, fold_kwargs=k),
            lambda f, k: Distribute("b t d -> (b t) d", fold_kwargs=k)(f),
        ],
        ids=["distribute-module", "time-distributed", "distribute-function", "factory"],
    )
    @pytest.mark.usefixtures("float64")
    def test_every_form(self, wrap: Any) -> None:
        linear = nn.Linear(4, 3)
        x = torch.randn(2, 5, 4)
        y = wrap(lambda *, x, scale: linear(x) * scale, {"x": "b t d -> (b t) d", "scale": "b t -> (b t) ()"})(
            x=x, scale=torch.arange(10.0).reshape(2, 5)
        )
        assert_exact(y, linear(x) * torch.arange(10.0).reshape(2, 5, 1))

    def test_group_comes_from_the_first_keyword_that_folds_it(self) -> None:
        wrapped = Distribute(
            "b t d -> (b t) d",
            lambda *, mask, x: x.sum(-1) + mask.sum(),
            fold_kwargs={"mask": "b s -> b s", "x": "b t d -> (b t) d"},
        )
        assert wrapped(mask=torch.ones(2, 7), x=torch.ones(2, 3, 4)).shape == (2, 3)

    def test_keyword_sizes_are_checked_against_each_other(self) -> None:
        wrapped = Distribute(
            "b t d -> (b t) d", lambda *, x, y: x + y, fold_kwargs={"x": "b t d -> (b t) d", "y": "b t d -> (b t) d"}
        )
        text = message(lambda: wrapped(x=torch.ones(2, 3, 4), y=torch.ones(2, 4, 4)))
        assert text.startswith("keyword argument 'y' disagrees with keyword argument 'x' on axis 't': 4 here, 3 there.")

    @pytest.mark.parametrize(
        ("build", "call", "expected"),
        [
            (
                lambda: Distribute("b t d -> (b t) d", lambda **k: k),
                lambda w: w(x=torch.zeros(2, 3, 4)),
                "The pattern needs at least one tensor to fold, but none came: the keyword tensor 'x' is not named "
                "in fold_kwargs.\n"
                "  pattern: b t d -> (b t) d\n"
                "  Keyword tensors are folded only when named in fold_kwargs, for example "
                "fold_kwargs={'x': 'b t ... -> (b t) ...'}.",
            ),
            (
                lambda: Distribute("b t d -> (b t) d", lambda **k: k, fold_kwargs={"mask": "b s -> b s"}),
                lambda w: w(mask=torch.zeros(2, 3)),
                "The pattern needs a tensor that carries the folded group (b t), but none came: no positional "
                "tensor, and the keyword tensors named in fold_kwargs ('mask') fold other axes.\n"
                "  pattern: b t d -> (b t) d\n"
                "  Pass the tensor to fold positionally, or give a keyword a pattern that folds (b t).",
            ),
            (
                lambda: Distribute(
                    "b t d, b t e -> (b t) d, (b t) e", lambda **k: k, fold_kwargs={"x": "b t -> (b t)"}
                ),
                lambda w: w(x=torch.zeros(2, 3)),
                "The pattern has 2 operands, one per positional tensor argument, but 0 positional tensors came.\n"
                "  pattern: b t d, b t e -> (b t) d, (b t) e\n"
                "  Give one comma-separated operand per positional tensor argument, or a single operand to apply to "
                "all of them; keyword tensors are folded by their own fold_kwargs patterns.",
            ),
        ],
        ids=["not-in-fold-kwargs", "keywords-fold-other-axes", "operands-need-positional-tensors"],
    )
    def test_when_a_positional_tensor_is_needed(self, build: Any, call: Any, expected: str) -> None:
        assert message(lambda: call(build())) == expected


class Pair(NamedTuple):
    first: torch.Tensor
    second: Any


class TestOutputs:
    def test_dicts_lists_and_namedtuples(self) -> None:
        def fn(x: torch.Tensor) -> Any:
            return {"logits": x * 2, "parts": [x + 1, Pair(x.sum(-1), "tag")], "note": None}

        x = torch.randn(2, 3, 4)
        y = Distribute("b t c -> (b t) c", fn)(x)
        assert_exact(y["logits"], x * 2)
        assert_exact(y["parts"][0], x + 1)
        assert isinstance(y["parts"][1], Pair)
        assert_exact(y["parts"][1].first, x.sum(-1))
        assert y["parts"][1].second == "tag" and y["note"] is None

    def test_out_pattern_for_every_tensor(self) -> None:
        conv = nn.Conv2d(3, 5, 3)
        x = torch.randn(2, 4, 3, 8, 8)
        y = Distribute("b c t h w -> (b t) c h w", conv, out="(b t) c h w -> b c t h w")(x.transpose(1, 2))
        expected = loop_reference(conv, [x], [0, 1]).transpose(1, 2)
        assert_exact(y, expected)

    def test_out_structure_with_none(self) -> None:
        lstm = nn.LSTM(4, 6)
        x = torch.randn(2, 5, 4)
        out, (h, c) = Distribute("b t d -> t b d", lstm, out=("t b h -> b t h", None))(x)
        ref_out, (ref_h, ref_c) = lstm(x.transpose(0, 1))
        assert_exact(out, ref_out.transpose(0, 1))
        assert_exact((h, c), (ref_h, ref_c))

    @pytest.mark.parametrize(
        "make",
        [lambda z: torch.max(z, -1), lambda z: Pair(z.sum(-1), "tag"), lambda z: [z.sum(-1), "tag"]],
        ids=["return-types", "namedtuple", "list"],
    )
    def test_out_tuple_matches_any_sequence_by_position(self, make: Any) -> None:
        x = torch.randn(2, 3, 4)
        y = Distribute("b t c -> (b t) c", make, out=("(b t) -> t b", None))(x)
        expected = make(x.flatten(0, 1))
        assert type(y) is type(expected)
        assert_exact(y[0], expected[0].unflatten(0, (2, 3)).transpose(0, 1))
        assert y[1] is expected[1] if isinstance(y[1], str) else torch.equal(y[1], expected[1])

    def test_out_structure_dict_in_any_key_order(self) -> None:
        x = torch.randn(2, 3, 4)
        y = Distribute(
            "b t c -> (b t) c", lambda a: {"a": a, "total": a.sum()}, out={"total": None, "a": "(b t) c -> c b t"}
        )(x)
        assert_exact(y["a"], x.permute(2, 0, 1))
        assert_exact(y["total"], x.sum())

    def test_out_uses_keyword_lengths(self) -> None:
        x = torch.randn(2, 3, 6)
        y = Distribute("b t c -> (b t) c", lambda a: a, out="(b t) (g c) -> b t g c", g=2)(x)
        assert_exact(y, x.unflatten(-1, (2, 3)))

    def test_output_of_a_different_rank(self) -> None:
        x = torch.randn(2, 3, 4, 4)
        y = Distribute("b t h w -> (b t) h w", lambda a: a.flatten(1).sum(-1))(x)
        assert_exact(y, x.flatten(2).sum(-1))

    def test_unit_group_output_is_squeezed(self) -> None:
        conv = nn.Conv2d(3, 2, 3)
        x = torch.randn(3, 6, 6)
        y, extra = Distribute("c h w -> () c h w", lambda a: (conv(a), conv(a).sum((2, 3))))(x)
        assert y.shape == (2, 4, 4) and extra.shape == (2,)

    @pytest.mark.parametrize(
        ("pattern", "out", "reference"),
        [
            ("b ... c -> (b ...) c", "(b n) c -> n b c", "b x y z c -> (x y z) b c"),
            ("... t c -> (... t) c", "(n t) c -> t n c", "x y z t c -> t (x y z) c"),
            ("b ... t c -> (b ... t) c", "(b n t) c -> t b n c", "b x y t c -> t b (x y) c"),
        ],
        ids=["axis-before", "axis-after", "axes-around"],
    )
    def test_out_binds_the_named_axes_around_an_ellipsis_in_the_group(
        self, pattern: str, out: str, reference: str
    ) -> None:
        x = torch.randn(2, 3, 4, 5, 6)
        wrapped = Distribute(pattern, lambda a: a * 2, out=out)
        for _ in range(2):  # the full unfold, then the program it recorded
            assert_exact(wrapped(x), einops.rearrange(x * 2, reference))

    @pytest.mark.parametrize(
        ("make", "out", "expected"),
        [
            (
                lambda z: (Pair(z, z.sum(-1)), z),
                (("(b t) c -> t b c", None), "(b t) c -> b t c"),
                lambda x: (Pair(x.transpose(0, 1), x.flatten(0, 1).sum(-1)), x),
            ),
            (
                lambda z: (z, [z * 2, z.sum(-1)]),
                (None, ["(b t) c -> c b t", "(b t) -> t b"]),
                lambda x: (x.flatten(0, 1), [(x * 2).permute(2, 0, 1), x.sum(-1).transpose(0, 1)]),
            ),
            (
                lambda z: ({"a": z, "s": z.sum(-1)}, z),
                ({"s": "(b t) -> t b", "a": None}, "(b t) c -> b t c"),
                lambda x: ({"s": x.sum(-1).transpose(0, 1), "a": x.flatten(0, 1)}, x),
            ),
        ],
        ids=["namedtuple-in-a-tuple", "list-in-a-tuple", "dict-in-a-tuple"],
    )
    def test_nested_out_structures_are_rebuilt_as_the_output(self, make: Any, out: Any, expected: Any) -> None:
        x = torch.randn(2, 3, 4)
        wrapped = Distribute("b t c -> (b t) c", make, out=out)
        for _ in range(2):  # the full unfold, then the program it recorded
            y = wrapped(x)
            assert_exact(y, expected(x))
            if isinstance(y[0], dict):
                assert list(y[0]) == ["s", "a"]  # in out='s order


def arange(*shape: int) -> torch.Tensor:
    return torch.arange(float(math.prod(shape))).reshape(shape)


def per_chunk_batch_norm(rows: torch.Tensor, size: int) -> torch.Tensor:
    """A fresh BatchNorm1d in training mode, applied to each ``size`` rows on their own (the reference)."""
    parts = [(r - r.mean(0)) / (r.var(0, unbiased=False) + 1e-5).sqrt() for r in rows.split(size)]
    return torch.cat(parts)


class Option(NamedTuple):
    """An option that changes what a call returns: the wrapper's keywords, a fresh module, a call, and the result.

    ``call(wrapped, module)`` returns what the option shows; ``expected()`` is that, computed without foldaxes.
    """

    pattern: str
    options: dict[str, Any]
    module: Callable[[], Any]
    call: Callable[[Any, Any], Any]
    expected: Callable[[], Any]


class Square(nn.Module):
    """Squares its input, counting its calls as they start (a recomputation may stop before it returns)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return z * z  # saves z for the backward pass, which recomputes it under checkpointing


def checkpointed_calls(wrapped: Any, module: Square) -> int:
    wrapped(arange(2, 3, 4).requires_grad_()).sum().backward()
    calls, module.calls = module.calls, 0
    return calls  # the forward call, and its recomputation in the backward pass


def copied(wrapped: Any, module: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x = arange(2, 3, 4)
    return wrapped(x), x


OPTIONS = {
    "out": Option(
        "b t d -> (b t) d",
        {"out": "(b t) d -> t b d"},
        lambda: lambda z: z * 2,
        lambda wrapped, _: wrapped(arange(2, 3, 4)),
        lambda: arange(2, 3, 4).transpose(0, 1) * 2,
    ),
    "fold-kwargs": Option(
        "b t d -> (b t) d",
        {"fold_kwargs": {"scale": "b t -> (b t)"}},
        lambda: lambda z, scale: z * scale[:, None],
        lambda wrapped, _: wrapped(arange(2, 3, 4), scale=arange(2, 3)),
        lambda: arange(2, 3, 4) * arange(2, 3)[..., None],
    ),
    "chunk-size": Option(
        "b t d -> (b t) d",
        {"chunk_size": 4},
        lambda: lambda z: z + z.shape[0],  # each row shows how many rows its call had
        lambda wrapped, _: wrapped(arange(2, 3, 4)),
        lambda: arange(2, 3, 4) + torch.tensor([[4.0, 4, 4], [4, 2, 2]])[..., None],
    ),
    "checkpoint": Option(
        "b t d -> (b t) d",
        {"checkpoint": True},
        Square,
        checkpointed_calls,
        lambda: 2,
    ),
    "fill-value": Option(
        "b t d -> (b t) d",
        {"fill_value": -1.0},
        lambda: lambda z: z * 2,
        lambda wrapped, _: wrapped(arange(2, 3, 4), fold_lengths=[3, 1]),
        lambda: torch.where(torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()[..., None], arange(2, 3, 4) * 2, -1.0),
    ),
    "allow-batch-statistics": Option(
        "b t d -> (b t) d",
        {"chunk_size": 3, "allow_batch_statistics": True},
        lambda: nn.BatchNorm1d(4),
        lambda wrapped, _: wrapped(arange(2, 3, 4) ** 2),
        lambda: per_chunk_batch_norm(arange(6, 4) ** 2, 3).unflatten(0, (2, 3)),
    ),
    "compute-repeats-once": Option(
        "b t d -> (b t) d",
        {"compute_repeats_once": True},
        lambda: lambda z: z + z.shape[0],  # each row shows how many rows its call had
        lambda wrapped, _: wrapped(arange(2, 1, 4).expand(2, 3, 4)),
        lambda: arange(2, 1, 4).expand(2, 3, 4) + 2,
    ),
    "copy": Option(
        "b t d -> (b t) d",
        {"copy": True},
        lambda: lambda z: z.mul_(2),  # in place: on a copy, the caller's tensor is left alone
        copied,
        lambda: (arange(2, 3, 4) * 2, arange(2, 3, 4)),
    ),
    "axes-lengths": Option(
        "b (t v) d -> (b t v) d",
        {"v": 2},
        lambda: lambda z: z * 2,
        lambda wrapped, _: wrapped(arange(2, 6, 4)),
        lambda: arange(2, 6, 4).unflatten(1, (3, 2)) * 2,
    ),
}


def time_distributed(pattern: str, module: Any, **options: Any) -> Any:
    assert pattern == "b t d -> (b t) d"  # TimeDistributed(batch_first=True) folds as this pattern does
    return TimeDistributed(module, True, **options)


FORMS = {
    "class": lambda pattern, module, **options: Distribute(pattern, module, **options),
    "factory": lambda pattern, module, **options: Distribute(pattern, **options)(module),
    "time-distributed": time_distributed,
    "function": lambda pattern, module, **options: foldaxes.distribute(pattern, module, **options),
    "decorator": lambda pattern, module, **options: foldaxes.distribute(pattern, **options)(module),
}


class TestEveryOptionInEveryForm:
    @pytest.mark.parametrize(
        ("option", "form"),
        [
            pytest.param(option, form, id=f"{option}-{form}")
            for option in OPTIONS
            for form in FORMS
            if not (form == "time-distributed" and OPTIONS[option].pattern != "b t d -> (b t) d")
        ],
    )
    def test_the_option_takes_effect(self, option: str, form: str) -> None:
        pattern, options, make, call, expected = OPTIONS[option]
        module = make()
        wrapped = FORMS[form](pattern, module, **options)
        for _ in range(2):  # a first call, and one that may take a recorded program
            result = call(wrapped, module)
            if isinstance(result, int):
                assert result == expected()
            else:
                assert_exact(result, expected())


class TestFactoryAndFunctions:
    def test_factory_form(self) -> None:
        linear = nn.Linear(4, 2)
        wrapped = Distribute("b t c -> (b t) c")(linear)
        assert isinstance(wrapped, Distribute) and wrapped.module is linear
        x = torch.randn(2, 3, 4)
        assert_exact(wrapped(x), linear(x))

    def test_decorator(self) -> None:
        @foldaxes.distribute("b t c h w -> (b t) c h w")
        def pool(frames: torch.Tensor) -> torch.Tensor:
            assert frames.ndim == 4
            return nn.functional.max_pool2d(frames, 2)

        x = torch.randn(2, 3, 4, 8, 8)
        assert pool.__name__ == "pool"
        assert_exact(pool(x), loop_reference(lambda f: nn.functional.max_pool2d(f, 2), [x], [0, 1]))

    def test_decorator_called_with_the_function(self) -> None:
        double = foldaxes.distribute("b t c -> (b t) c", lambda a: a * 2)
        x = torch.randn(2, 3, 4)
        assert_exact(double(x), x * 2)

    def test_fold_unfold_round_trip(self) -> None:
        x = torch.randn(2, 3, 4, 5)
        folded, spec = foldaxes.fold(x, "b c t d -> (b t) c d")
        assert_exact(folded, einops.rearrange(x, "b c t d -> (b t) c d"))
        assert spec.dim == 0 and spec.sizes == (2, 4) and spec.axes == ("b", "t")
        assert_exact(foldaxes.unfold(folded, spec), x.permute(0, 2, 1, 3))
        assert_exact(foldaxes.unfold(folded, spec, out="(b t) c d -> b c t d"), x)

    def test_fold_several_tensors(self) -> None:
        (a, b), spec = foldaxes.fold([torch.randn(2, 3, 4), torch.randn(3, 2)], "b t c, t b -> (b t) c, (b t)")
        assert a.shape == (6, 4) and b.shape == (6,) and spec.sizes == (2, 3)

    @pytest.mark.parametrize(
        "warm",
        [
            pytest.param(
                False,
                marks=pytest.mark.skipif(
                    torch.__version__ < (2, 13), reason="older dynamo cannot trace einops' parser on a cold cache"
                ),
            ),
            True,
        ],
        ids=["cold-cache", "warm-cache"],
    )
    def test_functional_pair_under_compile(self, warm: bool) -> None:
        def pooled(x: torch.Tensor) -> Any:
            # Names no other test uses, so that the cold case parses the pattern while tracing.
            folded, spec = foldaxes.fold(x, f"b{warm} c t h w -> (b{warm} t) c h w")
            y = nn.functional.avg_pool2d(folded, 2)
            return foldaxes.unfold(y, spec), foldaxes.unfold(y, spec, out=f"(b{warm} t) c h w -> b{warm} c t h w")

        torch._dynamo.reset()
        x = torch.randn(2, 3, 4, 8, 8)
        expected = pooled(x) if warm else None
        compiled = torch.compile(pooled, fullgraph=True, backend="eager")
        assert_exact(compiled(x), expected or pooled(x))
        assert_exact(pooled(x)[1], nn.functional.avg_pool3d(x, (1, 2, 2)))

    def test_a_length_given_after_a_cached_fold_is_checked(self) -> None:
        x = torch.randn(2, 3, 4)
        foldaxes.fold(x, "b t d -> (b t) d")  # caches the pattern's flatten for rank 3
        with pytest.raises(foldaxes.FoldError, match="axis 'b' has size 2 but was given as 3"):
            foldaxes.fold(x, "b t d -> (b t) d", b=3)

    def test_spec_is_picklable_and_immutable(self) -> None:
        import dataclasses
        import pickle

        _, spec = foldaxes.fold(torch.randn(2, 3, 4), "b t c -> (b t) c")
        assert pickle.loads(pickle.dumps(spec)) == spec
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.dim = 1  # type: ignore[misc]


class TestFunctionDefaults:
    """``distribute`` has the defaults of ``Distribute``: each is seen where it makes a difference."""

    def test_padded_rows_are_zero(self) -> None:
        y = distribute("b t d -> (b t) d", lambda z: z + 1)(torch.zeros(2, 3, 4), fold_lengths=[1, 2])
        expected = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])[..., None].expand(2, 3, 4)
        assert_exact(y, expected)

    def test_batch_statistics_in_chunks_are_refused(self) -> None:
        text = message(lambda: distribute("b t d -> (b t) d", nn.BatchNorm1d(4), chunk_size=2)(torch.randn(2, 3, 4)))
        assert "normalises with the statistics of the batch it is given" in text
