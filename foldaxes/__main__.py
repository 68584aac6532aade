"""Command line entry point: ``python -m foldaxes COMMAND``.

Commands:
    demo: Train a small multi-view video classifier for one step on synthetic data, check the folded encoder
        against a per-frame loop, and count what its fold copies beside the classic ``.contiguous().view`` recipe.
    explain: Fold an example tensor of a given shape and layout (allocating nothing) and say whether the fold
        is a view or a copy, which strides decide it, and how an output unfolds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from foldaxes._demo import run_demo
from foldaxes._errors import FoldError
from foldaxes._explain import explain_layout

__all__ = ["main"]

USAGE_ERROR = 2
"""The exit status for a bad command line or an input that does not fit the pattern, as argparse uses."""


def _demo(args: argparse.Namespace) -> int:
    seed: int = args.seed
    return run_demo(seed=seed)


def _explain(args: argparse.Namespace) -> int:
    lengths: dict[str, int] = {}
    for name, length in (pair for group in args.lengths for pair in group):
        if lengths.setdefault(name, length) != length:
            print(f"error: axis '{name}' is given two lengths, {lengths[name]} and {length}", file=sys.stderr)
            return USAGE_ERROR
    # Messages name the input as the command line gave it, not as fold's "argument 0".
    label = "--shape " + ",".join(str(size) for size in args.shape)
    try:
        report = explain_layout(
            args.pattern, args.shape, args.strides, args.channels_last, args.time_major, lengths, label=label
        )
    except FoldError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    print(report)
    return 0


def _sizes(text: str) -> list[int]:
    """``"2,8,3,224,224"`` (commas, spaces or both) as a list of ints, for ``--shape`` and ``--strides``."""
    parts = text.replace(",", " ").split()
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if not sizes or any(size < 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"expected non-negative ints such as 2,8,3,224,224, not {text!r}")
    return sizes


def _lengths(text: str) -> list[tuple[str, int]]:
    """``"v=2"`` or ``"t=4,v=2"`` as ``(name, length)`` pairs, for ``--lengths``."""
    pairs = []
    for part in filter(None, text.split(",")):
        name, equals, value = part.partition("=")
        if not (equals and name.strip().isidentifier() and value.strip().isdigit()):
            raise argparse.ArgumentTypeError(f"expected NAME=LENGTH such as v=2, not {text!r}")
        pairs.append((name.strip(), int(value)))
    return pairs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m foldaxes",
        description="Fold named axes into the batch, run a module once, unfold every output.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="run a self-checking walkthrough on synthetic data",
        description=(
            "Wrap a per-frame CNN with Distribute over (batch, time, views), run one training step of a "
            "video classifier, check it against a per-frame loop, and count the bytes its fold copies beside "
            "the classic .contiguous().view recipe."
        ),
    )
    demo.add_argument("--seed", type=int, default=0, help="seed for the data and the weights (default: 0)")
    demo.set_defaults(handler=_demo)
    explain = commands.add_parser(
        "explain",
        help="say whether a pattern folds a tensor of a given shape by a view or a copy, and why",
        description=(
            "Fold an example tensor (on the meta device: nothing is allocated) with foldaxes.fold, and print the "
            "folded shape, whether the fold is a view or a copy and which strides decide it, and how a "
            "matching output unfolds. Exits with status 2 when the pattern or the shape does not fit."
        ),
    )
    explain.add_argument("pattern", help="a single-operand pattern, such as 'b t c h w -> (b t) c h w'")
    explain.add_argument(
        "--shape", required=True, type=_sizes, metavar="N,N,...", help="the input's sizes, such as 2,8,3,224,224"
    )
    explain.add_argument(
        "--lengths",
        action="append",
        default=[],
        type=_lengths,
        metavar="NAME=N[,NAME=N]",
        help="lengths of axes that the shape does not give, such as v=2 (repeatable)",
    )
    layout = explain.add_mutually_exclusive_group()
    layout.add_argument(
        "--channels-last",
        action="store_true",
        help="store each frame (the last three dims, c h w) channels_last, as a channels_last conv returns it",
    )
    layout.add_argument(
        "--strides", type=_sizes, metavar="N,N,...", help="explicit strides for the input, as x.stride() gives them"
    )
    explain.add_argument(
        "--time-major",
        action="store_true",
        help="store the first two axes swapped: the input is x.transpose(0, 1) of a contiguous (T, B, ...) buffer",
    )
    explain.set_defaults(handler=_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parses ``argv`` (``sys.argv[1:]`` when None) and runs the chosen command.

    Args:
        argv: Command line arguments, without the program name.

    Returns:
        The exit status: 0 on success, 2 when the command line is wrong or the pattern and the shape do not fit
        (argparse exits with 2 itself for a malformed command line).

    Examples:
        >>> main(["explain", "b t d -> (b t) d", "--shape", "2,3,4"])
        pattern:  b t d -> (b t) d
        input:    shape (2, 3, 4), strides (12, 4, 1): contiguous
        folded:   shape (6, 4), strides (4, 1) (contiguous); the folded group (b t), b=2, t=3, is dim 0
        fold:     a view. (b t) becomes one axis of stride 4: b's stride 12 = t's size 3 times t's stride 4.
        unfold:   an output (6, 4) comes back as (2, 3, 4), a view of it. Any output with 6 at dim 0 has that
                  dim split into b=2, t=3.
        0
    """
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
