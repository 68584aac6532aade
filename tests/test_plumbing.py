"""Distribute as a module among modules: checkpoints, pickling, autograd, compile, hooks, threads."""

from __future__ import annotations

import copy
import io
import pickle
import threading
import warnings
from typing import Any

import pytest
import torch
from conftest import assert_exact, loop_reference
from torch import nn

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

    def test_a_subclass_keeps_its_own_parameters(self) -> None:
        class Scaled(Distribute):
            def __init__(self) -> None:
                super().__init__("b t c -> (b t) c", nn.Linear(4, 5))
                self.scale = nn.Parameter(torch.randn(1))

        source, target = Scaled(), Scaled()
        assert list(source.state_dict()) == ["scale", "weight", "bias"]
        target.load_state_dict(source.state_dict())
        assert torch.equal(target.scale, source.scale) and torch.equal(target.module.weight, source.module.weight)

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

    def test_nested_distributes(self) -> None:
        inner = Distribute("b v c h w -> (b v) c h w", encoder())
        outer = Distribute("b t v c h w -> (b t) v c h w", inner)
        assert list(outer.state_dict()) == list(encoder().state_dict())
        outer.load_state_dict(encoder().state_dict())
        assert outer(torch.randn(2, 3, 2, 3, 8, 8)).shape == (2, 3, 2, 4)

    def test_whole_model_save_and_load(self) -> None:
        model = Video(True).eval()
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        x = torch.randn(2, 3, 3, 8, 8)
        assert torch.equal(loaded.enc(x), model.enc(x))


class TestCopies:
    @pytest.mark.parametrize("clone", [pickle.loads, copy.deepcopy], ids=["pickle", "deepcopy"])
    def test_copy_behaves_the_same(self, clone: Any) -> None:
        wrapped = Distribute("b t c -> (b t) c", nn.Linear(4, 2), out="(b t) d -> t b d")
        x = torch.randn(2, 3, 4)
        wrapped(x)
        copied = clone(pickle.dumps(wrapped)) if clone is pickle.loads else clone(wrapped)
        assert copied.module is not wrapped.module
        assert torch.equal(copied(x), wrapped(x))
        assert list(copied.state_dict()) == ["weight", "bias"]

    def test_repr_shows_pattern_and_module(self) -> None:
        text = repr(Distribute("b (t v) d -> (b t v) d", nn.Linear(4, 2), v=2))
        assert "'b (t v) d -> (b t v) d'" in text and "v=2" in text and "Linear(in_features=4" in text
        assert "fn=" in repr(Distribute("b t d -> (b t) d", torch.tanh))


class TestModulePlumbing:
    def test_train_eval_and_to_reach_the_module(self) -> None:
        wrapped = TimeDistributed(encoder())
        wrapped.eval()
        assert not wrapped.module.training
        wrapped.to(torch.float64)
        assert all(p.dtype == torch.float64 for p in wrapped.module.parameters())
        assert len(list(wrapped.parameters())) == len(list(encoder().parameters()))

    def test_hooks_fire_once_per_call(self) -> None:
        linear = nn.Linear(4, 2)
        calls = []
        linear.register_forward_pre_hook(lambda m, args: calls.append(("pre", args[0].shape)))
        linear.register_forward_hook(lambda m, args, out: calls.append(("post", out.shape)))
        Distribute("b t c -> (b t) c", linear)(torch.randn(2, 3, 4))
        assert calls == [("pre", (6, 4)), ("post", (6, 2))]

    def test_batchnorm_sees_every_frame(self) -> None:
        norm = nn.BatchNorm1d(4, momentum=1.0)
        x = torch.randn(2, 3, 4)
        TimeDistributed(norm, True)(x)
        assert torch.allclose(norm.running_mean, x.reshape(6, 4).mean(0))
        assert int(norm.num_batches_tracked) == 1

    def test_inside_sequential_and_module_dict(self) -> None:
        model = nn.Sequential(
            Distribute("b t c h w -> (b t) c h w", encoder()), nn.ModuleDict({"head": TimeDistributed(nn.Linear(4, 2))})
        )
        y = model[1]["head"](model[0](torch.randn(2, 3, 3, 8, 8)))
        assert y.shape == (2, 3, 2)


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


class RecurrentLike(nn.Module):
    """Returns ``(out, (h, c))`` like nn.LSTM, which torch.compile itself cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out = self.linear(x).cumsum(0)
        return out, (out[-1:], out.mean(0, keepdim=True))


class TestCompile:
    @pytest.mark.parametrize(
        ("make", "shape"),
        [
            (lambda: Distribute("b t c h w -> (b t) c h w", nn.Conv2d(3, 4, 3)), (2, 3, 3, 8, 8)),
            (lambda: TimeDistributed(nn.Linear(4, 2), True), (2, 3, 4)),
            (
                lambda: Distribute("b c t h w -> (b t) c h w", nn.Conv2d(3, 4, 3), out="(b t) c h w -> b c t h w"),
                (2, 3, 4, 8, 8),
            ),
            (lambda: Distribute("b v t d -> t (b v) d", RecurrentLike()), (2, 3, 4, 4)),
        ],
        ids=["conv", "time-distributed", "out-pattern", "lstm-nested"],
    )
    def test_fullgraph(self, make: Any, shape: tuple[int, ...]) -> None:
        torch._dynamo.reset()
        wrapped = make()
        x = torch.randn(shape)
        compiled = torch.compile(wrapped, fullgraph=True, backend="eager")
        expected = wrapped(x)
        assert_exact(compiled(x), expected)
        assert torch._dynamo.explain(wrapped)(x).graph_break_count == 0

    def test_inductor(self) -> None:
        torch._dynamo.reset()
        wrapped = Distribute("b t c h w -> (b t) c h w", nn.Conv2d(3, 4, 3))
        x = torch.randn(2, 3, 3, 8, 8)
        compiled = torch.compile(wrapped, fullgraph=True)
        torch.testing.assert_close(compiled(x), wrapped(x))


class TestExport:
    @pytest.mark.parametrize(
        "pattern", ["b t c -> (b t) c", "t b c -> (b t) c", "b t ... -> (b t) ..."], ids=["view", "permute", "ellipsis"]
    )
    def test_dynamic_batch_and_time(self, pattern: str) -> None:
        model = nn.Sequential(Distribute(pattern, nn.Linear(4, 5)))
        dims = {0: torch.export.Dim("d0"), 1: torch.export.Dim("d1")}
        program = torch.export.export(model, (torch.randn(2, 3, 4),), dynamic_shapes=(dims,))
        x = torch.randn(5, 7, 4)
        torch.testing.assert_close(program.module()(x), model(x))


class TestTrace:
    def test_jit_trace_generalises_to_other_sizes(self) -> None:
        conv = nn.Conv2d(3, 4, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates jit.trace itself
            # The size checks read traced sizes; they hold for every input the trace is later called with.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(TimeDistributed(conv, True), torch.randn(2, 3, 3, 8, 8))
        x = torch.randn(4, 2, 3, 8, 8)
        torch.testing.assert_close(traced(x), conv(x.flatten(0, 1)).unflatten(0, (4, 2)))


class TestThreads:
    def test_shared_instance_under_threads(self) -> None:
        linear = nn.Linear(4, 2)
        wrapped = Distribute("... t c -> (... t) c", linear)
        shapes = [(2, 3, 4), (3, 4), (2, 2, 5, 4), (1, 1, 1, 1, 4), (5, 1, 4), (2, 6, 4), (7, 4), (2, 2, 2, 2, 2, 4)]
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(shapes))

        def run(shape: tuple[int, ...]) -> None:
            try:
                barrier.wait()
                for _ in range(20):
                    x = torch.randn(shape)
                    with torch.no_grad():
                        assert torch.allclose(wrapped(x), linear(x))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=run, args=(shape,)) for shape in shapes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
