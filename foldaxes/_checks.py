"""The checks a wrapper's keywords get when it is built: axis lengths, ``fold_kwargs``, and how they fit the pattern.

Each raises a ``FoldError`` that names the keyword and shows the pattern, before any call is made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._errors import fold_error, positive_int, shown
from ._pattern import ELLIPSIS, parse_rule
from ._plan import Rule

__all__ = ["check_group_orders", "check_lengths_used", "checked_lengths", "kwarg_rules"]


def checked_lengths(pattern: str, lengths: Mapping[str, Any]) -> dict[str, int]:
    """The axis lengths given as keywords, each checked to be a positive int."""
    checked = {}
    for name, length in sorted(lengths.items()):
        value = positive_int(length)
        if value is None:
            raise fold_error(
                f"The length of axis '{name}' must be a positive int, not {shown(length)}.",
                pattern=pattern,
                hint="Pass the pattern and the module positionally: Distribute(pattern, module)."
                if callable(length)
                else None,
            )
        checked[name] = value
    return checked


def kwarg_rules(pattern: str, fold_kwargs: Mapping[str, str] | None, known: frozenset[str]) -> dict[str, Rule]:
    """One rule per keyword named in ``fold_kwargs``, each pattern parsed and checked."""
    if fold_kwargs is None:
        return {}
    example = "For example fold_kwargs={'mask': 'b t s -> (b t) s'}."
    if not isinstance(fold_kwargs, Mapping):
        raise fold_error(
            f"fold_kwargs must map keyword names to patterns, not {type(fold_kwargs).__name__}.",
            pattern=pattern,
            hint=example,
        )
    rules = {}
    for name, text in fold_kwargs.items():
        if not isinstance(text, str):
            raise fold_error(
                f"fold_kwargs['{name}'] must be a pattern string, not {type(text).__name__}.",
                pattern=pattern,
                hint=example,
            )
        rules[name] = Rule(text, parse_rule(text, known, f"fold_kwargs['{name}']"), known)
    return rules


def check_lengths_used(
    pattern: str, lengths: Mapping[str, int], rules: Sequence[Rule], output_names: frozenset[str]
) -> None:
    """Refuses a length given as a keyword for an axis that no pattern names: a typo, most likely."""
    used = frozenset().union(*(rule.operand.names for rule in rules), output_names)
    for name, length in lengths.items():
        if name not in used:
            raise fold_error(
                f"Axis '{name}' was given a length ({name}={length}) but no pattern uses it.",
                pattern=pattern,
                hint="Remove the keyword or correct its name.",
            )


def check_group_orders(expected: tuple[str, ...] | None, rules: Sequence[Rule]) -> None:
    """Refuses a group that folds the folded axes in another order: its rows would not line up."""
    for rule in rules:
        axes = rule.operand.group_axes
        if expected and axes and axes != expected and sorted(axes) == sorted(expected):
            shown = " ".join("..." if a == ELLIPSIS else a for a in expected)
            raise fold_error(
                f"This group folds the axes of ({shown}) in another order, so row i of one folded tensor would not "
                "be row i of the other.",
                pattern=rule.pattern,
                span=rule.operand.span("rhs", axes[0]),
                hint=f"Write every folded group in the same order: ({shown}).",
            )
