"""`tagi bench encoders`: what the instruction encoder costs, measured side by side in one run.

The same base and generator shape read the same everyday instructions through each encoder
kind: the base's own encoder (the paper's choice) and the checkpoint's sentence encoder. The
generator's weights do not change the cost, so the base-encoder arm is an untrained generator
on the checkpoint's base. Reported per instruction: one `TagiModel.adapter` call (encode +
generate, what a server pays for a new instruction) and the batched `TagiModel.adapters` rate;
medians over rounds, and the ratio of the two arms, since absolute times on a shared machine
drift while a ratio measured in one run does not.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import T5ForConditionalGeneration

from hypernet.config import InstructionEncoderConfig
from hypernet.files import BASE_DIR, write_json
from hypernet.io import load_checkpoint
from hypernet.model import TagiModel
from hypernet.tiny import load_tokenizer

INSTRUCTIONS = (
    "What's the biggest number here?",
    "Turn this list around.",
    "Give me just the first three things.",
    "Which one is the smallest?",
    "How many items are in there?",
    "Please drop the first item and keep the rest.",
    "Is the word apple anywhere in the list? yes or no",
    "Sort these from low to high, then give me the top one.",
    "Keep only the numbers bigger than 50.",
    "Get rid of any repeats but keep the order.",
    "Are these numbers already in increasing order?",
    "Every other item please, starting with the first one.",
)


def base_encoder_twin(checkpoint: Path, model: TagiModel) -> TagiModel:
    """The same base (a fresh copy: a model's base carries its own LoRA slots) and generator
    shape, reading instructions with the base's own encoder."""
    config = dataclasses.replace(model.config, instruction_encoder=InstructionEncoderConfig())
    base = T5ForConditionalGeneration.from_pretrained(checkpoint / BASE_DIR, use_safetensors=True, dtype=torch.float32)
    torch.manual_seed(0)
    return TagiModel(base, load_tokenizer(checkpoint / BASE_DIR), config)


def _median_seconds(fn, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_encoder_benchmark(checkpoint: Path, rounds: int = 5, json_path: Path | None = None) -> dict:
    model = load_checkpoint(Path(checkpoint))
    if model.config.instruction_encoder.kind == "base":
        raise ValueError(f"{checkpoint} reads instructions with its base's encoder: there is no sentence encoder to compare")
    arms = {"base": base_encoder_twin(Path(checkpoint), model), model.config.instruction_encoder.name: model}
    result: dict = {"checkpoint": str(checkpoint), "instructions": len(INSTRUCTIONS), "rounds": rounds, "arms": {}}
    for name, arm in tqdm(arms.items(), desc="encoders"):
        one = _median_seconds(lambda arm=arm: [arm.adapter(text) for text in INSTRUCTIONS], rounds) / len(INSTRUCTIONS)
        batched = _median_seconds(lambda arm=arm: arm.adapters(list(INSTRUCTIONS)), rounds) / len(INSTRUCTIONS)
        counts = arm.parameter_counts()
        result["arms"][name] = {
            "adapter_ms": 1000 * one,
            "batched_adapter_ms": 1000 * batched,
            "encoder_parameters": counts["instruction_encoder_frozen"] or sum(p.numel() for p in arm.base.encoder.parameters()),
            "generator_parameters": counts["generator"],
        }
    sentence = model.config.instruction_encoder.name
    result["ratio_sentence_vs_base"] = result["arms"][sentence]["adapter_ms"] / result["arms"]["base"]["adapter_ms"]
    for name, row in result["arms"].items():
        print(
            f"{name:<18} adapter {row['adapter_ms']:7.2f} ms/instruction, "
            f"batched {row['batched_adapter_ms']:7.2f} ms/instruction; "
            f"encoder {row['encoder_parameters'] / 1e6:.1f}M, generator {row['generator_parameters'] / 1e6:.2f}M parameters"
        )
    print(f"{sentence} vs base encoder, one adapter: {result['ratio_sentence_vs_base']:.2f}x")
    if json_path is not None:
        write_json(json_path, result)
    return result
