"""The ``python -m foldaxes demo`` command: it runs, checks itself, and prints the shape of every stage."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from foldaxes.__main__ import main

ROOT = Path(__file__).resolve().parent.parent

STAGES = [
    ("input", "(2, 6, 2, 3, 32, 32)"),
    ("encoded", "(2, 6, 2, 32)"),
    ("views merged", "(2, 6, 64)"),
    ("gru", "(2, 6, 24)"),
    ("logits", "(2, 5)"),
]


def assert_demo_output(out: str) -> None:
    for name, shape in STAGES:
        assert re.search(rf"^\s+{re.escape(name)}\s+{re.escape(shape)}\s", out, re.MULTILINE), (name, shape)
    assert re.search(r"^\s+contiguous input\s+foldaxes\.fold: True\b", out, re.MULTILINE)
    assert re.search(r"^\s+channels_last frames\s+foldaxes\.fold: True\b", out, re.MULTILINE)
    assert "classic / foldaxes" in out
    assert out.rstrip().endswith("done")


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
def test_demo_as_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "foldaxes", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    assert_demo_output(proc.stdout)


@pytest.mark.parametrize("argv", [[], ["explode"]], ids=["no-command", "unknown-command"])
def test_bad_command_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert "usage: python -m foldaxes" in capsys.readouterr().err
