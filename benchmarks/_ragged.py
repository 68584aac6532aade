"""Workload R: ragged, padded, long and repeated inputs: what computing only the real frames saves.

It measures

(a) a padded batch with ``fold_lengths`` and the same clips as a jagged nested tensor, against the dense call
    on the padded batch, at 25, 50 and 75 % padding, for a per-frame encoder (target: time within 10 % of the
    valid fraction) and for a net that returns feature maps (reported);
(b) inference with ``chunk_size`` against one call (target: peak memory at most 1/k of the unchunked peak plus
    the output, for k chunks, with 5 % for the allocator; time within 1.10x);
(c) a training step (forward and backward) with ``chunk_size`` and ``checkpoint=True`` against one call
    (target: peak memory as in (b); the time is reported, since the forward pass runs twice);
(d) an input expanded along time (stride 0) against the dense call on a contiguous copy: by default every copy
    is computed (reported), and with ``compute_repeats_once=True`` one (target: about 1/T of the time; at most 1.5/T
    passes, for the fixed cost of a call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import foldaxes

from ._harness import footprint, interleaved

PATTERN = "b t c h w -> (b t) c h w"
Check = tuple[str, bool]


def frame_encoder() -> nn.Module:
    """A per-frame encoder, three 3x3 convolutions pooled to 64 features: the module's work sets the time."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def feature_maps() -> nn.Module:
    """The same convolutions without the pooling: each frame's output is 32 feature maps as large as the frame."""
    return nn.Sequential(*list(frame_encoder())[:4], nn.Conv2d(32, 32, 3, padding=1))


def frame_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))


def run(quick: bool) -> tuple[list[str], list[Check]]:
    """Runs the four measurements; returns markdown lines and the targets."""
    torch.manual_seed(0)
    lines, checks = ["**R**: ragged, padded, long and repeated inputs", ""], []
    for section in (padding, chunked_inference, chunked_training, expanded):
        more_lines, more_checks = section(quick)
        lines += [*more_lines, ""]
        checks += more_checks
    return lines, checks


def padding(quick: bool) -> tuple[list[str], list[Check]]:
    """(a): masked and jagged calls against the dense call on the padded batch, for two nets."""
    batch, steps, side = 4, 16, 32
    lines = [
        f"(a) Padded clips of ({batch}, {steps}, 3, {side}, {side}) whose lengths vary around the mean; ratios to the "
        "dense call on the padded batch. The encoder's targets are the issue's; the feature-map net shows the "
        "cost of writing large outputs into the padded result (one more write of every valid row). The floor is the "
        "bare module on the valid frames alone, gathered beforehand: per frame, a small batch of 32x32 frames "
        "does not always cost what a large one does.",
        "",
        "| module | padding | valid fraction | dense ms | fold_lengths | jagged | floor | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    checks = []
    for make, targeted in ((frame_encoder, True), (feature_maps, False)):
        dense = foldaxes.Distribute(PATTERN, make().eval())
        for padded in (0.25, 0.50, 0.75):
            mean = round(steps * (1 - padded))
            lengths = [mean - 2, mean + 2, mean - 1, mean + 1]
            x = torch.randn(batch, steps, 3, side, side)
            clips = torch.nested.nested_tensor([x[b, :n] for b, n in enumerate(lengths)], layout=torch.jagged)
            fraction = sum(lengths) / (batch * steps)
            valid = torch.cat([x[b, :n] for b, n in enumerate(lengths)])
            calls: dict[str, Callable[[], Any]] = {
                "dense": lambda dense=dense, x=x: dense(x),
                "floor": lambda dense=dense, valid=valid: dense.module(valid),
                "fold_lengths": lambda dense=dense, x=x, lengths=lengths: dense(x, fold_lengths=lengths),
                "jagged": lambda dense=dense, clips=clips: dense(clips),
            }
            with torch.no_grad():
                rounds = interleaved(calls, rounds=3 if quick else 11, min_run_time=0.05 if quick else 0.2)
            masked, jagged, floor = (
                rounds[name].ratio_to(rounds["dense"]) for name in ("fold_lengths", "jagged", "floor")
            )
            target = 1.1 * fraction
            lines.append(
                f"| {make.__name__} | {padded:.0%} | {fraction:.2f} | {rounds['dense'].median * 1e3:.1f} | "
                f"{masked:.2f}x | {jagged:.2f}x | {floor:.2f}x | {f'<= {target:.2f}x' if targeted else 'none'} |"
            )
            if targeted:
                checks += [
                    (f"R: fold_lengths at {padded:.0%} padding <= 1.1 x valid fraction", masked <= target),
                    (f"R: jagged at {padded:.0%} padding <= 1.1 x valid fraction", jagged <= target),
                ]
    return lines, checks


def chunked_inference(quick: bool) -> tuple[list[str], list[Check]]:
    """(b): peak memory and time of a chunked call against one call."""
    shape = (2, 16, 3, 112, 112) if quick else (2, 64, 3, 112, 112)
    chunk_size = 4 if quick else 16
    chunks = -(-shape[0] * shape[1] // chunk_size)
    net = frame_net().eval()
    x = torch.randn(shape)
    whole = foldaxes.Distribute(PATTERN, net)
    chunked = foldaxes.Distribute(PATTERN, net, chunk_size=chunk_size)
    with torch.no_grad():
        output, whole_footprint = footprint(lambda: whole(x))
        out_bytes = output.numel() * output.element_size()
        del output
        _, chunked_footprint = footprint(lambda: chunked(x))
        rounds = interleaved({"whole": lambda: whole(x), "chunked": lambda: chunked(x)}, 3, 0.2 if quick else 1.0)
    bound = 1.05 * (whole_footprint.peak / chunks + out_bytes)
    ratio = rounds["chunked"].ratio_to(rounds["whole"])
    lines = [
        f"(b) Inference in chunks: x {shape}, chunk_size={chunk_size} ({chunks} chunks), "
        "Conv2d(3,16,3,p=1)-ReLU-Conv2d(16,16,3,p=1).",
        "",
        "| measure | one call | chunked | target |",
        "|---|---|---|---|",
        f"| peak memory | {_mib(whole_footprint.peak)} | {_mib(chunked_footprint.peak)} | <= {_mib(bound)} "
        f"(1/{chunks} of one call + the output's {_mib(out_bytes)}, +5 %) |",
        f"| time | {rounds['whole'].median * 1e3:.0f} ms | {ratio:.2f}x | <= 1.10x |",
    ]
    checks = [
        (f"R: chunked inference peak <= 1/{chunks} of one call + output", chunked_footprint.peak <= bound),
        ("R: chunked inference time <= 1.10x one call", ratio <= 1.10),
    ]
    return lines, checks


def chunked_training(quick: bool) -> tuple[list[str], list[Check]]:
    """(c): peak memory and time of a training step with chunks and checkpointing against one call."""
    shape = (2, 16, 3, 112, 112) if quick else (2, 64, 3, 112, 112)
    chunk_size = 4 if quick else 16
    chunks = -(-shape[0] * shape[1] // chunk_size)
    net = frame_net()
    x = torch.randn(shape)
    whole = foldaxes.Distribute(PATTERN, net)
    chunked = foldaxes.Distribute(PATTERN, net, chunk_size=chunk_size, checkpoint=True)

    def step(wrapped: nn.Module) -> None:
        net.zero_grad(set_to_none=True)
        wrapped(x).mean().backward()

    (_, whole_footprint), (_, chunked_footprint) = footprint(lambda: step(whole)), footprint(lambda: step(chunked))
    out_bytes = x.numel() // 3 * 16 * x.element_size()  # the output: 16 channels per frame
    bound = 1.05 * (whole_footprint.peak / chunks + out_bytes)
    rounds = interleaved(
        {"whole": lambda: step(whole), "chunked": lambda: step(chunked)}, 2 if quick else 3, 0.2 if quick else 1.0
    )
    lines = [
        f"(c) Training step (forward and backward), chunk_size={chunk_size} and checkpoint=True: x {shape}.",
        "",
        "| measure | one call | chunked + checkpointed | target |",
        "|---|---|---|---|",
        f"| peak memory | {_mib(whole_footprint.peak)} | {_mib(chunked_footprint.peak)} "
        f"({chunked_footprint.peak / whole_footprint.peak:.2f}x) | <= {_mib(bound)} |",
        f"| time | {rounds['whole'].median * 1e3:.0f} ms | {rounds['chunked'].ratio_to(rounds['whole']):.2f}x | "
        "none: the forward pass runs twice |",
    ]
    return lines, [(f"R: chunked training peak <= 1/{chunks} of one call + output", chunked_footprint.peak <= bound)]


def expanded(quick: bool) -> tuple[list[str], list[Check]]:
    """(d): an image expanded over time, by default and with ``compute_repeats_once``, against the dense call."""
    batch, steps, side = 4, 16, 32
    encoder = frame_encoder().eval()
    wrapped = foldaxes.Distribute(PATTERN, encoder)
    once = foldaxes.Distribute(PATTERN, encoder, compute_repeats_once=True)
    image = torch.randn(batch, 1, 3, side, side)
    x = image.expand(batch, steps, 3, side, side)
    copy = x.contiguous()
    calls: dict[str, Callable[[], Any]] = {
        "dense": lambda: wrapped(copy),
        "default": lambda: wrapped(x),
        "once": lambda: once(x),
        "one frame": lambda: wrapped(image),
    }
    with torch.no_grad():
        rounds = interleaved(calls, rounds=3 if quick else 7, min_run_time=0.1 if quick else 0.3)
    default, ratio, floor = (rounds[name].ratio_to(rounds["dense"]) for name in ("default", "once", "one frame"))
    target = 1.5 / steps
    lines = [
        f"(d) One image per clip expanded over T={steps} steps (stride 0), ({batch}, {steps}, 3, {side}, {side}), "
        "the encoder of (a). By default every copy is computed (exact for any module); compute_repeats_once=True "
        "computes one. The floor is the call on the (B, 1, ...) image itself.",
        "",
        "| dense ms | default | compute_repeats_once | floor | target |",
        "|---|---|---|---|---|",
        f"| {rounds['dense'].median * 1e3:.1f} | {default:.3f}x | {ratio:.3f}x | {floor:.3f}x "
        f"| <= {target:.3f}x (1.5/T) |",
    ]
    return lines, [("R: compute_repeats_once on an expanded input <= 1.5/T of the dense call", ratio <= target)]


def _mib(count: float) -> str:
    return f"{count / 2**20:.1f} MiB"
