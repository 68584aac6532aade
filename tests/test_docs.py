"""The examples in the docstrings run, and every public name is documented."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

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
