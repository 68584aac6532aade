"""Reads an einops pattern ``LHS -> RHS`` (one or more comma-separated operands) with einops' own parser.

The result is a frozen description of each operand: its input and output compositions and which group of the
output is the folded one. Nothing here looks at a tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from einops import EinopsError
from einops.parsing import ParsedExpression

from ._cache import bounded_cache
from ._errors import FoldError, fold_error

__all__ = ["ELLIPSIS", "Composition", "Operand", "Pattern", "element_text", "parse_pattern", "parse_rule"]

ELLIPSIS = "…"
"""How einops' parser spells ``...`` inside a composition."""

Element = tuple[str, ...] | str
"""A parenthesised group (or a single axis) as a tuple of names, or a bare ``ELLIPSIS``."""
Composition = tuple[Element, ...]

_TOKEN = re.compile(r"\.\.\.|\w+")


@dataclass(frozen=True)
class Operand:
    """One ``lhs -> rhs`` pair of a pattern.

    Attributes:
        index: Position of the operand in the pattern.
        lhs: Composition of the tensor the caller passes.
        rhs: Composition of the tensor the callee receives.
        group: Index in ``rhs`` of the group this operand folds: its first parenthesised group that holds an
            axis, or its first ``()`` when none does; ``None`` when ``rhs`` has no parentheses.
        pattern: The whole pattern's text, to point at an axis in messages.
    """

    index: int
    lhs: Composition
    rhs: Composition
    group: int | None
    pattern: str

    @property
    def names(self) -> frozenset[str]:
        """Every axis name of the operand (the ellipsis included as ``ELLIPSIS``)."""
        return frozenset(name for element in self.lhs for name in _names(element))

    @property
    def group_axes(self) -> tuple[str, ...] | None:
        """The names in the group this operand folds, in order."""
        return None if self.group is None else _names(self.rhs[self.group])

    def span(self, side: str, name: str) -> tuple[int, int] | None:
        """Where ``name`` stands on ``side`` (``"lhs"`` or ``"rhs"``) in the pattern text."""
        return _token_spans(self.pattern).get((self.index, side, name))


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern.

    Attributes:
        operands: One entry per comma-separated operand.
        folded: Index of the operand whose group is the folded group, or ``None`` when nothing is folded.
    """

    operands: tuple[Operand, ...]
    folded: int | None

    @property
    def group_axes(self) -> tuple[str, ...] | None:
        """The names of the folded group, in order; ``None`` when the pattern folds nothing."""
        return None if self.folded is None else self.operands[self.folded].group_axes


def _names(element: Element) -> tuple[str, ...]:
    return (element,) if isinstance(element, str) else element


@bounded_cache(512)
def parse_pattern(text: str, known: frozenset[str] = frozenset()) -> Pattern:
    """Parses and validates a pattern; ``known`` names are those whose sizes are given rather than read off.

    Raises:
        FoldError: the pattern is malformed, or einops' rearrange would reject it.
    """
    if not isinstance(text, str):
        raise fold_error(
            f"A pattern must be a string such as 'b t c -> (b t) c', not {type(text).__name__}.",
            pattern=None,
            hint="Pass the pattern first: Distribute(pattern, module), fold(x, pattern).",
        )
    if text.count("->") != 1:
        raise fold_error(
            "The pattern needs exactly one '->' between the input and the folded layout.",
            pattern=text,
            hint="Write it as einops does, for example 'b t c h w -> (b t) c h w'.",
        )
    left, right = text.split("->")
    left_parts, right_parts = left.split(","), right.split(",")
    if len(left_parts) != len(right_parts):
        raise fold_error(
            f"The pattern has {len(left_parts)} operand{'' if len(left_parts) == 1 else 's'} left of '->' but "
            f"{len(right_parts)} right of it.",
            pattern=text,
            hint="Give one comma-separated expression per tensor on each side.",
        )
    operands = tuple(
        _parse_operand(text, index, lhs, rhs, known)
        for index, (lhs, rhs) in enumerate(zip(left_parts, right_parts, strict=True))
    )
    folded = next((operand.index for operand in operands if operand.group_axes), None)
    if folded is None:
        folded = next((operand.index for operand in operands if operand.group is not None), None)
    return Pattern(operands=operands, folded=folded)


def parse_rule(text: str, known: frozenset[str], role: str) -> Operand:
    """Parses a single-operand pattern such as an ``out=`` or keyword-argument pattern; ``role`` names it."""
    try:
        pattern = parse_pattern(text, known)
    except FoldError as error:
        raise FoldError(f"In {role}: {error}") from None
    if len(pattern.operands) != 1:
        raise fold_error(
            f"In {role}: the pattern must describe one tensor, but it has {len(pattern.operands)} operands.",
            pattern=text,
            hint="Remove the commas: one pattern applies to one tensor here.",
        )
    return pattern.operands[0]


def _parse_operand(
    text: str,
    index: int,
    lhs_text: str,
    rhs_text: str,
    known: frozenset[str],
) -> Operand:
    label = f"operand {index} ('{lhs_text.strip()} -> {rhs_text.strip()}')"
    lhs = _parse_side(text, lhs_text, label)
    rhs = _parse_side(text, rhs_text, label)

    def fail(what: str, name: str | None = None, side: str = "lhs", hint: str | None = None) -> FoldError:
        span = None if name is None else _token_spans(text).get((index, side, name))
        return fold_error(f"{what} in {label}.", pattern=text, span=span, hint=hint)

    if lhs.has_non_unitary_anonymous_axes or rhs.has_non_unitary_anonymous_axes:
        raise fail(
            "Axes of a fixed length other than 1 cannot be written as numbers",
            hint="Name the axis and give its length as a keyword, for example 'v' with v=2.",
        )
    if lhs.has_ellipsis and lhs.has_ellipsis_parenthesized:
        raise fail("'...' cannot stand inside parentheses on the left", ELLIPSIS)
    only_left = sorted(lhs.identifiers - rhs.identifiers)  # names, and ELLIPSIS: all strings
    only_right = sorted(rhs.identifiers - lhs.identifiers)
    if only_left or only_right:
        side, name = ("lhs", only_left[0]) if only_left else ("rhs", only_right[0])
        one_sided = only_left + only_right
        shown = ", ".join("..." if n == ELLIPSIS else str(n) for n in one_sided)
        raise fail(
            f"Axes must appear on both sides of '->', but {shown} appear{'s' if len(one_sided) == 1 else ''} on one "
            "side only",
            str(name),
            side,
            hint="A fold only moves axes: every axis on the left must be placed on the right, and no new ones.",
        )
    lhs_composition = _composition(lhs)
    for element in lhs_composition:
        unknown = [name for name in _names(element) if name not in known and name != ELLIPSIS]
        if not isinstance(element, str) and len(unknown) > 1:
            raise fail(
                f"The group ({' '.join(element)}) on the left has more than one axis of unknown length",
                unknown[0],
                hint=f"Give all but one of their lengths as keywords, for example {unknown[0]}=2.",
            )
    rhs_composition = _composition(rhs)
    return Operand(
        index=index,
        lhs=lhs_composition,
        rhs=rhs_composition,
        group=_folded_group(rhs_text, rhs_composition),
        pattern=text,
    )


def _folded_group(rhs_text: str, rhs: Composition) -> int | None:
    """The index in ``rhs`` of its first parenthesised group that holds an axis, else of its first ``()``."""
    groups = [
        len(ParsedExpression(rhs_text[:position]).composition) for position, char in enumerate(rhs_text) if char == "("
    ]
    return next((index for index in groups if rhs[index]), groups[0] if groups else None)


def _parse_side(text: str, side_text: str, label: str) -> ParsedExpression:
    try:
        return ParsedExpression(side_text)
    except EinopsError as error:
        raise fold_error(
            f"einops cannot read '{side_text.strip()}' in {label}: {error}",
            pattern=text,
            hint="Axis names are identifiers, groups use one level of parentheses, '...' appears at most once.",
        ) from None


def _composition(parsed: ParsedExpression) -> Composition:
    return tuple(
        element if isinstance(element, str) else tuple(str(name) for name in element) for element in parsed.composition
    )


def _token_spans(text: str) -> dict[tuple[int, str, str], tuple[int, int]]:
    """Maps (operand, side, name) to the character span of that axis in ``text``."""
    spans: dict[tuple[int, str, str], tuple[int, int]] = {}
    arrow = text.find("->")
    for match in _TOKEN.finditer(text):
        start = match.start()
        side = "lhs" if arrow < 0 or start < arrow else "rhs"
        side_start = 0 if side == "lhs" else arrow + 2
        operand = text.count(",", side_start, start)
        name = ELLIPSIS if match.group() == "..." else match.group()
        spans.setdefault((operand, side, name), (start, match.end()))
    return spans


def element_text(element: tuple[str, ...] | str) -> str:
    """One element of a composition as a pattern writes it: a name, ``...``, or a parenthesised group."""
    if isinstance(element, str):
        return "..."
    names = ["..." if name == ELLIPSIS else name for name in element]
    if len(names) == 1 and element[0] != ELLIPSIS:  # '(...)' merges the dims of '...': its parentheses stay
        return names[0]
    return "(" + " ".join(names) + ")"
