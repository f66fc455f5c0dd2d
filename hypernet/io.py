"""Everything that touches disk: checkpoints, fingerprints, and the PEFT format.

A checkpoint is one directory:
    config.json              CheckpointConfig (versioned), including the base fingerprint
    generator.safetensors    the adapter generator's weights
    base/                    the base's HF directory with its tokenizer files (a T5's spiece.model too)
An export is a standard PEFT LoRA directory plus `tagi.json`. All writes go to a temporary
sibling directory that is renamed into place, so a crash never leaves half a checkpoint.
No pickle: weights are safetensors only, and the base is loaded with use_safetensors=True.

This is the only module that knows PEFT's keys, config and file names: exports of generated
adapters, and the instance-trained teachers that training writes and reads back.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file, save_file

from hypernet.causal import CausalTagiModel
from hypernet.chat import input_template_for
from hypernet.config import CheckpointConfig
from hypernet.encoders import load_instruction_encoder
from hypernet.errors import CheckpointError, UserError
from hypernet.families import Family, load_base, load_base_tokenizer, read_family
from hypernet.files import (
    BASE_DIR,
    CONFIG_FILE,
    DEFAULT_CHECKPOINT,
    GENERATOR_FILE,
    SPIECE,
    atomic_directory,
    base_fingerprint,
    checkpoint_fingerprint,
    read_checkpoint_config,
    write_json,
)
from hypernet.model import Adapter, TagiModel
from hypernet.targets import LoraWeights, TargetLayout

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


def create_checkpoint(
    base_dir: Path,
    out_dir: Path,
    config: CheckpointConfig,
    seed: int = 0,
    overwrite: bool = False,
    encoder_dir: str | Path | None = None,
) -> None:
    """An untrained checkpoint (zero-update generator) around any local HF base of a supported
    family (hypernet.families; anything else is refused in one line); a sentence instruction
    encoder is found as at load time (`encoder_dir`, or see hypernet.encoders). A decoder-only
    base whose config keeps the default input template gets the one its chat template implies."""
    family = read_family(Path(base_dir))
    check_export_rank(config.generator.rank, family)
    try:
        base = load_base(Path(base_dir), family)
        tokenizer = load_base_tokenizer(Path(base_dir), family)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load a {family.name} model with tokenizer from {base_dir}: {err}") from err
    if family.causal and config.input_template == CheckpointConfig.input_template:
        config = dataclasses.replace(config, input_template=input_template_for(tokenizer))
    encoder = load_instruction_encoder(config.instruction_encoder, base, tokenizer, encoder_dir)
    torch.manual_seed(seed)
    save_checkpoint(model_class(family)(base, tokenizer, config, instruction_encoder=encoder), out_dir, overwrite=overwrite)


def model_class(family: Family) -> type[TagiModel]:
    return CausalTagiModel if family.causal else TagiModel


def load(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    encoder_dir: str | Path | None = None,
) -> TagiModel:
    """The public entry point: `hypernet.load("checkpoints/tiny")`; None loads the shipped checkpoint.
    `encoder_dir`: where the checkpoint's sentence encoder is, if not installed (hypernet.encoders)."""
    if path is None:
        if not (DEFAULT_CHECKPOINT / CONFIG_FILE).exists():
            raise CheckpointError(f"no checkpoint given and no shipped checkpoint at {DEFAULT_CHECKPOINT}")
        path = DEFAULT_CHECKPOINT
    return load_checkpoint(Path(path), device=device, dtype=dtype, encoder_dir=encoder_dir)


def load_checkpoint(
    path: Path,
    device: str | torch.device = "cpu",
    verify: bool = True,
    dtype: torch.dtype = torch.float32,
    encoder_dir: str | Path | None = None,
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
    family = read_family(path / BASE_DIR, "checkpoint base")
    try:
        base = load_base(path / BASE_DIR, family, dtype)
        tokenizer = load_base_tokenizer(path / BASE_DIR, family)
        state = load_file(path / GENERATOR_FILE)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load {path}: {err}") from err
    encoder = load_instruction_encoder(config.instruction_encoder, base, tokenizer, encoder_dir)
    model = model_class(family)(base, tokenizer, config, fingerprint=checkpoint_fingerprint(path), instruction_encoder=encoder)
    missing, unexpected = model.generator.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path / GENERATOR_FILE} does not fit the config: missing {missing}, unexpected {unexpected}")
    return model.to(device=device, dtype=dtype)


# ---- the PEFT format ---------------------------------------------------------------------------


def peft_key(module_path: str, factor: str) -> str:
    """PEFT's saved key (no adapter name) of one LoRA factor ("A" or "B") of a module."""
    return f"base_model.model.{module_path}.lora_{factor}.weight"


VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for `--max-lora-rank` (its LoRAConfig; default 16). It loads an adapter
whose r is at most the server's max_lora_rank (a smaller r is zero-padded), so any r up to the
largest of these loads with the smallest value >= r; a larger r loads nowhere in vLLM."""


def vllm_max_lora_rank(rank: int) -> int | None:
    """The smallest `--max-lora-rank` with which vLLM loads rank-`rank` adapters; None above them all."""
    return next((value for value in VLLM_MAX_LORA_RANKS if value >= rank), None)


def check_export_rank(rank: int, family: Family) -> None:
    """Refuse, at `tagi init`, a causal checkpoint whose adapters no vLLM server could load: the
    point of a decoder-only base is that its exports run in vLLM, SGLang and LoRAX, and a rank
    found unservable only at deployment would mean training again."""
    if family.causal and rank > VLLM_MAX_LORA_RANKS[-1]:
        raise UserError(
            f"rank {rank} is above {VLLM_MAX_LORA_RANKS[-1]}, the largest LoRA rank vLLM serves; "
            f"choose a rank of at most {VLLM_MAX_LORA_RANKS[-1]}"
        )


def peft_lora_config(
    rank: int, alpha: float, target_modules: tuple[str, ...] | list[str], family: Family, base_name: str | None = None
) -> LoraConfig:
    """The LoRA config of every adapter we write: no dropout, no bias, nothing saved besides
    the LoRA factors (what vLLM requires of an adapter), the family's task type, and
    `fan_in_fan_out` where the base stores weights (in, out) (GPT-2's Conv1D)."""
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        lora_dropout=0.0,
        bias="none",
        modules_to_save=None,
        fan_in_fan_out=family.fan_in_fan_out,
        task_type=family.peft_task_type,
        base_model_name_or_path=base_name,
    )


def is_peft_dir(path: Path) -> bool:
    return (Path(path) / PEFT_WEIGHTS_FILE).exists() and (Path(path) / PEFT_CONFIG_FILE).exists()


def save_peft_model(model: PeftModel, out_dir: Path, overwrite: bool = True) -> None:
    """A trained PEFT model's adapter, written atomically (a teacher is either whole or absent)."""
    with atomic_directory(Path(out_dir), overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)


def copy_peft_dir(src: Path, dst: Path, dtype: torch.dtype) -> None:
    """Copy a PEFT directory with its weights re-saved in `dtype` (shipping teachers in float16)."""
    src = Path(src)
    with atomic_directory(Path(dst), overwrite=True) as tmp:
        shutil.copy(src / PEFT_CONFIG_FILE, tmp / PEFT_CONFIG_FILE)
        weights = {k: v.to(dtype) for k, v in load_file(src / PEFT_WEIGHTS_FILE).items()}
        save_file(weights, tmp / PEFT_WEIGHTS_FILE, metadata={"format": "pt"})


def load_peft_loras(dirs: list[Path], layout: TargetLayout) -> LoraWeights:
    """PEFT LoRA directories -> one LoraWeights batch (row i = dirs[i]) in `layout`, float32, with
    the adapters' own alpha/r as scale (so a teacher's update is compared as PEFT applies it)."""
    scales = set()
    for path in dirs:
        config = LoraConfig.from_pretrained(str(path))
        scales.add(config.lora_alpha / config.r)
    if len(scales) != 1:
        raise CheckpointError(
            f"PEFT adapters in {[str(d) for d in dirs]} have different alpha/r {sorted(scales)}: they cannot share a batch"
        )
    states = [load_file(Path(path) / PEFT_WEIGHTS_FILE) for path in dirs]
    lora_A: dict[str, list[torch.Tensor]] = {}
    lora_B: dict[str, list[torch.Tensor]] = {}
    for target, group, _ in layout.slots():
        try:
            rows_A = [state[peft_key(target.path, "A")].float() for state in states]
            rows_B = [state[peft_key(target.path, "B")].float() for state in states]
        except KeyError as err:
            raise CheckpointError(f"a PEFT adapter lacks {err}: it does not target the modules of this layout") from err
        lora_A.setdefault(group, []).append(torch.stack(rows_A))
        lora_B.setdefault(group, []).append(torch.stack(rows_B))
    return LoraWeights(
        {g: torch.stack(v) for g, v in lora_A.items()}, {g: torch.stack(v) for g, v in lora_B.items()}, scales.pop()
    )


def peft_state_dict(adapter: Adapter) -> dict[str, torch.Tensor]:
    """PEFT's saved key names (no adapter name) -> (r, in) and (out, r) tensors."""
    state = {}
    for target, group, index in adapter.model.layout.slots():
        state[peft_key(target.path, "A")] = adapter.weights.lora_A[group][index, 0].contiguous().cpu()
        state[peft_key(target.path, "B")] = adapter.weights.lora_B[group][index, 0].contiguous().cpu()
    return state


def export_peft(adapter: Adapter, out_dir: Path, overwrite: bool = False, base_name: str | None = None) -> None:
    """Write a PEFT LoRA directory that `PeftModel.from_pretrained(ckpt/base, out_dir)` loads.

    PEFT matches `target_modules` by name suffix in every block, which is exactly what the
    generator targets (every attention block or feed-forward layer that has such a module).
    `base_name` is the config's base_model_name_or_path (default: where this process loaded the
    base from; a server passes a name that does not reveal its paths). The files depend on the
    adapter only: PEFT keeps target_modules as a set, whose order varies between processes, so
    the saved list is sorted."""
    model = adapter.model
    generator = model.config.generator
    base_name = base_name or str(getattr(model.base, "name_or_path", "") or BASE_DIR)
    peft_config = peft_lora_config(generator.rank, generator.alpha, generator.target_modules, model.family, base_name)
    with atomic_directory(Path(out_dir), overwrite=overwrite) as tmp:
        peft_config.save_pretrained(tmp)
        saved = json.loads((tmp / PEFT_CONFIG_FILE).read_text())
        saved["target_modules"] = sorted(saved["target_modules"])
        write_json(tmp / PEFT_CONFIG_FILE, saved)
        save_file(peft_state_dict(adapter), tmp / PEFT_WEIGHTS_FILE, metadata={"format": "pt"})
        write_json(
            tmp / TAGI_EXPORT_FILE,
            {
                "instruction": adapter.instruction,
                "adapter_id": adapter.adapter_id,
                "checkpoint_fingerprint": model.fingerprint,
                "base_fingerprint": model.config.base_fingerprint,
                "input_template": model.config.input_template,
                "note": "Format inputs with input_template. Fusion cannot be exported: outputs match `tagi run --no-fusion`.",
                # The one flag a vLLM server needs for it (T5 exports load in PEFT only).
                **({"vllm_max_lora_rank": vllm_max_lora_rank(generator.rank)} if model.family.causal else {}),
            },
        )
