"""Shared fixtures: tiny checkpoints built from scratch in seconds (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

from hypernet.config import CheckpointConfig, GeneratorConfig
from hypernet.io import create_checkpoint, load_checkpoint, save_checkpoint
from hypernet.model import TagiModel
from hypernet.tiny import PRESETS, build_tiny_base

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()
torch.set_num_threads(2)

WORDS = "apple river stone green house cloud seven bright table window music paper garden silver".split()
ALL_TARGETS = ("q", "k", "v", "o", "wi", "wo")


def corpus() -> list[str]:
    texts = []
    for i in range(200):
        items = ", ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 5))
        texts.append(f"Reverse the list. Sort the items of the list: {items}, {i % 100}. Count the words.")
    return texts


def randomize_generator(model: TagiModel, seed: int) -> None:
    """Stand-in for training: non-zero B heads, so generated adapters change outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in model.generator.heads_B.values():
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.05)
            head.bias.copy_(torch.randn(head.bias.shape, generator=generator) * 0.05)


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


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro checkpoint (q, k, v, o, wi, wo targets) whose adapters are non-zero."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), ALL_TARGETS, trained=True)


@pytest.fixture(scope="session")
def untrained_checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt0"), ("q", "v"), trained=False)


@pytest.fixture()
def model(checkpoint_dir: Path) -> TagiModel:
    return load_checkpoint(checkpoint_dir)
