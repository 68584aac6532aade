"""Command line entry point: ``python -m foldaxes COMMAND``.

Commands:
    demo: Train a small multi-view video classifier for one step on synthetic data, check the folded encoder
        against a per-frame loop, and time it against the classic ``.contiguous().view`` recipe.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from foldaxes._demo import run_demo

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    seed: int = args.seed
    return run_demo(seed=seed)


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
            "video classifier, check against a per-frame loop and time against the classic recipe."
        ),
    )
    demo.add_argument("--seed", type=int, default=0, help="seed for the data and the weights (default: 0)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parses ``argv`` (``sys.argv[1:]`` when None) and runs the chosen command.

    Args:
        argv: Command line arguments, without the program name.

    Returns:
        The exit status: 0 on success.

    Example:
        >>> main(["demo"])  # doctest: +SKIP
        0
    """
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
