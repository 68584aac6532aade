"""The examples in the docstrings run, and every public name is documented."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import foldaxes

MODULES = sorted(
    name for _, name, _ in pkgutil.iter_modules(foldaxes.__path__, "foldaxes.") if name != "foldaxes.__main__"
)


@pytest.mark.parametrize("name", ["foldaxes", *MODULES])
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


@pytest.mark.parametrize("name", foldaxes.__all__)
def test_public_names_are_documented_with_an_example(name: str) -> None:
    obj = getattr(foldaxes, name)
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{name} has no docstring"
    if inspect.isfunction(obj) or name in {"Distribute", "TimeDistributed"}:
        assert ">>>" in doc, f"{name} has no example"


def test_all_is_exactly_the_public_names() -> None:
    public = {name for name in vars(foldaxes) if not name.startswith("_")}
    assert set(foldaxes.__all__) == public - {"annotations"}


ROOT = Path(__file__).resolve().parent.parent
GENERATED = {"benchmarks.md"}  # written by `python -m benchmarks`: tables, no examples
PAGES = [ROOT / "README.md", *sorted(page for page in (ROOT / "docs").glob("*.md") if page.name not in GENERATED)]
PRINT_WITH_EXPECTATION = re.compile(r"^(\s*)print\((.*)\)\s*#\s*(.+)$")


def _check(expected: str, *values: object) -> None:
    printed = " ".join(str(value) for value in values)
    assert expected.startswith(printed), f"printed {printed!r}, the page says {expected!r}"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_page_code_runs_and_prints_what_it_says(page: Path) -> None:
    """Runs a page's python blocks in order; ``print(x)  # text`` must print what ``text`` starts with."""
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
    assert blocks, f"{page.name} has no python example"
    lines = []
    for line in "\n".join(blocks).splitlines():
        match = PRINT_WITH_EXPECTATION.match(line)
        lines.append(f"{match[1]}_check({match[3]!r}, {match[2]})" if match else line)
    exec(compile("\n".join(lines), str(page), "exec"), {"_check": _check, "__name__": "__docs__"})
