"""The functional API on arrays of other libraries: NumPy, array-api-strict and JAX, through their own namespaces.

References are ``einops.rearrange`` on NumPy, and torch's own verdict on the same strides for view or copy.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any, NamedTuple

import array_api_strict as xps
import einops
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import message
from hypothesis import given, settings
from hypothesis import strategies as st
from test_properties import PROPERTY, Case, fold_cases

import foldaxes
from foldaxes import Distribute, FoldError, distribute

jax.config.update("jax_enable_x64", True)

LAYOUTS = {
    "contiguous": lambda a: a,
    "reversed-memory": lambda a: np.asfortranarray(a),
    "last-dim-crop": lambda a: np.concatenate([a, a], axis=-1)[..., ::2],
    "first-dim-step": lambda a: np.concatenate([a, a], axis=0)[::2],
}


def numbers(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def strict(a: np.ndarray) -> Any:
    return xps.asarray(a)


def to_numpy(a: Any) -> np.ndarray:
    return np.from_dlpack(a)


LIBRARIES = {"numpy": lambda a: a, "array-api-strict": strict, "jax": jnp.asarray}


class TestFoldMatchesEinops:
    @PROPERTY
    @given(case=fold_cases(), seed=st.integers(0, 2**16), library=st.sampled_from(sorted(LIBRARIES)))
    def test_fold_and_unfold(self, case: Case, seed: int, library: str) -> None:
        a = numbers(case.shape, seed)
        x = LIBRARIES[library](a)
        folded, spec = foldaxes.fold(x, case.pattern, **case.lengths)
        assert type(folded) is type(x)
        np.testing.assert_array_equal(to_numpy(folded), einops.rearrange(a, case.pattern, **case.lengths))
        unfolded = foldaxes.unfold(folded, spec)
        assert type(unfolded) is type(x)
        np.testing.assert_array_equal(to_numpy(unfolded), einops.rearrange(a, case.unfolded_pattern, **case.lengths))

    @settings(PROPERTY, max_examples=150)
    @given(case=fold_cases(), seed=st.integers(0, 2**16), layout=st.sampled_from(sorted(LAYOUTS)))
    def test_numpy_views_exactly_where_torch_views(self, case: Case, seed: int, layout: str) -> None:
        x = LAYOUTS[layout](numbers(case.shape, seed))
        tensor = torch.from_numpy(x)  # the same memory, with the same strides
        folded, _ = foldaxes.fold(x, case.pattern, **case.lengths)
        folded_tensor, _ = foldaxes.fold(tensor, case.pattern, **case.lengths)
        torch_views = folded_tensor.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
        np.testing.assert_array_equal(folded, folded_tensor.numpy())
        if x.size:  # np.shares_memory says False for any empty array
            assert np.shares_memory(folded, x) == torch_views


class Pair(NamedTuple):
    first: Any
    second: Any


class TestDistribute:
    @pytest.mark.parametrize("library", sorted(LIBRARIES))
    def test_several_operands_keywords_and_nested_outputs(self, library: str) -> None:
        xp = LIBRARIES[library]
        a, b, w = numbers((2, 3, 4), 0), numbers((2, 3, 5), 1), numbers((2, 3), 2)

        @distribute("b t x, b t y -> (b t) x, (b t) y", fold_kwargs={"weight": "b t -> (b t)"})
        def mix(p: Any, q: Any, *, weight: Any, note: str) -> Any:
            namespace = p.__array_namespace__()
            total = namespace.sum(p, axis=-1) + namespace.sum(q, axis=-1)
            return {"total": total * weight, "parts": Pair(p, [q, note])}

        out = mix(xp(a), xp(b), weight=xp(w), note="kept")
        np.testing.assert_allclose(to_numpy(out["total"]), (a.sum(-1) + b.sum(-1)) * w)
        np.testing.assert_array_equal(to_numpy(out["parts"].first), a)
        np.testing.assert_array_equal(to_numpy(out["parts"].second[0]), b)
        assert out["parts"].second[1] == "kept" and isinstance(out["parts"], Pair)

    def test_out_patterns(self) -> None:
        a = numbers((2, 3, 4), 0)
        swapped = distribute("b t d -> (b t) d", lambda z: (z, z[:, :2]), out=("(b t) d -> t b d", None))(a)
        np.testing.assert_array_equal(swapped[0], a.transpose(1, 0, 2))
        assert swapped[1].shape == (6, 2)

    def test_a_two_dimensional_function(self) -> None:
        """A scikit-learn style transform takes (N, F) and returns (N, K): over (B, T, F) in one call."""
        rng = np.random.default_rng(0)
        features, projection = rng.standard_normal((4, 10, 6)), rng.standard_normal((6, 3))
        transform = distribute("b t f -> (b t) f", lambda rows: (rows - rows.mean(0)) @ projection)
        flat = features.reshape(40, 6)
        np.testing.assert_allclose(transform(features), ((flat - flat.mean(0)) @ projection).reshape(4, 10, 3))

    def test_jax_under_jit(self) -> None:
        weights = jnp.arange(8.0).reshape(4, 2)
        step = jax.jit(distribute("b t d -> (b t) d", lambda z: jnp.tanh(z @ weights)))
        x = jnp.asarray(numbers((2, 3, 4), 0))
        expected = np.tanh(numbers((2, 3, 4), 0).reshape(6, 4) @ np.arange(8.0).reshape(4, 2)).reshape(2, 3, 2)
        for _ in range(2):
            np.testing.assert_allclose(np.asarray(step(x)), expected, rtol=1e-12)

    def test_distribute_module_passes_arrays_through(self) -> None:
        seen: list[Any] = []

        def record(z: torch.Tensor, table: np.ndarray) -> torch.Tensor:
            seen.append(table)
            return z

        table = np.zeros((2, 3))
        Distribute("b t d -> (b t) d", record)(torch.zeros(2, 3, 4), table)
        assert seen == [table]


class TestCopies:
    def test_copy_false_refuses_what_torch_refuses(self) -> None:
        x = np.zeros((3, 2, 4)).transpose(1, 0, 2)
        expected = message(lambda: foldaxes.fold(torch.from_numpy(x), "b t d -> (b t) d", copy=False))
        assert message(lambda: foldaxes.fold(x, "b t d -> (b t) d", copy=False)) == expected

    def test_copy_false_on_a_library_that_hides_its_strides(self) -> None:
        x = xps.permute_dims(xps.asarray(np.zeros((3, 2, 4))), (1, 0, 2))
        text = message(lambda: foldaxes.fold(x, "b t d -> (b t) d", copy=False))
        assert text.startswith("argument 0 cannot be folded without a copy, its library says, and copy=False forbids")
        folded, _ = foldaxes.fold(xps.asarray(np.zeros((2, 3, 4))), "b t d -> (b t) d", copy=False)
        assert folded.shape == (6, 4)

    def test_copy_true_gives_a_new_array(self) -> None:
        x = np.zeros((2, 3, 4))
        folded, _ = foldaxes.fold(x, "b t d -> (b t) d", copy=True)
        assert not np.shares_memory(folded, x) and folded.shape == (6, 4)
        view, _ = foldaxes.fold(x, "b t d -> (b t) d")
        assert np.shares_memory(view, x)

    def test_copy_true_gives_a_function_arrays_of_its_own(self) -> None:
        def double(z: np.ndarray) -> np.ndarray:
            z *= 2  # in place: on a copy, the caller's array is left alone
            return z

        x = numbers((2, 3, 4), 0)
        before = x.copy()
        y = distribute("b t d -> (b t) d", double, copy=True)(x)
        np.testing.assert_array_equal(x, before)
        np.testing.assert_array_equal(y, before * 2)


class TestErrors:
    @pytest.mark.parametrize(
        "call",
        [
            lambda x: foldaxes.fold(x, "b t d -> (b t) d"),
            lambda x: foldaxes.fold(x, "b (t v) -> (b t v)", v=4),
            lambda x: distribute("b t -> (b t)", lambda z: z[1:])(x),
            lambda x: distribute("b t -> (b t)", lambda z: z, out="(b t) -> t b", t=5)(x),
        ],
        ids=["rank", "split", "output-rows", "out-size"],
    )
    def test_the_same_message_as_for_tensors(self, call: Any) -> None:
        a = numbers((2, 3), 0)
        expected = message(lambda: call(torch.from_numpy(a)))
        for library in LIBRARIES.values():
            assert message(lambda library=library: call(library(a))) == expected

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            ((np.zeros((2, 3)), jnp.zeros((2, 3))), "argument 1 is from jax.numpy, argument 0 from numpy"),
            ((np.zeros((2, 3)), torch.zeros(2, 3)), "argument 0 is from numpy, argument 1 is a torch tensor"),
        ],
        ids=["numpy-and-jax", "numpy-and-torch"],
    )
    def test_one_library_per_call(self, args: tuple[Any, ...], expected: str) -> None:
        for call in (lambda: foldaxes.fold(args, "b t -> (b t)"), lambda: distribute("b t -> (b t)", np.add)(*args)):
            text = message(call)
            assert text.startswith(f"One call folds arrays of one library: {expected}.")

    def test_an_array_where_a_plain_value_was(self) -> None:
        """After a call with a tensor and a number, a call with a tensor and an array mixes libraries all the same."""
        wrapped = distribute("b t -> (b t)", lambda z, other: z)
        wrapped(torch.zeros(2, 3), 5)
        wrapped(torch.zeros(2, 3), 5)
        text = message(lambda: wrapped(torch.zeros(2, 3), np.zeros(4)))
        assert text.startswith("One call folds arrays of one library: argument 1 is from numpy, argument 0 is a torch")

    @pytest.mark.parametrize(
        ("options", "keywords", "feature"),
        [
            ({}, {"fold_lengths": [3, 1]}, "fold_mask and fold_lengths work"),
            ({"chunk_size": 2}, {}, "chunk_size works"),
            ({"checkpoint": True}, {}, "checkpoint=True works"),
            ({"compute_repeats_once": True}, {}, "compute_repeats_once=True works"),
        ],
        ids=["mask", "chunks", "checkpoint", "repeats"],
    )
    def test_torch_only_features(self, options: dict[str, Any], keywords: dict[str, Any], feature: str) -> None:
        wrapped = distribute("b t d -> (b t) d", lambda z: z, **options)
        text = message(lambda: wrapped(np.zeros((2, 3, 4)), **keywords))
        assert text.startswith(f"{feature} on torch tensors only, but this call folds arrays of another library.")


class TestExplain:
    @pytest.mark.parametrize(
        "make",
        [
            lambda: np.zeros((2, 8, 3, 4, 4), dtype=np.float32),
            lambda: np.zeros((8, 2, 3, 4, 4)).transpose(1, 0, 2, 3, 4),
            lambda: np.zeros((2, 8, 3, 4, 8), dtype=np.int16)[..., ::2],
        ],
        ids=["contiguous", "time-major", "cropped"],
    )
    def test_numpy_byte_strides_read_as_elements(self, make: Any) -> None:
        x = make()
        report = foldaxes.explain("b t c h w -> (b t) c h w", x)
        assert report == foldaxes.explain("b t c h w -> (b t) c h w", torch.from_numpy(x))
        assert report.input_strides == tuple(stride // x.itemsize for stride in x.strides)

    @pytest.mark.parametrize(
        "make",
        [
            lambda: jnp.zeros((2, 3, 4)),
            lambda: np.zeros(24, dtype=[("a", "i4"), ("b", "i1")])["a"].reshape(2, 3, 4),  # strides of 5 bytes
        ],
        ids=["jax", "packed-numpy-field"],
    )
    def test_strides_that_are_not_whole_elements_are_not_read(self, make: Any) -> None:
        text = message(lambda: foldaxes.explain("b t d -> (b t) d", make()))
        assert "does not show them (or they are not whole elements)" in text and "explain(pattern, x.shape)" in text


def test_no_jax_unless_a_jax_array_comes() -> None:
    code = (
        "import sys, numpy, foldaxes\n"
        "foldaxes.fold(numpy.zeros((2, 3, 4)), 'b t d -> (b t) d')\n"
        "print('jax' in sys.modules, 'array_api_strict' in sys.modules)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == (
        "False False\n"
    )


def test_fold_error_is_raised_not_a_library_error() -> None:
    with pytest.raises(FoldError):
        foldaxes.fold(jnp.zeros((2, 3)), "b t d -> (b t) d")
