"""Tiny causal bases: each family builds, loads through transformers' Auto classes from
safetensors, tokenizes like GPT-2/Qwen2 (no EOS added, EOS = pad), and is reproducible."""

import hashlib
import string

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hypernet.errors import UserError
from hypernet.tiny_causal import CAUSAL_FAMILIES, CAUSAL_PRESETS, build_tiny_causal_base, causal_config

TEXTS = [f"task {i}: sort the list [{i}, {i * 7 % 10}, 3] and reverse it; answer: {i} ok." for i in range(40)]
LAYOUT = {
    "llama": "model.layers.1.mlp.gate_proj",
    "mistral": "model.layers.1.self_attn.k_proj",
    "qwen2": "model.layers.1.self_attn.v_proj",
    "qwen3": "model.layers.1.mlp.down_proj",
    "gpt2": "transformer.h.1.attn.c_attn",
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_causal")
    for family in CAUSAL_FAMILIES:
        build_tiny_causal_base(TEXTS, root / family, family, CAUSAL_PRESETS["micro"], chat_template=family == "qwen3")
    return root


def digests(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_family_loads_and_tokenizes(bases, family):
    preset = CAUSAL_PRESETS["micro"]
    model = AutoModelForCausalLM.from_pretrained(bases / family, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(bases / family)
    assert model.config.model_type == family and model.dtype == torch.float32
    assert LAYOUT[family] in dict(model.named_modules())
    assert model.config.hidden_size == preset.hidden_size and model.config.num_hidden_layers == preset.num_layers
    if family != "gpt2":  # GPT-2 has no grouped-query attention
        assert model.config.num_key_value_heads == preset.num_kv_heads < model.config.num_attention_heads
    # Tied only where the family ties by default (GPT-2).
    tied = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == (family == "gpt2")
    assert len(tokenizer) == model.config.vocab_size <= preset.vocab_size

    eos = tokenizer.eos_token_id
    assert eos is not None and tokenizer.pad_token_id == eos == model.generation_config.eos_token_id == model.config.eos_token_id
    text = "Sort [3, 1, 2]: " + string.printable.strip() + " é"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    # No EOS appended (nor BOS: the same token; labels append it), and byte-level: nothing unknown.
    assert not set(ids) & set(tokenizer.all_special_ids) and eos in tokenizer.all_special_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size) and torch.isfinite(logits).all()


def test_chat_template_renders_only_when_asked(bases):
    chat = AutoTokenizer.from_pretrained(bases / "qwen3")
    messages = [{"role": "user", "content": "sort 3 1 2"}]
    rendered = chat.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nsort 3 1 2<|im_end|>\n<|im_start|>assistant\n"
    ids = chat(rendered)["input_ids"]
    assert ids.count(chat.convert_tokens_to_ids("<|im_start|>")) == 2  # one token each, not spelled out
    assert chat.decode(ids) == rendered
    assert AutoTokenizer.from_pretrained(bases / "llama").chat_template is None


def test_same_texts_and_seed_give_identical_files(bases, tmp_path):
    build_tiny_causal_base(TEXTS, tmp_path / "again", "llama", CAUSAL_PRESETS["micro"])
    assert digests(tmp_path / "again") == digests(bases / "llama")
    build_tiny_causal_base(TEXTS, tmp_path / "other", "llama", CAUSAL_PRESETS["micro"], seed=1)
    other = digests(tmp_path / "other")
    assert other["model.safetensors"] != digests(bases / "llama")["model.safetensors"]
    assert other["tokenizer.json"] == digests(bases / "llama")["tokenizer.json"]


def test_unknown_family_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no tiny causal base for family 't5'; choose one of llama, mistral"):
        build_tiny_causal_base(TEXTS, tmp_path / "base", "t5", CAUSAL_PRESETS["micro"])
    assert not (tmp_path / "base").exists()


def test_tiny_preset_leaves_room_for_a_generator():
    # The list-world base plus its generator must ship under 30 MB of float32 weights.
    for family in CAUSAL_FAMILIES:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(causal_config(family, CAUSAL_PRESETS["tiny"]))
        assert 2e6 < sum(p.numel() for p in model.parameters()) * 4 < 20e6


def test_init_base_writes_a_decoder_with_family_and_chat_template(tmp_path, capsys):
    from hypernet.cli import main

    out = tmp_path / "base"
    assert main(["init-base", "--out", str(out), "--family", "gpt2", "--chat-template", "--max-instances", "2"]) == 0
    assert AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).config.model_type == "gpt2"
    assert AutoTokenizer.from_pretrained(out).chat_template
    assert main(["init-base", "--out", str(tmp_path / "t5"), "--chat-template"]) == 2
    assert "--chat-template needs a decoder-only --family" in capsys.readouterr().err
    assert not (tmp_path / "t5").exists()
