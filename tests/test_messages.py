"""Every kind of FoldError, word for word: what is wrong, the pattern with a caret under the axis at fault, the
shapes and axis sizes involved, and what to do.

Each case is one way a fold can go wrong, with its whole message, one line per item, so that a changed word, a moved
or lost caret, or a missing line fails. Where a message quotes einops or torch (their errors, the name torch gives a
ragged size), their words stand as ``THEIRS``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import array_api_strict as xps
import numpy as np
import pytest
import torch
from conftest import message
from torch import nn

import foldaxes
from foldaxes import Distribute, TimeDistributed, distribute, fold, unfold

THEIRS = "<einops' or torch's own words>"


@dataclasses.dataclass
class Holder:
    value: torch.Tensor


class Shaped:
    """Has a shape but no dtype: no array, so a message shows it by its repr."""

    shape = (2, 3)

    def __repr__(self) -> str:
        return "Shaped()"


def case(id: str, fail: Callable[[], Any], *lines: str) -> Any:
    return pytest.param(fail, list(lines), id=id)


def zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(shape)


def identity(*args: Any, **kwargs: Any) -> Any:
    return args[0] if args else None


def jagged(lengths: list[int], *trailing: int) -> torch.Tensor:
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    return torch.nested.nested_tensor_from_jagged(torch.zeros(sum(lengths), *trailing), offsets)


def strided_nested() -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "prototype" notice
        return torch.nested.nested_tensor([torch.zeros(3, 4), torch.zeros(2, 4)])


def sparse() -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "beta" notice
        return torch.zeros(2, 3, 4).to_sparse()


def chunked(fn: Callable[..., Any]) -> Distribute:
    return Distribute("b t d -> (b t) d", fn, chunk_size=2)


def noisy(x: torch.Tensor) -> torch.Tensor:
    return x + torch.rand(())


def by_calls(first: Callable[..., Any], later: Callable[..., Any]) -> Callable[[torch.Tensor], Any]:
    """``first`` on the first call's rows, ``later`` on every later call's."""
    calls: list[torch.Tensor] = []

    def fn(x: torch.Tensor) -> Any:
        calls.append(x)
        return (first if len(calls) == 1 else later)(x)

    return fn


PATTERNS = [
    case(
        "pattern-not-a-string",
        lambda: Distribute(3, nn.Identity()),
        "A pattern must be a string such as 'b t c -> (b t) c', not int.",
        "  Pass the pattern first: Distribute(pattern, module), fold(x, pattern).",
    ),
    case(
        "explain-shape-of-a-numpy-float",
        lambda: foldaxes.explain("b t c -> (b t) c", (2, np.float32(3), 4)),
        "The shape must be non-negative ints, but item 1 is a float32 of dtype float32 and shape ().",
        "  pattern: b t c -> (b t) c",
        "  For example shape (2, 8, 3, 224, 224), or the tensor itself: explain(pattern, x).",
    ),
    case(
        "explain-shape-of-numpy-ints-of-another-rank",
        lambda: foldaxes.explain("b t c -> (b t) c", (np.int64(2), np.int64(3))),
        "the input has 2 dims, but 'b t c' expects 3.",
        "  pattern: b t c -> (b t) c",
        "  the input: shape (2, 3)",
        "  Pass a tensor of the rank the pattern describes, or change the pattern ('...' stands for any number of "
        "dims).",
    ),
    case(
        "an-article-before-a-vowel",
        lambda: Distribute("b t c -> (b t) c", identity, chunk_size=xps.asarray([2])),
        "chunk_size must be a positive int (rows of the folded batch per call), not an Array of dtype "
        "array_api_strict.int64 and shape (1,).",
        "  pattern: b t c -> (b t) c",
        "  Pass for example chunk_size=64, or None to run the module once.",
    ),
    case(
        "explain-pattern-not-a-string",
        lambda: foldaxes.explain(3, zeros(2, 3)),
        "explain takes the pattern first, then the tensor or its shape, but the pattern is 3.",
        "  Write foldaxes.explain(pattern, x), for example explain('b t c -> (b t) c', x).",
    ),
    case(
        "no-arrow",
        lambda: Distribute("b t c h w", nn.Identity()),
        "The pattern needs exactly one '->' between the input and the folded layout.",
        "  pattern: b t c h w",
        "  Write it as einops does, for example 'b t c h w -> (b t) c h w'.",
    ),
    case(
        "two-arrows",
        lambda: Distribute("b t c -> (b t) c -> b t c", nn.Identity()),
        "The pattern needs exactly one '->' between the input and the folded layout.",
        "  pattern: b t c -> (b t) c -> b t c",
        "  Write it as einops does, for example 'b t c h w -> (b t) c h w'.",
    ),
    case(
        "operand-count",
        lambda: Distribute("b t, c -> (b t c)", nn.Identity()),
        "The pattern has 2 operands left of '->' but 1 right of it.",
        "  pattern: b t, c -> (b t c)",
        "  Give one comma-separated expression per tensor on each side.",
    ),
    case(
        "one-operand-left-two-right",
        lambda: Distribute("b t c -> (b t) c, b", nn.Identity()),
        "The pattern has 1 operand left of '->' but 2 right of it.",
        "  pattern: b t c -> (b t) c, b",
        "  Give one comma-separated expression per tensor on each side.",
    ),
    case(
        "nested-groups",
        lambda: Distribute("b t c -> ((b t)) c", nn.Identity()),
        "einops cannot read '((b t)) c' in operand 0 ('b t c -> ((b t)) c'): " + THEIRS,
        "  pattern: b t c -> ((b t)) c",
        "  Axis names are identifiers, groups use one level of parentheses, '...' appears at most once.",
    ),
    case(
        "duplicate-axis",
        lambda: Distribute("b b c -> (b b) c", nn.Identity()),
        "einops cannot read 'b b c' in operand 0 ('b b c -> (b b) c'): " + THEIRS,
        "  pattern: b b c -> (b b) c",
        "  Axis names are identifiers, groups use one level of parentheses, '...' appears at most once.",
    ),
    case(
        "number-axis",
        lambda: Distribute("b t 2 -> (b t) 2", nn.Identity()),
        "Axes of a fixed length other than 1 cannot be written as numbers in operand 0 ('b t 2 -> (b t) 2').",
        "  pattern: b t 2 -> (b t) 2",
        "  Name the axis and give its length as a keyword, for example 'v' with v=2.",
    ),
    case(
        "number-axis-on-the-right-only",
        lambda: Distribute("b t -> (b t) 3", nn.Identity()),
        "Axes of a fixed length other than 1 cannot be written as numbers in operand 0 ('b t -> (b t) 3').",
        "  pattern: b t -> (b t) 3",
        "  Name the axis and give its length as a keyword, for example 'v' with v=2.",
    ),
    case(
        "number-axis-on-the-left-only",
        lambda: Distribute("b t 3 -> (b t)", nn.Identity()),
        "Axes of a fixed length other than 1 cannot be written as numbers in operand 0 ('b t 3 -> (b t)').",
        "  pattern: b t 3 -> (b t)",
        "  Name the axis and give its length as a keyword, for example 'v' with v=2.",
    ),
    case(
        "ellipsis-in-left-group",
        lambda: Distribute("b (t ...) -> (b t) ...", nn.Identity()),
        "'...' cannot stand inside parentheses on the left in operand 0 ('b (t ...) -> (b t) ...').",
        "  pattern: b (t ...) -> (b t) ...",
        "                ^^^",
    ),
    case(
        "axis-only-on-the-left",
        lambda: Distribute("b t c d -> (b t) c", nn.Identity()),
        "Axes must appear on both sides of '->', but d appears on one side only in operand 0 ('b t c d -> (b t) c').",
        "  pattern: b t c d -> (b t) c",
        "                 ^",
        "  A fold only moves axes: every axis on the left must be placed on the right, and no new ones.",
    ),
    case(
        "axis-only-on-the-right",
        lambda: Distribute("b t c -> (b t) c d", nn.Identity()),
        "Axes must appear on both sides of '->', but d appears on one side only in operand 0 ('b t c -> (b t) c d').",
        "  pattern: b t c -> (b t) c d",
        "                            ^",
        "  A fold only moves axes: every axis on the left must be placed on the right, and no new ones.",
    ),
    case(
        "axis-only-on-the-right-of-operand-1",
        lambda: Distribute("b t c, b t d -> (b t) c, (b t) d e", nn.Identity()),
        "Axes must appear on both sides of '->', but e appears on one side only in operand 1 ('b t d -> (b t) d e').",
        "  pattern: b t c, b t d -> (b t) c, (b t) d e",
        "                                            ^",
        "  A fold only moves axes: every axis on the left must be placed on the right, and no new ones.",
    ),
    case(
        "two-axes-one-sided",
        lambda: Distribute("b t c d -> (b t) c e", nn.Identity()),
        "Axes must appear on both sides of '->', but d, e appear on one side only in operand 0 "
        "('b t c d -> (b t) c e').",
        "  pattern: b t c d -> (b t) c e",
        "                 ^",
        "  A fold only moves axes: every axis on the left must be placed on the right, and no new ones.",
    ),
    case(
        "nothing-on-the-left",
        lambda: Distribute("-> b", nn.Identity()),
        "Axes must appear on both sides of '->', but b appears on one side only in operand 0 (' -> b').",
        "  pattern: -> b",
        "              ^",
        "  A fold only moves axes: every axis on the left must be placed on the right, and no new ones.",
    ),
    case(  # the caret finds its operand by the commas before it, on its own side of the arrow
        "a-comma-first",
        lambda: Distribute(", b t x -> , (b t)", nn.Identity()),
        "Axes must appear on both sides of '->', but x appears on one side only in operand 1 ('b t x -> (b t)').",
        "  pattern: , b t x -> , (b t)",
        "                 ^",
        "  A fold only moves axes: every axis on the left must be placed on the right, and no new ones.",
    ),
    case(
        "a-comma-just-before-the-arrow",
        lambda: Distribute("b t,c->(b t),c d", nn.Identity()),
        "Axes must appear on both sides of '->', but d appears on one side only in operand 1 ('c -> c d').",
        "  pattern: b t,c->(b t),c d",
        "                          ^",
        "  A fold only moves axes: every axis on the left must be placed on the right, and no new ones.",
    ),
    case(
        "a-comma-just-after-the-arrow",
        lambda: Distribute(",c->,c d", nn.Identity()),
        "Axes must appear on both sides of '->', but d appears on one side only in operand 1 ('c -> c d').",
        "  pattern: ,c->,c d",
        "                  ^",
        "  A fold only moves axes: every axis on the left must be placed on the right, and no new ones.",
    ),
    case(
        "ellipsis-only-on-the-left",
        lambda: Distribute("b t ... -> (b t)", nn.Identity()),
        "Axes must appear on both sides of '->', but ... appears on one side only in operand 0 ('b t ... -> (b t)').",
        "  pattern: b t ... -> (b t)",
        "               ^^^",
        "  A fold only moves axes: every axis on the left must be placed on the right, and no new ones.",
    ),
    case(
        "two-unknown-lengths",
        lambda: Distribute("b (t v) c -> (b t v) c", nn.Identity()),
        "The group (t v) on the left has more than one axis of unknown length in operand 0 ('b (t v) c -> (b t v) c').",
        "  pattern: b (t v) c -> (b t v) c",
        "              ^",
        "  Give all but one of their lengths as keywords, for example t=2.",
    ),
    case(
        "group-order-of-an-operand",
        lambda: Distribute("b t c, b t n -> (b t) c, (t b) n", nn.Identity()),
        "This group folds the axes of (b t) in another order, so row i of one folded tensor would not be "
        "row i of the other.",
        "  pattern: b t c, b t n -> (b t) c, (t b) n",
        "                                     ^",
        "  Write every folded group in the same order: (b t).",
    ),
    case(
        "group-order-of-a-keyword",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), fold_kwargs={"mask": "b t s -> (t b) s"}),
        "This group folds the axes of (b t) in another order, so row i of one folded tensor would not be "
        "row i of the other.",
        "  pattern: b t s -> (t b) s",
        "                     ^",
        "  Write every folded group in the same order: (b t).",
    ),
]

OPTIONS = [
    case(
        "length-not-positive",
        lambda: Distribute("b (t v) c -> (b t v) c", nn.Identity(), v=0),
        "The length of axis 'v' must be a positive int, not 0.",
        "  pattern: b (t v) c -> (b t v) c",
    ),
    case(
        "length-a-list-of-numbers",
        lambda: Distribute("b (t v) c -> (b t v) c", nn.Identity(), v=[2]),
        "The length of axis 'v' must be a positive int, not [2].",
        "  pattern: b (t v) c -> (b t v) c",
    ),
    case(
        "length-a-list-holding-a-tensor",
        lambda: Distribute("b (t v) c -> (b t v) c", nn.Identity(), v=[zeros(2)]),
        "The length of axis 'v' must be a positive int, not a list of 1 item.",
        "  pattern: b (t v) c -> (b t v) c",
    ),
    case(
        "length-a-tuple-holding-tensors",
        lambda: Distribute("b (t v) c -> (b t v) c", nn.Identity(), v=(zeros(2), zeros(2))),
        "The length of axis 'v' must be a positive int, not a tuple of 2 items.",
        "  pattern: b (t v) c -> (b t v) c",
    ),
    case(
        "length-a-tensor",
        lambda: Distribute("b (t v) c -> (b t v) c", nn.Identity(), v=zeros(2, 1)),
        "The length of axis 'v' must be a positive int, not a Tensor of dtype torch.float32 and shape (2, 1).",
        "  pattern: b (t v) c -> (b t v) c",
    ),
    case(
        "module-as-a-keyword",
        lambda: Distribute("b t c -> (b t) c", module=nn.Identity()),
        "The length of axis 'module' must be a positive int, not Identity().",
        "  pattern: b t c -> (b t) c",
        "  Pass the pattern and the module positionally: Distribute(pattern, module).",
    ),
    case(
        "length-unused",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), q=3),
        "Axis 'q' was given a length (q=3) but no pattern uses it.",
        "  pattern: b t c -> (b t) c",
        "  Remove the keyword or correct its name.",
    ),
    case(
        "out-leaf-not-a-pattern",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), out=("(b t) c -> b t c", 3)),
        "Each leaf of out= must be a pattern string or None, not int (3).",
        "  pattern: b t c -> (b t) c",
        "  Give out= one pattern for every output tensor, or a structure like the module's output with a "
        "pattern or None at each leaf.",
    ),
    case(
        "out-without-arrow",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), out="(b t) c"),
        "In out=: The pattern needs exactly one '->' between the input and the folded layout.",
        "  pattern: (b t) c",
        "  Write it as einops does, for example 'b t c h w -> (b t) c h w'.",
    ),
    case(
        "out-axis-only-on-the-left",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), out="(b t) c d -> b t c"),
        "In out=: Axes must appear on both sides of '->', but d appears on one side only in operand 0 "
        "('(b t) c d -> b t c').",
        "  pattern: (b t) c d -> b t c",
        "                   ^",
        "  A fold only moves axes: every axis on the left must be placed on the right, and no new ones.",
    ),
    case(
        "out-with-two-operands",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), out="(b t) c, x -> b t c, x"),
        "In out=: the pattern must describe one tensor, but it has 2 operands.",
        "  pattern: (b t) c, x -> b t c, x",
        "  Remove the commas: one pattern applies to one tensor here.",
    ),
    case(
        "fold-kwargs-not-a-mapping",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), fold_kwargs=["mask"]),
        "fold_kwargs must map keyword names to patterns, not list.",
        "  pattern: b t c -> (b t) c",
        "  For example fold_kwargs={'mask': 'b t s -> (b t) s'}.",
    ),
    case(
        "fold-kwargs-pattern-not-a-string",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), fold_kwargs={"mask": 3}),
        "fold_kwargs['mask'] must be a pattern string, not int.",
        "  pattern: b t c -> (b t) c",
        "  For example fold_kwargs={'mask': 'b t s -> (b t) s'}.",
    ),
    case(
        "fold-kwargs-pattern-malformed",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), fold_kwargs={"mask": "b t s"}),
        "In fold_kwargs['mask']: The pattern needs exactly one '->' between the input and the folded layout.",
        "  pattern: b t s",
        "  Write it as einops does, for example 'b t c h w -> (b t) c h w'.",
    ),
    case(
        "chunk-size-not-positive",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), chunk_size=0),
        "chunk_size must be a positive int (rows of the folded batch per call), not 0.",
        "  pattern: b t c -> (b t) c",
        "  Pass for example chunk_size=64, or None to run the module once.",
    ),
    case(
        "chunk-size-not-positive-in-the-function-form",
        lambda: distribute("b t c -> (b t) c", identity, chunk_size=0),
        "chunk_size must be a positive int (rows of the folded batch per call), not 0.",
        "  pattern: b t c -> (b t) c",
        "  Pass for example chunk_size=64, or None to run the module once.",
    ),
    case(
        "flag-not-a-bool",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), checkpoint="yes"),
        "checkpoint must be True or False, not 'yes'.",
        "  pattern: b t c -> (b t) c",
    ),
    case(
        "fill-value-not-a-number",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), fill_value="zero"),
        "fill_value must be a number, not 'zero'.",
        "  pattern: b t c -> (b t) c",
        "  It fills the rows that a mask leaves out, for example fill_value=0.0 or float('nan').",
    ),
    case(
        "fill-value-of-80-characters",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), fill_value="f" * 78),
        "fill_value must be a number, not '" + "f" * 78 + "'.",
        "  pattern: b t c -> (b t) c",
        "  It fills the rows that a mask leaves out, for example fill_value=0.0 or float('nan').",
    ),
    case(
        "fill-value-of-81-characters",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), fill_value="f" * 79),
        "fill_value must be a number, not '" + "f" * 76 + "....",
        "  pattern: b t c -> (b t) c",
        "  It fills the rows that a mask leaves out, for example fill_value=0.0 or float('nan').",
    ),
    case(
        "fill-value-with-a-shape-but-no-dtype",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), fill_value=Shaped()),
        "fill_value must be a number, not Shaped().",
        "  pattern: b t c -> (b t) c",
        "  It fills the rows that a mask leaves out, for example fill_value=0.0 or float('nan').",
    ),
    case(
        "copy-not-a-bool",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), copy="yes"),
        "copy must be None, True or False, not 'yes'.",
        "  pattern: b t c -> (b t) c",
        "  None copies only where no view exists, True always gives the module its own tensors, False "
        "never copies and raises where a copy would be needed.",
    ),
    case(
        "chunks-with-out",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), chunk_size=2, out="(b t) c -> b t c"),
        "chunk_size cannot be used with out=: the outputs of the chunks are put together at the folded "
        "dim of each output.",
        "  pattern: b t c -> (b t) c",
        "  Use the default unfold (no out=) and rearrange the result afterwards.",
    ),
    case(
        "chunks-when-nothing-is-folded",
        lambda: Distribute("b c -> b c", nn.Identity(), chunk_size=2),
        "chunk_size cannot be used when the pattern folds no axes: the outputs of the chunks are put "
        "together at the folded dim of each output.",
        "  pattern: b c -> b c",
        "  Use the default unfold (no out=) and rearrange the result afterwards.",
    ),
    case(
        "repeats-with-out",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), compute_repeats_once=True, out="(b t) c -> b t c"),
        "compute_repeats_once cannot be used with out=: the outputs are expanded back at the folded dim "
        "of each output.",
        "  pattern: b t c -> (b t) c",
        "  Use the default unfold (no out=) and rearrange the result afterwards.",
    ),
    case(
        "module-is-a-class",
        lambda: Distribute("b t -> (b t)", nn.Linear),
        "The wrapped module must be a module instance or another callable, not the class Linear.",
        "  pattern: b t -> (b t)",
        "  Pass an instance, for example nn.Linear(4, 5) rather than nn.Linear.",
    ),
    case(
        "module-is-not-callable",
        lambda: Distribute("b t -> (b t)", "conv"),
        "The wrapped module must be a module instance or another callable, not an object of type str.",
        "  pattern: b t -> (b t)",
        "  Pass the module or function as the second positional argument.",
    ),
    case(
        "function-is-not-callable-in-the-call-form",
        lambda: distribute("b t -> (b t)", 5),
        "The wrapped module must be a module instance or another callable, not an object of type int.",
        "  pattern: b t -> (b t)",
        "  Pass the module or function as the second positional argument.",
    ),
    case(
        "function-is-not-callable",
        lambda: distribute("b t -> (b t)")(5),
        "The wrapped module must be a module instance or another callable, not an object of type int.",
        "  pattern: b t -> (b t)",
        "  Pass the module or function as the second positional argument.",
    ),
    case(
        "batch-first-not-a-bool",
        lambda: TimeDistributed(nn.Identity(), "yes"),
        "batch_first must be True or False, not 'yes'.",
        "  pattern: b t ... -> (b t) ...",
        "  Both fold the first two axes; the flag names them (b t) or (t b) in messages.",
    ),
    case(
        "time-distributed-without-a-module",
        lambda: TimeDistributed(None),
        "TimeDistributed needs the module to apply at every time step.",
        "  pattern: t b ... -> (t b) ...",
        "  Write TimeDistributed(module, batch_first).",
    ),
    case(
        "factory-called-with-tensors",
        lambda: Distribute("b t c -> (b t) c")(zeros(2, 3, 4)),
        "This Distribute wraps no module yet: call it with the module to wrap, not with tensors.",
        "  pattern: b t c -> (b t) c",
        "  Write Distribute(pattern, module), or Distribute(pattern)(module).",
    ),
    case(
        "factory-called-with-a-module-and-keywords",
        lambda: Distribute("b t c -> (b t) c")(nn.Identity(), chunk_size=2),
        "This Distribute wraps no module yet: call it with the module to wrap, not with tensors.",
        "  pattern: b t c -> (b t) c",
        "  Write Distribute(pattern, module), or Distribute(pattern)(module).",
    ),
    case(
        "factory-called-with-nothing",
        lambda: Distribute("b t c -> (b t) c")(),
        "This Distribute wraps no module yet: call it with the module to wrap, not with tensors.",
        "  pattern: b t c -> (b t) c",
        "  Write Distribute(pattern, module), or Distribute(pattern)(module).",
    ),
]

INPUTS = [
    case(
        "rank",
        lambda: Distribute("b t c h w -> (b t) c h w", nn.Identity())(zeros(2, 3, 4)),
        "argument 0 has 3 dims, but 'b t c h w' expects 5.",
        "  pattern: b t c h w -> (b t) c h w",
        "  argument 0: shape (2, 3, 4)",
        "  Pass a tensor of the rank the pattern describes, or change the pattern ('...' stands for any "
        "number of dims).",
    ),
    case(
        "rank-with-a-group-on-the-left",
        lambda: Distribute("b (t v) c -> (b t v) c", nn.Identity(), v=2)(zeros(2, 6)),
        "argument 0 has 2 dims, but 'b (t v) c' expects 3.",
        "  pattern: b (t v) c -> (b t v) c",
        "  argument 0: shape (2, 6)",
        "  Pass a tensor of the rank the pattern describes, or change the pattern ('...' stands for any "
        "number of dims).",
    ),
    case(
        "rank-below-the-ellipsis",
        lambda: TimeDistributed(nn.Identity())(zeros(3)),
        "argument 0 has 1 dim, but 't b ...' expects at least 2.",
        "  pattern: t b ... -> (t b) ...",
        "  argument 0: shape (3,)",
        "  Pass a tensor of the rank the pattern describes, or change the pattern ('...' stands for any "
        "number of dims).",
    ),
    case(
        "given-length-disagrees",
        lambda: Distribute("b t c -> (b t) c", nn.Identity(), t=4)(zeros(2, 3, 5)),
        "argument 0 does not fit the pattern: axis 't' has size 3 but was given as 4.",
        "  pattern: b t c -> (b t) c",
        "             ^",
        "  argument 0: shape (2, 3, 5)",
        "  axis sizes: b=2, t=3, c=5",
        "  lengths given: t=4",
        "  Pass a tensor whose sizes match, or correct the axis lengths given as keywords.",
    ),
    case(
        "group-cannot-be-split",
        lambda: Distribute("b (t v) c -> (b t v) c", nn.Identity(), v=4)(zeros(2, 6, 3)),
        "argument 0 does not fit the pattern: dim 1 of size 6 cannot be split into (t v) with v=4.",
        "  pattern: b (t v) c -> (b t v) c",
        "              ^",
        "  argument 0: shape (2, 6, 3)",
        "  axis sizes: b=2, c=3",
        "  lengths given: v=4",
        "  Pass a tensor whose sizes match, or correct the axis lengths given as keywords.",
    ),
    case(
        "group-of-given-lengths-on-a-multiple",
        lambda: Distribute("b (t v) c -> (b t v) c", nn.Identity(), t=3, v=2)(zeros(2, 12, 3)),
        "argument 0 does not fit the pattern: dim 1 of size 12 cannot be split into (t v) with t=3, v=2.",
        "  pattern: b (t v) c -> (b t v) c",
        "              ^",
        "  argument 0: shape (2, 12, 3)",
        "  axis sizes: b=2, c=3",
        "  lengths given: t=3, v=2",
        "  Pass a tensor whose sizes match, or correct the axis lengths given as keywords.",
    ),
    case(
        "unit-axis-is-not-one",
        lambda: Distribute("b 1 c -> (b) c", nn.Identity())(zeros(2, 3, 4)),
        "argument 0 does not fit the pattern: dim 1 is written as 1 but has size 3.",
        "  pattern: b 1 c -> (b) c",
        "  argument 0: shape (2, 3, 4)",
        "  axis sizes: b=2, c=4",
        "  Pass a tensor whose sizes match, or correct the axis lengths given as keywords.",
    ),
    case(
        "operands-disagree",
        lambda: Distribute("b t x, b t y -> (b t) x, (b t) y", identity)(zeros(2, 3, 4), zeros(2, 4, 5)),
        "argument 1 disagrees with argument 0 on axis 't': 4 here, 3 there.",
        "  pattern: b t x, b t y -> (b t) x, (b t) y",
        "                    ^",
        "  argument 0: shape (2, 3, 4)",
        "  argument 1: shape (2, 4, 5)",
        "  Every tensor argument must have the same sizes for the folded axes and for every axis name operands share.",
    ),
    case(
        "operands-disagree-on-a-kept-axis",
        lambda: Distribute("b t x, b t x -> (b t) x, (b t) x", identity)(zeros(2, 3, 4), zeros(2, 3, 5)),
        "argument 1 disagrees with argument 0 on axis 'x': 5 here, 4 there.",
        "  pattern: b t x, b t x -> (b t) x, (b t) x",
        "                      ^",
        "  argument 0: shape (2, 3, 4)",
        "  argument 1: shape (2, 3, 5)",
        "  Every tensor argument must have the same sizes for the folded axes and for every axis name operands share.",
    ),
    case(
        "arguments-disagree-on-the-folded-axes",
        lambda: Distribute("b t c -> (b t) c", identity)(zeros(2, 3, 4), zeros(2, 5, 4)),
        "argument 1 disagrees with argument 0 on axis 't': 5 here, 3 there.",
        "  pattern: b t c -> (b t) c",
        "             ^",
        "  argument 0: shape (2, 3, 4)",
        "  argument 1: shape (2, 5, 4)",
        "  Every tensor argument must have the same sizes for the folded axes.",
    ),
    case(
        "arguments-disagree-on-the-ellipsis",
        lambda: Distribute("... c -> (...) c", identity)(zeros(2, 3, 4), zeros(3, 2, 4)),
        "argument 1 disagrees with argument 0 on the axes of '...': (3, 2) here, (2, 3) there.",
        "  pattern: ... c -> (...) c",
        "           ^^^",
        "  argument 0: shape (2, 3, 4)",
        "  argument 1: shape (3, 2, 4)",
        "  Every tensor argument must have the same sizes for the folded axes.",
    ),
    case(
        "arguments-disagree-on-a-one-axis-ellipsis",
        lambda: Distribute("... c -> (...) c", identity)(zeros(2, 4), zeros(3, 4)),
        "argument 1 disagrees with argument 0 on the axes of '...': (3) here, (2) there.",
        "  pattern: ... c -> (...) c",
        "           ^^^",
        "  argument 0: shape (2, 4)",
        "  argument 1: shape (3, 4)",
        "  Every tensor argument must have the same sizes for the folded axes.",
    ),
    case(
        "keyword-disagrees",
        lambda: Distribute("b t c -> (b t) c", identity, fold_kwargs={"mask": "b t -> (b t)"})(
            zeros(2, 3, 4), mask=zeros(2, 4)
        ),
        "keyword argument 'mask' disagrees with argument 0 on axis 't': 4 here, 3 there.",
        "  pattern: b t -> (b t)",
        "             ^",
        "  argument 0: shape (2, 3, 4)",
        "  keyword argument 'mask': shape (2, 4)",
        "  Every tensor argument must have the same sizes for the folded axes.",
    ),
    case(
        "keyword-not-a-tensor",
        lambda: Distribute("b t c -> (b t) c", identity, fold_kwargs={"mask": "b t -> (b t)"})(
            zeros(2, 3, 4), mask=[1]
        ),
        "Keyword argument 'mask' is listed in fold_kwargs but is of type list, not a tensor.",
        "  pattern: b t -> (b t)",
        "  Pass a tensor, or None to leave it out.",
    ),
    case(
        "too-few-tensors-for-the-operands",
        lambda: Distribute("b t x, b t y -> (b t) x, (b t) y", identity)(zeros(2, 3, 4), 5),
        "The pattern has 2 operands, one per positional tensor argument, but 1 positional tensor came "
        "(the positional arguments are (Tensor, int)).",
        "  pattern: b t x, b t y -> (b t) x, (b t) y",
        "  argument 0: shape (2, 3, 4)",
        "  Give one comma-separated operand per positional tensor argument, or a single operand to apply "
        "to all of them; keyword tensors are folded by their own fold_kwargs patterns.",
    ),
    case(
        "no-tensor",
        lambda: Distribute("b t x -> (b t) x", identity)(3, "a"),
        "The pattern needs at least one tensor to fold, but none came: the positional arguments are (int, str).",
        "  pattern: b t x -> (b t) x",
        "  Pass the tensor to fold positionally, or as a keyword argument named in fold_kwargs.",
    ),
    case(
        "no-argument",
        lambda: Distribute("b t x -> (b t) x", identity)(),
        "The pattern needs at least one tensor to fold, but none came.",
        "  pattern: b t x -> (b t) x",
        "  Pass the tensor to fold positionally, or as a keyword argument named in fold_kwargs.",
    ),
    case(
        "keyword-tensor-not-in-fold-kwargs-after-a-plain-value",
        lambda: Distribute("b t d -> (b t) d", identity)(3, x=zeros(2, 3, 4)),
        "The pattern needs at least one tensor to fold, but none came: the positional arguments are "
        "(int), and the keyword tensor 'x' is not named in fold_kwargs.",
        "  pattern: b t d -> (b t) d",
        "  Keyword tensors are folded only when named in fold_kwargs, for example fold_kwargs={'x': 'b t "
        "... -> (b t) ...'}.",
    ),
    case(
        "keyword-array-not-in-fold-kwargs",
        lambda: distribute("b t d -> (b t) d", identity)(x=np.zeros((2, 3, 4))),
        "The pattern needs at least one tensor to fold, but none came: the keyword tensor 'x' is not named in "
        "fold_kwargs.",
        "  pattern: b t d -> (b t) d",
        "  Keyword tensors are folded only when named in fold_kwargs, for example fold_kwargs={'x': 'b t ... -> (b t) "
        "...'}.",
    ),
    case(
        "keyword-tensors-not-in-fold-kwargs",
        lambda: Distribute("b t d -> (b t) d", identity)(3, x=zeros(2, 3, 4), y=zeros(2, 3, 4), scale=2.0),
        "The pattern needs at least one tensor to fold, but none came: the positional arguments are (int), and the "
        "keyword tensors 'x', 'y' are not named in fold_kwargs.",
        "  pattern: b t d -> (b t) d",
        "  Keyword tensors are folded only when named in fold_kwargs, for example fold_kwargs={'x': 'b t ... -> (b t) "
        "...'}.",
    ),
    case(
        "keyword-tensors-fold-other-axes",
        lambda: Distribute("b t d -> (b t) d", identity, fold_kwargs={"mask": "b s -> b s", "pad": "b s -> b s"})(
            mask=zeros(2, 3), pad=zeros(2, 3)
        ),
        "The pattern needs a tensor that carries the folded group (b t), but none came: no positional tensor, and the "
        "keyword tensors named in fold_kwargs ('mask', 'pad') fold other axes.",
        "  pattern: b t d -> (b t) d",
        "  Pass the tensor to fold positionally, or give a keyword a pattern that folds (b t).",
    ),
    case(
        "nested-strided",
        lambda: Distribute("b t c -> (b t) c", identity)(strided_nested()),
        "argument 0 is a nested tensor; foldaxes folds strided (dense) tensors only.",
        "  pattern: b t c -> (b t) c",
        "  Build it with layout=torch.jagged, which Distribute accepts, or convert it with x.to_padded_tensor(0).",
    ),
    case(
        "sparse",
        lambda: Distribute("b t c -> (b t) c", identity)(sparse()),
        "argument 0 is a sparse_coo tensor; foldaxes folds strided (dense) tensors only.",
        "  pattern: b t c -> (b t) c",
        "  Convert it first, for example with x.to_dense().",
    ),
    case(
        "copy-refused",
        lambda: Distribute("b t c -> (b t) c", identity, copy=False)(zeros(3, 2, 4).transpose(0, 1)),
        "argument 0 cannot be folded without a copy, and copy=False forbids one. (b t) cannot be one "
        "axis: b's stride 4 (= c) would have to be t's size 3 times t's stride 8 (= b*c), 24.",
        "  pattern: b t c -> (b t) c",
        "                     ^",
        "  argument 0 (strides (4, 8, 1)): shape (2, 3, 4)",
        "  Writing the group as (t b), the order of its axes in memory, would make it a view. "
        "Distribute('b t c -> (t b) c', module, out='(t b) ... -> b t ...') folds without a copy. Or "
        "leave copy=None to copy.",
    ),
    case(
        "copy-refused-with-a-given-length",
        lambda: fold(zeros(6, 4), "(t b) c -> (b t) c", b=2, copy=False),
        "argument 0 cannot be folded without a copy, and copy=False forbids one. (b t) cannot be one axis: b's "
        "stride 4 (= c) would have to be t's size 3 times t's stride 8 (= b*c), 24.",
        "  pattern: (t b) c -> (b t) c",
        "                       ^",
        "  argument 0 (strides (4, 1)): shape (6, 4)",
        "  Writing the group as (t b), the order of its axes in memory, would make it a view. Distribute('(t b) c "
        "-> (t b) c', module, b=2, out='(t b) ... -> b t ...') folds without a copy. Or leave copy=None to copy.",
    ),
    case(  # no Distribute(...) line: every operand's group would have to be reordered alike
        "copy-refused-for-one-operand-of-two",
        lambda: Distribute("b t d, b t e -> (b t) d, (b t) e", identity, copy=False)(
            zeros(3, 2, 4).transpose(0, 1), zeros(3, 2, 5).transpose(0, 1)
        ),
        "argument 0 cannot be folded without a copy, and copy=False forbids one. (b t) cannot be one axis: b's "
        "stride 4 (= d) would have to be t's size 3 times t's stride 8 (= b*d), 24.",
        "  pattern: b t d, b t e -> (b t) d, (b t) e",
        "                            ^",
        "  argument 0 (strides (4, 8, 1)): shape (2, 3, 4)",
        "  Writing the group as (t b), the order of its axes in memory, would make it a view. Or leave copy=None to "
        "copy.",
    ),
    case(  # no Distribute(...) line for a fold_kwargs entry either
        "copy-refused-for-a-keyword",
        lambda: Distribute("b t d -> (b t) d", identity, fold_kwargs={"m": "b x y -> b (x y)"}, copy=False)(
            zeros(2, 3, 4), m=zeros(2, 5, 4).transpose(1, 2)
        ),
        "keyword argument 'm' cannot be folded without a copy, and copy=False forbids one. (x y) cannot be one "
        "axis: x's stride 1 would have to be y's size 5 times y's stride 4 (= x), 20.",
        "  pattern: b x y -> b (x y)",
        "                       ^",
        "  keyword argument 'm' (strides (20, 1, 4)): shape (2, 4, 5)",
        "  Writing the group as (y x), the order of its axes in memory, would make it a view. Or leave copy=None to "
        "copy.",
    ),
    case(
        "copy-refused-for-a-crop",
        lambda: fold(zeros(2, 3, 5)[:, :, :4], "b t d -> b (t d)", copy=False),
        "argument 0 cannot be folded without a copy, and copy=False forbids one. (t d) cannot be one axis: t's "
        "stride 5 would have to be d's size 4 times d's stride 1, 4.",
        "  pattern: b t d -> b (t d)",
        "                       ^",
        "  argument 0 (strides (15, 5, 1)): shape (2, 3, 4)",
        "  There is a gap in memory between them: the input is cropped or strided along an axis. Or leave copy=None "
        "to copy.",
    ),
    case(
        "copy-refused-for-overlapping-rows",
        lambda: fold(zeros(10).as_strided((2, 3), (4, 2)), "b t -> (b t)", copy=False),
        "argument 0 cannot be folded without a copy, and copy=False forbids one. (b t) cannot be one axis: b's "
        "stride 4 would have to be t's size 3 times t's stride 2, 6.",
        "  pattern: b t -> (b t)",
        "                   ^",
        "  argument 0 (strides (4, 2)): shape (2, 3)",
        "  Or leave copy=None to copy.",
    ),
    case(
        "fold-of-a-number",
        lambda: fold(3, "b t -> (b t)"),
        "fold takes a tensor or an array, or a sequence of them, not int.",
        "  pattern: b t -> (b t)",
        "  Pass the tensor first and the pattern second: fold(x, pattern).",
    ),
    case(
        "fold-of-a-list-with-a-number",
        lambda: fold([zeros(2), 3], "b -> (b)"),
        "fold takes a tensor or an array, or a sequence of them, not list.",
        "  pattern: b -> (b)",
        "  Pass the tensor first and the pattern second: fold(x, pattern).",
    ),
    case(
        "unfold-without-a-spec",
        lambda: unfold(zeros(2), "b t -> (b t)"),
        "unfold needs the FoldSpec that fold returned, not 'b t -> (b t)'.",
        "  Write folded, spec = fold(x, pattern), then unfold(y, spec).",
    ),
]

OUTPUTS = [
    case(
        "output-without-the-folded-dim",
        lambda: Distribute("b t x -> (b t) x", lambda a: {"a": a, "stats": (a.mean(), a[:1])})(zeros(2, 3, 4)),
        "Output ['stats'][0] cannot be unfolded: dim 0 should hold the folded (b t) of size 6, but it has no such dim.",
        "  pattern: b t x -> (b t) x",
        "  output ['stats'][0]: shape ()",
        "  axis sizes: b=2, t=3",
        "  Pass out= with a pattern for this output (for example '(b t) n -> b t n' if the folded axes "
        "are elsewhere), or None to return it as the module gave it.",
    ),
    case(
        "output-below-the-folded-dim",
        lambda: Distribute("b c t -> c (b t)", lambda y: y.sum(0))(zeros(2, 3, 4)),
        "The output cannot be unfolded: dim 1 should hold the folded (b t) of size 8, but it has no such dim.",
        "  pattern: b c t -> c (b t)",
        "  the output: shape (8,)",
        "  axis sizes: b=2, t=4",
        "  Pass out= with a pattern for this output (for example '(b t) n -> b t n' if the folded axes "
        "are elsewhere), or None to return it as the module gave it.",
    ),
    case(
        "output-ending-before-the-folded-dim",
        lambda: Distribute("b t c -> b (t c)", lambda y: y.sum(1))(zeros(2, 3, 4)),
        "The output cannot be unfolded: dim 1 should hold the folded (t c) of size 12, but it has no such dim.",
        "  pattern: b t c -> b (t c)",
        "  the output: shape (2,)",
        "  axis sizes: t=3, c=4",
        "  Pass out= with a pattern for this output (for example '(t c) n -> t c n' if the folded axes "
        "are elsewhere), or None to return it as the module gave it.",
    ),
    case(
        "output-of-another-size",
        lambda: Distribute("b t x -> (b t) x", lambda a: (a, a[:5]))(zeros(2, 3, 4)),
        "Output [1] cannot be unfolded: dim 0 should hold the folded (b t) of size 6, but it has size 5.",
        "  pattern: b t x -> (b t) x",
        "  output [1]: shape (5, 4)",
        "  axis sizes: b=2, t=3",
        "  Pass out= with a pattern for this output (for example '(b t) n -> b t n' if the folded axes "
        "are elsewhere), or None to return it as the module gave it.",
    ),
    case(
        "single-output-of-another-size",
        lambda: Distribute("b v x -> (b v) x", lambda a: a[:5])(zeros(2, 3, 4)),
        "The output cannot be unfolded: dim 0 should hold the folded (b v) of size 6, but it has size 5.",
        "  pattern: b v x -> (b v) x",
        "  the output: shape (5, 4)",
        "  axis sizes: b=2, v=3",
        "  Pass out= with a pattern for this output (for example '(b v) n -> b v n' if the folded axes "
        "are elsewhere), or None to return it as the module gave it.",
    ),
    case(
        "unfold-of-another-size",
        lambda: unfold(zeros(5, 4), fold(zeros(2, 3, 4), "b t x -> (b t) x")[1]),
        "The output cannot be unfolded: dim 0 should hold the folded (b t) of size 6, but it has size 5.",
        "  pattern: b t x -> (b t) x",
        "  the output: shape (5, 4)",
        "  axis sizes: b=2, t=3",
        "  Pass out= with a pattern for this output (for example '(b t) n -> b t n' if the folded axes "
        "are elsewhere), or None to return it as the module gave it.",
    ),
    case(
        "output-in-a-set",
        lambda: Distribute("b t x -> (b t) x", lambda a: (a, {a}))(zeros(2, 3, 4)),
        "Output [1] is of type set and holds tensors, which foldaxes cannot look into: they would come "
        "back still folded.",
        "  pattern: b t x -> (b t) x",
        "  Return a tuple, list, dict or NamedTuple, register a dataclass with "
        "torch.export.register_dataclass, or pass out= with None for this output.",
    ),
    case(
        "output-in-a-dataclass",
        lambda: Distribute("b t x -> (b t) x", lambda a: Holder(a))(zeros(2, 3, 4)),
        "The output is of type Holder and holds tensors, which foldaxes cannot look into: they would "
        "come back still folded.",
        "  pattern: b t x -> (b t) x",
        "  Return a tuple, list, dict or NamedTuple, register a dataclass with "
        "torch.export.register_dataclass, or pass out= with None for this output.",
    ),
    case(
        "out-structure-for-a-single-tensor",
        lambda: Distribute("b t x -> (b t) x", identity, out=("(b t) x -> b t x", None))(zeros(2, 3, 4)),
        "out= does not match the structure of the module's output: " + THEIRS,
        "  pattern: b t x -> (b t) x",
        "  Give out= the same containers as the output. out=('(b t) x -> b t x', None); the output is a single tensor.",
    ),
    case(
        "out-structure-too-short",
        lambda: Distribute("b t x -> (b t) x", lambda a: (a, a), out=("(b t) x -> b t x",))(zeros(2, 3, 4)),
        "out= does not match the structure of the module's output: " + THEIRS,
        "  pattern: b t x -> (b t) x",
        "  Give out= the same containers as the output. out=('(b t) x -> b t x',); the output has leaves at [0], [1].",
    ),
    case(
        "out-structure-of-another-container",
        lambda: Distribute("b t x -> (b t) x", lambda a: {"a": a}, out=["(b t) x -> b t x"])(zeros(2, 3, 4)),
        "out= does not match the structure of the module's output: " + THEIRS,
        "  pattern: b t x -> (b t) x",
        "  Give out= the same containers as the output. out=['(b t) x -> b t x']; the output has leaves at ['a'].",
    ),
    case(
        "out-pattern-size",
        lambda: Distribute("b t x -> (b t) x", lambda a: a[:5], out="(b t) x -> b t x")(zeros(2, 3, 4)),
        "out= cannot rearrange the output: dim 0 of size 5 cannot be split into (b t) with b=2, t=3.",
        "  pattern: (b t) x -> b t x",
        "            ^",
        "  the output: shape (5, 4)",
        "  axis sizes: x=4",
        "  lengths given: b=2, t=3",
        "  The folded axes are bound from the input (fold pattern: b t x -> (b t) x).",
    ),
    case(
        "out-pattern-given-length",
        lambda: Distribute("b t x -> (b t) x", identity, out="(b t) (g x) -> b t g x", g=3)(zeros(2, 3, 4)),
        "out= cannot rearrange the output: dim 1 of size 4 cannot be split into (g x) with g=3.",
        "  pattern: (b t) (g x) -> b t g x",
        "                    ^",
        "  the output: shape (6, 4)",
        "  lengths given: g=3, b=2, t=3",
        "  The folded axes are bound from the input (fold pattern: b t x -> (b t) x).",
    ),
    case(
        "out-pattern-size-of-a-second-output",
        lambda: Distribute("b t x -> (b t) x", lambda a: (a, a[:5]), out=("(b t) x -> b t x", "(b t) x -> b t x"))(
            zeros(2, 3, 4)
        ),
        "out= cannot rearrange output [1]: dim 0 of size 5 cannot be split into (b t) with b=2, t=3.",
        "  pattern: (b t) x -> b t x",
        "            ^",
        "  output [1]: shape (5, 4)",
        "  axis sizes: x=4",
        "  lengths given: b=2, t=3",
        "  The folded axes are bound from the input (fold pattern: b t x -> (b t) x).",
    ),
    case(
        "output-rows-of-an-ellipsis-group",
        lambda: Distribute("... x -> (...) x", lambda a: a[:5])(zeros(2, 3, 4)),
        "The output cannot be unfolded: dim 0 should hold the folded (...) of size 6, but it has size 5.",
        "  pattern: ... x -> (...) x",
        "  the output: shape (5, 4)",
        "  Pass out= with a pattern for this output (for example '(...) n -> ... n' if the folded axes are "
        "elsewhere), or None to return it as the module gave it.",
    ),
    case(
        "unfold-of-an-array-of-too-low-a-rank",
        lambda: foldaxes.unfold(np.zeros(2), foldaxes.fold(np.zeros((2, 3, 4)), "b t x -> b (t x)")[1]),
        "The output cannot be unfolded: dim 1 should hold the folded (t x) of size 12, but it has no such dim.",
        "  pattern: b t x -> b (t x)",
        "  the output: shape (2,)",
        "  axis sizes: t=3, x=4",
        "  Pass out= with a pattern for this output (for example '(t x) n -> t x n' if the folded axes are "
        "elsewhere), or None to return it as the module gave it.",
    ),
    case(
        "out-pattern-rank",
        lambda: Distribute("b t x -> (b t) x", identity, out="(b t) x y -> b t x y")(zeros(2, 3, 4)),
        "the output has 2 dims, but '(b t) x y' expects 3.",
        "  pattern: (b t) x y -> b t x y",
        "  the output: shape (6, 4)",
        "  Pass a tensor of the rank the pattern describes, or change the pattern ('...' stands for any "
        "number of dims).",
    ),
]

ROWS = [
    case(
        "mask-and-lengths",
        lambda: Distribute("b t d -> (b t) d", identity)(
            zeros(2, 3, 4), fold_mask=torch.ones(2, 3, dtype=torch.bool), fold_lengths=[1, 2]
        ),
        "Both fold_mask and fold_lengths were given; they say the same thing two ways.",
        "  pattern: b t d -> (b t) d",
        "  Pass one: fold_mask for any pattern of valid rows, fold_lengths for a prefix of each sample.",
    ),
    case(
        "mask-not-bool",
        lambda: Distribute("b t d -> (b t) d", identity)(zeros(2, 3, 4), fold_mask=torch.ones(2, 3)),
        "fold_mask must be a bool tensor over the folded axes (b t), not a torch.float32 tensor.",
        "  pattern: b t d -> (b t) d",
        "  folded axes (b t): shape (2, 3)",
        "  Pass for example lengths[:, None] > torch.arange(t), or per-sample lengths as fold_lengths.",
    ),
    case(
        "mask-not-a-tensor",
        lambda: Distribute("b t d -> (b t) d", identity)(zeros(2, 3, 4), fold_mask=[[True] * 3] * 2),
        "fold_mask must be a bool tensor over the folded axes (b t), not list.",
        "  pattern: b t d -> (b t) d",
        "  folded axes (b t): shape (2, 3)",
        "  Pass for example lengths[:, None] > torch.arange(t), or per-sample lengths as fold_lengths.",
    ),
    case(
        "mask-shape",
        lambda: Distribute("b t d -> (b t) d", identity)(zeros(2, 3, 4), fold_mask=torch.ones(3, 2, dtype=torch.bool)),
        "fold_mask has shape (3, 2), but the folded axes (b t) have shape (2, 3).",
        "  pattern: b t d -> (b t) d",
        "  fold_mask: shape (3, 2)",
        "  folded axes (b t): shape (2, 3)",
        "  Give the mask the sizes of the folded axes, in the order the folded group lists them.",
    ),
    case(
        "lengths-for-three-axes",
        lambda: Distribute("b t v d -> (b t v) d", identity)(zeros(2, 3, 2, 4), fold_lengths=[1, 2]),
        "fold_lengths needs a folded group of two axes (sample and time), but (b t v) has 3.",
        "  pattern: b t v d -> (b t v) d",
        "  folded axes (b t v): shape (2, 3, 2)",
        "  Pass fold_mask, a bool tensor of shape (2, 3, 2), instead.",
    ),
    case(
        "lengths-not-integers",
        lambda: Distribute("b t d -> (b t) d", identity)(zeros(2, 3, 4), fold_lengths=[1.5, 2.0]),
        "fold_lengths must be integers, one per sample, not [1.5, 2.0].",
        "  pattern: b t d -> (b t) d",
        "  Pass a 1-D integer tensor or a list of 2 ints.",
    ),
    case(
        "lengths-shape",
        lambda: Distribute("b t d -> (b t) d", identity)(zeros(2, 3, 4), fold_lengths=[1, 2, 3]),
        "fold_lengths has shape (3,), but there are 2 samples (axis 0 of the folded axes (b t)).",
        "  pattern: b t d -> (b t) d",
        "  fold_lengths: shape (3,)",
        "  folded axes (b t): shape (2, 3)",
        "  Give one length per sample, each between 0 and 3.",
    ),
    case(
        "lengths-out-of-range",
        lambda: Distribute("b t d -> (b t) d", identity)(zeros(2, 3, 4), fold_lengths=[-1, 4]),
        "fold_lengths must lie between 0 and 3 (the time axis), but its entries range from -1 to 4.",
        "  pattern: b t d -> (b t) d",
        "  folded axes (b t): shape (2, 3)",
        "  Correct the lengths, or check which axis of the group is time.",
    ),
    case(
        "time-major-lengths-shape",
        lambda: TimeDistributed(identity)(zeros(3, 2, 4), fold_lengths=[1, 2, 3]),
        "fold_lengths has shape (3,), but there are 2 samples (axis 1 of the folded axes (t b)).",
        "  pattern: t b ... -> (t b) ...",
        "  fold_lengths: shape (3,)",
        "  folded axes (t b): shape (3, 2)",
        "  Give one length per sample, each between 0 and 3.",
    ),
    case(
        "mask-with-out",
        lambda: Distribute("b t d -> (b t) d", identity, out="(b t) d -> b t d")(
            zeros(2, 3, 4), fold_mask=torch.ones(2, 3, dtype=torch.bool)
        ),
        "fold_mask and fold_lengths cannot be used with out=: the valid rows are gathered from the "
        "folded group and scattered back at the folded dim of each output.",
        "  pattern: b t d -> (b t) d",
        "  Use the default unfold (no out=) and rearrange the result afterwards.",
    ),
    case(
        "batch-statistics",
        lambda: Distribute("b t d -> (b t) d", nn.Sequential(nn.BatchNorm1d(4)), chunk_size=2)(zeros(2, 3, 4)),
        "The module's BatchNorm1d at '0' (training mode) normalises with the statistics of the batch it "
        "is given, but chunk_size=2 runs it on that many rows at a time: its results, and its running "
        "averages, would differ from one call on the whole folded batch.",
        "  pattern: b t d -> (b t) d",
        "  Call .eval() on the module first (running statistics treat rows independently), or pass "
        "allow_batch_statistics=True to the wrapper to accept statistics over each part.",
    ),
    case(
        "batch-statistics-under-checkpointing",
        lambda: Distribute("b t d -> (b t) d", nn.BatchNorm1d(4), checkpoint=True)(zeros(2, 3, 4)),
        "The module's BatchNorm1d (training mode) normalises with the statistics of the batch it is given, but "
        "checkpoint=True runs it a second time during the backward pass: its results, and its running averages, "
        "would differ from one call on the whole folded batch.",
        "  pattern: b t d -> (b t) d",
        "  Call .eval() on the module first (running statistics treat rows independently), or pass "
        "allow_batch_statistics=True to the wrapper to accept statistics over each part.",
    ),
    case(
        "batch-statistics-on-the-valid-rows",
        lambda: Distribute("b t d -> (b t) d", nn.BatchNorm1d(4, track_running_stats=False).eval())(
            zeros(2, 3, 4), fold_lengths=[1, 2]
        ),
        "The module's BatchNorm1d (no running statistics) normalises with the statistics of the batch it "
        "is given, but fold_mask / fold_lengths runs it on the valid rows only: its results, and its "
        "running averages, would differ from one call on the whole folded batch.",
        "  pattern: b t d -> (b t) d",
        "  Call .eval() on the module first (running statistics treat rows independently), or pass "
        "allow_batch_statistics=True to the wrapper to accept statistics over each part.",
    ),
    case(
        "operand-folding-other-axes-in-chunks",
        lambda: Distribute("b t x, b s y -> (b t) x, (b s) y", identity, chunk_size=2)(zeros(2, 3, 4), zeros(2, 5, 4)),
        "argument 1 folds other axes than the folded group (b t), so its rows cannot be chunked or "
        "masked like the others'.",
        "  pattern: b t x, b s y -> (b t) x, (b s) y",
        "                                     ^",
        "  Fold the same axes in every operand, or run without chunk_size and fold_mask.",
    ),
    case(
        "chunk-outputs-of-another-structure",
        lambda: chunked(by_calls(lambda x: x, lambda x: (x,)))(zeros(2, 3, 4)),
        "The module returned differently structured outputs for rows 2 to 3 than for the first rows, so "
        "they cannot be put together.",
        "  pattern: b t d -> (b t) d",
        "  Return the same structure for any rows, or run the module in one call (no chunk_size).",
    ),
    case(
        "chunk-output-without-rows",
        lambda: chunked(lambda x: {"total": x.sum()})(zeros(2, 3, 4)),
        "Output ['total'] cannot be put together from the rows the module ran on: it has no such dim at "
        "dim 0, where the 2 rows it was given should be.",
        "  pattern: b t d -> (b t) d",
        "  output ['total']: shape ()",
        "  chunk_size, fold_mask and fold_lengths need every output tensor to have one row per input row "
        "at the folded dim, and the same other sizes for any rows; run such a module without them.",
    ),
    case(
        "chunk-output-of-another-size",
        lambda: chunked(lambda x: x[:1])(zeros(2, 3, 4)),
        "The output cannot be put together from the rows the module ran on: it has size 1 at dim 0, "
        "where the 2 rows it was given should be.",
        "  pattern: b t d -> (b t) d",
        "  the output: shape (1, 4)",
        "  chunk_size, fold_mask and fold_lengths need every output tensor to have one row per input row "
        "at the folded dim, and the same other sizes for any rows; run such a module without them.",
    ),
    case(
        "chunk-outputs-of-another-shape",
        lambda: chunked(by_calls(lambda x: x, lambda x: x[:, :2]))(zeros(2, 3, 4)),
        "The output cannot be put together from the rows the module ran on: it has shape (2, 2) and "
        "torch.float32, where (2, 4) and torch.float32 came first.",
        "  pattern: b t d -> (b t) d",
        "  the output: shape (2, 2)",
        "  chunk_size, fold_mask and fold_lengths need every output tensor to have one row per input row "
        "at the folded dim, and the same other sizes for any rows; run such a module without them.",
    ),
    case(
        "chunk-outputs-of-another-dtype",
        lambda: chunked(by_calls(lambda x: x, lambda x: x.double()))(zeros(2, 3, 4)),
        "The output cannot be put together from the rows the module ran on: it has shape (2, 4) and "
        "torch.float64, where (2, 4) and torch.float32 came first.",
        "  pattern: b t d -> (b t) d",
        "  the output: shape (2, 4)",
        "  chunk_size, fold_mask and fold_lengths need every output tensor to have one row per input row "
        "at the folded dim, and the same other sizes for any rows; run such a module without them.",
    ),
]

REPEATS = [
    case(
        "draws-on-repeated-rows",
        lambda: Distribute("b t d -> (b t) d", noisy, compute_repeats_once=True)(zeros(2, 1, 4).expand(2, 3, 4)),
        "The module drew random numbers while it computed the rows repeated along t once (a default "
        "torch generator advanced), so every copy would share one draw.",
        "  pattern: b t d -> (b t) d",
        "  Leave compute_repeats_once off (the default computes every copy), or call the module in a "
        "mode that draws nothing, for example after .eval().",
    ),
    case(
        "draws-on-rows-repeated-along-two-axes",
        lambda: Distribute("b t v d -> (b t v) d", noisy, compute_repeats_once=True)(
            zeros(2, 1, 1, 4).expand(2, 3, 2, 4)
        ),
        "The module drew random numbers while it computed the rows repeated along t, v once (a default "
        "torch generator advanced), so every copy would share one draw.",
        "  pattern: b t v d -> (b t v) d",
        "  Leave compute_repeats_once off (the default computes every copy), or call the module in a "
        "mode that draws nothing, for example after .eval().",
    ),
    case(
        "output-of-rows-repeated-along-two-axes-without-the-folded-dim",
        lambda: Distribute("b t v d -> (b t v) d", lambda x: x.sum(), compute_repeats_once=True)(
            zeros(2, 1, 1, 4).expand(2, 3, 2, 4)
        ),
        "The output cannot be unfolded: dim 0 should hold the folded (b t v) of size 2, but it has no such dim.",
        "  pattern: b t v d -> (b t v) d",
        "  the output: shape ()",
        "  axis sizes: b=2, t=1, v=1",
        "  Pass out= with a pattern for this output (for example '(b t v) n -> b t v n' if the folded axes "
        "are elsewhere), or None to return it as the module gave it.",
        "  The input repeats (stride 0) along t, v, so the module ran on one copy, which the sizes above show as 1.",
    ),
    case(
        "output-of-repeated-rows-without-the-folded-dim",
        lambda: Distribute("b t d -> (b t) d", lambda x: x.sum(), compute_repeats_once=True)(
            zeros(2, 1, 4).expand(2, 3, 4)
        ),
        "The output cannot be unfolded: dim 0 should hold the folded (b t) of size 2, but it has no such dim.",
        "  pattern: b t d -> (b t) d",
        "  the output: shape ()",
        "  axis sizes: b=2, t=1",
        "  Pass out= with a pattern for this output (for example '(b t) n -> b t n' if the folded axes "
        "are elsewhere), or None to return it as the module gave it.",
        "  The input repeats (stride 0) along t, so the module ran on one copy, which the sizes above show as 1.",
    ),
]

JAGGED = [
    case(
        "jagged-in-chunks-with-batch-statistics",
        lambda: Distribute("b t d -> (b t) d", nn.BatchNorm1d(4), chunk_size=2)(jagged([3, 1], 4)),
        "The module's BatchNorm1d (training mode) normalises with the statistics of the batch it is given, but "
        "chunk_size=2 runs it on that many rows at a time: its results, and its running averages, would differ "
        "from one call on the whole folded batch.",
        "  pattern: b t d -> (b t) d",
        "  Call .eval() on the module first (running statistics treat rows independently), or pass "
        "allow_batch_statistics=True to the wrapper to accept statistics over each part.",
    ),
    case(
        "jagged-with-lengths",
        lambda: Distribute("b t d -> (b t) d", identity)(jagged([2, 3], 4), fold_lengths=[1, 2]),
        "fold_mask and fold_lengths are for padded tensors; a jagged tensor already holds only real frames.",
        "  pattern: b t d -> (b t) d",
        "  Leave out fold_mask and fold_lengths.",
    ),
    case(
        "jagged-with-out",
        lambda: Distribute("b t d -> (b t) d", identity, out="(b t) d -> b t d")(jagged([2, 3], 4)),
        "out= is not supported with jagged input.",
        "  pattern: b t d -> (b t) d",
        "  Leave out out=.",
    ),
    case(
        "dense-beside-jagged",
        lambda: Distribute("b t d -> (b t) d", identity)(jagged([2, 3], 4), zeros(2, 3, 4)),
        "argument 1 is a dense tensor beside a jagged one; with jagged input, every tensor argument must "
        "be jagged, with the same offsets.",
        "  pattern: b t d -> (b t) d",
        "  Make it jagged too, for example torch.nested.nested_tensor_from_jagged(values, x.offsets()).",
    ),
    case(
        "jagged-folded-another-way",
        lambda: Distribute("b t d -> b t d", identity)(jagged([2, 3], 4)),
        "argument 0 of shape (2, " + THEIRS + ", 4) is not folded that way: Jagged nested tensors are folded only "
        "by patterns of the shape 'b j ... -> (b j) ...', with the ragged dim second, next to the batch "
        "dim, both folded, in that order.",
        "  pattern: b t d -> b t d",
        "  Pad it with x.to_padded_tensor(0.0) and pass fold_mask or fold_lengths, or rearrange inside the module.",
    ),
    case(
        "jagged-with-holes",
        lambda: Distribute("b t d -> (b t) d", identity)(
            torch.nested.narrow(zeros(2, 5, 4), 1, torch.tensor([0, 1]), torch.tensor([2, 3]), layout=torch.jagged)
        ),
        "argument 0 has holes (it was built with lengths, so its values hold frames outside the samples).",
        "  pattern: b t d -> (b t) d",
        "  Call x.contiguous() first, which packs the real frames.",
    ),
    case(
        "jagged-offsets-of-another-count",
        lambda: Distribute("b t d -> (b t) d", identity)(jagged([2, 3], 4), jagged([2, 3, 1], 4)),
        "argument 1 and argument 0 are jagged with different offsets, so their frames do not line up: 3 "
        "samples here, 2 there.",
        "  pattern: b t d -> (b t) d",
        "  Build every jagged argument over the same offsets, for example with "
        "torch.nested.nested_tensor_from_jagged(values, first.offsets()).",
    ),
    case(
        "jagged-offsets-of-another-sample",
        lambda: Distribute("b t d -> (b t) d", identity)(jagged([2, 3], 4), jagged([2, 2], 4)),
        "argument 1 and argument 0 are jagged with different offsets, so their frames do not line up: "
        "sample 1 has 2 frames here, 3 there.",
        "  pattern: b t d -> (b t) d",
        "  Build every jagged argument over the same offsets, for example with "
        "torch.nested.nested_tensor_from_jagged(values, first.offsets()).",
    ),
    case(
        "jagged-output-without-the-frames",
        lambda: Distribute("b t d -> (b t) d", lambda x: (x, x.sum()))(jagged([2, 3], 4)),
        "Output [1] cannot become a jagged tensor: it should have one row per real frame (5) at dim 0, "
        "but it has shape ().",
        "  pattern: b t d -> (b t) d",
        "  With jagged input, return only per-frame tensors; compute per-sample or batch results (a "
        "loss, a mean) outside the wrapper, from the jagged output.",
    ),
    case(
        "jagged-output-nested",
        lambda: Distribute("b t d -> (b t) d", lambda x: jagged([2, 3], 4))(jagged([2, 3], 4)),
        "The output cannot become a jagged tensor: it should have one row per real frame (5) at dim 0, "
        "but it has a nested tensor.",
        "  pattern: b t d -> (b t) d",
        "  With jagged input, return only per-frame tensors; compute per-sample or batch results (a "
        "loss, a mean) outside the wrapper, from the jagged output.",
    ),
    case(
        "fold-of-a-jagged-tensor",
        lambda: fold(jagged([2, 3], 4), "b t d -> (b t) d"),
        "argument 0 is a jagged nested tensor; foldaxes folds strided (dense) tensors only.",
        "  pattern: b t d -> (b t) d",
        "  fold() has no jagged form: Distribute and distribute run a module on a jagged tensor's packed "
        "frames; or pass x.values() (the packed frames) or x.to_padded_tensor(0).",
    ),
]

ARRAYS = [
    case(
        "arrays-of-two-libraries",
        lambda: distribute("b t d -> (b t) d", identity)(np.zeros((2, 3, 4)), xps.zeros((2, 3, 4))),
        "One call folds arrays of one library: argument 1 is from array_api_strict, argument 0 from numpy.",
        "  pattern: b t d -> (b t) d",
        "  Convert them to one library first, for example with torch.from_numpy(x) or numpy.asarray(x).",
    ),
    case(
        "array-beside-a-tensor",
        lambda: fold([np.zeros((2, 3)), zeros(2, 3)], "b t -> (b t)"),
        "One call folds arrays of one library: argument 0 is from numpy, argument 1 is a torch tensor.",
        "  pattern: b t -> (b t)",
        "  Convert them to one library first, for example with torch.from_numpy(x) or numpy.asarray(x).",
    ),
    case(
        "mask-on-arrays",
        lambda: distribute("b t d -> (b t) d", identity)(np.zeros((2, 3, 4)), fold_lengths=[1, 2]),
        "fold_mask and fold_lengths work on torch tensors only, but this call folds arrays of another library.",
        "  pattern: b t d -> (b t) d",
        "  Leave out fold_mask and fold_lengths for arrays, or pass torch tensors (torch.from_numpy(x) "
        "shares NumPy's memory).",
    ),
    case(
        "chunks-on-arrays",
        lambda: distribute("b t d -> (b t) d", identity, chunk_size=2)(np.zeros((2, 3, 4))),
        "chunk_size works on torch tensors only, but this call folds arrays of another library.",
        "  pattern: b t d -> (b t) d",
        "  Leave out chunk_size for arrays, or pass torch tensors (torch.from_numpy(x) shares NumPy's memory).",
    ),
    case(
        "keyword-not-an-array",
        lambda: distribute("b t d -> (b t) d", identity, fold_kwargs={"m": "b t -> (b t)"})(np.zeros((2, 3, 4)), m=[1]),
        "Keyword argument 'm' is listed in fold_kwargs but is of type list, not an array of numpy.",
        "  pattern: b t -> (b t)",
        "  Pass one, or None to leave it out.",
    ),
    case(
        "array-copy-refused-by-its-library",
        lambda: fold(xps.permute_dims(xps.zeros((3, 2, 4)), (1, 0, 2)), "b t d -> (b t) d", copy=False),
        "argument 0 cannot be folded without a copy, its library says, and copy=False forbids one.",
        "  pattern: b t d -> (b t) d",
        "  argument 0: shape (2, 3, 4)",
        "  Leave copy=None to copy.",
    ),
    case(
        "array-copy-refused",
        lambda: fold(np.zeros((3, 2, 4)).transpose(1, 0, 2), "b t c -> (b t) c", copy=False),
        "argument 0 cannot be folded without a copy, and copy=False forbids one. (b t) cannot be one "
        "axis: b's stride 4 (= c) would have to be t's size 3 times t's stride 8 (= b*c), 24.",
        "  pattern: b t c -> (b t) c",
        "                     ^",
        "  argument 0 (strides (4, 8, 1)): shape (2, 3, 4)",
        "  Writing the group as (t b), the order of its axes in memory, would make it a view. "
        "Distribute('b t c -> (t b) c', module, out='(t b) ... -> b t ...') folds without a copy. Or "
        "leave copy=None to copy.",
    ),
]


@pytest.mark.parametrize(("fail", "expected"), PATTERNS + OPTIONS + INPUTS + OUTPUTS + ROWS + REPEATS + JAGGED + ARRAYS)
def test_the_whole_message(fail: Callable[[], Any], expected: list[str]) -> None:
    lines = message(fail).splitlines()
    if len(lines) == len(expected):
        lines = [theirs(line, want) for line, want in zip(lines, expected, strict=True)]
    assert lines == expected


def theirs(line: str, expected: str) -> str:
    """``expected`` when ``line`` is it with einops' or torch's words in place of ``THEIRS``; else ``line``."""
    if THEIRS not in expected:
        return line
    before, after = expected.split(THEIRS)
    quoted = line[len(before) : len(line) - len(after)]
    return expected if line.startswith(before) and line.endswith(after) and quoted.strip() else line
