"""Shared fixtures: tiny checkpoints built from scratch in seconds (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

from hypernet.io import load_checkpoint
from hypernet.model import TagiModel
from support import ALL_TARGETS, make_checkpoint

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()
torch.set_num_threads(2)


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
