"""The one training loop every stage uses.

A stage supplies a module (whose trainable parameters are optimised), a function that builds
a batch from example indices and a step-derived seed (no model calls, so data loading stays
free of the model: defect 8 of the authors' code), and a loss function. The loop owns the
rest: AdamW, warmup + cosine learning rate, seed control, a tqdm bar, a JSONL log, a PNG plot
of the curves, bf16 autocast on CUDA, and periodic checkpoints that resume exactly.

Exact resume: everything that decides the next step is either saved or a pure function of
(seed, step). The data order is a permutation per epoch drawn from a generator seeded by
(seed, epoch), so the data position is just (epoch, offset); batch randomness (span
corruption, example mixing) gets its own seed from (seed, step); the learning rate is a pure
function of the step; the model, the AdamW moments and torch's RNG states (dropout) are
saved. A curriculum replaces the epoch order through the `Sampler` hook. A checkpoint also
records the config it was trained under, and resuming under another one is refused. On CPU, N
straight steps and a run killed between two saves then resumed give bit-identical weights and
the same log (tested).

Accumulation and several processes (torchrun, training.distributed): `batch_size` is the global
batch of an optimizer step. The sampler is replicated (every rank draws the same indices), the
step's indices are cut into micro-batches of `micro_batch_size`, and rank r of W runs micro-batches
r, r + W, ...; micro-batch m is built with seed micro_seed(seed, step, m) and, when a step has
several, runs under a torch RNG seeded from it too (dropout). The step's loss is the mean over its
micro-batches: each backward is scaled by W / micro-batches and torch DistributedDataParallel
averages the gradients over the ranks (accumulating under no_sync until a rank's last
micro-batch). So one process and W processes compute the same step, up to float rounding
(tested with gloo on CPU); a step of one micro-batch is exactly the loop without any of this.
Rank 0 alone writes the log, plot and checkpoints, shows the bar and runs the evaluation hook.

Checkpoints hold no pickle: tensors are safetensors, everything else JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from hypernet.errors import UserError
from hypernet.files import atomic_directory, atomic_write_text, write_json
from training import distributed

STATE_DIR = "train_state"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LOG_FILE = "log.jsonl"
PLOT_FILE = "curves.png"


@dataclass(frozen=True)
class LoopConfig:
    """Optimisation and bookkeeping settings shared by every stage."""

    steps: int = 1000
    """Optimizer steps in total (a resumed run continues up to this count)."""
    batch_size: int = 32
    """Examples per optimizer step, over all processes (the global batch)."""
    micro_batch_size: int = 0
    """Examples per forward pass (0: batch_size, one pass per step). batch_size must be a multiple
    of micro_batch_size x processes; smaller micro-batches trade speed for activation memory."""
    gradient_checkpointing: bool = False
    """Recompute the HF base's activations in the backward pass instead of storing them (non-reentrant
    activation checkpointing): less memory for a big base, ~1/3 more compute, the same result."""
    lr: float = 1e-3
    """Peak learning rate (for Adafactor: relative to each weight's RMS)."""
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    """adafactor for full training of a T5 (see make_optimizer); adamw for LoRA and the generator."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio at the last step."""
    warmup_steps: int = 100
    """Linear warmup from 0 to lr."""
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    seed: int = 0
    checkpoint_every: int = 500
    """Save model + optimizer + data position every this many steps (and at the end)."""
    log_every: int = 10
    """Write a loss record to the JSONL log every this many steps."""
    eval_every: int = 0
    """Call the stage's evaluation hook every this many steps (0: only at the end, if any)."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    threads: int = 0
    """torch CPU threads (0: leave torch's default, all cores). Run a multi-threaded job alone:
    on a shared 2-core machine a 2-thread run next to any other busy process slowed ~15x
    (OpenMP threads waiting on each other); set 1 when sharing the machine."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "seed", "eval_every", "threads", "micro_batch_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.optimizer not in ("adamw", "adafactor"):
            raise ValueError(f"optimizer must be adamw or adafactor, got {self.optimizer!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.batch_size % self.micro:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}")

    @property
    def micro(self) -> int:
        """Examples per forward pass (micro_batch_size, where 0 means batch_size)."""
        return self.micro_batch_size or self.batch_size

    def micro_batches(self, world_size: int) -> int:
        """Micro-batches per optimizer step; a UserError unless W processes can share them evenly."""
        if self.batch_size % (self.micro * world_size):
            raise UserError(
                f"batch_size {self.batch_size} must be a multiple of micro_batch_size ({self.micro}) x processes "
                f"({world_size}) = {self.micro * world_size}, so that every process runs the same number of "
                "micro-batches per step; change batch_size, micro_batch_size or --nproc-per-node"
            )
        return self.batch_size // self.micro


def resolve_device(name: str) -> torch.device:
    """cpu, or this process's GPU: cuda:LOCAL_RANK under torchrun (cuda:0 alone)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", distributed.world().local_rank)
    return torch.device("cpu")


def lr_at(config: LoopConfig, step: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    low = config.lr * config.min_lr_ratio
    return low + (config.lr - low) * 0.5 * (1 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """Seed of the per-step randomness of batch building; independent of resume."""
    return (seed * 1_000_003 + step) % (2**31)


def micro_seed(seed: int, step: int, micro: int) -> int:
    """Seed of micro-batch `micro` of a step: step_seed for the first (a step of one micro-batch
    draws what it always drew), a seed far from every step's for the others; independent of which
    rank runs it and of the number of processes."""
    return (step_seed(seed, step) + micro * 0x9E3779B1) % (2**31)


class Sampler(Protocol):
    """Which training examples each step uses: the loop's hook for a curriculum.

    `take(count, step)` may depend on the step (training.curriculum.TapirSampler plans a
    round when a step starts one); `state()` is saved with every checkpoint and handed back
    to `restore` on resume, so a resumed run draws what the straight run drew.
    """

    def take(self, count: int, step: int) -> list[int]: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


class EpochSampler:
    """Example indices in a fresh permutation per epoch; position = (epoch, offset)."""

    def __init__(self, size: int, seed: int) -> None:
        if size < 1:
            raise ValueError("no training examples")
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def take(self, count: int, step: int = 0) -> list[int]:
        """The next `count` indices of the epoch order (which does not depend on the step)."""
        out = []
        while len(out) < count:
            if self.offset == self.size:
                self.epoch += 1
                self.offset = 0
                self._order = self._permutation(self.epoch)
            n = min(count - len(out), self.size - self.offset)
            out.extend(self._order[self.offset : self.offset + n])
            self.offset += n
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.offset = int(state["offset"])
        self._order = self._permutation(self.epoch)


def make_optimizer(params: list[nn.Parameter], config: LoopConfig) -> torch.optim.Optimizer:
    """AdamW, or Adafactor with parameter-relative updates.

    T5 initialises its weights at very different scales (embeddings ~1, attention queries
    ~0.01); one absolute AdamW step size is then too slow for some and too fast for others.
    Training a tiny T5 from scratch, Adafactor (lr 1e-2, updates scaled by each weight's RMS,
    as in the T5 paper) reached 78% exact match on reversing lists in 750 steps where AdamW
    at 2e-3 had 11%. LoRA factors start at zero, where relative updates vanish, so LoRA and
    generator training stay on AdamW.
    """
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params, lr=config.lr, scale_parameter=True, relative_step=False, warmup_init=False, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


# ---- optimizer state <-> safetensors + JSON ----------------------------------------------------


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# ---- log and plot ---------------------------------------------------------------------------------


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_log(path: Path, step: int) -> None:
    """Drop records written after the checkpoint a run resumes from, so the log has no repeats."""
    records = [r for r in read_log(path) if r["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def plot_log(log_path: Path, out_path: Path, title: str = "") -> None:
    """One panel per logged quantity (losses and evaluation metrics) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key in ("step", "time", "kind", "lr") or not isinstance(value, (int, float)):
                continue
            name = f"{record.get('kind', 'train')}/{key}"
            xs, ys = series.setdefault(name, ([], []))
            xs.append(record["step"])
            ys.append(float(value))
    if not series:
        return
    names = sorted(series)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        xs, ys = series[name]
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


# ---- the loop -------------------------------------------------------------------------------------

Batch = dict[str, Any]
LossFn = Callable[[Batch], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class LoopResult:
    steps_done: int
    resumed_from: int
    seconds: float
    last_metrics: dict[str, float]
    last_eval: dict[str, float]
    """Scores of the evaluation at the last step (empty when this call ran none)."""


RESUME_IGNORES = ("device", "threads", "gradient_checkpointing")
"""LoopConfig fields a resumed run may change: where and how fast it runs, not what it computes.
(The number of processes is not a field: it changes nothing but rounding. micro_batch_size stays:
each micro-batch has its own batch seed.)"""


def resume_view(data: Any) -> Any:
    """`data` (dataclasses, dicts, lists) as JSON values, every LoopConfig in it without the
    RESUME_IGNORES fields: what must match for a result to be continued or reused. A micro-batch
    as large as the batch is left out: that is the loop of old records, which stay valid."""
    if isinstance(data, LoopConfig):
        view = {k: v for k, v in json.loads(json.dumps(asdict(data))).items() if k not in RESUME_IGNORES}
        if data.micro == data.batch_size:
            del view["micro_batch_size"]
        return view
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return {f.name: resume_view(getattr(data, f.name)) for f in dataclasses.fields(data)}
    if isinstance(data, dict):
        return {str(k): resume_view(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [resume_view(v) for v in data]
    return data


def _resume_record(config: LoopConfig, settings: Any) -> dict[str, Any]:
    """What must match between a checkpoint and the run resuming it."""
    return {"loop": resume_view(config), "settings": resume_view(settings)}


def config_differences(saved: Any, current: Any, where: str = "") -> list[str]:
    """ "field old -> new" for every leaf where two JSON configs differ."""
    if saved is None and not where:
        return ["it records no config (written by an older tagi)"]
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            out += config_differences(saved.get(key), current.get(key), f"{where}.{key}" if where else key)
        return out
    return [] if saved == current else [f"{where} {saved!r} -> {current!r}"]


def _save_state(
    out_dir: Path, module: nn.Module, optimizer: torch.optim.Optimizer, sampler: Sampler, step: int, record: dict[str, Any]
) -> None:
    trainable = {n: p.detach().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["torch_cuda"] = torch.cuda.get_rng_state()
    with atomic_directory(out_dir / STATE_DIR, overwrite=True) as tmp:
        save_file(trainable, tmp / MODEL_FILE)
        save_file({**opt_tensors, **{f"rng.{k}": v for k, v in rng.items()}}, tmp / OPTIMIZER_FILE)
        python_state = random.getstate()
        write_json(
            tmp / STATE_FILE,
            {
                "step": step,
                "sampler": sampler.state(),
                "optimizer": opt_meta,
                "python_random": [python_state[0], list(python_state[1]), python_state[2]],
                "resume": record,
            },
        )


def load_weights(out_dir: Path, module: nn.Module) -> int:
    """Put the last checkpoint's trained weights into `module`; returns its step."""
    state_dir = Path(out_dir) / STATE_DIR
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in load_file(state_dir / MODEL_FILE).items():
            params[name].copy_(value)
    return checkpoint_step(out_dir)


def _load_state(
    out_dir: Path, module: nn.Module, optimizer: torch.optim.Optimizer, sampler: Sampler, record: dict[str, Any]
) -> int:
    """Restore everything that decides the next step; refuses a checkpoint of another config,
    whose continuation would match neither the old run nor a fresh one."""
    state_dir = out_dir / STATE_DIR
    meta = json.loads((state_dir / STATE_FILE).read_text())
    changed = config_differences(meta.get("resume"), record)
    if changed:
        raise UserError(
            f"cannot resume {out_dir}: its config changed since the checkpoint ({'; '.join(changed)}); "
            "pass --no-resume to start over, or use another work directory"
        )
    load_weights(out_dir, module)
    tensors = load_file(state_dir / OPTIMIZER_FILE)
    rng = {k.removeprefix("rng."): v for k, v in tensors.items() if k.startswith("rng.")}
    opt = {k: v for k, v in tensors.items() if not k.startswith("rng.")}
    optimizer.load_state_dict(_unflatten_optimizer(opt, meta["optimizer"]))
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["torch_cuda"])
    version, internal, gauss = meta["python_random"]
    random.setstate((version, tuple(internal), gauss))
    sampler.restore(meta["sampler"])
    return int(meta["step"])


def has_checkpoint(out_dir: Path) -> bool:
    return (Path(out_dir) / STATE_DIR / STATE_FILE).exists()


def checkpoint_step(out_dir: Path) -> int:
    return int(json.loads((Path(out_dir) / STATE_DIR / STATE_FILE).read_text())["step"])


SOLO = distributed.World(rank=0, world_size=1, local_rank=0)
"""The world of a module one process trains by itself (train(alone=True))."""


class _LossModule(nn.Module):
    """The stage's loss as a module's forward: DistributedDataParallel must run the forward of
    what it wraps (to find the parameters a batch left unused) and owns the module's parameters."""

    def __init__(self, module: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(batch)


def _data_parallel(runner: _LossModule, device: torch.device) -> nn.Module:
    """`runner` under torch DDP. find_unused_parameters: a batch may leave trainable parameters out
    (stage 3's batches without fusion never touch fusion's); DDP then all-reduces what they
    accumulated in earlier micro-batches, or leaves them untouched when no rank used them."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        runner,
        device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )


def enable_gradient_checkpointing(module: nn.Module) -> None:
    """Non-reentrant activation checkpointing on `module`: a Hugging Face model (a T5, a PEFT model)
    or a TagiModel (its frozen base's layers, hypernet.model). Non-reentrant, because a frozen
    base's inputs need no grad (the reentrant variant would then drop the LoRA's gradients)."""
    kwargs = {"use_reentrant": False}
    if hasattr(module, "activation_checkpointing_enable"):
        module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(module, "gradient_checkpointing_enable"):  # transformers before activation_checkpointing_enable
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise UserError(f"gradient_checkpointing: {type(module).__name__} is no Hugging Face model (nothing to checkpoint)")


@contextlib.contextmanager
def _micro_rng(seed: int, device: torch.device, several: bool) -> Iterator[None]:
    """Where a micro-batch's torch randomness (dropout) comes from: with several micro-batches per
    step, a generator seeded by its micro_seed, so it does not depend on which rank runs it nor on
    what ran before on that rank; with one, the global stream, as it always was."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], enabled=several, device_type="cuda" if cuda else None):
        if several:
            torch.manual_seed(seed)
        yield


def _mean_over_ranks(metrics: dict[str, float]) -> dict[str, float]:
    """Each metric averaged over the ranks (each ran the same number of micro-batches), so the
    log of W processes is the log of one."""
    gathered = distributed.all_gather(metrics)
    return {k: sum(g[k] for g in gathered) / len(gathered) for k in metrics}


def train(
    module: nn.Module,
    num_examples: int,
    make_batch: Callable[[list[int], int], Batch],
    loss_fn: LossFn,
    config: LoopConfig,
    out_dir: Path,
    *,
    name: str = "train",
    resume: bool = True,
    eval_fn: Callable[[int], dict[str, float]] | None = None,
    sampler: Sampler | None = None,
    settings: Any = None,
    alone: bool = False,
) -> LoopResult:
    """Optimise the trainable parameters of `module` for `config.steps` steps.

    make_batch(indices, seed) builds a batch (tensors on CPU) from example indices;
    loss_fn(batch) returns (loss, metrics) with the batch already moved to the device.
    `sampler` picks each step's indices (default: an EpochSampler over `num_examples`).
    `settings` is the stage's own config (dataclasses or JSON values): it is saved with every
    checkpoint, and a resume under different settings, or a different LoopConfig, is refused.
    The module must already be on its device; `seed_everything(config.seed)` should precede
    its construction so that initialisation is seeded too. Under torchrun every rank calls this
    with the same arguments (see the module docstring); eval_fn runs on rank 0 only and every
    rank gets its scores. `alone`: this process trains the module by itself, as if it were the
    only one, and writes `out_dir` itself (stage 1 spreads its teachers over the ranks).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(module.parameters()).device
    place = SOLO if alone else distributed.world()
    main = place.rank == 0
    n_micro = config.micro_batches(place.world_size)
    mine = range(place.rank, n_micro, place.world_size)
    if config.threads:
        torch.set_num_threads(config.threads)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{name}: nothing to train (no parameter requires grad)")
    optimizer = make_optimizer(params, config)
    sampler = sampler if sampler is not None else EpochSampler(num_examples, config.seed)
    record = _resume_record(config, settings)
    log_path = out_dir / LOG_FILE
    start = 0
    if resume and has_checkpoint(out_dir):
        start = _load_state(out_dir, module, optimizer, sampler, record)
        if main:
            truncate_log(log_path, start)
    else:
        seed_everything(config.seed)
        if main:
            log_path.unlink(missing_ok=True)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(module)
    runner = _LossModule(module, loss_fn)
    # Built after any resume: DDP's constructor broadcasts rank 0's weights, and waits for every rank.
    engine = _data_parallel(runner, device) if place.world_size > 1 else runner
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    module.train()
    began = time.time()
    metrics: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    bar = tqdm(total=config.steps, initial=start, desc=name, dynamic_ncols=True, disable=None if main else True)
    with log_path.open("a") if main else nullcontext() as log:
        for step in range(start, config.steps):
            lr = lr_at(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            indices = sampler.take(config.batch_size, step)
            sums: dict[str, float] = {}
            for position, m in enumerate(mine):
                batch = make_batch(indices[m * config.micro : (m + 1) * config.micro], micro_seed(config.seed, step, m))
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                # DDP all-reduces in the backward of a rank's last micro-batch only.
                accumulate = engine.no_sync() if engine is not runner and position < len(mine) - 1 else nullcontext()
                with accumulate, _micro_rng(micro_seed(config.seed, step, m), device, n_micro > 1):
                    with autocast:
                        loss, extra = engine(batch)
                    (loss / len(mine)).backward()
                for key, value in {"loss": float(loss.detach()), **extra}.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
            metrics = {k: v / len(mine) for k, v in sums.items()}
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                metrics = _mean_over_ranks(metrics) if place.world_size > 1 else metrics
                if main:
                    record_line = {"kind": "train", "step": done, "lr": lr, "time": round(time.time() - began, 2), **metrics}
                    log.write(json.dumps(record_line) + "\n")
                    log.flush()
                    bar.set_postfix({k: f"{v:.3f}" for k, v in list(metrics.items())[:4]})
            if eval_fn is not None and ((config.eval_every and done % config.eval_every == 0) or done == config.steps):
                scores = None
                if main:
                    module.eval()
                    scores = eval_fn(done)
                    module.train()
                    log.write(json.dumps({"kind": "eval", "step": done, "time": round(time.time() - began, 2), **scores}) + "\n")
                    log.flush()
                scores = distributed.broadcast(scores) if place.world_size > 1 else scores
                if done == config.steps:
                    last_eval = scores
            bar.update(1)
            if main and (done % config.checkpoint_every == 0 or done == config.steps):
                log.flush()
                _save_state(out_dir, module, optimizer, sampler, done, record)
                plot_log(log_path, out_dir / PLOT_FILE, title=name)
    bar.close()
    module.eval()
    return LoopResult(
        steps_done=config.steps, resumed_from=start, seconds=time.time() - began, last_metrics=metrics, last_eval=last_eval
    )
