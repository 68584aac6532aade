"""The ``python -m foldaxes demo`` walkthrough: a multi-view video classifier built on ``Distribute``.

Everything runs on synthetic data made at run time from a seed, on the CPU, in a few seconds.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.utils import benchmark

import foldaxes

__all__ = ["ClassicFold", "VideoClassifier", "make_encoder", "run_demo"]

PATTERN = "b t v c h w -> (b t v) c h w"
BATCH, TIME, VIEWS, CHANNELS, HEIGHT, WIDTH = 2, 6, 2, 3, 32, 32
EMBED, HIDDEN, CLASSES = 32, 24, 5
TOLERANCE = 1e-10
ROUNDS = 7
ROUND_SECONDS = 0.05


def make_encoder(embed: int = EMBED) -> nn.Sequential:
    """Builds the small per-frame CNN encoder used by the demo.

    Args:
        embed: Size of the embedding produced for each frame.

    Returns:
        A module mapping frames ``(N, 3, H, W)`` to embeddings ``(N, embed)``.

    Example:
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


class ClassicFold(nn.Module):
    """The copy-based recipe found in blog posts, kept here as the baseline to compare against.

    It merges the leading axes with ``x.contiguous().view(...)``, calls the module, and splits them back
    with ``y.contiguous().view(...)``: a strided or channels_last input is copied to NCHW first.

    Args:
        module: The per-item module to run.
        leading: How many leading axes to merge into the batch.

    Example:
        >>> ClassicFold(nn.Flatten(), leading=2)(torch.zeros(2, 3, 4, 5)).shape
        torch.Size([2, 3, 20])
    """

    def __init__(self, module: nn.Module, leading: int) -> None:
        super().__init__()
        self.module = module
        self.leading = leading

    def forward(self, x: Tensor) -> Tensor:
        """Runs the module on ``x`` with its leading axes merged into one batch axis."""
        lead = x.shape[: self.leading]
        y: Tensor = self.module(x.contiguous().view(-1, *x.shape[self.leading :]))
        return y.contiguous().view(*lead, *y.shape[1:])


class VideoClassifier(nn.Module):
    """Encodes every frame of every view, merges the views, runs a GRU over time and classifies the clip.

    Args:
        encoder: Per-frame module mapping ``(N, 3, H, W)`` to ``(N, EMBED)``.

    Example:
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        print(f"foldaxes {foldaxes.__version__} demo (torch {torch.__version__}, seed {seed})")
        encoder = make_encoder().float()
        model = VideoClassifier(encoder).float()
        clips = torch.randn(BATCH, TIME, VIEWS, CHANNELS, HEIGHT, WIDTH, dtype=torch.float32)
        _train_step(model, clips)
        _check_against_loop(encoder, clips)
        frames_last = _channels_last_frames(clips)
        _report_views(clips, frames_last)
        _time(encoder, clips, frames_last)
    print("\ndone")
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
    with torch.no_grad():
        folded: Tensor = wrapped(x)
        looped = torch.stack(
            [torch.stack([cnn(x[:, t, v]) for v in range(x.shape[2])], dim=1) for t in range(x.shape[1])],
            dim=1,
        )
        strided: Tensor = wrapped(_channels_last_frames(x))
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


def _report_views(clips: Tensor, frames_last: Tensor) -> None:
    print("\nIs the folded input a view of the original storage?")
    for label, x in (("contiguous input", clips), ("channels_last frames", frames_last)):
        folded, _ = foldaxes.fold(x, PATTERN)
        classic = x.contiguous().view(-1, *x.shape[3:])
        print(
            f"  {label:<21}foldaxes.fold: {_is_view(folded, x)!s:<6}{_layout(folded):<17}"
            f"classic .contiguous().view: {_is_view(classic, x)!s:<6}{_layout(classic)}"
        )


def _time(encoder: nn.Module, clips: Tensor, frames_last: Tensor) -> None:
    wrapped = foldaxes.Distribute(PATTERN, encoder)
    classic = ClassicFold(encoder, leading=3)
    encoder.eval()
    setting = f"torch.utils.benchmark, 1 thread, eval, no grad, best of {ROUNDS} interleaved rounds"
    print(f"\nEncoder forward time ({setting}):")
    with torch.no_grad():
        for label, x in (("contiguous input", clips), ("channels_last frames", frames_last)):
            ours, theirs = _best_times([wrapped, classic], x)
            print(
                f"  {label:<21}foldaxes {ours * 1e3:7.3f} ms   classic {theirs * 1e3:7.3f} ms   "
                f"classic / foldaxes {theirs / ours:.2f}x"
            )


def _best_times(modules: list[nn.Module], x: Tensor) -> list[float]:
    """Seconds per call of each module on ``x``, the best over interleaved rounds.

    Interleaving and keeping the minimum makes the ratio robust to other load on the machine, which only
    ever adds time.
    """
    timers = [benchmark.Timer(stmt="module(x)", globals={"module": module, "x": x}) for module in modules]
    per_call = max(timer.timeit(1).median for timer in timers)
    number = max(1, round(ROUND_SECONDS / per_call))
    best = [float("inf")] * len(timers)
    for _ in range(ROUNDS):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], float(timer.timeit(number).median))
    return best


def _channels_last_frames(clips: Tensor) -> Tensor:
    """Returns the same values with every (c, h, w) frame stored channels_last."""
    frames = clips.reshape(-1, *clips.shape[3:]).contiguous(memory_format=torch.channels_last)
    return frames.view(clips.shape)


def _is_view(y: Tensor, x: Tensor) -> bool:
    return y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


def _layout(x: Tensor) -> str:
    if x.is_contiguous():
        return "(contiguous)"
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return "(channels_last)"
    return "(strided)"


def _shape(x: Tensor) -> str:
    return str(tuple(x.shape))
