"""One training process of tests/training/test_distributed.py: the shared loop (training.loop.train)
on a micro TagiModel, launched by torchrun (gloo, CPU) or called in the test's own process.

The loss is stage 3's shape: each example's task wording and each micro-batch's fusion coin are
drawn from the batch seed, the generated LoRA runs in the frozen base, cross-entropy on the
targets; a micro-batch without fusion leaves fusion's parameters unused (DDP's
find_unused_parameters path). Rank 0 writes the generator's weights to OUT/weights.safetensors.

    python -m torch.distributed.run --standalone --nproc-per-node 2 distributed_worker.py \\
        CHECKPOINT OUT --steps 6 --micro 4 [--raise-at STEP] [--sigkill-rank R --sigkill-at STEP]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
from pathlib import Path

import torch
from safetensors.torch import save_file

import training.loop as loop_module
from hypernet.io import load_checkpoint
from hypernet.model import TagiModel
from training.common import seq2seq_batch
from training.distributed import init_distributed, is_main, world
from training.loop import LoopConfig, LoopResult, train
from training.losses import cross_entropy

WORDINGS = [
    ["Reverse the list.", "Write the items in reverse order."],
    ["Sort the items.", "Put the items in alphabetical order."],
    ["Count the words.", "How many words are there?"],
]
WORDS = "apple river stone green house cloud seven bright table window music paper".split()
WEIGHTS = "weights.safetensors"


def pairs() -> list[tuple[int, str, str]]:
    """(task, input, output) for the three tasks above, on lists of words."""
    out = []
    for i in range(24):
        items = [WORDS[(i * 5 + j) % len(WORDS)] for j in range(2 + i % 3)]
        task = i % 3
        target = [" ".join(reversed(items)), " ".join(sorted(items)), str(len(items))][task]
        out.append((task, " ".join(items), target))
    return out


def loop_config(steps: int, micro: int, checkpointing: bool = False) -> LoopConfig:
    return LoopConfig(
        steps=steps,
        batch_size=8,
        micro_batch_size=micro,
        lr=3e-3,
        warmup_steps=2,
        checkpoint_every=2,
        log_every=1,
        device="cpu",
        gradient_checkpointing=checkpointing,
    )


def run(
    checkpoint: Path, out: Path, steps: int, micro: int, checkpointing: bool = False, model: TagiModel | None = None
) -> tuple[TagiModel, LoopResult]:
    """Train the checkpoint's generator `steps` steps in `out` (resuming what is there)."""
    torch.manual_seed(0)
    model = model or load_checkpoint(checkpoint)
    data = pairs()

    def make_batch(indices: list[int], seed: int) -> dict:
        rng = random.Random(seed)
        chosen = [data[i] for i in indices]
        batch = seq2seq_batch(model.tokenizer, [c[1] for c in chosen], [c[2] for c in chosen], 32, 16)
        batch["instructions"] = [rng.choice(WORDINGS[c[0]]) for c in chosen]
        batch["fusion"] = rng.random() < 0.5
        return batch

    def loss_fn(batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        encoding = model.encode_instructions(batch["instructions"])
        lora = model.generate_lora(encoding)
        fused = model.fusion_states(encoding) if batch["fusion"] else None
        logits = model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"], lora=lora, instruction=fused)
        loss = cross_entropy(logits, batch["labels"])
        return loss, {"fusion": float(batch["fusion"])}

    result = train(model, len(data), make_batch, loss_fn, loop_config(steps, micro, checkpointing), out, name="distributed-test")
    return model, result


def generator_weights(model: TagiModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.generator.state_dict().items()}


def _die_at(step_to_die: int, how: str) -> None:
    """Make the loop die as step `step_to_die` + 1 begins: an exception (every rank), or SIGKILL."""
    real = loop_module.lr_at

    def lr_at(config: LoopConfig, step: int) -> float:
        if step == step_to_die:
            if how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"stopped as step {step + 1} began")
        return real(config, step)

    loop_module.lr_at = lr_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--raise-at", type=int, help="every rank raises as this step begins (after its saves)")
    parser.add_argument("--sigkill-rank", type=int, help="this rank kills itself with SIGKILL at --sigkill-at")
    parser.add_argument("--sigkill-at", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="collective timeout (s)")
    args = parser.parse_args()
    place = init_distributed(args.timeout)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"pid.{place.rank}").write_text(str(os.getpid()))
    torch.set_num_threads(1)
    if args.raise_at is not None:
        _die_at(args.raise_at, "raise")
    if args.sigkill_rank == world().rank:
        _die_at(args.sigkill_at, "sigkill")
    model, _ = run(args.checkpoint, args.out, args.steps, args.micro)
    if is_main():
        save_file(generator_weights(model), args.out / WEIGHTS)


if __name__ == "__main__":
    main()
