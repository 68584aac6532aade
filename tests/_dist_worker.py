"""One process of the distributed tests: trains the video model under DDP, then twice under FSDP2.

Started twice by ``tests/test_distributed.py`` (``python tests/_dist_worker.py RANK WORLD_SIZE RENDEZVOUS OUT``), on
CPU with the gloo backend, rendezvous through a file. Rank 0 writes what the test checks to ``OUT/results.pt``.
The model, the data and the training loop live here so that the test's one-process reference uses the same.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from foldaxes import Distribute

STEPS = 3
LR = 0.1
GLOBAL_BATCH = 4


def cnn() -> nn.Module:
    """Ends in a Linear: FSDP2 warns about a sharded module whose output is a view, as nn.Flatten's is."""
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))


class VideoModel(nn.Module):
    """A CNN on every frame (via Distribute), a GRU over time, a linear head: (B, T, 1, 6, 6) -> (B, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = Distribute("b t c h w -> (b t) c h w", cnn())
        self.gru = nn.GRU(2, 3, batch_first=True)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.frames(x))
        return self.head(out[:, -1])


def build() -> VideoModel:
    torch.manual_seed(0)
    return VideoModel().double()


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(GLOBAL_BATCH, 3, 1, 6, 6, generator=generator, dtype=torch.float64)
    return x, torch.randn(GLOBAL_BATCH, 2, generator=generator, dtype=torch.float64)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """``STEPS`` of SGD on the mean squared error over ``x``: DDP and FSDP average it over the ranks."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def _full(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Gathers every DTensor of a sharded state dict (collective: every rank calls it)."""
    return {key: value.full_tensor() if hasattr(value, "full_tensor") else value for key, value in state.items()}


def _run(name: str, rank: int, world: int, results: dict[str, Any]) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    x, y = global_batch()
    per_rank = GLOBAL_BATCH // world
    x, y = x[rank * per_rank : (rank + 1) * per_rank], y[rank * per_rank : (rank + 1) * per_rank]
    model = build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if name == "ddp":
            ddp = nn.parallel.DistributedDataParallel(model)
            train(ddp, x, y)
            state = ddp.module.state_dict()
            sharded = False
        else:
            mesh = init_device_mesh("cpu", (world,))
            fully_shard(model.frames.module if name == "fsdp2-wrapped-module" else model.frames, mesh=mesh)
            fully_shard(model, mesh=mesh)
            train(model, x, y)
            sharded = all(type(p).__name__ == "DTensor" for p in model.parameters())
            state = _full(model.state_dict())
            if name == "fsdp2-wrapped-module":
                results["dcp-full-state-dict"] = _dcp_full_state_dict(model)
    results[name] = {"state": state, "sharded": sharded, "warnings": [str(w.message) for w in caught]}


def _dcp_full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | str:
    """The full state dict through torch.distributed.checkpoint, or the error it raised."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    try:
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    except Exception as error:  # reported by the test, which expects the state dict
        return f"{type(error).__name__}: {error}"


def main(rank: int, world: int, rendezvous: str, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    results: dict[str, Any] = {}
    for name in ["ddp", "fsdp2-wrapped-module", "fsdp2-wrapper"]:
        _run(name, rank, world, results)
    if rank == 0:
        torch.save(results, out / "results.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
    # The work is done and saved. Leaving without running C++ static destructors: on a loaded machine, gloo's
    # threads were sometimes torn down while still joinable, and the process aborted after a good run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
