"""Real users bring t5-lm-adapt or flan-t5 directories: gated feed-forward (wi_0, wi_1), untied
embeddings, a saved tokenizer config. A tiny model in that layout goes through the same path."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from support import randomize_generator
from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

from hypernet.config import CheckpointConfig, GeneratorConfig
from hypernet.errors import UserError
from hypernet.io import create_checkpoint, export_peft, load_checkpoint
from hypernet.tiny import load_tokenizer


@pytest.fixture(scope="module")
def flan_dir(checkpoint_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("flan")
    tokenizer = load_tokenizer(checkpoint_dir / "base")
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_ff=96,
        d_kv=16,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        decoder_start_token_id=0,
    )
    torch.manual_seed(3)
    T5ForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_flan_layout_checkpoint_matches_peft(flan_dir, tmp_path):
    config = CheckpointConfig(generator=GeneratorConfig(target_modules=("q", "v", "wi_0", "wi_1", "wo")))
    create_checkpoint(flan_dir, tmp_path / "ckpt", config)
    model = load_checkpoint(tmp_path / "ckpt")
    names = {t.name for t in model.layout.targets}
    assert names == {"q", "v", "wi_0", "wi_1", "wo"}
    assert len([t for t in model.layout.targets if t.stack == "decoder" and t.name == "q"]) == 6  # self + cross, 3 layers
    randomize_generator(model, seed=2)
    adapter = model.adapter("Reverse the list.")
    export_peft(adapter, tmp_path / "export")
    peft = PeftModel.from_pretrained(
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "ckpt" / "base"), tmp_path / "export"
    ).eval()
    batch = model.tokenize(["apple, river, stone"], 64, "input")
    decoder = torch.tensor([[0, 7, 8, 9]])
    with torch.no_grad():
        ours = model(**batch, decoder_input_ids=decoder, lora=adapter.weights)
        theirs = peft(**batch, decoder_input_ids=decoder).logits
        plain = model(**batch, decoder_input_ids=decoder)
    assert (ours - theirs).abs().max() <= 1e-4
    assert (ours - plain).abs().max() > 1e-3


def test_a_directory_without_a_model_is_refused(tmp_path):
    with pytest.raises(UserError, match="not a Hugging Face model directory"):
        create_checkpoint(tmp_path, tmp_path / "ckpt", CheckpointConfig())
