"""Training on a decoder-only base: the answer-only loss, and `tagi train --preset smoke-causal` end to end.

The loss tests run a micro Qwen2 of hypernet.tiny_causal (grouped-query attention) against a
reference computed the plain way (one unpadded forward per row, Hugging Face's own shifted loss).
The end-to-end test runs every stage (0-3), the packaging and the evaluation through the CLI in
this process, on one thread, and checks what ships.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

import hypernet
from hypernet.causal import CausalTagiModel
from hypernet.cli import main
from hypernet.families import read_family
from hypernet.tiny_causal import CAUSAL_PRESETS, build_tiny_causal_base
from training.common import answer_logits, answer_loss, load_base_model, seq2seq_batch
from training.evaluate import METHODS
from training.losses import IGNORE
from training.pipeline import EVAL_FILE, SYNTH_SETS

PROMPTS = ["apple, pear, plum\n", "seven\n", "green house, river stone, cloud\n"]
ANSWERS = ["plum, pear, apple", "7", "cloud"]


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    out = tmp_path_factory.mktemp("micro") / "base"
    build_tiny_causal_base([*PROMPTS, *ANSWERS] * 20, out, "qwen2", CAUSAL_PRESETS["micro"], seed=0)
    from hypernet.families import load_base_tokenizer

    return load_base_model(out).eval(), load_base_tokenizer(out, read_family(out))


def test_labels_are_the_answer_then_eos_even_though_eos_is_the_pad_token(micro):
    _, tokenizer = micro
    assert tokenizer.eos_token_id == tokenizer.pad_token_id  # so padding cannot be found by id
    batch = seq2seq_batch(tokenizer, PROMPTS, ANSWERS, 64, 16)
    for row, answer in zip(batch["labels"], ANSWERS):
        ids = row[row != IGNORE].tolist()
        assert ids == tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert (row[len(ids) :] == IGNORE).all()  # IGNORE only after the answer
    assert batch["decoder_input_ids"][:, 1:].tolist() == batch["labels"][:, :-1].clamp(min=0).tolist()


@pytest.mark.parametrize("side", ["left", "right"])
def test_answer_logits_are_the_plain_forward_at_the_answer_positions(micro, side: str):
    """Any prompt padding gives, row by row, the logits of one unpadded forward over prompt + answer
    at the positions that predict the answer; the mean answer loss is Hugging Face's own loss with
    every prompt position ignored."""
    model, tokenizer = micro
    tokenizer.padding_side = side
    try:
        batch = seq2seq_batch(tokenizer, PROMPTS, ANSWERS, 64, 16)
    finally:
        tokenizer.padding_side = "right"
    with torch.no_grad():
        logits = answer_logits(model, batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])
        assert logits.shape[:2] == batch["labels"].shape
        flat_logits, flat_labels = [], []
        for i, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS)):
            prompt_ids = tokenizer(prompt)["input_ids"]
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            full = torch.tensor([prompt_ids + answer_ids])
            reference = model(input_ids=full).logits[0, len(prompt_ids) - 1 : -1]
            torch.testing.assert_close(logits[i, : len(answer_ids)], reference, rtol=1e-4, atol=1e-5)
            labels = torch.tensor([[IGNORE] * len(prompt_ids) + answer_ids])  # HF shifts these itself
            flat_logits.append(model(input_ids=full, labels=labels).loss * len(answer_ids))
            flat_labels.append(len(answer_ids))
        hf_loss = sum(flat_logits) / sum(flat_labels)
        torch.testing.assert_close(answer_loss(model, batch), hf_loss, rtol=1e-5, atol=1e-6)


def test_the_prompt_is_read_but_never_scored(micro):
    """Changing a prompt token changes the answer's logits (the model reads the prompt), but the
    loss has no gradient at any position before the prompt's last token: no prompt token is a target."""
    model, tokenizer = micro
    batch = seq2seq_batch(tokenizer, PROMPTS, ANSWERS, 64, 16)
    with torch.no_grad():
        before = answer_logits(model, batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])
        changed = batch["input_ids"].clone()
        changed[0, 0] = (changed[0, 0] + 1) % len(tokenizer)
        after = answer_logits(model, changed, batch["attention_mask"], batch["decoder_input_ids"])
    assert (after[0] - before[0]).abs().max() > 1e-4
    torch.testing.assert_close(after[1:], before[1:])  # other rows are not affected

    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output) -> None:
        output.logits.retain_grad()
        captured.append(output.logits)

    handle = model.register_forward_hook(keep)
    try:
        answer_loss(model, batch).backward()
    finally:
        handle.remove()
        model.zero_grad()
    grad = captured[0].grad.abs().sum(dim=-1)  # (b, prompt width + answer width - 1), prompts left-aligned
    width = batch["input_ids"].shape[1]
    assert (grad[:, : width - 1] == 0).all()  # prompt positions (but the last) never scored
    lengths = (batch["labels"] != IGNORE).sum(dim=1)
    for i, n in enumerate(lengths.tolist()):
        assert (grad[i, width - 1 : width - 1 + n] > 0).all()  # every answer token is
        assert (grad[i, width - 1 + n :] == 0).all()  # the padding after it is not


@pytest.fixture(scope="module")
def smoke_causal(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("smoke-causal")
    out, work = root / "out", root / "work"
    argv = ["train", "--preset", "smoke-causal", "--out", str(out), "--work", str(work), "--threads", "1", "--no-sni"]
    assert main(argv) == 0
    return {"out": out, "work": work}


def test_smoke_causal_trains_every_stage_and_ships_a_causal_checkpoint(smoke_causal):
    out, work = smoke_causal["out"], smoke_causal["work"]
    base_dir = work / "stage0_base" / "model"
    assert read_family(base_dir).name == "qwen2" and read_family(out / "meta_teacher").name == "qwen2"
    config = json.loads((base_dir / "config.json").read_text())
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # GQA
    for stage in ("stage0_base", "stage1_teachers", "stage1_meta_teacher", "stage2_hypernet", "stage3_distill"):
        assert (work / stage / "DONE").exists(), stage
    # every loss is finite and the distillation logs each term
    records = [json.loads(line) for line in (work / "stage3_distill" / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train and all(torch.isfinite(torch.tensor([r["ce"], r["kl"], r["ins"]])).all() for r in train)
    assert all(r["kl"] > 0 for r in train)  # the causal meta teacher's answer distribution, not the student's
    # the teachers are causal PEFT LoRAs on the family's modules
    index = json.loads((out / "teachers" / "index.json").read_text())
    for name in set(index["task_to_teacher"].values()):
        adapter = json.loads((out / "teachers" / name / "adapter_config.json").read_text())
        assert adapter["task_type"] == "CAUSAL_LM" and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    # the shipped checkpoint loads as a causal TagiModel whose forward is the base's answer logits
    model = hypernet.load(out)
    assert isinstance(model, CausalTagiModel) and model.config.input_template.endswith("\n")
    batch = seq2seq_batch(model.tokenizer, model.format_inputs(["apple, pear"]), ["pear"], 64, 16)
    args = (batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(model(*args), answer_logits(model.base, *args), rtol=1e-4, atol=1e-5)
    adapter = model.adapter("Return the first two elements of the list.")
    assert isinstance(model.generate(["apple, pear, plum"], adapter, max_new_tokens=4)[0], str)
    # eval.json: every synthetic set, every method (the task LoRA oracle where tasks have teachers: training tasks)
    result = json.loads((out / EVAL_FILE).read_text())
    assert set(result) == set(SYNTH_SETS)
    for name, scores in result.items():
        methods = set(METHODS) - (set() if name == "synthetic_train_tasks" else {"task_lora_oracle"})
        assert set(scores["overall"]) == methods and 1 <= scores["tasks"] <= 3, name  # eval_tasks: 3
        for method in methods:
            assert 0 <= scores["overall"][method]["exact_match"] <= 100
        assert scores["time_ratio_tagi_vs_concat"] > 0
    assert result["synthetic_natural_wording"]["tasks"] == 3  # of 156


def test_the_causal_meta_teacher_is_a_full_finetune_stored_in_bfloat16(smoke_causal):
    meta = smoke_causal["out"] / "meta_teacher"
    stored = AutoModelForCausalLM.from_pretrained(meta, use_safetensors=True)
    assert stored.dtype == torch.bfloat16 or json.loads((meta / "config.json").read_text())["dtype"] == "bfloat16"
    base = load_base_model(smoke_causal["work"] / "stage0_base" / "model")
    trained = load_base_model(meta)
    changed = [name for name, p in trained.named_parameters() if (p - base.get_parameter(name)).abs().max() > 1e-3]
    assert len(changed) > len(list(trained.parameters())) // 2  # most weights moved: not a LoRA
