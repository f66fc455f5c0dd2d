"""Checkpoints and exports on disk: layout, fingerprints, refusals, atomicity, tokenizer ids."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import sentencepiece as spm
import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSeq2SeqLM

from hypernet.io import CheckpointError, atomic_directory, export_peft, load_checkpoint
from hypernet.tiny import load_tokenizer


def test_checkpoint_layout_is_loadable_by_plain_transformers(checkpoint_dir):
    assert (checkpoint_dir / "base" / "spiece.model").exists()
    config = json.loads((checkpoint_dir / "config.json").read_text())
    assert config["format"] == "tagi-checkpoint" and config["version"] == 2
    assert len(config["base_fingerprint"]) == 64
    base = AutoModelForSeq2SeqLM.from_pretrained(checkpoint_dir / "base")
    assert base.config.d_model == 64
    generator = load_file(checkpoint_dir / "generator.safetensors")
    assert any(k.startswith("heads_B") for k in generator)


def test_tokenizer_reproduces_sentencepiece_ids(checkpoint_dir):
    tokenizer = load_tokenizer(checkpoint_dir / "base")
    processor = spm.SentencePieceProcessor(model_file=str(checkpoint_dir / "base" / "spiece.model"))
    for text in ["Reverse the list: apple, river, 42", "UPPER case ~ symbols {x}", "unicode é ∑ falls to unk"]:
        assert tokenizer(text)["input_ids"] == processor.encode(text) + [1]
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)


def test_loading_refuses_a_different_base(checkpoint_dir, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir, copy)
    weights = load_file(copy / "base" / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, copy / "base" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(copy)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "generator.safetensors").unlink(), "generator.safetensors is missing"),
        (lambda d: (d / "config.json").write_text("{not json"), "config.json is invalid"),
        (
            lambda d: (d / "config.json").write_text(json.dumps({"format": "tagi-checkpoint", "version": 99})),
            "unsupported checkpoint version",
        ),
        (lambda d: shutil.rmtree(d / "base"), "base is missing"),
    ],
)
def test_broken_checkpoints_give_clear_errors(checkpoint_dir, tmp_path, damage, message):
    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir, copy)
    damage(copy)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(copy)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_peft_export_contents(model, tmp_path):
    adapter = model.adapter("Reverse the list.")
    out = tmp_path / "export"
    export_peft(adapter, out)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "tagi.json"]
    meta = json.loads((out / "tagi.json").read_text())
    assert meta["adapter_id"] == adapter.adapter_id and meta["instruction"] == "Reverse the list."
    assert meta["checkpoint_fingerprint"] == model.fingerprint and "{input}" in meta["input_template"]
    peft_config = LoraConfig.from_pretrained(out)
    assert peft_config.r == 8 and set(peft_config.target_modules) == {"q", "k", "v", "o", "wi", "wo"}
    tensors = load_file(out / "adapter_model.safetensors")
    assert len(tensors) == 2 * len(model.layout.targets)
    key = "base_model.model.decoder.block.1.layer.1.EncDecAttention.v.lora_B.weight"
    assert tensors[key].shape == (64, 8)
    with pytest.raises(FileExistsError):
        export_peft(adapter, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary directory is left behind"


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    (target).mkdir()
    (target / "old").write_text("old")
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_generator_weights_round_trip(model, checkpoint_dir):
    again = load_checkpoint(checkpoint_dir)
    for (k, a), (_, b) in zip(model.generator.state_dict().items(), again.generator.state_dict().items()):
        assert torch.equal(a, b), k


def test_user_symbols_are_single_pieces(tmp_path):
    from hypernet.tiny import PRESETS, build_tiny_base

    build_tiny_base(["apple river stone"] * 50, tmp_path, PRESETS["micro"], symbols=("<extra_id_0>", "<skill_3>"))
    tokenizer = load_tokenizer(tmp_path)
    text = "apple <extra_id_0> river <skill_3>"
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert "<extra_id_0>" in pieces and "<skill_3>" in pieces
    # transformers treats them as added tokens (it drops the space before them, SentencePiece
    # keeps it as a piece), so ids differ from raw SentencePiece around them; training only
    # ever uses the transformers tokenizer.
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=False).replace(" ", "") == (text + "</s>").replace(
        " ", ""
    )


def test_a_bf16_base_loads_in_float32(checkpoint_dir, tmp_path):
    from hypernet.files import base_fingerprint, read_checkpoint_config, write_json

    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir, copy)
    base = AutoModelForSeq2SeqLM.from_pretrained(copy / "base").to(torch.bfloat16)
    base.save_pretrained(copy / "base")
    config = read_checkpoint_config(copy)
    write_json(copy / "config.json", {**config.to_dict(), "base_fingerprint": base_fingerprint(copy / "base")})
    model = load_checkpoint(copy)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert len(model.generate(["apple, river"], [model.adapter("Reverse the list.")], max_new_tokens=3)) == 1  # runs


def test_atomic_file_writes_replace_whole_files_with_normal_permissions(tmp_path, monkeypatch):
    from hypernet.files import atomic_write_bytes, write_json

    target = tmp_path / "sub" / "data.json"
    write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask

    class Boom(Exception):
        pass

    def crash(fd: int) -> None:  # the process dies after writing part of the data, before the rename
        raise Boom

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(Boom):
        atomic_write_bytes(target, b"half")
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}, "a failed write must leave the old file"
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.json"], "no temporary file left behind"
