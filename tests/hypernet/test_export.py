"""Offline export at scale: batched adapters, the manifest, resume, bad lines, names, merged models."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import WORDS
from transformers import AutoTokenizer, T5ForConditionalGeneration

from hypernet.cli import main
from hypernet.export import MANIFEST_FILE
from hypernet.files import directory_bytes
from hypernet.io import PEFT_WEIGHTS_FILE, peft_state_dict
from hypernet.model import ADAPTER_CHUNK

INPUTS = ["apple, river, stone", "green, 7, house, cloud", "seven bright table"]


def adapter_tensors(adapter) -> list[torch.Tensor]:
    w = adapter.weights
    return [*w.lora_A.values(), *w.lora_B.values(), adapter.instruction_encoding.states, adapter.instruction_encoding.pooled]


def run_main(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def skip_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("tagi: skipped")]


def read_manifest(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / MANIFEST_FILE).read_text().splitlines()]


def test_batched_adapters_are_bit_identical_to_one_at_a_time(model):
    # More same-length instructions than one pass holds, plus other lengths, in two different batchings.
    same_length = [f"Sort the items by rule {i:02d}." for i in range(ADAPTER_CHUNK + 3)]
    assert len({len(model.instruction_ids(t)) for t in same_length}) == 1 and len(same_length) > ADAPTER_CHUNK
    others = ["Reverse the list.", "Count the words in the list and then say how many there are.", "Keep the green ones."]
    texts = same_length + others
    alone = {t: model.adapter(t) for t in texts}
    for batch in (texts, list(reversed(texts[3:])) + texts[:3], texts[ADAPTER_CHUNK - 2 :]):
        for adapter in model.adapters(batch):
            reference = alone[adapter.instruction]
            assert adapter.adapter_id == reference.adapter_id
            assert all(torch.equal(a, b) for a, b in zip(adapter_tensors(adapter), adapter_tensors(reference))), (
                adapter.instruction
            )
    # The comparison means something: different instructions of one pass get different adapters.
    first, second = model.adapters(same_length[:2])
    assert not torch.equal(first.weights.lora_B["64x64"], second.weights.lora_B["64x64"])


def test_batch_export_writes_named_directories_manifest_and_reports_bad_lines(model, checkpoint_dir, tmp_path, capsys):
    lines = [
        json.dumps({"instruction": "Reverse the list.", "name": "reverse", "label": "reverse"}),
        json.dumps({"instruction": "   "}),
        "{not json",
        json.dumps({"instruction": "word " * 300}),
        json.dumps({"instruction": "Sort the items.", "name": "../escape"}),
        json.dumps({"instruction": "Sort the items of the list alphabetically."}),
        json.dumps({"instruction": "Write the list backwards.", "name": "reverse"}),
        json.dumps({"name": "no-instruction"}),
        json.dumps({"instruction": "Count the words.", "name": "count"}),
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, stdout, err = run_main(
        "adapter",
        "--checkpoint",
        str(checkpoint_dir),
        "--instructions",
        str(source),
        "--out-dir",
        str(out),
        "--batch-size",
        "2",
        capsys=capsys,
    )
    assert code == 0, err
    reported = skip_lines(err)
    assert [line.split(" line ")[1].split(":")[0] for line in reported] == ["2", "3", "4", "5", "7", "8"]
    assert "empty" in reported[0] and "invalid JSON" in reported[1] and "limit" in reported[2]
    assert "plain directory name" in reported[3] and "already used on line 1" in reported[4] and "instruction" in reported[5]
    assert "3 written, 0 already complete, 6 bad line(s)" in stdout

    unnamed = "Sort the items of the list alphabetically."
    expected_names = ["reverse", model.adapter(unnamed).adapter_id, "count"]
    rows = read_manifest(out)
    assert [row["name"] for row in rows] == expected_names
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected_names, MANIFEST_FILE])
    assert rows[0]["label"] == "reverse" and "label" not in rows[1]
    for row in rows:
        adapter = model.adapter(row["instruction"])
        assert row["adapter_id"] == adapter.adapter_id and row["path"] == row["name"]
        assert row["bytes"] == directory_bytes(out / row["path"]) > 0
        written = load_file(out / row["path"] / PEFT_WEIGHTS_FILE)
        expected = peft_state_dict(adapter)
        assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)


def test_plain_text_file_is_one_instruction_per_line(model, checkpoint_dir, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text('Reverse the list.\n\n{"instruction": "a JSON-looking line is just text here"}\n')
    out = tmp_path / "out"
    code, _, err = run_main(
        "adapter", "--checkpoint", str(checkpoint_dir), "--instructions", str(source), "--out-dir", str(out), capsys=capsys
    )
    assert code == 0, err
    assert len(skip_lines(err)) == 1 and " line 2: instruction is empty" in skip_lines(err)[0]
    rows = read_manifest(out)
    assert [r["instruction"] for r in rows] == ["Reverse the list.", '{"instruction": "a JSON-looking line is just text here"}']
    assert [r["name"] for r in rows] == [model.adapter(r["instruction"]).adapter_id for r in rows]


def test_strict_fails_with_one_line_and_keeps_what_was_written(checkpoint_dir, tmp_path, capsys):
    out = tmp_path / "out"
    good = tmp_path / "good.txt"
    good.write_text("Reverse the list.\nCount the words.\n")
    assert (
        run_main(
            "adapter", "--checkpoint", str(checkpoint_dir), "--instructions", str(good), "--out-dir", str(out), capsys=capsys
        )[0]
        == 0
    )
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(before) == 7  # two PEFT directories of three files, and the manifest

    mixed = tmp_path / "mixed.txt"
    mixed.write_text("Sort the items.\n\nReverse the list.\n" + "word " * 300 + "\n")
    code, stdout, err = run_main(
        "adapter",
        "--checkpoint",
        str(checkpoint_dir),
        "--instructions",
        str(mixed),
        "--out-dir",
        str(out),
        "--strict",
        capsys=capsys,
    )
    assert code == 2 and stdout == ""
    assert err.strip().splitlines() == [
        f"tagi: error: {mixed} line 2: instruction is empty (2 bad line(s) in all; --strict: nothing was written)"
    ]
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_a_killed_export_resumes_without_half_written_directories(model, checkpoint_dir, tmp_path):
    count = 48
    source = tmp_path / "in.txt"
    source.write_text("".join(f"Sort the {WORDS[i % len(WORDS)]} items number {i}.\n" for i in range(count)))
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "hypernet.cli",
        "adapter",
        "--checkpoint",
        str(checkpoint_dir),
        "--instructions",
        str(source),
        "--out-dir",
        str(out),
        "--batch-size",
        "2",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / MANIFEST_FILE).exists() and len((out / MANIFEST_FILE).read_text().splitlines()) >= 4:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the export finished before it could be interrupted"

    done = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert 4 <= len(done) < count
    for path in done:  # every visible directory is whole: a crash leaves a directory complete or absent
        assert load_file(path / PEFT_WEIGHTS_FILE).keys() == peft_state_dict(model.adapter("x")).keys()
    listed = {row["name"] for row in read_manifest(out)}
    assert listed <= {p.name for p in done}
    # What a crash inside a write leaves, by hand: a hidden temporary, and a directory of the
    # right adapter whose weights are cut short; both must be redone, not trusted.
    (out / f".{done[0].name}.crashed").mkdir()
    weights = done[1] / PEFT_WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])

    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{count - len(done) + 1} written, {len(done) - 1} already complete" in result.stdout
    rows = read_manifest(out)
    texts = source.read_text().splitlines()
    assert [row["instruction"] for row in rows] == texts
    assert sorted(p.name for p in out.iterdir()) == sorted([row["name"] for row in rows] + [MANIFEST_FILE])
    repaired = load_file(weights)
    expected = peft_state_dict(model.adapter(json.loads((done[1] / "tagi.json").read_text())["instruction"]))
    assert all(torch.equal(repaired[k], expected[k]) for k in expected)


def test_a_directory_holding_something_else_is_refused_unless_overwrite(checkpoint_dir, tmp_path, capsys):
    out = tmp_path / "out"
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps({"instruction": "Reverse the list.", "name": "task"}) + "\n")
    assert (
        run_main(
            "adapter", "--checkpoint", str(checkpoint_dir), "--instructions", str(first), "--out-dir", str(out), capsys=capsys
        )[0]
        == 0
    )
    second = tmp_path / "second.jsonl"
    second.write_text(json.dumps({"instruction": "Count the words.", "name": "task"}) + "\n")
    args = ["adapter", "--checkpoint", str(checkpoint_dir), "--instructions", str(second), "--out-dir", str(out)]
    code, _, err = run_main(*args, capsys=capsys)
    assert code == 2 and "is not the peft adapter of line 1" in err and "--overwrite" in err
    assert json.loads((out / "task" / "tagi.json").read_text())["instruction"] == "Reverse the list."
    assert run_main(*args, "--overwrite", capsys=capsys)[0] == 0
    assert json.loads((out / "task" / "tagi.json").read_text())["instruction"] == "Count the words."


def cli_lines(*args: str) -> list[str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(list(args)) == 0
    return stdout.getvalue().splitlines()


def test_merged_model_loads_without_peft_and_equals_run_no_fusion(model, checkpoint_dir, tmp_path, capsys):
    instruction = "Reverse the list."
    run_args = ["run", "--checkpoint", str(checkpoint_dir), "--instruction", instruction, "--no-fusion", "--max-new-tokens", "8"]
    for text in INPUTS:
        run_args += ["--input", text]
    expected = cli_lines(*run_args)
    assert expected != model.generate(INPUTS, None, max_new_tokens=8), "the adapter must change what the model says"

    single = tmp_path / "single"
    cli_lines("adapter", "--checkpoint", str(checkpoint_dir), "--instruction", instruction, "--out", str(single), "--merge")
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"instruction": instruction, "name": "merged"}) + "\n")
    cli_lines(
        "adapter",
        "--checkpoint",
        str(checkpoint_dir),
        "--instructions",
        str(source),
        "--out-dir",
        str(tmp_path / "many"),
        "--merge",
    )
    for merged_dir in (single, tmp_path / "many" / "merged"):
        weights = load_file(merged_dir / "model.safetensors")
        assert not any("lora" in key for key in weights), "a merged model carries no adapter weights"
        merged = T5ForConditionalGeneration.from_pretrained(merged_dir, use_safetensors=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(merged_dir)
        batch = tokenizer(INPUTS, return_tensors="pt", padding=True)
        with torch.no_grad():
            tokens = merged.generate(**batch, max_new_tokens=8, do_sample=False, num_beams=1)
        assert [t.replace("\n", " ") for t in tokenizer.batch_decode(tokens, skip_special_tokens=True)] == expected
    # A rerun verifies the merged directory and skips it.
    code, stdout, _ = run_main(
        "adapter",
        "--checkpoint",
        str(checkpoint_dir),
        "--instructions",
        str(source),
        "--out-dir",
        str(tmp_path / "many"),
        "--merge",
        capsys=capsys,
    )
    assert code == 0 and "0 written, 1 already complete" in stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--instruction", "x"], "--out DIR"),
        (["--instruction", "x", "--instructions", "f.txt", "--out", "o"], "either --instruction"),
        (["--instructions", "{tmp}/missing.txt", "--out-dir", "{tmp}/o"], "cannot read instructions file"),
        (["--instructions", "{tmp}/in.txt", "--out", "{tmp}/o"], "--out-dir"),
        (["--instructions", "{tmp}/in.txt", "--out-dir", "{tmp}/o", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_export_mistakes_print_one_line_and_exit_2(checkpoint_dir, tmp_path, capsys, args, fragment):
    (tmp_path / "in.txt").write_text("Reverse the list.\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run_main("adapter", "--checkpoint", str(checkpoint_dir), *args, capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
