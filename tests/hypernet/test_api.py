"""The public API exactly as the README and `hypernet/__init__.py` show it, on the shipped checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM

import hypernet
from hypernet.errors import CheckpointError, EmptyInstruction
from hypernet.files import DEFAULT_CHECKPOINT

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shipped() -> hypernet.TagiModel:
    return hypernet.load(DEFAULT_CHECKPOINT)


def test_readme_example_runs_and_sorts(shipped, tmp_path):
    adapter = shipped.adapter("Sort the numbers from smallest to largest.")
    assert shipped.generate(["3, 88, 12, 40"], adapter) == ["3, 12, 40, 88"]
    adapter.save_peft(tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "tagi.json"}
    base = AutoModelForSeq2SeqLM.from_pretrained(DEFAULT_CHECKPOINT / "base")
    peft = PeftModel.from_pretrained(base, tmp_path / "out").eval()
    batch = shipped.tokenizer(shipped.format_inputs(["42, 7, 19"]), return_tensors="pt")
    with torch.no_grad():
        tokens = peft.generate(**batch, max_new_tokens=16)
    exported = shipped.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    assert exported == shipped.generate(["42, 7, 19"], adapter, fusion=False, max_new_tokens=16)


def test_default_path_device_dtype_and_mixed_batch(shipped):
    model = hypernet.load(device="cpu", dtype=torch.float32)  # None: the shipped checkpoint
    assert model.fingerprint == shipped.fingerprint
    sort = model.adapter("Sort the numbers from smallest to largest.")
    reverse = model.adapter("Return the list in reverse order.")
    mixed = model.generate(["42, 7, 19", "apple, pear, plum", "3, 1"], [sort, reverse, None])
    alone = [
        model.generate(["42, 7, 19"], sort)[0],
        model.generate(["apple, pear, plum"], reverse)[0],
        model.generate(["3, 1"], None)[0],
    ]
    assert mixed == alone
    assert mixed[1] == "plum, pear, apple"


def test_api_errors_are_user_errors(shipped, tmp_path):
    for empty in ("", "   "):
        with pytest.raises(EmptyInstruction):
            shipped.adapter(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        hypernet.load(tmp_path / "missing")
    assert issubclass(EmptyInstruction, hypernet.UserError) and issubclass(CheckpointError, hypernet.UserError)


def test_importing_the_model_pulls_in_neither_training_nor_serving():
    code = (
        "import sys, hypernet, hypernet.model, hypernet.io, hypernet.cli; hypernet.load; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('training', 'serving')); print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_files_module_stays_free_of_torch():
    code = "import sys, hypernet.files, hypernet; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0
