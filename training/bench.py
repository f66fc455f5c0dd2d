"""`tagi bench train`: stage-3 training throughput and peak memory with one and with several
processes (torchrun + DDP, training.loop), on CPU (gloo) and, where there is one, on CUDA (NCCL).

The model is a randomly initialised T5 of t5-base's shape by default (d_model 768, 12 + 12
layers, 12 heads, d_ff 3072) wrapped as a TagiModel with the default generator, trained with
stage 3's own loss (training.distill.Distillation: L_ce + L_kl against a frozen meta teacher,
which is the same random T5; no L_ins, which needs stage 1's teachers and costs little). The
tokenizer is a SentencePiece model trained on the benchmark's synthetic texts with a small
vocabulary (--vocab, default 2000 instead of t5-base's 32128), which makes the embedding and
output layers ~10x smaller than t5-base's; the 24 transformer blocks, where the time goes, are
t5-base's. Inputs are synthetic tasks of random words, each example --input-tokens long.

Each measurement runs in fresh processes: this module under `torch.distributed.run --standalone`
for several, alone for one (the launcher's own process is in neither figure), with --threads
torch threads per process. Examples per
second are timed on rank 0 between the start of step --warmup and the start of the last step
(DDP makes every step wait for every rank); peak RSS is each process's ru_maxrss. The figures are
printed as one JSON object per line, then the ratios of N processes to one.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hypernet.errors import UserError

T5_BASE_SHAPE = {"d_model": 768, "layers": 12, "heads": 12, "d_ff": 3072, "d_kv": 64}
"""t5-base's transformer shape: the default of every size flag."""


@dataclass(frozen=True)
class BenchTrainConfig:
    """What one measurement trains: model shape, data shape and loop."""

    d_model: int = T5_BASE_SHAPE["d_model"]
    layers: int = T5_BASE_SHAPE["layers"]
    """Encoder layers, and as many decoder layers."""
    heads: int = T5_BASE_SHAPE["heads"]
    d_ff: int = T5_BASE_SHAPE["d_ff"]
    d_kv: int = T5_BASE_SHAPE["d_kv"]
    vocab: int = 2000
    batch_size: int = 8
    """Global batch of a step (each of N processes runs batch_size / N examples)."""
    input_tokens: int = 128
    output_tokens: int = 32
    steps: int = 6
    warmup: int = 2
    """Steps left out of the timing (first allocations, lazy initialisation)."""
    threads: int = 1
    """torch threads of each process."""
    tasks: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name not in ("seed", "warmup") and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.warmup < 0 or self.steps < self.warmup + 2:
            raise UserError(f"--steps must be >= --warmup + 2 (one timed step needs two step starts), got {self.steps}")
        if self.d_model != self.heads * self.d_kv:
            raise UserError(f"--d-model ({self.d_model}) must equal --heads x --d-kv ({self.heads} x {self.d_kv})")


# ---- data and model --------------------------------------------------------------------------------


def _words(seed: int) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 8))) for _ in range(400)]


def task_set(config: BenchTrainConfig):  # -> training.common.TaskSet (imported lazily: --help stays light)
    """`tasks` synthetic tasks (a definition, two paraphrases), 16 examples each of random words:
    inputs of about input_tokens tokens, outputs of about output_tokens (cut to them when batched)."""
    from training.common import Pair, TaskSet
    from training.data import Task

    rng, words = random.Random(config.seed), _words(config.seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    tasks, pairs = [], []
    for index in range(config.tasks):
        definition = f"Task {index}: answer with the words that follow {text(12)}."
        tasks.append(Task(f"bench_{index}", definition, (), (), (), ("Bench",), None, (f"{definition} {text(3)}", text(16))))
        pairs += [Pair(index, text(config.input_tokens), text(config.output_tokens)) for _ in range(16)]
    return TaskSet(tasks, [t.definition for t in tasks], pairs, [])


def build_checkpoint(config: BenchTrainConfig, out: Path) -> Path:
    """A random T5 of the configured shape with a tokenizer trained on the benchmark's texts,
    wrapped as an untrained tagi checkpoint (default generator); returns the checkpoint dir."""
    from hypernet.config import CheckpointConfig
    from hypernet.io import create_checkpoint
    from hypernet.tiny import TinyPreset, build_tiny_base
    from training.hypernet_pretrain import corpus

    tasks = task_set(config)
    texts = list(corpus(tasks))  # stage 2's texts of a task set: what the tokenizer must cover
    preset = TinyPreset(
        d_model=config.d_model,
        d_ff=config.d_ff,
        num_layers=config.layers,
        num_heads=config.heads,
        d_kv=config.d_kv,
        vocab_size=config.vocab,
    )
    build_tiny_base(texts, out / "base", preset, seed=config.seed)
    create_checkpoint(out / "base", out / "checkpoint", CheckpointConfig(), seed=config.seed)
    return out / "checkpoint"


# ---- one measurement: the torchrun worker ----------------------------------------------------------


def _worker(config: BenchTrainConfig, device_name: str, checkpoint: Path, work: Path, result_file: Path) -> None:
    """One process of a measurement: stage-3 steps through training.loop; rank 0 writes the figures."""
    import torch

    from hypernet.files import BASE_DIR, write_json
    from hypernet.io import load_checkpoint
    from training.common import load_frozen_base
    from training.distill import Distillation, Teachers
    from training.distributed import DEFAULT_TIMEOUT_S, all_gather, init_distributed, is_main
    from training.loop import EpochSampler, LoopConfig, resolve_device, train
    from training.presets import DistillConfig

    place = init_distributed(DEFAULT_TIMEOUT_S)
    torch.set_num_threads(config.threads)
    device = resolve_device(device_name)
    model = load_checkpoint(checkpoint, device=device)
    tasks = task_set(config)
    distill = DistillConfig(use_ins=False, max_input_tokens=config.input_tokens, max_output_tokens=config.output_tokens)
    teachers = Teachers(load_frozen_base(checkpoint / BASE_DIR, device), None, [])
    work_items = Distillation(model, tasks, tasks.train, distill, teachers)
    loop = LoopConfig(
        steps=config.steps,
        batch_size=config.batch_size,
        micro_batch_size=config.batch_size // place.world_size,
        lr=1e-4,
        warmup_steps=1,
        checkpoint_every=config.steps,
        log_every=1,
        device=device_name,
        seed=config.seed,
    )
    starts: dict[int, float] = {}

    class TimedSampler(EpochSampler):
        """The epoch order; notes when each step starts (it asks for its indices first)."""

        def take(self, count: int, step: int = 0) -> list[int]:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            starts[step] = time.perf_counter()
            return super().take(count, step)

    result = train(
        model,
        len(tasks.train),
        work_items.make_batch,
        work_items.loss,
        loop,
        work,
        name=f"bench train x{place.world_size}",
        resume=False,
        sampler=TimedSampler(len(tasks.train), config.seed),
    )
    timed_steps = config.steps - 1 - config.warmup
    seconds = starts[config.steps - 1] - starts[config.warmup]
    rss = all_gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
    cuda = all_gather(torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0)
    if is_main():
        write_json(
            result_file,
            {
                "device": device.type,
                "processes": place.world_size,
                "threads_per_process": config.threads,
                "examples_per_s": round(timed_steps * config.batch_size / seconds, 3),
                "seconds_per_step": round(seconds / timed_steps, 3),
                "peak_rss_mb_per_process": [round(b / 2**20) for b in rss],
                "peak_rss_mb_total": round(sum(rss) / 2**20),
                **({"cuda_peak_mb_per_process": [round(b / 2**20) for b in cuda]} if device.type == "cuda" else {}),
                "last_loss": round(result.last_metrics["loss"], 4),
            },
        )


# ---- the benchmark -----------------------------------------------------------------------------------


def _measure(config: BenchTrainConfig, device: str, processes: int, checkpoint: Path, tmp: Path) -> dict:
    """Fresh worker processes (a torchrun launch for several); their figures."""
    result_file = tmp / f"result-{device}-{processes}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(config.threads)}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # gloo and CPU tensors, whatever GPUs the machine has
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    command += ["-m", "training.bench", json.dumps(asdict(config)), device, str(checkpoint), str(tmp / "work"), str(result_file)]
    began = time.time()
    run = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=None, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"the {processes}-process {device} run failed (exit {run.returncode}); its errors are above")
    return {"bench": "train", **json.loads(result_file.read_text()), "wall_s": round(time.time() - began, 1)}


def run_train_benchmark(
    config: BenchTrainConfig, processes: tuple[int, ...] = (1, 2), device: str = "auto", json_path: Path | None = None
) -> list[dict]:
    """Every (device, process count) measurement, printed as it finishes, then the ratios to one process."""
    import torch
    from tqdm.auto import tqdm

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available")
    devices = ["cpu"] if device == "cpu" else (["cuda"] if device == "cuda" else ["cpu", "cuda"][: 1 + torch.cuda.is_available()])
    runs = [
        (d, n) for d in devices for n in processes if d == "cpu" or n <= torch.cuda.device_count()
    ]  # NCCL needs one GPU per process
    for d, n in ((d, n) for d in devices for n in processes if (d, n) not in runs):
        print(json.dumps({"bench": "train", "device": d, "processes": n, "skipped": "fewer GPUs than processes"}), flush=True)
    for n in processes:
        if config.batch_size % n:
            raise UserError(f"--batch-size {config.batch_size} is not a multiple of {n} processes")
    print(json.dumps({"bench": "train", "config": asdict(config), "torch": torch.__version__}), flush=True)
    results: list[dict] = []
    with (
        tempfile.TemporaryDirectory(prefix="tagi-bench-train-") as tmp_name,
        tqdm(total=1 + len(runs), desc="bench train", disable=None) as bar,
    ):
        tmp = Path(tmp_name)
        bar.set_postfix_str("building the model")
        began = time.time()
        checkpoint = build_checkpoint(config, tmp)
        print(json.dumps({"bench": "train", "built_checkpoint_s": round(time.time() - began, 1)}), flush=True)
        bar.update(1)
        for d, n in runs:
            bar.set_postfix_str(f"{d} x{n}")
            results.append(_measure(config, d, n, checkpoint, tmp))
            print(json.dumps(results[-1]), flush=True)
            bar.update(1)
    measured = list(results)
    for d in devices:
        one = next((r for r in measured if r["device"] == d and r["processes"] == 1), None)
        for r in (r for r in measured if r["device"] == d and r["processes"] > 1 and one is not None):
            ratio = {
                "bench": "train",
                "device": d,
                "ratio": f"{r['processes']} processes / 1",
                "examples_per_s": round(r["examples_per_s"] / one["examples_per_s"], 2),
                "peak_rss_total": round(r["peak_rss_mb_total"] / one["peak_rss_mb_total"], 2),
            }
            results.append(ratio)
            print(json.dumps(ratio), flush=True)
    if json_path is not None:
        from hypernet.files import write_json

        write_json(json_path, {"config": asdict(config), "results": results})
    return results


def cmd_bench_train(args) -> None:  # argparse.Namespace
    config = BenchTrainConfig(
        **{name: getattr(args, name) for name in BenchTrainConfig.__dataclass_fields__ if getattr(args, name, None) is not None}
    )
    if any(n < 1 for n in args.processes):
        raise UserError("--processes: each count must be >= 1")
    run_train_benchmark(config, tuple(args.processes), args.device, Path(args.json) if args.json else None)


def add_bench_train(bench) -> None:  # argparse._SubParsersAction
    p = bench.add_parser(
        "train",
        help="stage-3 training throughput and memory, 1 vs N processes",
        description="Stage-3 steps (L_ce + L_kl) on a random-initialised T5 of t5-base's shape (small vocabulary) as a "
        "TagiModel: examples/s and peak RSS with 1 and with N processes (torchrun + DDP; gloo on CPU), and the ratio; "
        "on CUDA too where available. One JSON object per line.",
    )
    defaults = BenchTrainConfig()
    for name, help_text in (
        ("d_model", "model width"),
        ("layers", "encoder layers (and as many decoder layers)"),
        ("heads", "attention heads"),
        ("d_ff", "feed-forward width"),
        ("d_kv", "width of one head (d_model = heads x d_kv)"),
        ("vocab", "SentencePiece vocabulary size (t5-base has 32128; the bench's texts do not need it)"),
        ("batch_size", "global examples per step, split over the processes"),
        ("input_tokens", "input tokens per example"),
        ("output_tokens", "target tokens per example"),
        ("steps", "steps per measurement"),
        ("warmup", "first steps left out of the timing"),
        ("threads", "torch threads per process"),
        ("tasks", "synthetic tasks (one instruction each)"),
    ):
        p.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name), help=f"{help_text} (default %(default)s)"
        )
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to measure (default: 1 2)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CPU, and CUDA too when available (one GPU per process) (default auto)",
    )
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    p.set_defaults(func=cmd_bench_train)


if __name__ == "__main__":  # a torchrun worker of _measure: CONFIG_JSON DEVICE CHECKPOINT WORK RESULT
    _config, _device, _checkpoint, _work, _result = sys.argv[1:]
    _worker(BenchTrainConfig(**json.loads(_config)), _device, Path(_checkpoint), Path(_work), Path(_result))
