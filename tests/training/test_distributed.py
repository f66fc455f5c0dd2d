"""Training in several processes (torchrun, gloo on CPU) computes what one process computes.

The workers are real torchrun processes (tests/training/distributed_worker.py) training a micro
TagiModel through training.loop.train with torch DDP; the one-process reference runs the same
function in this process, without any process group.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import make_checkpoint
from torch import nn
from transformers.models.t5.modeling_t5 import T5LayerFF

from hypernet.cli import main
from hypernet.errors import UserError
from hypernet.files import GENERATOR_FILE
from hypernet.io import PEFT_WEIGHTS_FILE, load_checkpoint
from training.data import SNI_DIR
from training.loop import LOG_FILE, MODEL_FILE, STATE_DIR, LoopConfig, micro_seed, read_log, step_seed, train
from training.presets import CONFIGS_DIR
from training.stages import STAGE

WORKER = Path(__file__).with_name("distributed_worker.py")
_spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

TOLERANCE = 2e-5
"""Max abs difference of generator weights between 1 and 2 processes: float sums in another order."""


def torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`args` in two processes under torchrun (its own free port: --standalone), CPU, one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def two_workers(checkpoint: Path, out: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return torchrun(str(WORKER), str(checkpoint), str(out), *args, timeout=timeout)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("dist"), ("q", "v"), trained=False)


def test_two_processes_equal_one_also_after_a_crash_and_resume(checkpoint: Path, tmp_path: Path):
    one, result = worker.run(checkpoint, tmp_path / "one", steps=6, micro=4)
    reference = worker.generator_weights(one)
    initial = worker.generator_weights(load_checkpoint(checkpoint))
    assert _max_diff(reference, initial) > 1e-3  # it trained: the equality below is not trivial
    log_one = read_log(tmp_path / "one" / LOG_FILE)
    assert 0 < sum(r["fusion"] for r in log_one) < 6  # both kinds of micro-batch (unused parameters) occurred
    assert result.last_metrics["loss"] == pytest.approx(log_one[-1]["loss"])

    # Both ranks stop as step 6 begins (state saved at step 4); a new torchrun resumes from it.
    two = tmp_path / "two"
    crashed = two_workers(checkpoint, two, "--steps", "6", "--micro", "4", "--raise-at", "5")
    assert crashed.returncode != 0
    assert not (two / worker.WEIGHTS).exists()
    assert '"step": 4' in (two / STATE_DIR / "state.json").read_text()
    assert [r["step"] for r in read_log(two / LOG_FILE)] == [1, 2, 3, 4, 5]
    resumed = two_workers(checkpoint, two, "--steps", "6", "--micro", "4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _max_diff(load_file(two / worker.WEIGHTS), reference) < TOLERANCE
    # Rank 0 alone logged, each step once, the mean over the micro-batches of both ranks: the one-process log.
    log_two = read_log(two / LOG_FILE)
    assert [r["step"] for r in log_two] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in log_two] == pytest.approx([r["loss"] for r in log_one], rel=1e-5)
    assert [r["fusion"] for r in log_two] == [r["fusion"] for r in log_one]


def test_a_killed_rank_ends_the_run(checkpoint: Path, tmp_path: Path):
    began = time.monotonic()
    run = two_workers(checkpoint, tmp_path, "--steps", "50", "--sigkill-rank", "1", "--sigkill-at", "2", timeout=90)
    assert run.returncode != 0
    assert time.monotonic() - began < 60
    pids = [int((tmp_path / f"pid.{rank}").read_text()) for rank in (0, 1)]
    for pid in pids:  # no worker is left behind (torchrun reaped them: not even a zombie)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "SIGKILL" in run.stderr or "Signal 9" in run.stderr, run.stderr[-3000:]


def test_sni_smoke_two_processes_equal_one(tmp_path: Path):
    """`tagi train --recipe configs/sni-smoke.yaml` end to end: under torchrun with 2 processes, the
    same generator as in one process; every instance teacher (trained by one rank alone) bit for bit."""
    base = tmp_path / "base"
    assert main(["init-base", "--out", str(base)]) == 0
    argv = ["train", "--recipe", str(CONFIGS_DIR / "sni-smoke.yaml"), "--base", str(base), "--sni", str(SNI_DIR)]
    argv += ["--no-eval", "--threads", "1"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*argv, "--out", str(one / "out"), "--work", str(one / "work")]) == 0
    run = torchrun("-m", "hypernet.cli", *argv, "--out", str(two / "out"), "--work", str(two / "work"), timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]

    generator = load_file(one / "out" / GENERATOR_FILE)
    start = load_file(one / "work" / STAGE["hypernet-pretrain"].directory / "checkpoint" / GENERATOR_FILE)
    assert _max_diff(generator, start) > 1e-4  # stage 3 moved it: the equality below is not trivial
    assert _max_diff(load_file(two / "out" / GENERATOR_FILE), generator) < TOLERANCE
    meta_state = Path(STAGE["meta-teacher"].directory) / "state" / STATE_DIR / MODEL_FILE
    assert _max_diff(load_file(two / "work" / meta_state), load_file(one / "work" / meta_state)) < TOLERANCE
    teachers = sorted(p.name for p in (one / "work" / "stage1_teachers" / "teachers").iterdir() if p.is_dir())
    assert len(teachers) >= 4  # spread over both ranks
    for name in teachers:
        weights = [load_file(run / "work" / "stage1_teachers" / "teachers" / name / PEFT_WEIGHTS_FILE) for run in (one, two)]
        assert _max_diff(*weights) == 0.0, name


def test_gradient_checkpointing_recomputes_and_changes_nothing(checkpoint: Path, tmp_path: Path):
    plain, _ = worker.run(checkpoint, tmp_path / "plain", steps=2, micro=4)
    model = load_checkpoint(checkpoint)
    calls = []
    for name, layer in model.base.named_modules():
        if isinstance(layer, T5LayerFF):  # called from its block's forward: again when the block is recomputed
            layer.register_forward_pre_hook(lambda *_, name=name: calls.append((name, torch.is_grad_enabled())))
    checkpointed, _ = worker.run(checkpoint, tmp_path / "checkpointed", steps=2, micro=4, checkpointing=True, model=model)
    # 2 steps x 2 micro-batches: the instruction through the encoder (no grad), then the input through the
    # encoder and the decoder, every block of which runs again in the backward pass.
    blocks = [name for name, layer in model.base.named_modules() if isinstance(layer, T5LayerFF)]
    encoder = [name for name in blocks if name.startswith("encoder.")]
    per_micro_batch = sorted([*((n, False) for n in encoder), *((n, True) for n in blocks), *((n, True) for n in blocks)])
    assert sorted(calls) == sorted(per_micro_batch * 4)
    assert _max_diff(worker.generator_weights(checkpointed), worker.generator_weights(plain)) < 1e-6


# ---- accumulation within one process --------------------------------------------------------------

DATA = torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
TARGET = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))


def _linear_run(out: Path, micro: int) -> dict[str, torch.Tensor]:
    """A deterministic batch and a per-example mean loss: micro-batching only reorders float sums."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
    config = LoopConfig(steps=5, batch_size=8, micro_batch_size=micro, lr=1e-2, warmup_steps=1, log_every=1, device="cpu")

    def loss(batch: dict) -> tuple[torch.Tensor, dict]:
        return ((net(batch["x"]) - batch["y"]) ** 2).mean(), {}

    train(net, len(DATA), lambda indices, _seed: {"x": DATA[indices], "y": TARGET[indices]}, loss, config, out)
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_micro_batches_equal_one_batch(tmp_path: Path):
    whole = _linear_run(tmp_path / "whole", 8)
    for micro in (4, 2):
        assert _max_diff(_linear_run(tmp_path / f"micro{micro}", micro), whole) < 1e-6
    torch.manual_seed(0)
    initial = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2)).state_dict()
    assert _max_diff(whole, initial) > 1e-3


def test_micro_batches_must_divide_the_batch():
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        LoopConfig(batch_size=8, micro_batch_size=3)
    config = LoopConfig(batch_size=8, micro_batch_size=4)
    assert config.micro_batches(2) == 2
    with pytest.raises(UserError, match=r"micro_batch_size \(4\) x processes \(3\) = 12"):
        config.micro_batches(3)


def test_the_first_micro_batch_keeps_the_step_seed_the_others_get_their_own():
    assert micro_seed(3, 7, 0) == step_seed(3, 7)  # a step of one micro-batch draws what it always drew
    seeds = {micro_seed(3, step, m) for step in range(100) for m in range(8)}
    assert len(seeds) == 800
