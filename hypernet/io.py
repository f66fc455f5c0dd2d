"""Everything that touches disk: checkpoints, fingerprints, PEFT exports.

A checkpoint is one directory:
    config.json              CheckpointConfig (versioned), including the base fingerprint
    generator.safetensors    the adapter generator's weights
    base/                    an HF T5 directory with tokenizer files and spiece.model
An export is a standard PEFT LoRA directory plus `tagi.json`. All writes go to a temporary
sibling directory that is renamed into place, so a crash never leaves half a checkpoint.
No pickle: weights are safetensors only, and the base is loaded with use_safetensors=True.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from transformers import T5ForConditionalGeneration

from hypernet.config import CheckpointConfig
from hypernet.files import (
    BASE_DIR,
    CONFIG_FILE,
    GENERATOR_FILE,
    SPIECE,
    CheckpointError,
    atomic_directory,
    base_fingerprint,
    checkpoint_fingerprint,
    read_checkpoint_config,
    write_json,
)
from hypernet.generator import AdapterGenerator
from hypernet.model import Adapter, TagiModel
from hypernet.targets import find_targets
from hypernet.tiny import load_tokenizer

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
TAGI_EXPORT_FILE = "tagi.json"


def save_checkpoint(model: TagiModel, out_dir: Path, overwrite: bool = False) -> None:
    with atomic_directory(Path(out_dir), overwrite=overwrite) as tmp:
        base = tmp / BASE_DIR
        model.base.save_pretrained(base)
        model.tokenizer.save_pretrained(base)
        source = getattr(model.tokenizer, "vocab_file", None)
        if source and Path(source).exists() and not (base / SPIECE).exists():
            shutil.copyfile(source, base / SPIECE)  # save_pretrained of the model drops it
        config = dataclasses.replace(model.config, base_fingerprint=base_fingerprint(base))
        state = {k: v.detach().contiguous().cpu() for k, v in model.generator.state_dict().items()}
        save_file(state, tmp / GENERATOR_FILE, metadata={"format": "pt"})
        write_json(tmp / CONFIG_FILE, config.to_dict())
    model.config = config
    model.fingerprint = checkpoint_fingerprint(Path(out_dir))


def create_checkpoint(base_dir: Path, out_dir: Path, config: CheckpointConfig, seed: int = 0, overwrite: bool = False) -> None:
    """An untrained checkpoint (zero-update generator) around any local HF T5 directory."""
    try:
        base = T5ForConditionalGeneration.from_pretrained(base_dir, use_safetensors=True)
        tokenizer = load_tokenizer(Path(base_dir))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load a T5 model with tokenizer from {base_dir}: {err}") from err
    torch.manual_seed(seed)
    save_checkpoint(TagiModel(base, tokenizer, config), out_dir, overwrite=overwrite)


def load_checkpoint(
    path: Path, device: str | torch.device = "cpu", verify: bool = True, dtype: torch.dtype = torch.float32
) -> TagiModel:
    """Load and check a checkpoint; every problem is a CheckpointError with one clear line.

    The base is cast to `dtype` whatever it was stored in, so a base may ship in bf16 to save
    space and still run in float32 on a CPU."""
    path = Path(path)
    config = read_checkpoint_config(path)
    if verify and base_fingerprint(path / BASE_DIR) != config.base_fingerprint:
        raise CheckpointError(
            f"the base model in {path / BASE_DIR} does not match the one this generator was trained on "
            "(fingerprint mismatch); use the base it was saved with"
        )
    try:
        base = T5ForConditionalGeneration.from_pretrained(path / BASE_DIR, use_safetensors=True, dtype=dtype)
        tokenizer = load_tokenizer(path / BASE_DIR)
        state = load_file(path / GENERATOR_FILE)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load {path}: {err}") from err
    generator = AdapterGenerator(find_targets(base, config.generator.target_modules), base.config.d_model, config.generator)
    missing, unexpected = generator.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path / GENERATOR_FILE} does not fit the config: missing {missing}, unexpected {unexpected}")
    model = TagiModel(base, tokenizer, config, generator, fingerprint=checkpoint_fingerprint(path))
    return model.to(device=device, dtype=dtype)


def peft_state_dict(model: TagiModel, adapter: Adapter) -> dict[str, torch.Tensor]:
    """PEFT's saved key names (no adapter name) -> (r, in) and (out, r) tensors."""
    state = {}
    for target, group, index in model.layout.slots():
        prefix = f"base_model.model.{target.path}"
        state[f"{prefix}.lora_A.weight"] = adapter.weights.lora_A[group][index, 0].contiguous().cpu()
        state[f"{prefix}.lora_B.weight"] = adapter.weights.lora_B[group][index, 0].contiguous().cpu()
    return state


def export_peft(model: TagiModel, adapter: Adapter, out_dir: Path, overwrite: bool = False) -> None:
    """Write a PEFT LoRA directory that `PeftModel.from_pretrained(ckpt/base, out_dir)` loads.

    PEFT matches `target_modules` by name suffix in every block, which is exactly what the
    generator targets (all self- and cross-attention blocks, or all feed-forward layers)."""
    generator = model.config.generator
    peft_config = LoraConfig(
        r=generator.rank,
        lora_alpha=generator.alpha,
        target_modules=list(generator.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="SEQ_2_SEQ_LM",
        base_model_name_or_path=str(getattr(model.base, "name_or_path", "") or BASE_DIR),
    )
    with atomic_directory(Path(out_dir), overwrite=overwrite) as tmp:
        peft_config.save_pretrained(tmp)
        save_file(peft_state_dict(model, adapter), tmp / PEFT_WEIGHTS_FILE, metadata={"format": "pt"})
        write_json(
            tmp / TAGI_EXPORT_FILE,
            {
                "instruction": adapter.instruction,
                "adapter_id": adapter.adapter_id,
                "checkpoint_fingerprint": model.fingerprint,
                "base_fingerprint": model.config.base_fingerprint,
                "input_template": model.config.input_template,
                "note": "Format inputs with input_template. Fusion cannot be exported: outputs match `tagi run --no-fusion`.",
            },
        )
