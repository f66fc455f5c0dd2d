"""Tiny decoder-only bases (Llama, Mistral, Qwen2, Qwen3, GPT-2) and their tokenizer, built locally.

The causal counterpart of `hypernet.tiny`: random weights in each family's own transformers class
and layout, so that tests and the list world exercise the exact module names, GQA shapes and
(for GPT-2) the transposed Conv1D weights that real checkpoints of that family have, with nothing
downloaded. The tokenizer is a byte-level BPE (as GPT-2's and Qwen2's are): its initial alphabet
is all 256 bytes, so any text, ASCII or not, encodes without an unknown token. Like those
tokenizers it adds no BOS and no EOS; one `<|endoftext|>` token is BOS, EOS and padding, so
`hypernet.families.answer_ids` appends EOS to labels and padding is masked anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from hypernet.errors import UserError
from hypernet.files import atomic_directory

EOS = "<|endoftext|>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, the turn format of Qwen2/Qwen3 chat models: a base built with it stands in for an
instruct checkpoint, whose template `hypernet.chat` turns into the checkpoint's input_template."""


@dataclass(frozen=True)
class CausalPreset:
    """Sizes of a from-scratch decoder. `tiny` is 3.5-3.8M parameters by family (15 MB in float32), `micro` 0.13M."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    """Below num_heads: grouped-query attention, as in Llama 3, Mistral and Qwen (GPT-2 has none)."""
    vocab_size: int
    """Upper bound: a small corpus may give fewer BPE merges."""
    max_positions: int = 2048
    """Room for an instruction prefix plus a 512-token input plus the answer."""


CAUSAL_PRESETS = {
    "micro": CausalPreset(
        hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=400, max_positions=1024
    ),
    "tiny": CausalPreset(hidden_size=256, intermediate_size=688, num_layers=4, num_heads=8, num_kv_heads=2, vocab_size=2000),
}


def _llama_like(cls: type[PretrainedConfig]) -> Callable[[CausalPreset, int, int], PretrainedConfig]:
    def build(preset: CausalPreset, vocab_size: int, eos: int) -> PretrainedConfig:
        return cls(
            vocab_size=vocab_size,
            hidden_size=preset.hidden_size,
            intermediate_size=preset.intermediate_size,
            num_hidden_layers=preset.num_layers,
            num_attention_heads=preset.num_heads,
            num_key_value_heads=preset.num_kv_heads,
            head_dim=preset.hidden_size // preset.num_heads,  # Qwen3's default is a fixed 128
            max_position_embeddings=preset.max_positions,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
        )

    return build


def _gpt2(preset: CausalPreset, vocab_size: int, eos: int) -> PretrainedConfig:
    return GPT2Config(
        vocab_size=vocab_size,
        n_embd=preset.hidden_size,
        n_inner=preset.intermediate_size,
        n_layer=preset.num_layers,
        n_head=preset.num_heads,
        n_positions=preset.max_positions,
        resid_pdrop=0.0,  # dropout would make training runs differ from the eval-mode equivalence tests
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )


_CONFIGS: dict[str, Callable[[CausalPreset, int, int], PretrainedConfig]] = {
    "llama": _llama_like(LlamaConfig),
    "mistral": _llama_like(MistralConfig),
    "qwen2": _llama_like(Qwen2Config),
    "qwen3": _llama_like(Qwen3Config),
    "gpt2": _gpt2,
}
CAUSAL_FAMILIES = tuple(_CONFIGS)


def causal_config(family: str, preset: CausalPreset, vocab_size: int | None = None, eos: int = 0) -> PretrainedConfig:
    """The transformers config of `family` at `preset`'s sizes (vocab_size defaults to the
    preset's); word embeddings are tied or not as the family's default config says (GPT-2 ties
    them, the others do not)."""
    if family not in _CONFIGS:
        raise UserError(f"no tiny causal base for family {family!r}; choose one of {', '.join(CAUSAL_FAMILIES)}")
    return _CONFIGS[family](preset, preset.vocab_size if vocab_size is None else vocab_size, eos)


def train_tokenizer(texts: list[str], vocab_size: int, max_positions: int, chat_template: bool) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`; EOS (= pad) is id 0, the ChatML tokens follow when asked.

    Saved with the generic class: AutoTokenizer loads it as it is, except for a qwen2 base, which
    transformers always reads into its Qwen2Tokenizer (Qwen2's split of digits and words before the
    same merges), as it does a real Qwen2 checkpoint; the texts still round-trip."""
    special = [EOS, *(CHAT_TOKENS if chat_template else ())]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS,
        pad_token=EOS,
        bos_token=EOS,
        additional_special_tokens=list(special[1:]),
        model_max_length=max_positions,
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_causal_base(
    texts: list[str], out_dir: Path, family: str, preset: CausalPreset, seed: int = 0, chat_template: bool = False
) -> None:
    """Write a Hugging Face causal-LM directory (random weights as safetensors, config, generation
    config, tokenizer) to `out_dir`, replacing it whole: a crash leaves the old directory or none.
    The same texts and seed give bit-identical files."""
    causal_config(family, preset)  # an unknown family fails before any work
    with atomic_directory(Path(out_dir), overwrite=True) as tmp:
        tokenizer = train_tokenizer(texts, preset.vocab_size, preset.max_positions, chat_template)
        tokenizer.save_pretrained(tmp)
        eos = tokenizer.eos_token_id
        config = causal_config(family, preset, len(tokenizer), eos)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
        model.save_pretrained(tmp)
