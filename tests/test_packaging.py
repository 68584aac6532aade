"""Release hygiene: a cheap import, one version number, and a wheel with the package and nothing else.

The wheel and sdist are built offline with setuptools' own PEP 517 hooks in a copy of the source tree (under a
second each); ``python -m build`` and ``twine check`` (which need build isolation, so the network) are run by hand
before a release.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import foldaxes

ROOT = Path(__file__).resolve().parent.parent
IMPORT_RUNS = 3
IMPORT_BOUND_S = 0.150
"""The target is 50 ms over ``import torch``; measured on 2 shared CPU cores: about 15 ms with bytecode cached, as
after a pip install, and about 40 ms compiling every module from source. The bound is generous because a loaded
CI machine only ever adds time."""

PROBE = """
import sys, time
import torch
before = set(sys.modules)
start = time.perf_counter()
import foldaxes
elapsed = time.perf_counter() - start
added = sorted(name for name in set(sys.modules) - before if name.split(".")[0] == "torch")
print(elapsed)
print(" ".join(added) or "-")
print("torch._dynamo" in sys.modules)
"""


@pytest.fixture(scope="module")
def fresh_imports(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[float, str, bool]]:
    """``import foldaxes`` after ``import torch`` in fresh interpreters: seconds, torch modules it added, dynamo.

    The bytecode goes to a temporary cache, written by the first run and read by the others, as an installed
    package's would be, whether or not PYTHONDONTWRITEBYTECODE is set here.
    """
    cache = tmp_path_factory.mktemp("pycache")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    runs = []
    for _ in range(IMPORT_RUNS):
        proc = subprocess.run(
            [sys.executable, "-X", f"pycache_prefix={cache}", "-c", PROBE],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        seconds, added, dynamo = proc.stdout.split("\n")[:3]
        runs.append((float(seconds), added, dynamo == "True"))
    return runs


@pytest.mark.slow  # with the next test: fresh interpreters that import torch, about 6 s
def test_import_adds_little_to_import_torch(fresh_imports: list[tuple[float, str, bool]]) -> None:
    best = min(seconds for seconds, _, _ in fresh_imports)
    assert best < IMPORT_BOUND_S, f"import foldaxes took {best * 1e3:.0f} ms at best over {IMPORT_RUNS} runs"


@pytest.mark.slow
def test_import_loads_no_torch_submodule(fresh_imports: list[tuple[float, str, bool]]) -> None:
    """torch._dynamo (over a second to import) and the rest of torch load only when a user asks for them."""
    for _, added, dynamo in fresh_imports:
        assert not dynamo
        assert added == "-", f"import foldaxes imported {added}"


def test_version_has_one_source() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^dynamic = \[.*"version".*\]', project, re.MULTILINE)
    assert not re.search(r"^version\s*=", project, re.MULTILINE)
    assert 'version = { attr = "foldaxes.__version__" }' in pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+", foldaxes.__version__)


def test_changelog_has_the_current_version() -> None:
    assert re.search(rf"^## {re.escape(foldaxes.__version__)}\b", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[zipfile.ZipFile, tarfile.TarFile]:
    """A wheel and an sdist built from a copy of the tree, without network or build isolation."""
    pytest.importorskip("setuptools", minversion="70.1")  # builds wheels without the separate `wheel` package
    source = tmp_path_factory.mktemp("source")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for path in ROOT.iterdir():
        if path.name in {"foldaxes", "tests", "docs", "benchmarks"}:
            shutil.copytree(path, source / path.name, ignore=skip)
        elif path.is_file() and path.suffix in {".toml", ".md", ".in", ".yml", ".cfg"}:
            shutil.copy2(path, source / path.name)
    build = "from setuptools import build_meta as b; w = b.build_wheel('dist'); s = b.build_sdist('dist'); print(w, s)"
    proc = subprocess.run(
        [sys.executable, "-c", build], cwd=source, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel_name, sdist_name = proc.stdout.strip().splitlines()[-1].split()  # the hooks print their logs first
    return zipfile.ZipFile(source / "dist" / wheel_name), tarfile.open(source / "dist" / sdist_name)


def test_wheel_holds_the_typed_package_only(built: tuple[zipfile.ZipFile, tarfile.TarFile]) -> None:
    wheel, _ = built
    assert Path(str(wheel.filename)).name == f"foldaxes-{foldaxes.__version__}-py3-none-any.whl"
    names = wheel.namelist()
    package = {name for name in names if not name.startswith(f"foldaxes-{foldaxes.__version__}.dist-info/")}
    expected = {f"foldaxes/{path.name}" for path in (ROOT / "foldaxes").glob("*.py")} | {"foldaxes/py.typed"}
    assert package == expected
    metadata = wheel.read(f"foldaxes-{foldaxes.__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {foldaxes.__version__}\n" in metadata
    assert "\nDescription-Content-Type: text/markdown\n" in metadata


def test_sdist_has_the_sources_and_a_whole_test_suite_or_none(built: tuple[zipfile.ZipFile, tarfile.TarFile]) -> None:
    _, sdist = built
    top = f"foldaxes-{foldaxes.__version__}/"
    names = {name.removeprefix(top) for name in sdist.getnames()}
    assert {"pyproject.toml", "README.md", "PKG-INFO", "foldaxes/__init__.py", "foldaxes/py.typed"} <= names
    assert not any(name.endswith(".pyc") for name in names)
    tests = {name for name in names if name.startswith("tests/")}
    if tests:  # tests that cannot run are worse than none: conftest.py, the docs they read and CHANGELOG come too
        assert {"tests/conftest.py", "CHANGELOG.md", "docs/index.md", "mkdocs.yml"} <= names
        assert {f"tests/{path.name}" for path in (ROOT / "tests").glob("*.py")} <= tests
