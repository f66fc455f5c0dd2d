"""Builders shared by the test packages: tiny checkpoints made from scratch in about a second."""

from __future__ import annotations

from pathlib import Path

import torch

from hypernet.config import CheckpointConfig, GeneratorConfig
from hypernet.families import FAMILIES
from hypernet.io import create_checkpoint, load_checkpoint, save_checkpoint
from hypernet.model import TagiModel
from hypernet.tiny import PRESETS, build_tiny_base
from hypernet.tiny_causal import CAUSAL_PRESETS, build_tiny_causal_base

WORDS = "apple river stone green house cloud seven bright table window music paper garden silver".split()
ALL_TARGETS = ("q", "k", "v", "o", "wi", "wo")


def randomize_generator(model: TagiModel, seed: int, std: float = 0.05) -> None:
    """Stand-in for training: non-zero B heads, so that generated adapters change outputs (an
    untrained generator emits exactly zero updates)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in model.generator.heads_B.values():
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * std)
            head.bias.copy_(torch.randn(head.bias.shape, generator=generator) * std)


def corpus() -> list[str]:
    texts = []
    for i in range(200):
        items = ", ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 5))
        texts.append(f"Reverse the list. Sort the items of the list: {items}, {i % 100}. Count the words.")
    return texts


def make_checkpoint(root: Path, targets: tuple[str, ...], trained: bool) -> Path:
    base = root / "base_src"
    if not base.exists():
        build_tiny_base(corpus(), base, PRESETS["micro"], seed=0)
    out = root / ("trained" if trained else "untrained")
    config = CheckpointConfig(generator=GeneratorConfig(target_modules=targets), max_instruction_tokens=128, max_input_tokens=64)
    create_checkpoint(base, out, config, seed=0)
    if trained:
        model = load_checkpoint(out)
        randomize_generator(model, seed=1)
        save_checkpoint(model, out, overwrite=True)
    return out


def make_causal_checkpoint(root: Path, family: str, chat_template: bool) -> Path:
    """A micro checkpoint on a tiny `family` decoder (with a ChatML chat template, which becomes
    its input_template, or none), adapting every module the family has, with non-zero adapters."""
    base = root / f"{family}-base"
    build_tiny_causal_base(corpus(), base, family, CAUSAL_PRESETS["micro"], chat_template=chat_template)
    out = root / family
    targets = FAMILIES[family].module_names
    config = CheckpointConfig(generator=GeneratorConfig(target_modules=targets), max_instruction_tokens=128, max_input_tokens=64)
    create_checkpoint(base, out, config, seed=0)
    model = load_checkpoint(out)
    randomize_generator(model, seed=1)
    save_checkpoint(model, out, overwrite=True)
    return out


def recipe_file(tmp_path: Path, text: str) -> Path:
    """A recipe YAML file holding `text` (for training.presets.load_recipe)."""
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path
