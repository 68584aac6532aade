"""Markdown tables, the bar chart and docs/benchmarks.md, from the results of one run."""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import os
import platform
from collections.abc import Sequence
from pathlib import Path

from ._columns import HAND_WRITTEN, KERAS, KERAS_FOLDED
from ._compiled import CompiledResult
from ._construction import ConstructionResult
from ._general import THINNEST, GeneralResult
from ._workloads import Result

Check = tuple[str, bool]
KERAS_NOTE = (
    f"{KERAS}: ratio to the same Keras layer called on a hand-folded input, since Keras runs its own "
    "implementation of the layer."
)


def environment(threads: int) -> str:
    """The machine, the versions and the date, for the page's header."""
    versions = ", ".join(f"{name} {_version(name)}" for name in ("torch", "einops", "foldaxes", "keras", "fastai"))
    return (
        f"{datetime.date.today().isoformat()}; {platform.machine()} {platform.processor() or ''} "
        f"with {os.cpu_count()} CPU cores, {threads} torch thread{'s' if threads > 1 else ''}; "
        f"Python {platform.python_version()}; {versions}."
    ).replace("  ", " ")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def summary(results: Sequence[Result], compiled: CompiledResult | None) -> list[str]:
    """One row per column, one column per workload: the ratio to the hand-written fold."""
    keys = [result.workload.key for result in results] + (["G (compiled)"] if compiled else [])
    columns = list(dict.fromkeys(name for result in results for name in result.rounds if name != KERAS_FOLDED))
    lines = ["| column | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for column in columns:
        cells = [f"{result.ratio(column):.2f}x" if column in result.rounds else "n/a" for result in results]
        if compiled:
            cells.append(_compiled_cell(compiled, column))
        lines.append(f"| {column} | " + " | ".join(cells) + " |")
    return lines


def _compiled_cell(compiled: CompiledResult, column: str) -> str:
    if column in compiled.rounds:
        return f"{compiled.ratio(column):.2f}x"
    return "fails" if column in compiled.graphs else "n/a"


def details(result: Result) -> list[str]:
    """Every measure of one workload, column by column."""
    unit, scale = ("us", 1e6) if result.rounds[HAND_WRITTEN].median < 1e-3 else ("ms", 1e3)
    layout = result.workload.keeps_channels_last
    header = f"| column | median {unit} | x {HAND_WRITTEN} | spread | copied in / out | peak memory |"
    lines = [
        f"**{result.workload.key}**: {result.workload.title}",
        "",
        header + (" module's channels_last in / out | channels_last kept |" if layout else ""),
        "|---" * (6 + 2 * layout) + "|",
    ]
    for column, rounds in result.rounds.items():
        footprint = result.footprints.get(column)
        copied = f"{_bytes(footprint.copied_in)} / {_bytes(footprint.copied_out)}" if footprint else "n/a"
        peak = _bytes(footprint.peak) if footprint else "n/a"
        ratio = result.ratio(column)
        row = f"| {column} | {rounds.median * scale:.1f} | {ratio:.2f} | {rounds.spread:.0%} | {copied} | {peak} |"
        if layout:
            given, returned = result.module_channels_last.get(column, (False, False))
            row += f" {_yes(given)} / {_yes(returned)} | {_yes(result.channels_last.get(column, False))} |"
        lines.append(row)
    return lines


def general_summary(results: Sequence[GeneralResult]) -> list[str]:
    """One row per column, one column per workload of I to L: the ratio to the thinnest hand-written wrapper.

    foldaxes' row joins ``Distribute`` and ``distribute``, each named with the workloads it ran.
    """
    keys = [result.case.key for result in results]
    by_name: dict[str, list[str]] = {}
    for result in results:
        by_name.setdefault(result.case.foldaxes_name, []).append(result.case.key)
    foldaxes_row = " / ".join(f"{name} ({', '.join(names)})" for name, names in by_name.items())
    peers = [
        name
        for name in dict.fromkeys(name for result in results for name in (*result.rounds, *result.unavailable))
        if name != THINNEST and name not in by_name
    ]
    lines = ["| column | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in (THINNEST, foldaxes_row, *peers):
        cells = [_general_cell(result, result.case.foldaxes_name if row == foldaxes_row else row) for result in results]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _general_cell(result: GeneralResult, column: str) -> str:
    if column in result.rounds:
        return f"{result.ratio(column):.2f}x"
    return "fails" if result.unavailable.get(column, "").startswith("fails") else "n/a"


def general_details(result: GeneralResult) -> list[str]:
    """Each column's median, ratio and spread; the peers that could not run; for I and J, the compiled graphs."""
    case = result.case
    unit, scale = ("us", 1e6) if result.rounds[THINNEST].median < 1e-3 else ("ms", 1e3)
    lines = [
        f"**{case.key}**: {case.title}",
        "",
        f"| column | median {unit} | x {THINNEST} | spread |",
        "|---|---|---|---|",
    ]
    for column, rounds in result.rounds.items():
        lines.append(f"| {column} | {rounds.median * scale:.1f} | {result.ratio(column):.2f} | {rounds.spread:.0%} |")
    lines += [f"| {column} | {why} | | |" for column, why in result.unavailable.items()]
    if result.graphs:
        lines += ["", _graphs_sentence(result)]
    return lines


def _graphs_sentence(result: GeneralResult) -> str:
    """Compares foldaxes' compiled graph with the hand-written wrapper's, in one sentence."""
    name = result.case.foldaxes_name
    reference, graph = result.graphs[THINNEST], result.graphs[name]
    if isinstance(reference, str):
        return f"Under torch.compile(fullgraph=True) the hand-written wrapper fails to compile: `{reference}`."
    start = f"Compiled with fullgraph=True, the hand-written wrapper's graph has {len(reference)} ATen ops"
    if isinstance(graph, str):
        return f"{start}; {name} fails to compile: `{graph}`."
    if graph == reference:
        return f"{start}; {name}'s has the same {len(graph)}."
    first = next(i for i, (a, b) in enumerate(zip([*reference, None], [*graph, None], strict=False)) if a != b)
    shown = [", ".join(ops[first : first + 3]) or "nothing" for ops in (graph, reference)]
    return f"{start}; {name}'s has {len(graph)}, from op {first + 1} on `{shown[0]}` where it has `{shown[1]}`."


def compiled_details(result: CompiledResult) -> list[str]:
    """The functional graph of each column, its compiled time and its dynamic compile count."""
    lines = [
        "| column | ATen graph, contiguous input | ATen graph, inner crop | x compiled hand-written "
        "| dynamic compiles |",
        "|---|---|---|---|---|",
    ]
    for column, graphs in result.graphs.items():
        if isinstance(graphs, str):
            lines.append(f"| {column} | fails to compile with fullgraph=True: `{graphs}` | | | |")
            continue
        ratio = f"{result.ratio(column):.2f}" if column in result.rounds else "n/a"
        lines.append(
            f"| {column} | {', '.join(graphs['contiguous'])} | {', '.join(graphs['inner crop'])} | {ratio} | "
            f"{result.dynamic_compiles.get(column, 'n/a')} |"
        )
    return lines


def construction_details(result: ConstructionResult) -> list[str]:
    return [
        "| measure | us (best of 5 blocks' medians) |",
        "|---|---|",
        f"| build a Distribute, new pattern text | {result.build_new_pattern * 1e6:.1f} |",
        f"| build a Distribute, pattern seen before | {result.build_cached_pattern * 1e6:.1f} |",
        f"| first call at a new shape, beyond the steady call | {result.first_call_extra * 1e6:.1f} |",
        f"| steady call (Linear(16, 16), x (2, 4, 16)) | {result.steady_call * 1e6:.1f} |",
    ]


def target_lines(checks: Sequence[Check]) -> list[str]:
    return ["| target | result |", "|---|---|"] + [f"| {name} | {'PASS' if ok else 'FAIL'} |" for name, ok in checks]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _bytes(count: int) -> str:
    if count == 0:
        return "0"
    if count < 1 << 20:
        return f"{count / 1024:.1f} KiB"
    return f"{count / (1 << 20):.1f} MiB"


def chart(results: Sequence[Result], path: Path) -> bool:
    """Draws the ratios to the hand-written fold as grouped bars; returns False when matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    columns = list(dict.fromkeys(n for r in results for n in r.rounds if n not in (HAND_WRITTEN, KERAS_FOLDED)))
    figure, axes = pyplot.subplots(figsize=(12, 4.5))
    width = 0.8 / len(columns)
    for index, column in enumerate(columns):
        positions = [i + (index - len(columns) / 2) * width for i, r in enumerate(results) if column in r.rounds]
        ratios = [r.ratio(column) for r in results if column in r.rounds]
        axes.bar(positions, ratios, width, label=column)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_yscale("log")
    axes.set_xticks(range(len(results)), [r.workload.key for r in results])
    axes.set_ylabel("time / hand-written fold (log)")
    axes.legend(fontsize=7, ncols=3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return True
