"""The one place foldaxes touches a private torch API: ``torch.utils._pytree``.

torch has no public pytree module yet; ``torch.utils._pytree`` is the implementation torch itself uses (and
``torch.compile`` traces natively). Everything else in foldaxes goes through the three functions here, and
``tests/test_tree.py`` pins the behaviour they rely on.
"""

from __future__ import annotations

from typing import Any

from torch.utils import _pytree

__all__ = ["TreeSpec", "flatten", "leaf_paths", "map_structure", "unflatten"]

TreeSpec = _pytree.TreeSpec


def flatten(tree: Any) -> tuple[list[Any], TreeSpec]:
    """The leaves of ``tree`` (tensors, ``None``, strings, anything not a container) and its structure."""
    return _pytree.tree_flatten(tree)


def unflatten(leaves: list[Any], spec: TreeSpec) -> Any:
    """Rebuilds the structure ``spec`` around ``leaves``."""
    return _pytree.tree_unflatten(leaves, spec)


def leaf_paths(tree: Any) -> list[str]:
    """A readable path to each leaf of ``tree``, such as ``[1][0]`` or ``['logits']``, in leaf order."""
    return [_pytree.keystr(path) for path, _ in _pytree.tree_flatten_with_path(tree)[0]]


def map_structure(fn: Any, structure: Any, tree: Any) -> Any:
    """Calls ``fn(rule, subtree)`` for each leaf ``rule`` of ``structure`` and the part of ``tree`` under it.

    Raises:
        ValueError: ``tree`` does not have the containers of ``structure`` (dict key order does not matter).
    """
    return _pytree.tree_map(fn, structure, tree)
