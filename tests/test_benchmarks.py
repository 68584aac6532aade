"""The benchmark harness measures what it says: copies, peaks, graphs, compile counts; and it runs end to end.

Nothing here asserts a timing: timings are the benchmark's output, never a test's verdict.
"""

from __future__ import annotations

import statistics

import einops
import pytest
import torch
from torch import nn

import foldaxes
from benchmarks import __main__ as benchmarks_main
from benchmarks import _general, _workloads, gpu_check
from benchmarks._columns import CLASSIC, EINOPS, HAND_WRITTEN, TB_RECIPE, ClassicRecipe, Folds, torch_columns
from benchmarks._compiled import compile_count, functional_graph_ops
from benchmarks._harness import Footprint, Marked, Rounds, footprint, interleaved

FLOAT_BYTES = 4
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class TestFootprint:
    def test_a_view_copies_nothing(self) -> None:
        x = torch.randn(4, 8, 16)
        _, measured = footprint(lambda: Marked(nn.Identity())(x.flatten(0, 1)).unflatten(0, (4, 8)))
        assert (measured.copied_in, measured.copied_out) == (0, 0)

    def test_a_copy_before_the_module_counts_in(self) -> None:
        x = torch.randn(4, 8, 16).transpose(0, 1)
        _, measured = footprint(lambda: Marked(nn.Identity())(x.contiguous()))
        assert (measured.copied_in, measured.copied_out) == (x.numel() * FLOAT_BYTES, 0)

    def test_a_copy_after_the_module_counts_out(self) -> None:
        x = torch.randn(4, 8, 16)
        _, measured = footprint(lambda: Marked(nn.Identity())(x).transpose(0, 1).contiguous())
        assert (measured.copied_in, measured.copied_out) == (0, x.numel() * FLOAT_BYTES)

    def test_copies_inside_the_module_are_the_module_s_own(self) -> None:
        x = torch.randn(4, 8, 16).transpose(0, 1)
        _, measured = footprint(lambda: Marked(lambda t: t.contiguous())(x))
        assert measured.copied == 0

    def test_a_cat_counts_its_output(self) -> None:
        x = torch.randn(4, 8, 16)
        _, measured = footprint(lambda: Marked(nn.Identity())(einops.pack([x], "* c")[0]))
        assert measured.copied_in == x.numel() * FLOAT_BYTES

    def test_the_peak_sees_a_temporary(self) -> None:
        size = 1 << 18

        def allocate_and_drop() -> int:
            return int(torch.ones(size).sum())

        _, measured = footprint(allocate_and_drop)
        assert measured.peak >= size * FLOAT_BYTES


class TestRounds:
    def test_ratio_is_the_median_of_same_round_ratios(self) -> None:
        assert Rounds((1.0, 4.0, 9.0)).ratio_to(Rounds((1.0, 2.0, 3.0))) == 2.0

    def test_spread_is_the_interquartile_range_over_the_median(self) -> None:
        assert Rounds((5.0, 1.0, 3.0, 2.0, 4.0)).spread == 2.0 / 3.0

    def test_paired_ratios_divide_by_the_neighbouring_timing(self) -> None:
        baseline = Rounds((1.0, 1.0, 1.0, 1.0))
        slow, fast = Rounds((4.0, 8.0), paired=(2.0, 4.0)), Rounds((1.0, 4.0), paired=(1.0, 8.0))
        assert slow.ratio_to(baseline) == 2.0
        assert baseline.ratio_to(slow) == 0.5
        assert slow.ratio_to(fast) == statistics.median([2.0 / 1.0, 2.0 / 0.5])

    def test_paired_timing_times_the_partner_before_every_other_call(self) -> None:
        order: list[str] = []
        calls = {name: (lambda name=name: order.append(name)) for name in ("base", "a", "b")}
        measured = interleaved(calls, rounds=2, min_run_time=0.001, paired_with="base")
        assert len(measured["base"].times) == 4
        assert measured["a"].paired is not None and len(measured["a"].paired) == 2
        assert measured["base"].paired is None
        runs = [name for index, name in enumerate(order) if index == 0 or order[index - 1] != name]
        assert runs.count("base") == 4
        assert all(runs[index - 1] == "base" for index, name in enumerate(runs) if name != "base")

    def test_interleaved_times_every_call_every_round(self) -> None:
        calls = {"a": lambda: None, "b": lambda: None}
        measured = interleaved(calls, rounds=3, min_run_time=0.001)
        assert set(measured) == {"a", "b"}
        assert all(len(rounds.times) == 3 and min(rounds.times) > 0 for rounds in measured.values())


class TestColumns:
    @pytest.mark.parametrize(
        ("shape", "folds"),
        [
            pytest.param((2, 3, 4, 5, 6), Folds("b t c h w -> (b t) c h w"), id="batch-major"),
            pytest.param((3, 2, 4, 5, 6), Folds("t b c h w -> (t b) c h w", time_major=True), id="time-major"),
        ],
    )
    def test_every_column_computes_the_same(self, shape: tuple[int, ...], folds: Folds) -> None:
        conv = nn.Conv2d(4, 2, 3, padding=1).double()
        x = torch.randn(*shape, dtype=torch.float64)
        folded = einops.rearrange(x, "a b ... -> (a b) ...")
        expected = einops.rearrange(conv(folded), "(a b) ... -> a b ...", a=shape[0])
        for name, column in torch_columns(conv, folds).items():
            torch.testing.assert_close(column(x), expected, rtol=1e-12, atol=1e-12, msg=name)


# D2 and E2 at a small scale: each input is a (B, T) view of time-major storage.
TIME_MAJOR = {workload.key: workload for workload in _workloads.workloads(scale=8) if workload.key[:2] in ("D2", "E2")}


class TestTimeMajorStorage:
    @pytest.mark.parametrize("workload", TIME_MAJOR.values(), ids=TIME_MAJOR.keys())
    def test_every_column_computes_what_the_hand_written_fold_does(self, workload: _workloads.Workload) -> None:
        torch.manual_seed(0)
        x, module = workload.make_input().double(), workload.make_module().double()
        assert x.stride(1) == x.shape[0] * x.stride(0)  # time-major: one step in t skips the whole batch
        columns = _workloads.torch_columns(module, workload)
        assert list(columns) == list(workload.columns or ())
        with torch.no_grad():
            expected = module(x.flatten(0, 1)).unflatten(0, x.shape[:2])
            for name, column in columns.items():
                torch.testing.assert_close(column(x), expected, rtol=1e-12, atol=1e-12, msg=f"{workload.key}: {name}")

    @pytest.mark.parametrize("key", ["E2-Conv", "E2-Linear"])
    def test_the_t_b_recipe_copies_nothing_where_the_hand_written_fold_copies_the_input(self, key: str) -> None:
        workload = TIME_MAJOR[key]
        x = workload.make_input()
        columns = _workloads.torch_columns(Marked(workload.make_module()), workload)
        with torch.no_grad():
            _, recipe = footprint(lambda: columns[TB_RECIPE](x))
            _, by_hand = footprint(lambda: columns[HAND_WRITTEN](x))
        assert (recipe.copied_in, recipe.copied_out) == (0, 0)
        assert (by_hand.copied_in, by_hand.copied_out) == (x.numel() * FLOAT_BYTES, 0)

    def test_d2_distribute_gives_the_module_channels_last_and_keeps_it(self) -> None:
        workload = TIME_MAJOR["D2"]
        x = workload.make_input()
        watched = _workloads.Watched(workload.make_module())
        columns = _workloads.torch_columns(watched, workload)
        with torch.no_grad():
            y = columns["Distribute"](x)
            given_by_distribute = watched.seen
            columns[HAND_WRITTEN](x)
            given_by_hand = watched.seen
        assert given_by_distribute == (True, True)
        assert y.stride(2) == 1  # channels innermost in the unfolded output too
        assert given_by_hand[0] is False  # flatten's copy is contiguous: the watch tells the two apart

    @pytest.mark.parametrize(
        ("distribute", "given", "verdicts"),
        [
            pytest.param((0.9, 1.0, 1.1), (True, True), (True, True), id="as-fast-as-einops"),
            pytest.param((0.9, 1.01, 1.1), (True, True), (False, True), id="slower-than-einops"),
            pytest.param((0.9, 1.0, 1.1), (False, True), (True, False), id="given-a-contiguous-batch"),
        ],
    )
    def test_d2_targets(
        self, distribute: tuple[float, ...], given: tuple[bool, bool], verdicts: tuple[bool, bool]
    ) -> None:
        workload = TIME_MAJOR["D2"]
        same = Rounds((1.0, 1.0, 1.0))
        result = _workloads.Result(
            workload,
            {HAND_WRITTEN: same, "Distribute": Rounds(distribute), CLASSIC: same, EINOPS: same},
            {"Distribute": Footprint(1, 0, 1)},
            {"Distribute": True},
            {"Distribute": given},
        )
        names = ("D2: Distribute <= 1.00x einops rearrange", "D2: Distribute keeps channels_last")
        assert _workloads.targets(result) == list(zip(names, verdicts, strict=True))


class TestCompiled:
    def test_the_classic_recipe_clones_a_strided_input_and_distribute_does_not(self) -> None:
        conv = nn.Conv2d(3, 4, 3)
        x = torch.randn(2, 3, 3, 8, 16)[..., ::2]
        with torch.no_grad():
            classic = functional_graph_ops(ClassicRecipe(conv), x)
            hand = functional_graph_ops(lambda t: conv(t.flatten(0, 1)).unflatten(0, t.shape[:2]), x)
            wrapped = functional_graph_ops(foldaxes.Distribute("b t c h w -> (b t) c h w", conv), x)
        assert "aten.clone.default" in classic
        assert "aten.clone.default" not in hand
        assert wrapped == hand

    def test_compile_count_counts_recompiles(self) -> None:
        wrapped = foldaxes.distribute("b t c -> (b t) c", lambda t: t * 2)
        float32, float64 = torch.randn(2, 3, 4), torch.randn(2, 3, 4, dtype=torch.float64)
        compile_count(wrapped, [float32])  # a process's first dynamic=True compile may build its graph twice
        once = compile_count(wrapped, [float32, float32])
        with_a_new_dtype = compile_count(wrapped, [float32, float32, float64])
        assert with_a_new_dtype == once + 1


class FastaiLike(nn.Module):
    """fastai's ``TimeDistributed`` as documented: ``view`` every input, then a tensor or a flat tuple out."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *tensors: torch.Tensor) -> object:
        first, second = tensors[0].shape[:2]
        out = self.module(*[x.view(first * second, *x.shape[2:]) for x in tensors])
        if isinstance(out, tuple):
            return tuple(o.view(first, second, *o.shape[1:]) for o in out)
        return out.view(first, second, *out.shape[1:])


# vmap has no batching rule for aten::lstm: the benchmark reports the column as failing.
GENERAL_FAILS = {("J", _general.VMAP): "Batching rule not implemented"}


class TestGeneral:
    @pytest.mark.parametrize("case", _general.CASES, ids=lambda case: case.key)
    def test_every_column_computes_what_the_hand_written_wrapper_does(self, case: _general.Case) -> None:
        built = case.build(torch.float64)
        with torch.no_grad():
            expected = built.columns[_general.THINNEST](*built.inputs)
            for name, column in built.columns.items():
                if (case.key, name) in GENERAL_FAILS:
                    with pytest.raises(RuntimeError, match=GENERAL_FAILS[case.key, name]):
                        column(*built.inputs)
                    continue
                actual = column(*built.inputs)
                torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12, msg=f"{case.key}: {name}")

    def test_the_hand_written_lstm_keeps_each_clip_s_states_at_its_place(self) -> None:
        built = _general.lstm(torch.float64)
        wrapper, (x,) = built.columns[_general.THINNEST], built.inputs
        with torch.no_grad():
            out, (h, c) = wrapper(x)
            alone, (h_alone, c_alone) = wrapper.m(x[1, 2:3])
        torch.testing.assert_close((out[1, 2], h[:, 1, 2], c[:, 1, 2]), (alone[0], h_alone[:, 0], c_alone[:, 0]))

    @pytest.mark.parametrize(
        ("case", "applies"),
        [pytest.param(case, case.key in "IL", id=case.key) for case in _general.CASES],
    )
    def test_fastai_runs_flat_outputs_and_is_not_applicable_to_nested_ones(
        self, monkeypatch: pytest.MonkeyPatch, case: _general.Case, applies: bool
    ) -> None:
        monkeypatch.setattr(_general, "fastai_time_distributed", lambda: FastaiLike)
        built = case.build(torch.float64)
        assert (_general.FASTAI in built.columns, _general.FASTAI in built.unavailable) == (applies, not applies)
        if applies:
            with torch.no_grad():
                expected = built.columns[_general.THINNEST](*built.inputs)
                torch.testing.assert_close(built.columns[_general.FASTAI](*built.inputs), expected)


class TestEndToEnd:
    @pytest.mark.slow  # a whole benchmark run, about 3 s
    def test_a_small_run_prints_targets_and_summary(self, capsys: pytest.CaptureFixture[str]) -> None:
        argv = ["--only", "A-Linear,B,H", "--scale", "8", "--rounds", "2", "--seconds", "0.001", "--no-write"]
        assert benchmarks_main.main([*argv, "--no-keras"]) == 0
        printed = capsys.readouterr().out
        assert "| A-Linear: Distribute <= 1.05x thinnest module |" in printed
        assert "| B: Distribute copies 0 bytes | PASS |" in printed
        assert "| column | A-Linear | B |" in printed

    @pytest.mark.slow  # three small workloads, about 3 s
    def test_the_time_major_workloads_print_their_tables_and_targets(self, capsys: pytest.CaptureFixture[str]) -> None:
        argv = ["--only", "E2,D2", "--scale", "8", "--rounds", "2", "--seconds", "0.001", "--no-write", "--no-keras"]
        assert benchmarks_main.main(argv) == 0
        printed = capsys.readouterr().out
        assert "**B**" not in printed and "**D**" not in printed and "**E**" not in printed
        assert "| column | D2 | E2-Conv | E2-Linear |" in printed
        assert "| module's channels_last in / out | channels_last kept |" in printed
        assert "| (t b) recipe | n/a |" in printed
        assert "| E2-Conv: (t b) recipe <= 0.92x Distribute |" in printed
        assert "| D2: Distribute <= 1.00x einops rearrange |" in printed
        for key in ("E2-Conv", "E2-Linear"):
            assert f"| {key}: (t b) recipe copies 0 bytes | PASS |" in printed
        assert "| D2: Distribute keeps channels_last | PASS |" in printed

    @pytest.mark.slow  # compiles an LSTM twice, about 3 s
    def test_a_general_workload_prints_its_table_targets_and_summary(self, capsys: pytest.CaptureFixture[str]) -> None:
        argv = ["--only", "J", "--rounds", "2", "--seconds", "0.001", "--no-write", "--no-keras"]
        assert benchmarks_main.main(argv) == 0
        printed = capsys.readouterr().out
        assert "| J: Distribute <= 1.10x thinnest hand-written |" in printed
        assert "| J: Distribute compiles to the hand-written wrapper's ops |" in printed
        assert "| column | J |" in printed
        assert "| torch.func.vmap | fails |" in printed

    @pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
    def test_gpu_check_says_it_has_nothing_to_check_without_cuda(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert gpu_check.main([]) == 0
        assert "no CUDA device" in capsys.readouterr().out


@pytest.mark.cuda
@cuda
class TestCuda:
    def test_folds_allocate_nothing(self) -> None:
        assert gpu_check.check_zero_copy() == 0

    def test_cuda_graph_replays_a_wrapped_conv(self) -> None:
        assert gpu_check.check_cuda_graph() < 1e-5

    def test_compiled_wrapped_conv_matches_eager(self) -> None:
        assert gpu_check.check_compile() < 1e-4

    def test_timing_table_has_a_row_per_workload_and_dtype(self) -> None:
        assert len(gpu_check.timing_table(repeats=5)) == 2 + 2 * len(gpu_check.WORKLOADS)
