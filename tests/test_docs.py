"""The examples in the docstrings and on the documentation pages run, and every public name is documented.

Only fenced blocks marked ```python run; the migration page shows code for other libraries (Keras, fastai) in
```py blocks, which are highlighted the same but not run, since foldaxes does not depend on those libraries.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re
import textwrap
from pathlib import Path

import pytest

import foldaxes

MODULES = sorted(name for _, name, _ in pkgutil.iter_modules(foldaxes.__path__, "foldaxes."))


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
    assert re.search(r"^Examples:\n\s+>>> ", doc, re.MULTILINE), f"{name} has no 'Examples:' section with a >>> example"


@pytest.mark.parametrize("name", ["foldaxes", *MODULES])
def test_example_sections_are_named_as_griffe_reads_them(name: str) -> None:
    """mkdocstrings reads Google style with griffe, which knows 'Examples:' but shows 'Example:' as a note."""
    source = inspect.getsource(importlib.import_module(name))
    assert not re.findall(r"^\s*Example:$", source, re.MULTILINE), f"{name}: write 'Examples:', not 'Example:'"


def test_all_is_exactly_the_public_names() -> None:
    public = {name for name in vars(foldaxes) if not name.startswith("_")}
    assert set(foldaxes.__all__) == public - {"annotations"}


ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
WITHOUT_PYTHON = {
    "benchmarks.md",  # written by `python -m benchmarks`: tables
    "contributing.md",  # shell commands
}
PAGES = [ROOT / "README.md", *sorted(page for page in DOCS.glob("*.md") if page.name not in WITHOUT_PYTHON)]
PYTHON_BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", flags=re.DOTALL | re.MULTILINE)
"""A fenced python block, also one indented inside a list item (its indentation is removed before it runs)."""
PRINT_WITH_EXPECTATION = re.compile(r"^(\s*)print\((.*)\)\s*#\s*(.+)$")


def _check(expected: str, *values: object) -> None:
    printed = " ".join(str(value) for value in values)
    assert expected.startswith(printed), f"printed {printed!r}, the page says {expected!r}"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_page_code_runs_and_prints_what_it_says(page: Path) -> None:
    """Runs a page's python blocks in order; ``print(x)  # text`` must print what ``text`` starts with."""
    blocks = [textwrap.dedent(block) for _, block in PYTHON_BLOCK.findall(page.read_text())]
    assert blocks, f"{page.name} has no python example"
    lines = []
    for line in "\n".join(blocks).splitlines():
        match = PRINT_WITH_EXPECTATION.match(line)
        lines.append(f"{match[1]}_check({match[3]!r}, {match[2]})" if match else line)
    exec(compile("\n".join(lines), str(page), "exec"), {"_check": _check, "__name__": "__docs__"})


def test_api_page_has_an_entry_for_every_public_name() -> None:
    """docs/api.md lists each name of ``foldaxes.__all__`` once, as a mkdocstrings ``::: foldaxes.Name`` entry."""
    entries = re.findall(r"^::: foldaxes\.(\w+)\s*$", (DOCS / "api.md").read_text(), flags=re.MULTILINE)
    assert sorted(entries) == sorted(foldaxes.__all__)


def test_every_page_is_in_the_site_navigation() -> None:
    nav = re.findall(r"^\s+- [^:]+: (\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.MULTILINE)
    assert len(nav) == len(set(nav))
    assert {page.name for page in DOCS.glob("*.md")} <= set(nav)
