"""A generated adapter is an ordinary LoRA: PEFT running it alone must give our numbers."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM

from hypernet.batching import stack_adapters
from hypernet.cli import main
from hypernet.io import export_peft

INSTRUCTIONS = ["Reverse the list.", "Sort the items of the list alphabetically.", "Count the words in the list."]
INPUTS = ["apple, river, stone", "green, 7, house, cloud", "seven bright table", "paper, garden"]


def peft_model(checkpoint_dir: Path, export_dir: Path):
    base = AutoModelForSeq2SeqLM.from_pretrained(checkpoint_dir / "base")
    return PeftModel.from_pretrained(base, export_dir).eval()


def test_mixed_batch_logits_match_peft_running_each_adapter_alone(model, checkpoint_dir, tmp_path):
    adapters = [model.adapter(text) for text in INSTRUCTIONS]
    rows = [adapters[0], adapters[1], None, adapters[2]]
    batch = model.tokenize(model.format_inputs(INPUTS), 64, "input")
    decoder_ids = torch.tensor([[0, 5, 9, 13, 4]] * len(INPUTS))
    with torch.no_grad():
        ours = model(**batch, decoder_input_ids=decoder_ids, lora=stack_adapters([a.weights if a else None for a in rows]))
        plain = model(**batch, decoder_input_ids=decoder_ids)

    for i, adapter in enumerate(rows):
        if adapter is None:
            assert torch.equal(ours[i], plain[i]), "a row without adapter must be the plain base"
            continue
        export_peft(adapter, tmp_path / adapter.adapter_id)
        peft = peft_model(checkpoint_dir, tmp_path / adapter.adapter_id)
        with torch.no_grad():
            theirs = peft(
                input_ids=batch["input_ids"][i : i + 1],
                attention_mask=batch["attention_mask"][i : i + 1],
                decoder_input_ids=decoder_ids[i : i + 1],
            ).logits[0]
        assert (ours[i] - theirs).abs().max().item() <= 1e-4
        # The comparison means something only if the adapter moves the logits.
        assert (ours[i] - plain[i]).abs().max().item() > 1e-3


def test_peft_export_reproduces_tagi_run_no_fusion(model, checkpoint_dir, tmp_path):
    instruction = INSTRUCTIONS[0]
    stdout = io.StringIO()
    args = ["run", "--checkpoint", str(checkpoint_dir), "--instruction", instruction, "--no-fusion", "--max-new-tokens", "8"]
    for text in INPUTS:
        args += ["--input", text]
    with contextlib.redirect_stdout(stdout):
        assert main(args) == 0
    cli_outputs = stdout.getvalue().splitlines()

    export = tmp_path / "export"
    assert main(["adapter", "--checkpoint", str(checkpoint_dir), "--instruction", instruction, "--out", str(export)]) == 0
    import json

    template = json.loads((export / "tagi.json").read_text())["input_template"]
    peft = peft_model(checkpoint_dir, export)
    tokenizer = model.tokenizer
    batch = tokenizer([template.replace("{input}", t) for t in INPUTS], return_tensors="pt", padding=True)
    with torch.no_grad():
        tokens = peft.generate(**batch, max_new_tokens=8, do_sample=False, num_beams=1)
    peft_outputs = [t.replace("\n", " ") for t in tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    assert cli_outputs == peft_outputs
    base_outputs = model.generate(INPUTS, [None] * len(INPUTS), fusion=False, max_new_tokens=8)
    assert peft_outputs != base_outputs, "the adapter must change what the model says"
