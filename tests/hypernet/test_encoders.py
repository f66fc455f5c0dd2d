"""Instruction encoders (hypernet/encoders.py): the packaged sentence encoder is found, checked by
fingerprint, never copied into a checkpoint, and a checkpoint built on it round-trips."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from support import randomize_generator

from hypernet.config import CheckpointConfig, GeneratorConfig, InstructionEncoderConfig
from hypernet.encoders import ENCODER_DIR_ENV, resolve_sentence_encoder, sentence_encoder, sentence_encoder_config
from hypernet.errors import CheckpointError, UserError
from hypernet.files import CONFIG_FILE, directory_bytes
from hypernet.io import create_checkpoint, load_checkpoint, save_checkpoint

MINILM = "all-minilm-l6-v2"
# The sha256 of all-MiniLM-L6-v2's model.safetensors (as published by sentence-transformers).
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return resolve_sentence_encoder(InstructionEncoderConfig(kind="sentence", name=MINILM))


def test_the_packaged_encoder_is_the_genuine_minilm(minilm_dir: Path):
    assert hashlib.sha256((minilm_dir / "model.safetensors").read_bytes()).hexdigest() == MINILM_WEIGHTS_SHA256
    config = json.loads((minilm_dir / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("bert", 6, 384)


def test_it_puts_paraphrases_together_and_unrelated_text_apart(minilm_dir: Path):
    encoder = sentence_encoder(minilm_dir)
    texts = ["Reverse the list.", "Write the list backwards.", "Translate this sentence to French."]
    batch = encoder.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = encoder(batch["input_ids"], batch["attention_mask"])
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    assert float(pooled[0] @ pooled[1]) > 0.75
    assert float(pooled[0] @ pooled[2]) < 0.3


def test_a_different_encoder_is_refused_by_fingerprint(minilm_dir: Path):
    wrong = InstructionEncoderConfig(kind="sentence", name=MINILM, fingerprint="0" * 64)
    with pytest.raises(CheckpointError, match="not the one this checkpoint was trained with"):
        resolve_sentence_encoder(wrong)


def test_an_unknown_encoder_without_a_directory_is_a_clear_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(ENCODER_DIR_ENV, raising=False)
    with pytest.raises(CheckpointError, match=f"not found.*{ENCODER_DIR_ENV}"):
        resolve_sentence_encoder(InstructionEncoderConfig(kind="sentence", name="my-encoder"))


def test_the_environment_names_an_encoder_directory(minilm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(ENCODER_DIR_ENV, str(minilm_dir))
    config = sentence_encoder_config("my-encoder")
    assert config.fingerprint == sentence_encoder_config(MINILM, minilm_dir).fingerprint
    monkeypatch.setenv(ENCODER_DIR_ENV, str(tmp_path))
    with pytest.raises(CheckpointError, match="no config.json"):
        resolve_sentence_encoder(config)


def test_encoder_config_is_validated():
    with pytest.raises(UserError, match="kind"):
        InstructionEncoderConfig(kind="gte")
    with pytest.raises(UserError, match="needs a name"):
        InstructionEncoderConfig(kind="sentence")
    with pytest.raises(UserError, match="unknown instruction encoder config keys"):
        CheckpointConfig.from_dict({**CheckpointConfig().to_dict(), "instruction_encoder": {"kind": "base", "path": "/x"}})


def test_a_version_1_config_reads_as_the_base_encoder_and_a_pooled_generator():
    data = CheckpointConfig().to_dict()
    data["version"] = 1
    del data["instruction_encoder"]
    del data["generator"]["attention_heads"]
    config = CheckpointConfig.from_dict(data)
    assert config.instruction_encoder.kind == "base" and config.generator.attention_heads == 0


def test_a_checkpoint_on_the_sentence_encoder_round_trips_without_its_weights(checkpoint_dir: Path, tmp_path: Path):
    base = checkpoint_dir / "base"
    config = CheckpointConfig(
        generator=GeneratorConfig(target_modules=("q", "v")),
        instruction_encoder=sentence_encoder_config(MINILM),
        max_instruction_tokens=128,
    )
    out = tmp_path / "sentence"
    create_checkpoint(base, out, config, seed=0)
    model = load_checkpoint(out)
    randomize_generator(model, seed=2)
    save_checkpoint(model, out, overwrite=True)

    stored = json.loads((out / CONFIG_FILE).read_text())["instruction_encoder"]
    assert stored == {"kind": "sentence", "name": MINILM, "fingerprint": config.instruction_encoder.fingerprint}
    assert directory_bytes(out) < 20e6  # MiniLM alone is 90 MB: it is not in the checkpoint
    counts = model.parameter_counts()
    assert counts["instruction_encoder_frozen"] > 20e6 and counts["fusion_projection"] > 0

    again = load_checkpoint(out)
    first, second = model.adapter("What's the biggest number here?"), again.adapter("What's the biggest number here?")
    for group in first.weights.lora_B:
        assert torch.equal(first.weights.lora_B[group], second.weights.lora_B[group])
    assert first.instruction_encoding.states.shape[-1] == model.base.config.d_model  # projected for fusion
    other = again.adapter("Turn this list around.")
    key = next(iter(first.weights.lora_B))
    assert not torch.equal(other.weights.lora_B[key], first.weights.lora_B[key])
    assert again.generate(["42, 7, 19"], first) == model.generate(["42, 7, 19"], first)

    data = json.loads((out / CONFIG_FILE).read_text())
    data["instruction_encoder"]["fingerprint"] = "f" * 64
    (out / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not the one this checkpoint was trained with"):
        load_checkpoint(out, verify=False)


def test_the_packaged_encoder_unpacks_once_into_an_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from hypernet.encoders import CACHE_DIR_ENV

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(ENCODER_DIR_ENV, raising=False)
    config = InstructionEncoderConfig(kind="sentence", name=MINILM)
    first = resolve_sentence_encoder(config)
    assert first.parent == tmp_path / "encoders" and (first / "model.safetensors").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert resolve_sentence_encoder(config) == first  # found, not unpacked again
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "encoders").iterdir()] == [first.name]  # no temporary left behind


def test_directory_once_publishes_whole_directories_and_keeps_the_first(tmp_path: Path):
    from hypernet.files import directory_once

    target = tmp_path / "entry"

    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        directory_once(target, broken)
    assert not target.exists() and list(tmp_path.iterdir()) == []  # nothing half-written

    def fill(text: str):
        return lambda tmp: (tmp / "file").write_text(text)

    assert directory_once(target, fill("first")) == target
    directory_once(target, fill("second"))  # already there: left alone
    assert (target / "file").read_text() == "first"

    # a concurrent writer that lost the race (its rename finds the name taken) drops its copy
    def racing(tmp: Path) -> None:
        (tmp / "file").write_text("late")

    other = tmp_path / "raced"
    other.mkdir()
    (other / "file").write_text("winner")
    from hypernet import files

    real_exists = Path.exists
    calls = {"n": 0}

    def exists_once_false(self: Path) -> bool:
        if self == other and calls["n"] == 0:
            calls["n"] += 1
            return False  # the check before filling ran before the winner's rename
        return real_exists(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files.Path, "exists", exists_once_false)
        assert directory_once(other, racing) == other
    assert (other / "file").read_text() == "winner"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "raced"]
