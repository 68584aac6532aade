"""The ``python -m foldaxes demo`` walkthrough: a multi-view video classifier built on ``Distribute``.

Everything runs on synthetic data made at run time from a seed, on the CPU, in a few seconds. It reports what
comes out the same on every run (shapes, errors against a loop, views and the bytes each copy moves) and times
only itself: comparing timings takes repeated rounds and their spread, which is the benchmarks' job.
"""

from __future__ import annotations

import copy
import os
import sys
import textwrap
import time
from types import TracebackType
from typing import TextIO

import torch
from torch import Tensor, nn

import foldaxes

__all__ = ["Progress", "VideoClassifier", "make_encoder", "run_demo"]

PATTERN = "b t v c h w -> (b t v) c h w"
BATCH, TIME, VIEWS, CHANNELS, HEIGHT, WIDTH = 2, 6, 2, 3, 32, 32
EMBED, HIDDEN, CLASSES = 32, 24, 5
TOLERANCE = 1e-10


def make_encoder(embed: int = EMBED) -> nn.Sequential:
    """Builds the small per-frame CNN encoder used by the demo.

    Args:
        embed: Size of the embedding produced for each frame.

    Returns:
        A module mapping frames ``(N, 3, H, W)`` to embeddings ``(N, embed)``.

    Examples:
        >>> make_encoder(8)(torch.zeros(4, 3, 32, 32)).shape
        torch.Size([4, 8])
    """
    return nn.Sequential(
        nn.Conv2d(CHANNELS, 16, kernel_size=3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, embed),
    )


class Progress:
    """A one-line progress bar on stderr for the demo's slower steps; it draws nothing unless stderr is a terminal.

    The bar is redrawn in place with a carriage return and erased when the step ends, so the report on stdout
    reads the same with or without it.

    Args:
        label: What the step is doing.
        total: How many times ``advance`` will be called.
        stream: Where to draw (default: ``sys.stderr`` at the time the bar is made).
        width: The number of cells in the bar.

    Examples:
        >>> import io
        >>> with Progress("checking", 2, io.StringIO()) as bar:  # not a terminal: nothing is drawn
        ...     bar.advance(2)
        >>> bar.done, bar.enabled
        (2, False)
    """

    def __init__(self, label: str, total: int, stream: TextIO | None = None, width: int = 24) -> None:
        self.label = label
        self.total = max(total, 1)
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.done = 0
        self.enabled = self.stream.isatty()
        self._drawn = 0

    def __enter__(self) -> Progress:
        self._draw()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()

    def advance(self, steps: int = 1) -> None:
        """Marks ``steps`` more steps done and redraws the bar."""
        self.done = min(self.done + steps, self.total)
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        filled = self.width * self.done // self.total
        text = f"  {self.label} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total}"
        self.stream.write("\r" + text)
        self.stream.flush()
        self._drawn = len(text)


class VideoClassifier(nn.Module):
    """Encodes every frame of every view, merges the views, runs a GRU over time and classifies the clip.

    Args:
        encoder: Per-frame module mapping ``(N, 3, H, W)`` to ``(N, EMBED)``.

    Examples:
        >>> model = VideoClassifier(make_encoder())
        >>> model(torch.zeros(2, TIME, VIEWS, 3, 32, 32)).shape
        torch.Size([2, 5])
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = foldaxes.Distribute(PATTERN, encoder)
        self.gru = nn.GRU(VIEWS * EMBED, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, CLASSES)

    def stages(self, clips: Tensor) -> list[tuple[str, Tensor, str]]:
        """Runs the model and keeps every intermediate result.

        Args:
            clips: Input of shape ``(B, T, V, 3, H, W)``.

        Returns:
            ``(name, tensor, axes)`` for the input and each stage, the logits last.
        """
        encoded: Tensor = self.encoder(clips)
        merged = encoded.reshape(*encoded.shape[:2], -1)
        sequence: Tensor = self.gru(merged)[0]
        logits: Tensor = self.head(sequence[:, -1])
        return [
            ("input", clips, "b t v c h w"),
            ("encoded", encoded, "b t v d"),
            ("views merged", merged, "b t (v d)"),
            ("gru", sequence, "b t h"),
            ("logits", logits, "b k"),
        ]

    def forward(self, clips: Tensor) -> Tensor:
        """Returns the class logits ``(B, CLASSES)`` for clips ``(B, T, V, 3, H, W)``."""
        return self.stages(clips)[-1][1]


def run_demo(seed: int = 0) -> int:
    """Runs the demo and prints what it finds.

    The caller's random state is left untouched, and the model is float32 whatever the default dtype.

    Args:
        seed: Seed for the synthetic data and the initial weights.

    Returns:
        0 on success.

    Raises:
        SystemExit: If the folded encoder disagrees with a per-frame loop.
    """
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        print(f"foldaxes {foldaxes.__version__} demo (torch {torch.__version__}, seed {seed})")
        encoder = make_encoder().float()
        model = VideoClassifier(encoder).float()
        clips = torch.randn(BATCH, TIME, VIEWS, CHANNELS, HEIGHT, WIDTH, dtype=torch.float32)
        _train_step(model, clips)
        _check_against_loop(encoder, clips)
        _report_copies(encoder, clips, _channels_last_frames(clips))
    print(
        "\nCopies are counted here, not timed: from a clone of the repository, python -m benchmarks times foldaxes "
        "against\nthe hand-written fold, with the spread of every figure (docs/benchmarks.md)."
    )
    print(_elapsed(time.perf_counter() - start))
    return 0


def _train_step(model: VideoClassifier, clips: Tensor) -> None:
    print(f"\nOne training step in float32, encoder = Distribute({PATTERN!r}, cnn):")
    stages = model.stages(clips)
    for name, tensor, axes in stages:
        print(f"  {name:<14}{_shape(tensor):<24}{axes}")
    labels = torch.randint(CLASSES, (clips.shape[0],))
    loss = nn.functional.cross_entropy(stages[-1][1], labels)
    torch.autograd.backward(loss)
    params = list(model.parameters())
    grads = [p.grad.flatten() for p in params if p.grad is not None]
    if len(grads) != len(params):
        raise SystemExit(f"demo failed: {len(params) - len(grads)} parameters received no gradient")
    norm = torch.linalg.vector_norm(torch.cat(grads))
    print(f"  loss {loss.item():.4f}, backward done, gradient norm {norm.item():.4f}")


def _check_against_loop(encoder: nn.Module, clips: Tensor) -> None:
    # Eval mode: in train mode BatchNorm's batch statistics span every folded frame, which no per-frame
    # loop reproduces, so the two would rightly differ.
    cnn = copy.deepcopy(encoder).double().eval()
    wrapped = foldaxes.Distribute(PATTERN, cnn)
    x = clips.double()
    steps = []
    with torch.no_grad(), Progress("checking against a loop", x.shape[1] + 2) as bar:
        folded: Tensor = wrapped(x)
        bar.advance()
        for t in range(x.shape[1]):
            steps.append(torch.stack([cnn(x[:, t, v]) for v in range(x.shape[2])], dim=1))
            bar.advance()
        looped = torch.stack(steps, dim=1)
        strided: Tensor = wrapped(_channels_last_frames(x))
        bar.advance()
    error = (folded - looped).abs().max().item()
    layout_error = (strided - looped).abs().max().item()
    worst = max(error, layout_error)
    print("\nCheck against a Python loop over (t, v) with torch.stack, eval mode, float64:")
    print(f"  contiguous input     max abs error {error:.1e}")
    print(f"  channels_last frames max abs error {layout_error:.1e}  (tolerance {TOLERANCE:.0e})")
    if folded.shape != looped.shape or worst > TOLERANCE:
        raise SystemExit(
            f"demo failed: Distribute gave {_shape(folded)} with max abs error {worst:.1e}, "
            f"the loop gave {_shape(looped)}; tolerance {TOLERANCE:.0e}"
        )


def _report_copies(encoder: nn.Module, clips: Tensor, frames_last: Tensor) -> None:
    print(f"\nWhat the encoder receives: a view of the input, or a copy of its {clips.nbytes:,} bytes?")
    time_major = clips.transpose(0, 1).contiguous().transpose(0, 1)  # a (t, b, ...) buffer seen as (b, t, ...)
    inputs = (("contiguous input", clips), ("channels_last frames", frames_last), ("time-major buffer", time_major))
    print(f"  {'input':<22}{'foldaxes.fold':<36}classic .contiguous().view")
    totals = [0, 0]
    for label, x in inputs:
        folded, _ = foldaxes.fold(x, PATTERN)
        classic = x.contiguous().view(-1, *x.shape[3:])
        cells = []
        for i, y in enumerate((folded, classic)):
            copied = _bytes_copied(y, x)
            totals[i] += copied
            cells.append(f"copy of {copied:,} bytes, {_layout(y)}" if copied else f"view, {_layout(y)}")
        print(f"  {label:<22}{cells[0]:<36}{cells[1]}")
    print(f"  {'bytes copied in all':<22}{totals[0]:<36,}{totals[1]:,}")
    why = foldaxes.explain(PATTERN, time_major)
    text = f"why the time-major buffer is copied: {why.reason} {why.hint or ''}".rstrip()
    print(textwrap.fill(text, 110, initial_indent="    ", subsequent_indent="      "))
    shape = ",".join(str(size) for size in clips.shape)
    print("      foldaxes.explain(pattern, x) says why for any tensor, and from a shell:")
    print(f"      python -m foldaxes explain {PATTERN!r} --shape {shape} --time-major")
    encoder.eval()
    with torch.no_grad():
        folded, spec = foldaxes.fold(clips, PATTERN)
        output = encoder(folded)
        unfolded = foldaxes.unfold(output, spec)
    print(
        f"  the unfold of the encoder's output {_shape(output)} to {_shape(unfolded)} is a view of it: "
        f"{_bytes_copied(unfolded, output) == 0}"
    )


def _elapsed(steps: float) -> str:
    """The closing line: the wall clock since Python started where the system tells it, and the steps' own time."""
    age = _process_age()
    if age is None or age < steps:
        return f"\ndone: the steps above took {steps:.2f} s of wall clock (after starting Python and importing torch)"
    return f"\ndone in {age:.1f} s of wall clock from the start of Python to this line (the steps above: {steps:.2f} s)"


def _process_age() -> float | None:
    """Wall-clock seconds since this process started, read from Linux's /proc; ``None`` elsewhere."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            # The command name (field 2) may hold spaces, so fields are counted after its closing parenthesis.
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            now = float(uptime.read().split()[0])
        return now - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _channels_last_frames(clips: Tensor) -> Tensor:
    """Returns the same values with every (c, h, w) frame stored channels_last."""
    frames = clips.reshape(-1, *clips.shape[3:]).contiguous(memory_format=torch.channels_last)
    return frames.view(clips.shape)


def _bytes_copied(y: Tensor, x: Tensor) -> int:
    """0 when ``y`` is a view of ``x``; otherwise the size of the new storage that holds ``y``."""
    shared = y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    return 0 if shared else y.untyped_storage().nbytes()


def _layout(x: Tensor) -> str:
    if x.is_contiguous():
        return "contiguous"
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "strided"


def _shape(x: Tensor) -> str:
    return str(tuple(x.shape))
