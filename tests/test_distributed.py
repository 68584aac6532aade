"""DDP and FSDP2 on CPU: two gloo processes train the same model as one process would, and checkpoints stay plain.

The test starts ``tests/_dist_worker.py`` twice (rendezvous through a file, no port to pick), once for the module;
each worker trains the CNN -> GRU video model for a few SGD steps on its half of a global batch, in float64.
The reference is one process training an unwrapped model, which folds the frames by hand, on the whole batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from _dist_worker import LR, STEPS, build, cnn, global_batch
from conftest import assert_exact
from torch import nn

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed"),
]

WORKER = Path(__file__).with_name("_dist_worker.py")
WORLD_SIZE = 2
TIMEOUT_S = 240
RUNS = ["ddp", "fsdp2-wrapped-module", "fsdp2-wrapper"]


class PlainVideoModel(nn.Module):
    """The worker's model without foldaxes: the CNN is a plain child and the frames are folded by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = cnn()
        self.gru = nn.GRU(2, 3, batch_first=True)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.frames(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        out, _ = self.gru(features)
        return self.head(out[:, -1])


def plain_model(state: dict[str, torch.Tensor]) -> PlainVideoModel:
    model = PlainVideoModel().double()
    model.load_state_dict(state)  # strict: the keys must be exactly the plain model's
    return model


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs the two workers once and returns what rank 0 saved."""
    out = tmp_path_factory.mktemp("distributed")
    root = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    logs = [out / f"rank{rank}.log" for rank in range(WORLD_SIZE)]
    processes = []
    for rank, log in enumerate(logs):
        with log.open("w") as stream:
            command = [sys.executable, str(WORKER), str(rank), str(WORLD_SIZE), str(out / "rendezvous"), str(out)]
            processes.append(subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT))
    try:
        codes = [process.wait(timeout=TIMEOUT_S) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    tails = "\n".join(f"--- rank {rank} ---\n{log.read_text()[-3000:]}" for rank, log in enumerate(logs))
    assert codes == [0] * WORLD_SIZE, tails
    loaded: dict[str, Any] = torch.load(out / "results.pt", weights_only=True)
    return loaded


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    """The parameters after the same steps in one process, on the whole batch, with the loss averaged over it."""
    model = plain_model(build().state_dict())
    x, y = global_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return model.state_dict()


class TestDataParallel:
    @pytest.mark.parametrize("run", RUNS)
    def test_parameters_match_one_process_on_the_global_batch(
        self, results: dict[str, Any], reference: dict[str, torch.Tensor], run: str
    ) -> None:
        state = results[run]["state"]
        assert list(state) == list(reference)
        initial = build().state_dict()
        for key, value in reference.items():
            assert not torch.equal(initial[key], value), f"{key} did not train"
        assert_exact(dict(state), dict(reference), 1e-10)

    @pytest.mark.parametrize("run", ["fsdp2-wrapped-module", "fsdp2-wrapper"])
    def test_fsdp2_shards_every_parameter(self, results: dict[str, Any], run: str) -> None:
        assert results[run]["sharded"]

    @pytest.mark.parametrize("run", ["ddp", "fsdp2-wrapped-module"])
    def test_no_warnings(self, results: dict[str, Any], run: str) -> None:
        assert results[run]["warnings"] == []

    def test_sharding_the_wrapper_itself_warns_only_that_its_output_is_a_view(self, results: dict[str, Any]) -> None:
        """FSDP2 warns that an in-place op on a sharded module's view output would skip its pre-backward hook.

        The unfold is a view by design; shard the wrapped module instead, as the run above does, to avoid it.
        """
        for message in results["fsdp2-wrapper"]["warnings"]:
            assert "FSDP2-wrapped module (FSDPDistribute) returned a view tensor" in message


class TestShardedCheckpoints:
    @pytest.mark.parametrize("run", ["fsdp2-wrapped-module", "fsdp2-wrapper"])
    def test_full_state_dict_loads_into_a_plain_model(
        self, results: dict[str, Any], reference: dict[str, torch.Tensor], run: str
    ) -> None:
        state = results[run]["state"]
        assert all(type(value) is torch.Tensor for value in state.values())  # gathered, no DTensor left
        assert not any(key.startswith("frames.module.") for key in state)
        model = plain_model(state)
        x, _ = global_batch()
        with torch.no_grad():
            assert_exact(model(x), plain_model(reference)(x), 1e-10)

    def test_distributed_checkpoint_full_state_dict(
        self, results: dict[str, Any], reference: dict[str, torch.Tensor]
    ) -> None:
        state = results["dcp-full-state-dict"]
        assert isinstance(state, dict), state
        assert_exact(dict(state), dict(reference), 1e-10)
