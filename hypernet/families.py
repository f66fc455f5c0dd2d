"""Which base models tagi can adapt, and what differs between their families.

A base is recognised by its config.json `model_type`, never by guessing from its shapes: a Qwen2
directory must not be read as a T5 built from its numbers. Everything that depends on the family
is here, once: the module names LoRA can target (and the generator's embedding vocabulary of them),
the default targets, whether weights are stored transposed (GPT-2's Conv1D), PEFT's task type, and
how the weights and tokenizer are loaded (safetensors only).

- seq2seq: T5 and mT5 (t5-lm-adapt, flan-t5, mt5). umT5 is refused: it has a relative position
  bias in every layer, which the T5 class would silently drop.
- causal: Llama, Mistral, Qwen2, Qwen3 (the `model.layers.N.{self_attn,mlp}.*_proj` layout) and
  GPT-2 (`transformer.h.N.{attn,mlp}.c_*`, Conv1D).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hypernet.errors import UserError

if TYPE_CHECKING:  # torch and transformers load only when a model does: config readers stay light
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

T5_MODULES = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")
"""T5 module names; `wi_0`/`wi_1` exist in gated (flan-t5 / t5 v1.1) feed-forward layers, `wi` in
the original T5 layout. The order is the generator's module-embedding order of every T5 checkpoint."""
LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GPT2_MODULES = ("c_attn", "c_proj", "c_fc")


@dataclass(frozen=True)
class Family:
    name: str
    kind: Literal["seq2seq", "causal"]
    model_types: tuple[str, ...]
    """config.json `model_type` values of this family."""
    module_names: tuple[str, ...]
    """Module names LoRA can target; the generator embeds a target's name by its index here."""
    default_targets: tuple[str, ...]
    fan_in_fan_out: bool
    """The weights are stored (in, out), as GPT-2's Conv1D does; PEFT's `fan_in_fan_out`."""
    peft_task_type: str

    @property
    def causal(self) -> bool:
        return self.kind == "causal"


_LLAMA_LIKE = dict(kind="causal", module_names=LLAMA_MODULES, default_targets=("q_proj", "v_proj"), fan_in_fan_out=False)
FAMILIES: dict[str, Family] = {
    "t5": Family("t5", "seq2seq", ("t5", "mt5"), T5_MODULES, ("q", "v"), False, "SEQ_2_SEQ_LM"),
    "llama": Family("llama", model_types=("llama",), peft_task_type="CAUSAL_LM", **_LLAMA_LIKE),
    "mistral": Family("mistral", model_types=("mistral",), peft_task_type="CAUSAL_LM", **_LLAMA_LIKE),
    "qwen2": Family("qwen2", model_types=("qwen2",), peft_task_type="CAUSAL_LM", **_LLAMA_LIKE),
    "qwen3": Family("qwen3", model_types=("qwen3",), peft_task_type="CAUSAL_LM", **_LLAMA_LIKE),
    "gpt2": Family("gpt2", "causal", ("gpt2",), GPT2_MODULES, ("c_attn",), True, "CAUSAL_LM"),
}
ALL_MODULE_NAMES = tuple(dict.fromkeys(name for family in FAMILIES.values() for name in family.module_names))
"""Every targetable name of every family (what a config may name before the base is known)."""


def supported() -> str:
    """The supported model types, for error messages."""
    return ", ".join(t for family in FAMILIES.values() for t in family.model_types)


def family_of_type(model_type: str | None, where: str = "the base") -> Family:
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise UserError(f"{where} is a {model_type or 'model of unknown type'} model; tagi supports the model types {supported()}")


def family_of(model: PreTrainedModel | PretrainedConfig) -> Family:
    """The family of a loaded model (or its config)."""
    config = getattr(model, "config", model)
    return family_of_type(getattr(config, "model_type", None))


def read_family(path: Path, option: str = "base") -> Family:
    """The family of a local Hugging Face directory, from its config.json alone (no weights read);
    every problem is one line naming `option` and the path."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{option} {path} is not a Hugging Face model directory (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{option} {path}: cannot read config.json ({error})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    return family_of_type(model_type, f"{option} {path}")


def load_base(path: Path, family: Family, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """The base model's weights (safetensors only: no pickle), in `dtype` (default: as stored)."""
    from transformers import AutoModelForCausalLM, T5ForConditionalGeneration

    cls = AutoModelForCausalLM if family.causal else T5ForConditionalGeneration
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return cls.from_pretrained(path, use_safetensors=True, **kwargs).eval()


def load_base_tokenizer(path: Path, family: Family) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    if not family.causal:
        from hypernet.tiny import load_tokenizer

        return load_tokenizer(Path(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 and Llama ship none; padding is masked anyway
    return tokenizer


def answer_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Label ids of one answer for a causal base: its tokens without any BOS, then EOS (causal
    tokenizers do not append it, and generation stops on it)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [*ids, tokenizer.eos_token_id]
