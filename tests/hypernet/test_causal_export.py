"""A generated adapter of a decoder-only base is a plain LoRA that PEFT (and so vLLM, SGLang, LoRAX)
loads: greedy generation of PeftModel on input_template-formatted inputs is `tagi run --no-fusion`,
token for token, for the Llama, Qwen2 (with a chat template) and GPT-2 (Conv1D) layouts."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from support import make_causal_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

from hypernet.cli import main
from hypernet.config import CheckpointConfig, GeneratorConfig
from hypernet.errors import UserError
from hypernet.export import MANIFEST_FILE
from hypernet.families import FAMILIES
from hypernet.files import BASE_DIR
from hypernet.io import (
    PEFT_CONFIG_FILE,
    PEFT_WEIGHTS_FILE,
    VLLM_MAX_LORA_RANKS,
    check_export_rank,
    create_checkpoint,
    export_peft,
    load_checkpoint,
    peft_state_dict,
    vllm_max_lora_rank,
)

INSTRUCTION = "Reverse the list."
INPUTS = ["apple, river, stone", "green, 7, house, cloud", "seven bright table"]
NEW_TOKENS = 8
CHAT = {"llama": False, "qwen2": True, "gpt2": False}
"""Which micro base gets a (ChatML) chat template: its input_template comes from it."""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("causal")
    return {family: make_causal_checkpoint(root, family, chat) for family, chat in CHAT.items()}


def peft_model(checkpoint: Path, export: Path) -> PeftModel:
    base = AutoModelForCausalLM.from_pretrained(checkpoint / BASE_DIR, use_safetensors=True)
    return PeftModel.from_pretrained(base, export).eval()


def peft_greedy(peft: PeftModel, tokenizer, prompt: str) -> tuple[list[int], list[int]]:
    """(prompt ids, PEFT's greedy new tokens up to and including EOS) of one prompt, alone."""
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        tokens = peft.generate(
            **ids, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id
        )
    new = tokens[0, ids["input_ids"].shape[1] :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id) + 1]
    return ids["input_ids"][0].tolist(), new


@pytest.mark.parametrize("family", list(CHAT))
def test_peft_export_reproduces_generation_without_fusion(checkpoints, family, tmp_path):
    checkpoint = checkpoints[family]
    model = load_checkpoint(checkpoint)
    adapter = model.adapter(INSTRUCTION)
    export = tmp_path / "export"
    export_peft(adapter, export)

    saved = json.loads((export / PEFT_CONFIG_FILE).read_text())
    fam = FAMILIES[family]
    assert saved["task_type"] == "CAUSAL_LM" and saved["peft_type"] == "LORA"
    assert saved["bias"] == "none" and not saved.get("modules_to_save") and not saved.get("use_dora")
    assert saved["target_modules"] == sorted(fam.module_names)
    assert saved["fan_in_fan_out"] is (family == "gpt2")
    assert saved["r"] == model.config.generator.rank <= VLLM_MAX_LORA_RANKS[-1]
    info = json.loads((export / "tagi.json").read_text())
    template = info["input_template"]
    assert template == model.config.input_template and info["vllm_max_lora_rank"] == 8
    assert template.startswith("<|im_start|>user\n") if CHAT[family] else template == "{input}\n"

    peft = peft_model(checkpoint, export)
    # Every tensor of the file went into a LoRA layer of the base, and nothing else is trained.
    weights = load_file(export / PEFT_WEIGHTS_FILE)
    loaded = get_peft_model_state_dict(peft)
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)

    tokenizer = AutoTokenizer.from_pretrained(checkpoint / BASE_DIR)
    ours = model.generate(INPUTS, [adapter] * len(INPUTS), fusion=False, max_new_tokens=NEW_TOKENS)
    plain = model.generate(INPUTS, [None] * len(INPUTS), fusion=False, max_new_tokens=NEW_TOKENS)
    assert ours != plain, "the adapter must change what the model says"
    for text, expected in zip(INPUTS, ours, strict=True):
        prompt, answer = peft_greedy(peft, tokenizer, template.replace("{input}", text))
        assert tokenizer.decode(answer, skip_special_tokens=True) == expected
        # Token for token, with the logits of every step: our forward on PEFT's answer.
        with torch.no_grad():
            theirs = peft(input_ids=torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
            labels = torch.tensor([answer])
            decoder_ids = torch.cat([labels.new_zeros(1, 1), labels[:, :-1]], dim=1)
            logits = model(
                torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long), decoder_ids, lora=adapter.weights
            )[0]
        assert logits.argmax(dim=-1).tolist() == answer
        assert (logits - theirs).abs().max().item() <= 1e-4


def test_cli_adapter_and_run_no_fusion_agree_with_peft(checkpoints, tmp_path):
    checkpoint = checkpoints["qwen2"]  # the chat-template one: the CLI formats inputs with it
    stdout = io.StringIO()
    args = ["run", "--checkpoint", str(checkpoint), "--instruction", INSTRUCTION, "--no-fusion"]
    args += ["--max-new-tokens", str(NEW_TOKENS), *(a for text in INPUTS for a in ("--input", text))]
    with contextlib.redirect_stdout(stdout):
        assert main(args) == 0
    cli_outputs = stdout.getvalue().splitlines()

    export = tmp_path / "export"
    assert main(["adapter", "--checkpoint", str(checkpoint), "--instruction", INSTRUCTION, "--out", str(export)]) == 0
    template = json.loads((export / "tagi.json").read_text())["input_template"]
    assert "<|im_start|>assistant\n" in template
    peft = peft_model(checkpoint, export)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / BASE_DIR)
    peft_outputs = [
        tokenizer.decode(peft_greedy(peft, tokenizer, template.replace("{input}", text))[1], skip_special_tokens=True)
        for text in INPUTS
    ]
    assert cli_outputs == [text.replace("\n", " ") for text in peft_outputs]


def test_merged_gpt2_export_loads_without_peft_and_equals_peft(checkpoints, tmp_path):
    """GPT-2's Conv1D stores (in, out): the merge must transpose the update (fan_in_fan_out)."""
    checkpoint = checkpoints["gpt2"]
    merged_dir, export = tmp_path / "merged", tmp_path / "export"
    assert (
        main(["adapter", "--checkpoint", str(checkpoint), "--instruction", INSTRUCTION, "--out", str(merged_dir), "--merge"]) == 0
    )
    assert main(["adapter", "--checkpoint", str(checkpoint), "--instruction", INSTRUCTION, "--out", str(export)]) == 0
    assert not any("lora" in key for key in load_file(merged_dir / "model.safetensors"))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, use_safetensors=True).eval()
    peft = peft_model(checkpoint, export)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    template = json.loads((merged_dir / "tagi.json").read_text())["input_template"]
    ids = tokenizer(template.replace("{input}", INPUTS[0]), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (merged(ids).logits - peft(input_ids=ids).logits).abs().max().item() <= 1e-4


def test_batch_export_of_a_causal_checkpoint_writes_each_adapter_and_the_manifest(checkpoints, tmp_path):
    checkpoint = checkpoints["llama"]
    instructions = [INSTRUCTION, "Count the words in the list.", "Sort the items."]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"instruction": text, "name": f"a{i}"}) + "\n" for i, text in enumerate(instructions)))
    out = tmp_path / "many"
    assert main(["adapter", "--checkpoint", str(checkpoint), "--instructions", str(source), "--out-dir", str(out)]) == 0
    rows = [json.loads(line) for line in (out / MANIFEST_FILE).read_text().splitlines()]
    assert [row["name"] for row in rows] == ["a0", "a1", "a2"]
    model = load_checkpoint(checkpoint)
    for row, text in zip(rows, instructions, strict=True):
        expected = peft_state_dict(model.adapter(text))
        written = load_file(out / row["name"] / PEFT_WEIGHTS_FILE)
        assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)
        assert json.loads((out / row["name"] / PEFT_CONFIG_FILE).read_text())["task_type"] == "CAUSAL_LM"


def test_ranks_vllm_cannot_serve_are_refused_for_causal_bases_only(checkpoints, tmp_path):
    assert vllm_max_lora_rank(4) == 8 and vllm_max_lora_rank(8) == 8 and vllm_max_lora_rank(300) == 320
    assert vllm_max_lora_rank(1) == 1 and vllm_max_lora_rank(512) == 512 and vllm_max_lora_rank(513) is None
    check_export_rank(512, FAMILIES["llama"])
    check_export_rank(1024, FAMILIES["t5"])  # a T5 export loads in PEFT only: vLLM's limit is not its
    with pytest.raises(UserError, match="largest LoRA rank vLLM serves"):
        check_export_rank(513, FAMILIES["gpt2"])
    base = checkpoints["llama"] / BASE_DIR
    config = CheckpointConfig(generator=GeneratorConfig(rank=640, target_modules=("q_proj",)))
    with pytest.raises(UserError, match="rank 640"):
        create_checkpoint(base, tmp_path / "too-big", config)
    assert not (tmp_path / "too-big").exists()
