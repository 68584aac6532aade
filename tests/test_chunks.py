"""chunk_size and checkpoint: the module runs on a slice of the folded rows at a time, and the result is the
result of one call; the BatchNorm guard refuses what would change meaning. Memory is measured with the CPU
profiler's allocation and free events, never with timings.
"""

from __future__ import annotations

import copy
import functools
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import CARRIERS, Recorder, assert_exact, loop_reference, message
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.profiler import ProfilerActivity, profile

import foldaxes
from foldaxes import Distribute, TimeDistributed


def peak_memory(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Runs ``fn`` under the CPU profiler; returns its result and the peak of the bytes it held at once.

    Allocations and frees are summed in time order; what ``fn`` returns is still allocated at the end.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted(
        (event.time_range.start, event.self_cpu_memory_usage)
        for event in prof.events()
        if event.self_cpu_memory_usage != 0
    )
    held = peak = 0
    for _, change in events:
        held += change
        peak = max(peak, held)
    return result, peak


def frame_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2))


@pytest.mark.usefixtures("float64")
class TestChunksMatchOneCall:
    @pytest.mark.parametrize("chunk_size", [1, 4, 5, 6, 7, 100], ids=lambda n: f"chunk-{n}")
    def test_conv_net_matches_the_loop(self, chunk_size: int) -> None:
        net = frame_net()
        x = torch.randn(2, 3, 3, 6, 6)
        y = Distribute("b t c h w -> (b t) c h w", net, chunk_size=chunk_size)(x)
        assert_exact(y, loop_reference(net, [x], [0, 1]))

    def test_module_sees_each_chunk_once(self) -> None:
        recorder = Recorder(nn.Linear(4, 2))
        Distribute("b t d -> (b t) d", recorder, chunk_size=4)(torch.randn(2, 5, 4))
        assert [tuple(x.shape) for x in recorder.inputs] == [(4, 4), (4, 4), (2, 4)]

    def test_chunks_are_views_of_the_input(self) -> None:
        recorder = Recorder(nn.Linear(4, 2))
        x = torch.randn(3, 4, 4)
        Distribute("b t d -> (b t) d", recorder, chunk_size=5)(x)
        assert [seen.untyped_storage().data_ptr() for seen in recorder.inputs] == [x.untyped_storage().data_ptr()] * 3

    def test_one_chunk_is_the_plain_call(self) -> None:
        recorder = Recorder(nn.Identity())
        x = torch.randn(2, 3, 4)
        y = Distribute("b t d -> (b t) d", recorder, chunk_size=6)(x)
        assert [tuple(seen.shape) for seen in recorder.inputs] == [(6, 4)] and y.data_ptr() == x.data_ptr()

    def test_several_operands_keyword_tensors_and_nested_outputs(self) -> None:
        def fn(a: torch.Tensor, b: torch.Tensor, *, scale: torch.Tensor, label: str) -> Any:
            return {"sum": a * scale + b.sum(-1, keepdim=True), "pair": (a.tanh(), label)}

        wrapped = Distribute(
            "b t x, t b y -> (b t) x, (b t) y", fn, chunk_size=4, fold_kwargs={"scale": "b t () -> (b t) ()"}
        )
        a, b, scale = torch.randn(2, 3, 4), torch.randn(3, 2, 5), torch.randn(2, 3, 1)
        y = wrapped(a, b, scale=scale, label="frames")
        assert y["pair"][1] == "frames"
        assert_exact(y["sum"], a * scale + b.transpose(0, 1).sum(-1, keepdim=True))
        assert_exact(y["pair"][0], a.tanh())

    def test_tensors_after_a_plain_value_are_filled_too(self) -> None:
        a = torch.randn(2, 3, 4)
        label, y = Distribute("b t x -> (b t) x", lambda z: ("label", z * 2), chunk_size=4)(a)
        assert label == "label"
        assert_exact(y, a * 2)

    def test_an_operand_that_folds_nothing_goes_whole_to_every_chunk(self) -> None:
        recorder = Recorder(lambda a, s: a * s.sum())
        a, s = torch.randn(2, 3, 4), torch.randn(2, 5)
        y = Distribute("b t x, b s -> (b t) x, b s", recorder, chunk_size=4)(a, s)
        assert_exact(y, a * s.sum())
        assert [tuple(args[1].shape) for args, _, _ in recorder.calls] == [(2, 5), (2, 5)]

    def test_time_major_lstm_output_at_dim_one(self) -> None:
        lstm = nn.LSTM(4, 3)
        x = torch.randn(2, 3, 5, 4)  # (b, v, t, d), folded to (t, b v, d): the rows are at dim 1
        wrapped = Distribute("b v t d -> t (b v) d", lstm, chunk_size=4)
        out, (h, c) = wrapped(x)
        expected_out, (expected_h, expected_c) = Distribute("b v t d -> t (b v) d", lstm)(x)
        assert_exact(out, expected_out)
        assert_exact(h, expected_h)
        assert_exact(c, expected_c)

    def test_time_distributed_and_decorator(self) -> None:
        linear = nn.Linear(4, 2)
        x = torch.randn(5, 3, 4)
        assert_exact(TimeDistributed(linear, chunk_size=2)(x), linear(x))

        @foldaxes.distribute("b t d -> (b t) d", chunk_size=3)
        def double(z: torch.Tensor) -> torch.Tensor:
            return z * 2

        assert_exact(double(x), x * 2)

    def test_channels_last_output_stays_channels_last(self) -> None:
        conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
        x = torch.randn(6, 3, 8, 8).contiguous(memory_format=torch.channels_last).unflatten(0, (2, 3))
        y = Distribute("b t c h w -> (b t) c h w", conv, chunk_size=4)(x)
        assert y.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
        assert_exact(y, conv(x.flatten(0, 1)).unflatten(0, (2, 3)))

    @pytest.mark.parametrize(
        ("shape", "lay_out", "check"),
        [
            ((6, 3, 2, 4, 4), lambda z: z.contiguous(memory_format=torch.channels_last_3d), torch.channels_last_3d),
            ((6, 3, 4, 5), lambda z: z.transpose(2, 3), torch.contiguous_format),  # neither layout: contiguous
            ((6, 3, 4, 5, 2), lambda z: z.transpose(3, 4), torch.contiguous_format),
            ((6, 3, 5), lambda z: z.transpose(1, 2), torch.contiguous_format),
        ],
        ids=["channels-last-3d", "transposed-4d", "transposed-5d", "transposed-3d"],
    )
    def test_outputs_are_assembled_in_the_layout_of_their_chunks(
        self, shape: tuple[int, ...], lay_out: Callable[[torch.Tensor], torch.Tensor], check: torch.memory_format
    ) -> None:
        x = torch.randn(*shape).unflatten(0, (2, 3))
        pattern = "b t ... -> (b t) ..."
        y = Distribute(pattern, lambda z: lay_out(z * 2), chunk_size=4)(x)
        assert y.flatten(0, 1).is_contiguous(memory_format=check)
        assert_exact(y, lay_out(x.flatten(0, 1) * 2).unflatten(0, (2, 3)))

    @given(
        batch=st.integers(0, 3),
        time=st.integers(0, 5),
        chunk_size=st.integers(1, 8),
        seed=st.integers(0, 2**16),
    )
    @settings(max_examples=60, deadline=None, derandomize=True)
    def test_any_chunking_matches_the_loop(self, batch: int, time: int, chunk_size: int, seed: int) -> None:
        torch.manual_seed(seed)
        linear = nn.Linear(3, 2)
        x = torch.randn(batch, time, 3)
        y = Distribute("b t d -> (b t) d", linear, chunk_size=chunk_size)(x)
        if batch * time:
            assert_exact(y, loop_reference(linear, [x], [0, 1]))
        assert y.shape == (batch, time, 2)


@pytest.mark.usefixtures("float64")
class TestCheckpoint:
    @pytest.mark.parametrize("chunk_size", [None, 2], ids=["whole", "chunked"])
    def test_gradients_match_the_unchecked_call(self, chunk_size: int | None) -> None:
        net = frame_net()
        x = torch.randn(2, 3, 3, 6, 6, requires_grad=True)
        Distribute("b t c h w -> (b t) c h w", net).forward(x).square().sum().backward()
        expected = [x.grad.clone(), *(p.grad.clone() for p in net.parameters())]
        x.grad = None
        net.zero_grad()
        wrapped = Distribute("b t c h w -> (b t) c h w", net, chunk_size=chunk_size, checkpoint=True)
        wrapped(x).square().sum().backward()
        for actual, wanted in zip([x.grad, *(p.grad for p in net.parameters())], expected, strict=True):
            assert_exact(actual, wanted)

    def test_gradcheck(self) -> None:
        linear = nn.Linear(3, 2)
        wrapped = Distribute("b t d -> (b t) d", linear, chunk_size=2, checkpoint=True)
        assert torch.autograd.gradcheck(wrapped, (torch.randn(2, 3, 3, requires_grad=True),))

    def test_recomputes_in_backward_only_when_training(self) -> None:
        # The recorder notes a call when it returns, and the recomputation stops as soon as the Linear has saved
        # its tensors, so the recorder sits in front of the Linear: it sees each chunk, recomputed or not.
        recorder = Recorder(nn.Identity())
        net = nn.Sequential(recorder, nn.Linear(3, 2))
        wrapped = Distribute("b t d -> (b t) d", net, chunk_size=3, checkpoint=True)
        x = torch.randn(2, 3, 3)
        with torch.no_grad():
            wrapped(x)
        assert len(recorder.calls) == 2
        wrapped(x).sum().backward()
        assert len(recorder.calls) == 2 + 2 + 2  # two chunks forward, two recomputed in backward

    def test_dropout_masks_are_replayed(self) -> None:
        net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
        x = torch.randn(2, 3, 4, requires_grad=True)
        torch.manual_seed(1)
        Distribute("b t d -> (b t) d", net, chunk_size=2).forward(x).sum().backward()
        expected = x.grad.clone()
        x.grad = None
        torch.manual_seed(1)
        Distribute("b t d -> (b t) d", net, chunk_size=2, checkpoint=True)(x).sum().backward()
        assert_exact(x.grad, expected)

    def test_keywords_reach_the_module(self) -> None:
        def fn(z: torch.Tensor, *, debug: bool, scale: torch.Tensor) -> torch.Tensor:
            assert debug is True
            return z * scale

        wrapped = Distribute("b t d -> (b t) d", fn, chunk_size=2, checkpoint=True)
        x, scale = torch.randn(2, 3, 4, requires_grad=True), torch.randn(4, requires_grad=True)
        wrapped(x, debug=True, scale=scale).sum().backward()
        assert_exact(x.grad, scale.detach().expand(2, 3, 4))
        assert_exact(scale.grad, x.detach().sum((0, 1)))

    def test_checkpoint_alone_works_with_out(self) -> None:
        conv = nn.Conv2d(3, 4, 3)
        wrapped = Distribute("b c t h w -> (b t) c h w", conv, out="(b t) c h w -> b c t h w", checkpoint=True)
        x = torch.randn(2, 3, 4, 6, 6, requires_grad=True)
        y = wrapped(x)
        y.sum().backward()
        assert y.shape == (2, 4, 4, 4, 4) and x.grad is not None


@pytest.mark.usefixtures("float64")  # float32 sums in another order differ by more than assert_close allows
class TestMemory:
    def test_chunked_inference_holds_less(self) -> None:
        net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        x = torch.randn(2, 8, 3, 32, 32)
        with torch.no_grad():
            dense, dense_peak = peak_memory(lambda: Distribute("b t c h w -> (b t) c h w", net)(x))
            chunked, chunked_peak = peak_memory(lambda: Distribute("b t c h w -> (b t) c h w", net, chunk_size=4)(x))
        torch.testing.assert_close(chunked, dense)
        output = dense.numel() * dense.element_size()
        # Unchunked, two activations of all 16 frames are alive at once; chunked, the output plus two of 4 frames.
        assert dense_peak >= 2 * output
        assert chunked_peak <= output + dense_peak // 4 + output // 8

    def test_checkpointed_training_holds_less(self) -> None:
        layers = [nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()]
        for _ in range(3):
            layers += [nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()]
        net = nn.Sequential(*layers)
        x = torch.randn(2, 8, 3, 32, 32)

        def step(wrapped: nn.Module) -> torch.Tensor:
            wrapped(x).sum().backward()
            return next(net.parameters()).grad.clone()

        dense_grad, dense_peak = peak_memory(lambda: step(Distribute("b t c h w -> (b t) c h w", net)))
        net.zero_grad()
        wrapped = Distribute("b t c h w -> (b t) c h w", net, chunk_size=2, checkpoint=True)
        chunked_grad, chunked_peak = peak_memory(lambda: step(wrapped))
        torch.testing.assert_close(chunked_grad, dense_grad)
        # Unchunked, backward needs the activations of all 16 frames (four ReLU outputs the size of the output);
        # checkpointed, it keeps the output and recomputes two frames at a time.
        output = x.shape[0] * x.shape[1] * 16 * 32 * 32 * x.element_size()
        assert dense_peak >= 4 * output
        assert chunked_peak < dense_peak / 2


class TestBatchStatisticsGuard:
    @pytest.mark.parametrize(
        "make",
        [
            lambda: nn.BatchNorm1d(4),
            lambda: nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.BatchNorm1d(4))),
            lambda: nn.SyncBatchNorm(4),
            lambda: nn.LazyBatchNorm1d(),
            lambda: nn.BatchNorm1d(4, track_running_stats=False).eval(),
        ],
        ids=["batchnorm", "nested", "sync", "lazy", "no-running-stats-in-eval"],
    )
    def test_chunking_refuses_batch_statistics(self, make: Callable[[], nn.Module]) -> None:
        wrapped = Distribute("b t d -> (b t) d", make(), chunk_size=2)
        text = message(lambda: wrapped(torch.randn(2, 3, 4)))
        assert "normalises with the statistics of the batch" in text
        assert "chunk_size=2 runs it on that many rows at a time" in text
        assert ".eval()" in text and "allow_batch_statistics=True" in text

    def test_time_distributed_refuses_them_too(self) -> None:
        wrapped = TimeDistributed(nn.BatchNorm1d(4), batch_first=True, chunk_size=2)
        assert "normalises with the statistics of the batch" in message(lambda: wrapped(torch.randn(2, 3, 4)))

    @pytest.mark.parametrize("carry", CARRIERS)
    @pytest.mark.parametrize("keywords", [{"chunk_size": 2}, {"checkpoint": True}], ids=["chunked", "checkpointed"])
    def test_sees_the_module_a_callable_carries(self, carry: Callable[[nn.Module], Any], keywords: Any) -> None:
        net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        wrapped = Distribute("b t d -> (b t) d", carry(net), **keywords)
        assert "BatchNorm1d at '1' (training mode)" in message(lambda: wrapped(torch.randn(2, 3, 4)))
        assert "BatchNorm1d at '1' (training mode)" in message(
            lambda: wrapped(torch.randn(2, 3, 4), fold_lengths=[3, 1])
        )

    def test_names_where_the_batchnorm_is(self) -> None:
        net = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.BatchNorm1d(4)))
        assert "BatchNorm1d at '1.1' (training mode)" in message(
            lambda: Distribute("b t d -> (b t) d", net, chunk_size=2)(torch.randn(2, 3, 4))
        )

    def test_eval_mode_is_per_row(self) -> None:
        norm = nn.BatchNorm1d(4)
        norm.running_mean.normal_()
        norm.eval()
        x = torch.randn(2, 3, 4)
        torch.testing.assert_close(
            Distribute("b t d -> (b t) d", norm, chunk_size=2)(x), norm(x.flatten(0, 1)).unflatten(0, (2, 3))
        )

    def test_switching_modes_is_seen_at_call_time(self) -> None:
        norm = nn.BatchNorm1d(4).eval()
        wrapped = Distribute("b t d -> (b t) d", norm, chunk_size=2)
        wrapped(torch.randn(2, 3, 4))
        wrapped.train()
        assert "training mode" in message(lambda: wrapped(torch.randn(2, 3, 4)))

    def test_opt_in_computes_statistics_per_chunk(self) -> None:
        norm = nn.BatchNorm1d(4, affine=False)
        x = torch.randn(2, 3, 4)
        y = Distribute("b t d -> (b t) d", norm, chunk_size=3, allow_batch_statistics=True)(x)
        rows = x.flatten(0, 1)
        expected = torch.cat([nn.functional.batch_norm(rows[i : i + 3], None, None, training=True) for i in (0, 3)])
        torch.testing.assert_close(y.flatten(0, 1), expected)
        assert int(norm.num_batches_tracked) == 2

    def test_checkpoint_refuses_batchnorm_only_with_gradients(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", nn.BatchNorm1d(4), checkpoint=True)
        with torch.no_grad():
            wrapped(torch.randn(2, 3, 4))
        assert "runs it a second time during the backward pass" in message(lambda: wrapped(torch.randn(2, 3, 4)))

    def test_plain_call_is_not_checked(self) -> None:
        norm = nn.BatchNorm1d(4)
        Distribute("b t d -> (b t) d", norm)(torch.randn(2, 3, 4))
        assert int(norm.num_batches_tracked) == 1


class TestChunkErrors:
    @pytest.mark.parametrize(
        ("keywords", "expected"),
        [
            ({"chunk_size": 0}, "chunk_size must be a positive int"),
            ({"chunk_size": -3}, "chunk_size must be a positive int"),
            ({"chunk_size": 2.5}, "chunk_size must be a positive int"),
            ({"chunk_size": True}, "chunk_size must be a positive int"),
            ({"checkpoint": None}, "checkpoint must be True or False"),
            ({"allow_batch_statistics": 2}, "allow_batch_statistics must be True or False"),
            ({"fill_value": "0"}, "fill_value must be a number"),
            ({"fill_value": None}, "fill_value must be a number"),
        ],
        ids=["zero", "negative", "float", "bool", "checkpoint", "allow", "fill-string", "fill-none"],
    )
    def test_bad_keywords(self, keywords: dict[str, Any], expected: str) -> None:
        assert expected in message(lambda: Distribute("b t d -> (b t) d", nn.Identity(), **keywords))
        assert expected in message(lambda: foldaxes.distribute("b t d -> (b t) d", **keywords))
        assert expected in message(lambda: TimeDistributed(nn.Identity(), **keywords))

    @pytest.mark.parametrize(
        ("pattern", "out", "expected"),
        [
            ("b t d -> (b t) d", "(b t) d -> b t d", "chunk_size cannot be used with out="),
            ("b t d -> t b d", None, "chunk_size cannot be used when the pattern folds no axes"),
        ],
        ids=["out", "nothing-folded"],
    )
    def test_chunking_needs_the_default_unfold(self, pattern: str, out: str | None, expected: str) -> None:
        assert expected in message(lambda: Distribute(pattern, nn.Identity(), out=out, chunk_size=2))

    def test_output_without_rows(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", lambda z: (z, z.mean()), chunk_size=4)
        text = message(lambda: wrapped(torch.randn(2, 3, 4)))
        assert "Output [1] cannot be put together" in text and "no such dim at dim 0" in text

    def test_outputs_that_differ_between_chunks(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", lambda z: z[:, : z.shape[0]], chunk_size=4)
        text = message(lambda: wrapped(torch.randn(2, 3, 8)))
        assert "The output cannot be put together" in text and "where (2, 4)" in text

    def test_structures_that_differ_between_chunks(self) -> None:
        wrapped = Distribute("b t d -> (b t) d", lambda z: (z,) * z.shape[0], chunk_size=4)
        assert "differently structured outputs for rows 4 to 5" in message(lambda: wrapped(torch.randn(2, 3, 8)))

    def test_operand_that_folds_other_axes(self) -> None:
        wrapped = Distribute("b t x, b y -> (b t) x, (b) y", lambda a, b: a, chunk_size=2)
        text = message(lambda: wrapped(torch.randn(2, 3, 4), torch.randn(2, 5)))
        assert "argument 1 folds other axes than the folded group (b t)" in text

    def test_module_errors_pass_through_unchanged(self) -> None:
        def broken(z: torch.Tensor) -> torch.Tensor:
            raise ValueError("the module's own words")

        with pytest.raises(ValueError) as info:
            Distribute("b t d -> (b t) d", broken, chunk_size=2, checkpoint=True)(torch.randn(2, 3, 4))
        assert info.value.args == ("the module's own words",)


class TestCompile:
    @pytest.mark.parametrize(
        "keywords", [{"chunk_size": 3}, {"chunk_size": 3, "checkpoint": True}], ids=["chunked", "checkpointed"]
    )
    def test_fullgraph(self, keywords: dict[str, Any]) -> None:
        torch._dynamo.reset()
        wrapped = Distribute("b t c h w -> (b t) c h w", nn.Conv2d(3, 4, 3), **keywords)
        x = torch.randn(2, 5, 3, 8, 8, requires_grad=True)
        compiled = torch.compile(wrapped, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(x), wrapped(x))


class TestWrapperPlumbing:
    def test_repr_factory_and_copies_keep_the_options(self) -> None:
        factory = Distribute("b t d -> (b t) d", chunk_size=2, checkpoint=True, fill_value=-1.0)
        wrapped = factory(nn.Linear(4, 2))
        assert "chunk_size=2, checkpoint=True, fill_value=-1.0" in repr(wrapped)
        assert "allow_batch_statistics" not in repr(wrapped)
        recorder = Recorder(nn.Linear(4, 2))
        for clone in (
            copy.deepcopy(Distribute("b t d -> (b t) d", recorder, chunk_size=4)),
            pickle.loads(pickle.dumps(Distribute("b t d -> (b t) d", recorder, chunk_size=4))),
        ):
            clone(torch.randn(2, 3, 4))
            assert [tuple(x.shape) for x in clone.module.inputs[-2:]] == [(4, 4), (2, 4)]
        assert bool((wrapped(torch.randn(2, 3, 4), fold_lengths=[1, 0])[1] == -1.0).all())


class TestCheckpointingAlone:
    def test_a_pattern_that_folds_nothing(self) -> None:
        calls: list[int] = []

        def square(z: torch.Tensor) -> torch.Tensor:
            calls.append(z.shape[0])
            return z * z

        x = torch.randn(2, 3, 4, requires_grad=True)
        y = Distribute("b t d -> b t d", square, checkpoint=True)(x)
        y.sum().backward()
        assert calls == [2, 2]  # the forward call and its recomputation in the backward pass
        assert_exact(x.grad, 2 * x.detach())

    def test_a_keyword_that_folds_other_axes(self) -> None:
        x, m = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 5)
        wrapped = Distribute(
            "b t d -> (b t) d", lambda a, m: a * m.sum(), fold_kwargs={"m": "b s -> (b s)"}, checkpoint=True
        )
        y = wrapped(x, m=m)
        assert_exact(y, x * m.sum())
        y.sum().backward()
        assert_exact(x.grad, m.sum().expand(2, 3, 4))

    @pytest.mark.parametrize("grad", [True, False], ids=["grad", "no-grad"])
    def test_chunks_run_once_unless_checkpointed(self, grad: bool) -> None:
        calls: list[int] = []

        def square(z: torch.Tensor) -> torch.Tensor:
            calls.append(z.shape[0])
            return z * z

        x = torch.randn(2, 3, 4, requires_grad=grad)
        with torch.set_grad_enabled(grad):
            y = Distribute("b t d -> (b t) d", square, chunk_size=4)(x)
        if grad:
            y.sum().backward()
        assert calls == [4, 2]  # two chunks, each once: no recomputation without checkpoint=True
        calls.clear()
        with torch.set_grad_enabled(grad):
            y = Distribute("b t d -> (b t) d", square, chunk_size=4, checkpoint=True)(x)
        if grad:
            y.sum().backward()
        assert sorted(calls) == ([2, 2, 4, 4] if grad else [2, 4])  # without gradients, nothing to recompute


def in_closures(fn: Callable[..., Any], times: int) -> Callable[..., Any]:
    """``fn`` called from ``times`` nested closures, each holding the one inside it."""
    for _ in range(times):
        fn = (lambda inner: lambda x: inner(x))(fn)
    return fn


class TestGuardsSeeEveryCarriedModule:
    @pytest.mark.parametrize(("times", "refused"), [(1, True), (4, True), (5, False)], ids=["1", "4", "5"])
    def test_modules_are_looked_for_four_wrappers_deep(self, times: int, refused: bool) -> None:
        wrapped = Distribute("b t d -> (b t) d", in_closures(nn.BatchNorm1d(4), times), chunk_size=2)
        if refused:
            assert "normalises with the statistics" in message(lambda: wrapped(torch.randn(2, 3, 4)))
        else:  # the documented depth: deeper wrappers are not searched
            assert wrapped(torch.randn(2, 3, 4)).shape == (2, 3, 4)

    def test_a_function_that_holds_itself(self) -> None:
        def recurse(x: torch.Tensor, depth: int = 0) -> torch.Tensor:
            return x if depth else recurse(x, 1)  # its closure holds recurse itself

        norm = nn.BatchNorm1d(4)
        wrapped = Distribute("b t d -> (b t) d", lambda x: norm(recurse(x)), chunk_size=2)
        assert "normalises with the statistics" in message(lambda: wrapped(torch.randn(2, 3, 4)))

    def test_a_batchnorm_in_the_second_module_a_partial_carries(self) -> None:
        def both(first: nn.Module, second: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return second(first(x))  # type: ignore[no-any-return]

        fn = functools.partial(both, nn.Linear(4, 4), nn.BatchNorm1d(4))
        text = message(lambda: Distribute("b t d -> (b t) d", fn, chunk_size=2)(torch.randn(2, 3, 4)))
        assert "BatchNorm1d" in text and "normalises with the statistics" in text
