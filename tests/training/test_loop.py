"""The shared training loop: exact resume, seed control, logs, plots, pickle-free checkpoints."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from hypernet.errors import UserError
from training.loop import LOG_FILE, PLOT_FILE, STATE_DIR, EpochSampler, LoopConfig, lr_at, read_log, train

DATA = torch.randn(37, 6, generator=torch.Generator().manual_seed(0))
TARGET = torch.randn(37, 2, generator=torch.Generator().manual_seed(1))


class Net(nn.Module):
    """Dropout and per-batch noise exercise both kinds of randomness a resume must restore."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen(self.body(x))


def make_batch(indices: list[int], seed: int) -> dict:
    rng = random.Random(seed)
    noise = torch.tensor([[rng.gauss(0, 0.1) for _ in range(6)] for _ in indices])
    return {"x": DATA[indices] + noise, "y": TARGET[indices]}


def run(out: Path, config: LoopConfig) -> Net:
    torch.manual_seed(config.seed)
    net = Net()
    train(net, len(DATA), make_batch, lambda b: (((net(b["x"]) - b["y"]) ** 2).mean(), {"mse": 0.0}), config, out)
    return net


CONFIG = LoopConfig(steps=12, batch_size=5, lr=1e-2, warmup_steps=3, checkpoint_every=3, log_every=1, eval_every=0, device="cpu")


def _weights(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_resume_is_bit_exact(tmp_path: Path, optimizer: str, kill_at_step):
    config = LoopConfig(**{**CONFIG.__dict__, "optimizer": optimizer})
    straight = _weights(run(tmp_path / "straight", config))
    killed = kill_at_step(5)  # between the saves of steps 3 and 6: steps 4 and 5 are logged, then lost
    with pytest.raises(killed):
        run(tmp_path / "split", config)
    assert json.loads((tmp_path / "split" / STATE_DIR / "state.json").read_text())["step"] == 3
    assert [r["step"] for r in read_log(tmp_path / "split" / LOG_FILE)] == [1, 2, 3, 4, 5]
    resumed = _weights(run(tmp_path / "split", config))  # replays steps 4 and 5 from step 3's save
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    # The log of the resumed run equals the straight run's (no repeated or missing steps).
    a = [(r["step"], r["loss"]) for r in read_log(tmp_path / "straight" / LOG_FILE)]
    b = [(r["step"], r["loss"]) for r in read_log(tmp_path / "split" / LOG_FILE)]
    assert a == b


def _run_with(out: Path, config: LoopConfig, settings: dict) -> None:
    torch.manual_seed(config.seed)
    net = Net()
    train(net, len(DATA), make_batch, lambda b: (((net(b["x"]) - b["y"]) ** 2).mean(), {}), config, out, settings=settings)


def test_resume_refuses_a_changed_config(tmp_path: Path, kill_at_step):
    with pytest.raises(kill_at_step(4)):
        _run_with(tmp_path, CONFIG, {"lambda": 1})
    changed = LoopConfig(**{**CONFIG.__dict__, "lr": 2e-2, "steps": 14})
    with pytest.raises(UserError, match=r"config changed.*loop\.lr 0\.01 -> 0\.02; loop\.steps 12 -> 14") as info:
        _run_with(tmp_path, changed, {"lambda": 1})
    assert "--no-resume" in str(info.value)
    with pytest.raises(UserError, match=r"settings\.lambda 1 -> 2"):  # the stage's own settings
        _run_with(tmp_path, CONFIG, {"lambda": 2})
    # Where and how fast it runs may change.
    _run_with(tmp_path, LoopConfig(**{**CONFIG.__dict__, "threads": 2, "device": "cpu"}), {"lambda": 1})
    assert json.loads((tmp_path / STATE_DIR / "state.json").read_text())["step"] == CONFIG.steps


def test_seed_changes_the_result(tmp_path: Path):
    one = _weights(run(tmp_path / "a", CONFIG))
    other = _weights(run(tmp_path / "b", LoopConfig(**{**CONFIG.__dict__, "seed": 1})))
    assert not torch.equal(one["body.0.weight"], other["body.0.weight"])


def test_writes_log_plot_and_pickle_free_checkpoint(tmp_path: Path):
    run(tmp_path, CONFIG)
    records = read_log(tmp_path / LOG_FILE)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert all("loss" in r and "lr" in r for r in records)
    assert (tmp_path / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    files = sorted(p.name for p in (tmp_path / STATE_DIR).iterdir())
    assert files == ["model.safetensors", "optimizer.safetensors", "state.json"]
    state = json.loads((tmp_path / STATE_DIR / "state.json").read_text())
    assert state["step"] == 12 and "sampler" in state
    # Frozen parameters are not part of the training state.
    from safetensors.torch import load_file

    assert not any(k.startswith("frozen") for k in load_file(tmp_path / STATE_DIR / "model.safetensors"))


def test_sampler_covers_every_example_once_per_epoch():
    sampler = EpochSampler(10, seed=3)
    first = sampler.take(10)
    assert sorted(first) == list(range(10))
    sampler.take(4)
    state = sampler.state()
    rest = sampler.take(6)
    other = EpochSampler(10, seed=3)
    other.restore(state)
    assert other.take(6) == rest


def test_lr_schedule_warms_up_then_decays():
    config = LoopConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(config, 0) == 0.1
    assert lr_at(config, 9) == 1.0
    assert lr_at(config, 50) < 1.0
    assert abs(lr_at(config, 99) - 0.1) < 1e-3


def test_adafactor_trains_and_unknown_optimizer_is_refused(tmp_path: Path):
    config = LoopConfig(**{**CONFIG.__dict__, "optimizer": "adafactor", "steps": 60, "lr": 0.05})
    torch.manual_seed(0)
    initial = Net().eval()
    trained = run(tmp_path / "a", config).eval()
    assert torch.equal(initial.frozen.weight, trained.frozen.weight)
    with torch.no_grad():
        error = [float(((net(DATA) - TARGET) ** 2).mean()) for net in (initial, trained)]
    assert error[1] < 0.9 * error[0]
    with pytest.raises(ValueError, match="optimizer"):
        LoopConfig(optimizer="sgd")


def test_result_carries_the_last_steps_evaluation_and_weights_reload(tmp_path: Path):
    from training.loop import load_weights

    torch.manual_seed(CONFIG.seed)
    net = Net()
    calls: list[int] = []
    result = train(
        net,
        len(DATA),
        make_batch,
        lambda b: (((net(b["x"]) - b["y"]) ** 2).mean(), {}),
        CONFIG,
        tmp_path,
        eval_fn=lambda step: calls.append(step) or {"score": float(step)},
    )
    assert calls[-1] == CONFIG.steps and result.last_eval == {"score": float(CONFIG.steps)}
    fresh = Net()
    assert load_weights(tmp_path, fresh) == CONFIG.steps
    assert torch.equal(fresh.body[0].weight, net.body[0].weight)
