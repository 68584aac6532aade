"""Distribute as a module among modules: checkpoints, copies, hooks, module methods, composition, autograd, threads
and bounded caches. Graph capture is in test_compile_export.py, mixed precision in test_precision.py."""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import pickle
import pydoc
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import einops
import pytest
import torch
from conftest import assert_exact, loop_reference
from torch import nn

import foldaxes
from foldaxes import Distribute, TimeDistributed


def encoder() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Video(nn.Module):
    def __init__(self, wrap: bool) -> None:
        super().__init__()
        self.enc = Distribute("b t c h w -> (b t) c h w", encoder()) if wrap else encoder()
        self.head = nn.Linear(4, 2)


class TestCheckpoints:
    def test_keys_have_no_prefix(self) -> None:
        assert list(Video(True).state_dict()) == list(Video(False).state_dict())
        assert list(Distribute("b t c -> (b t) c", nn.Linear(2, 3)).state_dict()) == ["weight", "bias"]

    @pytest.mark.parametrize("direction", ["plain-to-wrapped", "wrapped-to-plain"])
    def test_checkpoints_load_both_ways(self, direction: str) -> None:
        source, target = (Video(False), Video(True)) if direction == "plain-to-wrapped" else (Video(True), Video(False))
        with torch.no_grad():
            for parameter in source.parameters():
                parameter.add_(torch.randn_like(parameter))
        buffer = io.BytesIO()
        torch.save(source.state_dict(), buffer)
        buffer.seek(0)
        result = target.load_state_dict(torch.load(buffer, weights_only=True))
        assert not result.missing_keys and not result.unexpected_keys
        for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items(), strict=True):
            assert torch.equal(a, b), name

    def test_strict_loading_reports_the_checkpoint_names(self) -> None:
        state = Video(False).state_dict()
        state["enc.extra"] = torch.zeros(1)
        del state["enc.0.bias"]
        with pytest.raises(RuntimeError) as info:
            Video(True).load_state_dict(state)
        text = str(info.value)
        assert 'Missing key(s) in state_dict: "enc.0.bias"' in text
        assert 'Unexpected key(s) in state_dict: "enc.extra"' in text
        assert "module." not in text

    def test_size_mismatch_names_the_checkpoint_key(self) -> None:
        wrapped = Distribute("b t c -> (b t) c", nn.Linear(4, 5))
        with pytest.raises(RuntimeError) as info:
            wrapped.load_state_dict({"weight": torch.zeros(5, 3), "bias": torch.zeros(5)})
        assert "size mismatch for weight:" in str(info.value) and "module." not in str(info.value)

    def test_reports_for_a_child_named_like_the_wrappers_own(self) -> None:
        class Holder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.module = nn.Linear(2, 2)

        class Scaled(Distribute):
            def __init__(self) -> None:
                super().__init__("b t d -> (b t) d", Holder())
                self.scale = nn.Parameter(torch.ones(1))

        state = {"module.weight": torch.zeros(3, 2), "module.bias": torch.zeros(2)}
        with pytest.raises(RuntimeError) as info:
            Scaled().load_state_dict(state)
        assert "size mismatch for module.weight:" in str(info.value)
        del state["module.weight"]
        result = Scaled().load_state_dict(state, strict=False)
        assert sorted(result.missing_keys) == ["module.weight", "scale"]

    def test_non_strict_report_uses_the_checkpoint_names(self) -> None:
        result = Video(True).load_state_dict({"enc.0.weight": torch.zeros(4, 3, 3, 3), "enc.x": 1}, strict=False)
        assert "enc.0.bias" in result.missing_keys and result.unexpected_keys == ["enc.x"]

    def test_classic_time_distributed_checkpoints_load(self) -> None:
        class ClassicTimeDistributed(nn.Module):
            def __init__(self, module: nn.Module, batch_first: bool = False) -> None:
                super().__init__()
                self.module = module
                self.batch_first = batch_first

        old = nn.Sequential(ClassicTimeDistributed(nn.Conv2d(3, 4, 3), True))
        new = nn.Sequential(TimeDistributed(nn.Conv2d(3, 4, 3), True))
        new.load_state_dict(old.state_dict())
        assert torch.equal(new[0].module.weight, old[0].module.weight)

    def test_a_subclass_keeps_its_own_parameters_and_modules(self) -> None:
        class Scaled(Distribute):
            def __init__(self) -> None:
                super().__init__("b t c -> (b t) c", nn.Linear(4, 5))
                self.scale = nn.Parameter(torch.randn(1))
                self.extra = nn.Sequential(nn.Linear(2, 2))

        source, target = Scaled(), Scaled()
        assert list(source.state_dict()) == ["scale", "extra.0.weight", "extra.0.bias", "weight", "bias"]
        target.load_state_dict(source.state_dict())
        assert_exact(target.state_dict(), source.state_dict(), 0)
        assert torch.equal(target.extra[0].weight, source.extra[0].weight)

    def test_a_wrapped_module_with_a_child_named_module(self) -> None:
        class Holder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.module = nn.Linear(2, 2)
                self.head = nn.Linear(2, 2)

        source, target = Distribute("b t d -> (b t) d", Holder()), Distribute("b t d -> (b t) d", Holder())
        assert list(source.state_dict()) == ["module.weight", "module.bias", "head.weight", "head.bias"]
        result = target.load_state_dict(source.state_dict())
        assert not result.missing_keys and not result.unexpected_keys
        assert_exact(target.state_dict(), source.state_dict(), 0)

    @pytest.mark.parametrize(
        ("save_wrapped", "load_wrapped"), [(True, False), (True, True)], ids=["wrapped-to-plain", "wrapped-to-wrapped"]
    )
    def test_module_versions_survive(self, save_wrapped: bool, load_wrapped: bool) -> None:
        seen: list[Any] = []

        class Versioned(nn.Linear):
            _version = 2

            def _load_from_state_dict(self, state_dict: Any, prefix: str, local_metadata: Any, *rest: Any) -> None:
                seen.append(local_metadata.get("version"))
                super()._load_from_state_dict(state_dict, prefix, local_metadata, *rest)

        def model(wrapped: bool) -> nn.Module:
            layer = Versioned(4, 5)
            return nn.Sequential(Distribute("b t c -> (b t) c", layer) if wrapped else layer)

        model(load_wrapped).load_state_dict(model(save_wrapped).state_dict())
        assert seen == [2]

    def test_versions_are_written_under_both_names(self) -> None:
        class Inner(nn.Linear):
            _version = 7

        class Outer(nn.Sequential):
            _version = 5

        model = nn.Module()
        model.enc = Distribute("b t c -> (b t) c", Outer(Inner(2, 2)))
        versions = {key: meta.get("version") for key, meta in model.state_dict()._metadata.items()}
        assert versions == {"": 1, "enc": 5, "enc.module": 5, "enc.0": 7, "enc.module.0": 7}
        assert list(model.state_dict(destination={})) == ["enc.0.weight", "enc.0.bias"]  # a dict has no metadata

    def test_nested_distributes(self) -> None:
        inner = Distribute("b v c h w -> (b v) c h w", encoder())
        outer = Distribute("b t v c h w -> (b t) v c h w", inner)
        assert list(outer.state_dict()) == list(encoder().state_dict())
        outer.load_state_dict(encoder().state_dict())
        assert outer(torch.randn(2, 3, 2, 3, 8, 8)).shape == (2, 3, 2, 4)

    @pytest.mark.parametrize("called", [False, True], ids=["fresh", "after-a-call"])
    def test_whole_model_save_and_load(self, called: bool) -> None:
        model = Video(True).eval()
        x = torch.randn(2, 3, 3, 8, 8)
        if called:  # the plan caches are filled and pickled with the model
            model.enc(x)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert type(loaded.enc) is Distribute and loaded.enc.module is not model.enc.module
        with torch.no_grad():
            assert_exact(loaded.enc(x), model.enc.module(x.flatten(0, 1)).unflatten(0, (2, 3)))

    def test_distributed_checkpoint_state_dict_helpers(self) -> None:
        """The helpers FSDP2 checkpoints go through, on a model that is not even distributed."""
        helpers = pytest.importorskip("torch.distributed.checkpoint.state_dict")
        source, target = Video(True), Video(True)
        with torch.no_grad():
            for parameter in source.parameters():
                parameter.add_(1)
        state = helpers.get_model_state_dict(source)
        assert list(state) == list(Video(False).state_dict())
        helpers.set_model_state_dict(target, state)
        assert_exact(target.state_dict(), source.state_dict(), 0)


COPY_CASES = [
    pytest.param(
        lambda: Distribute("b t c -> (b t) c", nn.Linear(4, 2), out="(b t) d -> t b d"), (2, 3, 4), id="out-pattern"
    ),
    pytest.param(lambda: TimeDistributed(nn.Linear(4, 2), batch_first=True), (2, 3, 4), id="time-distributed"),
    pytest.param(lambda: Distribute("b (t v) c -> (b t v) c", nn.Linear(4, 2), v=2), (2, 6, 4), id="axis-length"),
    pytest.param(
        lambda: Distribute("b t c -> (b t) c", Distribute("n c -> n c ()", nn.Conv1d(4, 2, 1))), (2, 3, 4), id="nested"
    ),
]


class TestCopies:
    @pytest.mark.parametrize(
        "clone", [lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy], ids=["pickle", "deepcopy"]
    )
    @pytest.mark.parametrize(("make", "shape"), COPY_CASES)
    def test_copy_behaves_the_same(self, clone: Any, make: Callable[[], nn.Module], shape: tuple[int, ...]) -> None:
        wrapped = make()
        x = torch.randn(shape)
        expected = wrapped(x)  # the copy also carries the plans this call cached
        copied = clone(wrapped)
        assert copied.module is not wrapped.module
        assert_exact(copied(x), expected)
        assert_exact(copied.state_dict(), wrapped.state_dict(), 0)
        with torch.no_grad():
            next(copied.parameters()).add_(1)
        assert not torch.equal(copied(x), expected)
        assert_exact(wrapped(x), expected)

    def test_repr_shows_pattern_and_module(self) -> None:
        text = repr(Distribute("b (t v) d -> (b t v) d", nn.Linear(4, 2), v=2))
        assert "'b (t v) d -> (b t v) d'" in text and "v=2" in text and "Linear(in_features=4" in text
        assert "fn=" in repr(Distribute("b t d -> (b t) d", torch.tanh))

    def test_names_of_the_wrapped_module_are_found_under_it(self) -> None:
        """What torch.distributed.checkpoint asks: which state-dict names sit under the child the keys leave out."""

        class Holder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.module = nn.Linear(2, 2)  # the name of Distribute's own child
                self.register_buffer("scale", torch.ones(1))
                self.bias = nn.Parameter(torch.zeros(1))

        wrapped = Distribute("b t d -> (b t) d", Holder())
        assert wrapped._fqn_modifiers() == {"module": "module", "scale": "module", "bias": "module"}
        assert set(wrapped.state_dict()) == {"module.weight", "module.bias", "scale", "bias"}
        assert Distribute("b t d -> (b t) d")._fqn_modifiers() == {}

    def test_repr_names_every_option_given(self) -> None:
        wrapped = Distribute(
            "b (t v) d -> (b t v) d",
            nn.Identity(),
            out=("(b t v) d -> t b v d", None),
            fold_kwargs={"m": "b (t v) -> (b t v)"},
            checkpoint=True,
            copy=True,
            v=2,
        )
        assert repr(wrapped).splitlines()[1] == (
            "  'b (t v) d -> (b t v) d', v=2, out=('(b t v) d -> t b v d', None), fold_kwargs={'m': 'b (t v) -> "
            "(b t v)'}, checkpoint=True, copy=True"
        )

    def test_repr_of_a_factory_says_it_needs_a_module(self) -> None:
        text = repr(Distribute("b t d -> (b t) d", chunk_size=4))
        assert text == "Distribute('b t d -> (b t) d', chunk_size=4, no module yet: call it with the module to wrap)"
        assert "no module yet" not in repr(Distribute("b t d -> (b t) d", chunk_size=4)(nn.Identity()))

    @pytest.mark.parametrize("cls", [Distribute, TimeDistributed], ids=["distribute", "time-distributed"])
    def test_help_shows_the_constructors_own_documentation(self, cls: type) -> None:
        text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
        constructor = text[text.index("__init__(") :][:800]
        assert "the class docstring has the arguments" in constructor
        assert "Initialize internal Module state" not in text


HOOK_CASES = [
    pytest.param(lambda m: Distribute("b t c -> (b t) c", m), (2, 3, 4), id="view-fold"),
    pytest.param(lambda m: Distribute("t c b -> (b t) c", m), (3, 4, 2), id="permuted-fold"),
    pytest.param(lambda m: TimeDistributed(m), (3, 2, 4), id="time-distributed"),
    pytest.param(lambda m: Distribute("b t c -> (b t) c", m, out="(b t) d -> t b d"), (2, 3, 4), id="out-pattern"),
]


class TestHooks:
    @pytest.mark.parametrize(("wrap", "shape"), HOOK_CASES)
    def test_forward_and_pre_hooks_on_the_module_fire_once_per_call(
        self, wrap: Callable[[nn.Module], nn.Module], shape: tuple[int, ...]
    ) -> None:
        linear = nn.Linear(4, 2)
        calls: list[tuple[str, tuple[int, ...]]] = []
        linear.register_forward_pre_hook(lambda m, args: calls.append(("pre", tuple(args[0].shape))))
        linear.register_forward_hook(lambda m, args, out: calls.append(("post", tuple(out.shape))))
        wrapped = wrap(linear)
        for _ in range(3):  # the first call builds the plan, the others take the cached path
            wrapped(torch.randn(shape))
        assert calls == [("pre", (6, 4)), ("post", (6, 2))] * 3

    def test_hooks_on_the_wrapper_fire_once_and_see_the_unfolded_tensors(self) -> None:
        wrapped = Distribute("b t c -> (b t) c", nn.Linear(4, 2))
        calls: list[tuple[str, tuple[int, ...]]] = []
        wrapped.register_forward_pre_hook(lambda m, args: calls.append(("pre", tuple(args[0].shape))))
        wrapped.register_forward_hook(lambda m, args, out: calls.append(("post", tuple(out.shape))))
        wrapped(torch.randn(2, 3, 4))
        assert calls == [("pre", (2, 3, 4)), ("post", (2, 3, 2))]

    @pytest.mark.usefixtures("float64")
    def test_an_output_replaced_by_a_hook_is_unfolded(self) -> None:
        linear = nn.Linear(4, 2)
        linear.register_forward_hook(lambda m, args, out: (out, out.sum(-1)))
        x = torch.randn(2, 3, 4)
        out, total = Distribute("b t c -> (b t) c", linear)(x)
        expected = nn.functional.linear(x, linear.weight, linear.bias)  # without the hook
        assert_exact((out, total), (expected, expected.sum(-1)))

    def test_a_pre_hook_with_kwargs_sees_the_folded_keyword(self) -> None:
        class Masked(nn.Module):
            def forward(self, x: torch.Tensor, *, mask: torch.Tensor) -> torch.Tensor:
                return x * mask[..., None]

        module = Masked()
        seen: list[tuple[int, ...]] = []
        module.register_forward_pre_hook(
            lambda m, args, kwargs: seen.append(tuple(kwargs["mask"].shape)), with_kwargs=True
        )
        wrapped = Distribute("b t s c -> (b t) s c", module, fold_kwargs={"mask": "b t s -> (b t) s"})
        wrapped(torch.randn(2, 3, 5, 4), mask=torch.ones(2, 3, 5))
        assert seen == [(6, 5)]

    def test_full_backward_hook_fires_once_per_backward(self) -> None:
        conv = nn.Conv2d(3, 2, 3)
        grads: list[tuple[int, ...]] = []
        conv.register_full_backward_hook(lambda m, grad_in, grad_out: grads.append(tuple(grad_out[0].shape)))
        x = torch.randn(2, 3, 3, 6, 6, requires_grad=True)
        Distribute("b t c h w -> (b t) c h w", conv)(x).sum().backward()
        assert grads == [(6, 2, 4, 4)]


class TestModuleMethods:
    def test_train_and_eval_reach_the_module(self) -> None:
        inner = encoder()
        wrapped = TimeDistributed(inner, batch_first=True)
        assert wrapped.eval() is wrapped and not any(m.training for m in inner.modules())
        x = torch.randn(2, 3, 3, 8, 8)
        with torch.no_grad():
            assert_exact(wrapped(x), inner(x.flatten(0, 1)).unflatten(0, (2, 3)), 0)  # BatchNorm's running stats
        wrapped.train()
        assert all(m.training for m in inner.modules())

    @pytest.mark.parametrize(
        ("apply", "dtype"),
        [
            pytest.param(lambda m: m.half(), torch.float16, id="half"),
            pytest.param(lambda m: m.bfloat16(), torch.bfloat16, id="bfloat16"),
            pytest.param(lambda m: m.double(), torch.float64, id="double"),
            pytest.param(lambda m: m.double().float(), torch.float32, id="float"),
            pytest.param(lambda m: m.to(torch.float64), torch.float64, id="to-dtype"),
        ],
    )
    def test_dtype_casts_reach_the_module(self, apply: Callable[[nn.Module], nn.Module], dtype: torch.dtype) -> None:
        inner = encoder()
        wrapped = TimeDistributed(inner, batch_first=True).eval()
        assert apply(wrapped) is wrapped
        floating = [t for t in [*inner.parameters(), *inner.buffers()] if t.is_floating_point()]
        assert floating and all(t.dtype == dtype for t in floating)
        x = torch.randn(2, 3, 3, 8, 8, dtype=dtype)
        with torch.no_grad():
            out = wrapped(x)
            assert out.dtype == dtype
            assert_exact(out, inner(x.flatten(0, 1)).unflatten(0, (2, 3)), 0)

    def test_memory_format_requires_grad_and_parameters_reach_the_module(self) -> None:
        inner = encoder()
        wrapped = Distribute("b t c h w -> (b t) c h w", inner)
        wrapped.to(memory_format=torch.channels_last)
        assert inner[0].weight.is_contiguous(memory_format=torch.channels_last)
        wrapped.requires_grad_(False)
        assert not any(p.requires_grad for p in inner.parameters())
        assert [id(p) for p in wrapped.parameters()] == [id(p) for p in inner.parameters()]
        assert [id(b) for b in wrapped.buffers()] == [id(b) for b in inner.buffers()]

    def test_batchnorm_sees_every_frame(self) -> None:
        norm = nn.BatchNorm1d(4, momentum=1.0)
        x = torch.randn(2, 3, 4)
        TimeDistributed(norm, True)(x)
        assert torch.allclose(norm.running_mean, x.reshape(6, 4).mean(0))
        assert int(norm.num_batches_tracked) == 1


@pytest.mark.usefixtures("float64")
class TestComposition:
    def test_distribute_inside_distribute(self) -> None:
        enc = encoder().eval()
        inner = Distribute("b v c h w -> (b v) c h w", enc)
        outer = Distribute("b t v c h w -> (b t) v c h w", inner)
        x = torch.randn(2, 3, 2, 3, 8, 8)
        with torch.no_grad():
            assert_exact(outer(x), loop_reference(enc, [x], [0, 1, 2]))
        assert list(outer.state_dict()) == list(encoder().state_dict())

    def test_inside_sequential_and_module_dict(self) -> None:
        enc, head = encoder().eval(), nn.Linear(4, 2)
        model = nn.Sequential(
            Distribute("b t c h w -> (b t) c h w", enc), nn.ModuleDict({"head": TimeDistributed(head, True)})
        )
        x = torch.randn(2, 3, 3, 8, 8)
        with torch.no_grad():
            y = model[1]["head"](model[0](x))
            assert_exact(y, loop_reference(lambda frame: head(enc(frame)), [x], [0, 1]))
        plain = nn.Sequential(encoder(), nn.ModuleDict({"head": nn.Linear(4, 2)}))
        assert list(model.state_dict()) == list(plain.state_dict())
        plain.load_state_dict(model.state_dict())

    def test_sequential_of_wrappers(self) -> None:
        conv, linear = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)
        model = nn.Sequential(
            Distribute("b t c h w -> (b t) c h w", conv),
            Distribute("b t c h w -> (b t) c h w", nn.AdaptiveAvgPool2d(1)),
            Distribute("b t c 1 1 -> (b t) c", linear),
        )
        x = torch.randn(2, 3, 3, 8, 8)
        with torch.no_grad():
            assert_exact(model(x), linear(conv(x.flatten(0, 1)).mean((2, 3))).unflatten(0, (2, 3)))


@pytest.mark.usefixtures("float64")
class TestAutograd:
    def test_gradcheck(self) -> None:
        linear = nn.Linear(3, 2)
        wrapped = Distribute("b c t -> (b t) c", linear)
        x = torch.randn(2, 3, 4, requires_grad=True)
        assert torch.autograd.gradcheck(wrapped, (x,))

    def test_gradcheck_several_operands_and_nested_output(self) -> None:
        wrapped = Distribute("b t x, t b y -> (b t) x, (b t) y", lambda a, b: (a * b.sum(-1, keepdim=True), {"b": b}))
        a = torch.randn(2, 3, 4, requires_grad=True)
        b = torch.randn(3, 2, 2, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: (lambda r: (r[0], r[1]["b"]))(wrapped(a, b)), (a, b))

    def test_gradients_match_the_loop(self) -> None:
        conv = nn.Conv2d(3, 2, 3)
        x = torch.randn(2, 3, 3, 6, 6, requires_grad=True)
        Distribute("b t c h w -> (b t) c h w", conv)(x).square().sum().backward()
        grad, weight_grad = x.grad.clone(), conv.weight.grad.clone()
        x.grad, conv.weight.grad = None, None
        loop_reference(conv, [x], [0, 1]).square().sum().backward()
        assert_exact(grad, x.grad)
        assert_exact(weight_grad, conv.weight.grad)


@contextlib.contextmanager
def frequent_thread_switches() -> Iterator[None]:
    """Makes the interpreter switch threads every few microseconds, so that plan building interleaves."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def run_threads(work: Callable[[int], None], count: int = 8) -> None:
    """Runs ``work(i)`` in ``count`` threads started together; re-raises the first failure."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            barrier.wait()
            work(index)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    with frequent_thread_switches():
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]


@pytest.mark.usefixtures("float64")
class TestThreads:
    def test_one_shared_wrapper_builds_plans_for_many_ranks_at_once(self) -> None:
        linear = nn.Linear(4, 3)
        wrapped = Distribute("... t c -> (... t) c", linear)  # new: every rank's plan is built under contention
        done = [0] * 8

        def work(index: int) -> None:
            generator = torch.Generator().manual_seed(index)
            for _ in range(25):
                lead = torch.randint(1, 4, (index,), generator=generator).tolist()  # rank index + 2
                x = torch.randn(*lead, 5, 4, generator=generator)
                with torch.no_grad():
                    expected = linear(einops.rearrange(x, "... t c -> (... t) c")).reshape(*x.shape[:-1], 3)
                    assert_exact(wrapped(x), expected)
                done[index] += 1

        run_threads(work)
        assert done == [25] * 8

    def test_fold_with_new_patterns_in_every_thread(self) -> None:
        """More new patterns than the pattern caches hold, so they are emptied while other threads read them."""

        def work(index: int) -> None:
            x = torch.randn(2, 3, 4)
            for i in range(48):
                pattern = f"thread{index}b{i} t c -> (thread{index}b{i} t) c"
                folded, spec = foldaxes.fold(x, pattern)
                assert torch.equal(folded, einops.rearrange(x, pattern))
                assert torch.equal(foldaxes.unfold(folded, spec), x)

        run_threads(work)


class TestCaches:
    @pytest.mark.slow
    def test_new_patterns_do_not_grow_memory(self) -> None:
        """1,500 new patterns keep at most a few hundred parsed folds alive; an unbounded cache would keep all.

        Each cached pattern costs a few kB (its parsed pattern, plans and output rules), so an unbounded cache
        would hold over 4 MB here; the bounded caches hold under 1 MB.
        """
        x = torch.randn(2, 3)
        gc.collect()
        tracemalloc.start()
        try:
            for i in range(1536):
                folded, spec = foldaxes.fold(x, f"memory{i} t -> (memory{i} t)")
                foldaxes.unfold(folded, spec)
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert kept < 2_000_000, f"{kept} bytes kept"

    def test_fold_specs_per_size_stay_bounded_and_keep_their_template(self) -> None:
        pattern = "b t -> (b t)"
        for batch in range(1, 101):  # 100 group sizes of one pattern and rank
            x = torch.randn(batch, 2)
            folded, spec = foldaxes.fold(x, pattern)
            assert torch.equal(foldaxes.unfold(folded, spec), x)
            specs = foldaxes._fold._FLATTENS[(pattern, torch.Tensor, 2)][2]
            assert () in specs and 0 < len(specs) <= 64

    def test_bounded_cache_memoises_and_empties_when_full(self) -> None:
        calls: list[int] = []

        @foldaxes._cache.bounded_cache(3)
        def double(n: int) -> int:
            calls.append(n)
            return 2 * n

        assert [double(1), double(1), double(2), double(3)] == [2, 2, 4, 6]
        assert calls == [1, 2, 3]
        double(4)  # full: the memo is emptied, then holds 4
        double(1)
        assert calls == [1, 2, 3, 4, 1]
        assert double([1]) == [1, 1] and calls[-1] == [1]  # unhashable: called, never memoised

    def test_per_rank_caches_stay_bounded(self) -> None:
        """A wrapper called at more ranks than its caches hold keeps at most 64 plans and 64 fast-path spans."""
        wrapped = Distribute("... c -> (...) c", nn.Identity())
        caller = wrapped._caller
        for rank in range(1, 101):
            wrapped(torch.zeros(*[1] * rank))
            assert 0 < len(caller.pattern.rules[0]._plans) <= 64
            assert 0 < len(caller._flatten_spans) <= 64

    def test_plans_are_reused(self) -> None:
        """A second call at the same rank builds no plan."""
        wrapped = Distribute("b t c -> (b t) c", lambda *tensors: tensors[0])
        rule = wrapped._caller.pattern.rules[0]
        built = []
        build = rule._build
        rule._build = lambda *args: built.append(args[0]) or build(*args)  # type: ignore[method-assign]
        for shape in [(2, 3, 4), (5, 1, 4), (2, 3, 4)]:
            wrapped(torch.zeros(shape))
            wrapped(torch.zeros(shape), torch.zeros(shape))
        assert built == [3]

    @pytest.mark.parametrize(
        "make",
        [lambda: torch.randn(2, 3, 4), lambda: torch.randn(2, 3, 8)[..., ::2]],
        ids=["contiguous", "inner-crop"],
    )
    def test_the_fast_path_looks_up_its_flatten_once_per_rank(
        self, make: Callable[[], torch.Tensor], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One tensor whose fold is a view: the full fold never runs, and the plan is asked once per rank."""
        wrapped = Distribute("b t c -> (b t) c", lambda z: z * 2)
        pattern = wrapped._caller.pattern
        rule, calls = pattern.rules[0], []
        plan, fold = rule.plan, pattern.fold
        monkeypatch.setattr(rule, "plan", lambda *a: calls.append("plan") or plan(*a))
        monkeypatch.setattr(pattern, "fold", lambda *a: calls.append("fold") or fold(*a))
        for _ in range(3):
            x = make()
            assert torch.equal(wrapped(x), x * 2)
        assert calls == ["plan"]

    @pytest.mark.usefixtures("float64")
    def test_more_ranks_than_the_plan_cache_holds(self) -> None:
        """One wrapper called with 70 ranks, twice over: its per-rank plans are rebuilt, never wrong."""
        linear = nn.Linear(4, 3)
        wrapped = Distribute("... c -> (...) c", linear)
        for _ in range(2):
            for rank in range(1, 71):
                x = torch.randn(*[2] * min(rank - 1, 3), *[1] * max(rank - 4, 0), 4)
                with torch.no_grad():
                    out = wrapped(x)
                    assert out.shape == (*x.shape[:-1], 3)
                    assert_exact(out.reshape(-1, 3), linear(x.reshape(-1, 4)))  # comparisons stop at 64 dims
