"""``python -m benchmarks``: foldaxes beside every other way of folding (batch, time), in one process.

Runs the eager workloads A to F, D2 and E2, the compiled workload G, the construction workload H, the general
call path I to L (several tensors, nested outputs, out=), the NumPy round trip N and the ragged-input workload R,
prints a table per workload and the targets with PASS or FAIL, prints the summary tables last, and writes the same
to docs/benchmarks.md with a bar chart of the eager workloads (docs/benchmarks.png, when matplotlib is installed).
Nothing here decides CI: the exit status is 0 unless ``--check`` is given and a target fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from . import _arrays, _compiled, _construction, _general, _ragged, _report, _workloads

DOCS = Path(__file__).resolve().parent.parent / "docs"
GPU_SECTION = """## On a GPU

Not measured on a GPU yet. `python benchmarks/gpu_check.py` on a CUDA machine checks zero copy, CUDA-graph
capture and torch.compile, and times workloads B and F in bfloat16 and float32 with CUDA events; its table goes
here, with the card and the date, once it has run."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller time budget: under 2 minutes in all")
    parser.add_argument(
        "--budget", type=float, help="seconds of timing per workload (default 12, quick 2; I to L take half each)"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds per workload (default: what fits the budget)")
    parser.add_argument("--seconds", type=float, default=0.02, help="minimum run time of a column per round")
    parser.add_argument("--only", help="comma-separated workload keys, e.g. A-Linear,B,G,H,I,R (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier medians)")
    parser.add_argument("--scale", type=int, default=1, help="divide the image sizes by this, for smoke runs")
    parser.add_argument("--no-keras", action="store_true", help="leave Keras out even when it is installed")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md as it is")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target fails")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    rounds, seconds = args.rounds, args.seconds
    budget = args.budget or (2.0 if args.quick else 12.0)
    only = set(args.only.split(",")) if args.only else None

    def wanted(key: str) -> bool:
        return only is None or key in only or key.split("-")[0] in only

    started = time.perf_counter()
    sections, checks, results = [], [], []
    for workload in _workloads.workloads(args.scale):
        if not wanted(workload.key):
            continue
        _progress(f"{workload.key}: {workload.title}", started)
        result = _workloads.run(workload, rounds, seconds, budget, keras=not args.no_keras)
        results.append(result)
        sections += [*_report.details(result), ""]
        checks += _workloads.targets(result)
    compiled = None
    if wanted("G"):
        _progress("G: workload B under torch.compile (inductor)", started)
        compiled = _compiled.run(rounds, seconds, budget, side=64 // args.scale)
        sections += ["**G**: workload B under torch.compile", "", *_report.compiled_details(compiled), ""]
        checks += _compiled.targets(compiled)
    if wanted("H"):
        _progress("H: building a Distribute and its first call", started)
        construction = _construction.run(repeats=100 if args.quick else 400)
        sections += ["**H**: construction and first call", "", *_report.construction_details(construction), ""]
        checks += _construction.targets(construction)
    general = []
    for case in _general.CASES:
        if not wanted(case.key):
            continue
        _progress(f"{case.key}: {case.title}", started)
        # Four small workloads: half the budget each keeps them to about two workloads' time in all.
        outcome = _general.run(case, rounds, seconds, budget / 2)
        general.append(outcome)
        sections += [*_report.general_details(outcome), ""]
        checks += _general.targets(outcome)
    if wanted("N"):
        _progress("N: NumPy, a fold and unfold round trip", started)
        array_lines, array_checks = _arrays.run(rounds, seconds, budget)
        sections += array_lines
        checks += array_checks
    if wanted("R"):
        _progress("R: ragged, padded, long and repeated inputs", started)
        ragged_lines, ragged_checks = _ragged.run(args.quick)
        sections += ragged_lines
        checks += ragged_checks

    header = _report.environment(torch.get_num_threads())
    summary = _report.summary(results, compiled) if results or compiled else []
    general_summary = _report.general_summary(general) if general else []
    targets = _report.target_lines(checks)
    summaries = [*summary, *([""] if summary and general_summary else []), *general_summary]
    print("\n".join(["", *sections, "Targets", "", *targets, "", header, "", *summaries]))
    if not args.no_write and only is None and args.scale == 1:
        drawn = _report.chart(results, DOCS / "benchmarks.png")
        page = _page(header, summary, general_summary, sections, targets, drawn, args.quick)
        (DOCS / "benchmarks.md").write_text(page)
        _progress(f"wrote {DOCS / 'benchmarks.md'}", started)
    failed = [name for name, ok in checks if not ok]
    return 1 if args.check and failed else 0


def _progress(message: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)


def _page(
    header: str,
    summary: list[str],
    general_summary: list[str],
    sections: list[str],
    targets: list[str],
    chart: bool,
    quick: bool,
) -> str:
    mode = "`python -m benchmarks --quick`" if quick else "`python -m benchmarks`"
    parts = [
        "# Benchmarks",
        "",
        "foldaxes beside every other way of running a module over (batch, time), measured in one process with",
        "interleaved rounds (`torch.utils.benchmark`, blocked autorange, medians). Ratios are to the hand-written",
        "fold `m(x.flatten(0, 1)).unflatten(0, x.shape[:2])`: the median over rounds of the column's time divided",
        "by the hand-written fold's time in the same round. Rounds are many and short (as many as fit in a time",
        "budget per workload), so that the columns of a round see the same machine; where one call takes over",
        "a millisecond (workloads B to F, D2, E2-Conv), the hand-written fold is timed again right before every",
        "other column, and each ratio uses that neighbouring timing, as does a ratio between two other columns.",
        "*Spread* is the interquartile range of a column's rounds over their median.",
        "*Copied in / out* counts the bytes written by `aten::copy_` and `aten::cat` outside the module call, before",
        "and after it; *peak memory* is the most bytes held at once during one call (CPU profiler memory events).",
        "",
        "D2 and E2 fold a (B, T) view of time-major storage (`buffer.unflatten(0, (T, B)).transpose(0, 1)`) as",
        "`(b t)`, which needs a copy: the hand-written fold and Distribute copy once, Distribute laying the copy",
        "out as each frame is (D2's channels_last frames give the module a channels_last batch). The *(t b)",
        "recipe* folds in storage order instead, a view in and a permuted view out:",
        "`Distribute('b t ... -> (t b) ...', m, out='(t b) ... -> b t ...')`.",
        "",
        f"This page is written by {mode}; run it to measure your own machine.",
        "",
        f"Measured on {header}",
        "",
        "## Ratio to the hand-written fold",
        "",
        *summary,
        "",
        _report.KERAS_NOTE,
        "",
    ]
    if chart:
        parts += ["![Ratio to the hand-written fold, per workload](benchmarks.png)", ""]
    parts += [
        "## Several tensors, nested outputs, out=: ratio to the thinnest hand-written wrapper",
        "",
        "Workloads I to L run foldaxes' general call path: several tensors folded at once, tuple, nested tuple",
        "and dict outputs, and an `out=` structure. Their reference is the thinnest hand-written wrapper that",
        "does the same fold, call and unfold by hand (`flatten(0, 1)` of each input, `unflatten` of each output",
        "leaf), an `nn.Module` for I and J and a plain function for K and L. *fails*: the peer raises on the case;",
        "*n/a*: the peer cannot express it (fastai's TimeDistributed unfolds a tensor or a flat tuple only).",
        "",
        *general_summary,
        "",
        "## Targets",
        "",
        *targets,
        "",
        "## Each workload",
        "",
        *sections,
        GPU_SECTION,
        "",
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
