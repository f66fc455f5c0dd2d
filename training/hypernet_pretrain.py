"""Stage 2: hypernetwork pretraining (missing from the authors' release).

A text is split into three segments a / b / c: a goes through the frozen encoder to the
generator (and to fusion), b is the adapted base's input, c its target; the loss is the
cross-entropy of c. Texts are built from the training corpus only (a few of its texts
joined), so pretraining teaches the generator to turn "context" into an adapter that helps
continue it, without any task labels.

Entry point: `run(recipe, inputs, out)` (the stage table, training.stages): creates the
checkpoint from stage 0's base (once) and trains its generator into out/checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hypernet.config import CheckpointConfig, InstructionEncoderConfig
from hypernet.encoders import sentence_encoder_config
from hypernet.files import CONFIG_FILE
from hypernet.io import create_checkpoint, load_checkpoint, save_checkpoint
from hypernet.model import TagiModel
from training.common import TaskSet, shift_right
from training.distributed import barrier, is_main
from training.loop import LoopConfig, resolve_device, train
from training.losses import IGNORE, cross_entropy
from training.presets import HypernetPretrainConfig

if TYPE_CHECKING:
    from training.presets import Preset
    from training.stages import StageInputs


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def corpus(task_set: TaskSet) -> list[str]:
    return [*task_set.instructions, *(f"{p.input} {p.output}" for p in task_set.train)]


def pretrain_hypernet(
    model: TagiModel, task_set: TaskSet, out_dir: Path, config: HypernetPretrainConfig, loop: LoopConfig, resume: bool = True
) -> None:
    """Train model.generator in place; `out_dir` holds the loop state, log and plot."""
    texts = corpus(task_set)
    tokenizer = model.tokenizer
    eos = tokenizer.eos_token_id
    n = config.segment_tokens

    def segment_a(rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """Segment a for the instruction encoder: its ids as they are when it reads the base's
        tokens, else its text in the encoder's own tokenizer (a sentence encoder)."""
        if model.instruction_tokenizer is tokenizer:
            a = _pad(rows, 0)
            return {"a_ids": a, "a_mask": (a != 0).long()}
        texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
        a = model.instruction_tokenizer(texts, padding=True, truncation=True, max_length=4 * n, return_tensors="pt")
        return {"a_ids": a["input_ids"], "a_mask": a["attention_mask"]}

    def make_batch(indices: list[int], batch_seed: int) -> dict:
        rng = random.Random(batch_seed)
        a_rows, b_rows, c_rows = [], [], []
        for index in indices:
            ids: list[int] = []
            pieces = [texts[index]]
            while len(ids) < 3 * n:
                ids = tokenizer(" ".join(pieces), add_special_tokens=False)["input_ids"]
                pieces.append(rng.choice(texts))
            ids = ids[: 3 * n]
            a_rows.append(ids[:n] + [eos])
            b_rows.append(ids[n : 2 * n] + [eos])
            c_rows.append(ids[2 * n :] + [eos])
        b, c = _pad(b_rows, 0), _pad(c_rows, IGNORE)
        return {
            **segment_a(a_rows),
            "input_ids": b,
            "attention_mask": (b != 0).long(),
            "labels": c,
            "decoder_input_ids": shift_right(c),
        }

    def loss_fn(batch: dict) -> tuple[torch.Tensor, dict]:
        encoding = model.encode_instruction_ids(batch["a_ids"], batch["a_mask"])
        lora = model.generate_lora(encoding)
        fused = model.fusion_states(encoding) if model.config.fusion else None
        logits = model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"], lora=lora, instruction=fused)
        loss = cross_entropy(logits, batch["labels"])
        return loss, {"ce": float(loss.detach())}

    train(model, len(texts), make_batch, loss_fn, loop, out_dir, name="stage2-hypernet-pretrain", resume=resume, settings=config)


def checkpoint_config(recipe: Preset) -> CheckpointConfig:
    """The trained checkpoint's config.json: the recipe's generator, instruction encoder (with the
    fingerprint of the one found here) and instruction template."""
    name = recipe.instruction_encoder
    encoder = InstructionEncoderConfig() if name == "base" else sentence_encoder_config(name)
    return CheckpointConfig(
        generator=recipe.generator,
        instruction_encoder=encoder,
        instruction_template=recipe.instruction_template,
        # a BERT-style encoder reads at most 512 positions
        max_instruction_tokens=1024 if encoder.kind == "base" else 512,
    )


def run(recipe: Preset, inputs: StageInputs, out: Path) -> None:
    """Stage 2 on stage 0's base; writes out/checkpoint, the checkpoint stage 3 starts from."""
    from training.stages import stage_loop

    checkpoint = out / "checkpoint"
    if is_main() and not (checkpoint / CONFIG_FILE).exists():
        create_checkpoint(inputs.results["base"], checkpoint, checkpoint_config(recipe), seed=recipe.seed, overwrite=True)
    barrier()  # every rank loads what rank 0 created
    model = load_checkpoint(checkpoint, device=resolve_device(inputs.device))
    pretrain_hypernet(
        model,
        inputs.task_set,
        out,
        recipe.hypernet_pretrain,
        stage_loop(recipe, "hypernet_pretrain.loop", inputs.device),
        resume=inputs.resume,
    )
    if is_main():
        save_checkpoint(model.to("cpu"), checkpoint, overwrite=True)
