"""Pins what foldaxes relies on from torch.utils._pytree, the one private torch API it uses (in _tree.py)."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import pytest
import torch

from foldaxes import _tree


class Point(NamedTuple):
    x: object
    y: object


def test_flatten_and_unflatten_round_trip_every_container() -> None:
    tree = {"a": (1, [2, Point(3, None)]), "b": OrderedDict(c="text")}
    leaves, spec = _tree.flatten(tree)
    assert leaves == [1, 2, 3, None, "text"]
    rebuilt = _tree.unflatten([leaf * 2 if isinstance(leaf, int) else leaf for leaf in leaves], spec)
    assert rebuilt == {"a": (2, [4, Point(6, None)]), "b": OrderedDict(c="text")}
    assert isinstance(rebuilt["a"][1][1], Point)


def test_tensors_are_leaves() -> None:
    tensor = torch.zeros(2)
    leaves, _ = _tree.flatten((tensor, (tensor,)))
    assert leaves[0] is tensor and leaves[1] is tensor


def test_leaf_paths() -> None:
    assert _tree.leaf_paths({"a": (1, [2]), "b": Point(3, 4)}) == ["['a'][0]", "['a'][1][0]", "['b'].x", "['b'].y"]


def test_map_structure_stops_at_structure_leaves() -> None:
    result = _tree.map_structure(lambda rule, part: (rule, part), ("r", None), (1, (2, 3)))
    assert result == (("r", 1), (None, (2, 3)))


def test_map_structure_ignores_dict_order_but_not_container_types() -> None:
    assert _tree.map_structure(lambda r, p: p, {"a": None, "b": None}, {"b": 1, "a": 2}) == {"a": 2, "b": 1}
    with pytest.raises(ValueError):
        _tree.map_structure(lambda r, p: p, [None, None], (1, 2))
    with pytest.raises(ValueError):
        _tree.map_structure(lambda r, p: p, (None,), (1, 2))
