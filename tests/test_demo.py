"""The ``python -m foldaxes demo`` command: it runs, checks itself, and prints the shape of every stage."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from foldaxes.__main__ import main
from foldaxes._demo import Progress

ROOT = Path(__file__).resolve().parent.parent

STAGES = [
    ("input", "(2, 6, 2, 3, 32, 32)"),
    ("encoded", "(2, 6, 2, 32)"),
    ("views merged", "(2, 6, 64)"),
    ("gru", "(2, 6, 24)"),
    ("logits", "(2, 5)"),
]


INPUT_BYTES = 2 * 6 * 2 * 3 * 32 * 32 * 4  # the float32 clips, (2, 6, 2, 3, 32, 32)


def assert_demo_output(out: str) -> None:
    for name, shape in STAGES:
        assert re.search(rf"^\s+{re.escape(name)}\s+{re.escape(shape)}\s", out, re.MULTILINE), (name, shape)
    copy = f"copy of {INPUT_BYTES:,} bytes"
    rows = {
        "contiguous input": ("view, contiguous", "view, contiguous"),
        "channels_last frames": ("view, channels_last", f"{copy}, contiguous"),
        "time-major buffer": (f"{copy}, contiguous", f"{copy}, contiguous"),
        "bytes copied in all": (f"{INPUT_BYTES:,}", f"{2 * INPUT_BYTES:,}"),
    }
    for label, (ours, classic) in rows.items():
        row = rf"^  {re.escape(label)}\s+{re.escape(ours)}\s+{re.escape(classic)}$"
        assert re.search(row, out, re.MULTILINE), (label, ours, classic)
    assert "why the time-major buffer is copied: (b t v) cannot be one axis: b's stride 6144" in out
    assert "the unfold of the encoder's output (24, 32) to (2, 6, 2, 32) is a view of it: True" in out
    assert not re.search(r"\bms\b|[0-9]x\b|faster|slower", out)  # copies are counted, nothing is timed
    assert re.search(r"\ndone (in \d+\.\d s of wall clock|: the steps above took)", out)


def test_demo_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    assert_demo_output(capsys.readouterr().out)


def test_demo_leaves_global_random_state_alone() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    assert main(["demo", "--seed", "7"]) == 0
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
@pytest.mark.parametrize("numpy", [True, False], ids=["with-numpy", "without-numpy"])
def test_demo_as_module(numpy: bool, tmp_path: Path) -> None:
    """The README's command prints no warning, with or without numpy, and reports the time it took."""
    env = dict(os.environ)
    if not numpy:  # a numpy that cannot be imported stands in for an environment without it
        (tmp_path / "numpy").mkdir()
        (tmp_path / "numpy" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'numpy'\")\n")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "foldaxes", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # no warning, no log line, and no progress bar off a terminal
    assert_demo_output(proc.stdout)
    assert elapsed < 30, f"the demo took {elapsed:.1f} s"
    reported = re.search(r"\ndone in (\d+\.\d) s of wall clock from the start of Python", proc.stdout)
    if sys.platform == "linux":  # /proc tells a process when it started
        assert reported is not None, proc.stdout
        # Python's exit, after the line is printed, is the part of the command it cannot count.
        assert elapsed / 2 < float(reported[1]) <= elapsed + 0.1, (reported[1], elapsed)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_in_place_on_a_terminal_and_erases_itself() -> None:
    terminal = Terminal()
    with Progress("timing", 4, terminal, width=8) as bar:
        for _ in range(4):
            bar.advance()
    frames = terminal.getvalue().split("\r")
    assert frames[1:6] == [f"  timing [{'#' * (2 * i)}{'.' * (8 - 2 * i)}] {i}/4" for i in range(5)]
    assert frames[-2:] == [" " * len(frames[5]), ""]  # the last line is blanked and the cursor left at its start


def test_progress_bar_is_silent_off_a_terminal() -> None:
    stream = io.StringIO()
    with Progress("timing", 3, stream) as bar:
        bar.advance(5)
    assert stream.getvalue() == ""
    assert bar.done == 3


@pytest.mark.parametrize("argv", [[], ["explode"]], ids=["no-command", "unknown-command"])
def test_bad_command_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert "usage: python -m foldaxes" in capsys.readouterr().err
