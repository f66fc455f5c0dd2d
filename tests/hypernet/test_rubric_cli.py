"""`tagi run` and `tagi adapter` with a rubric (CITING): the generator reads instruction + rubric, so
the adapter is another one, with its own id; a bad rubric is one line and exit 2, before any model
is loaded. In-process (hypernet.cli.main) on the micro checkpoint, to stay cheap."""

from __future__ import annotations

import re

import pytest

from hypernet.cli import main
from hypernet.io import load_checkpoint
from hypernet.model import adapter_id
from hypernet.rubric import MAX_RUBRIC_CHARS, with_rubric

INSTRUCTION = "Reverse the list."
RUBRIC = "The answer has exactly the input's items. The answer is not empty."
INPUTS = ["apple, river, stone"]


def written_id(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 0
    return re.fullmatch(r"adapter ([0-9a-f]{32}) written to .*", capsys.readouterr().out.strip()).group(1)


def test_a_rubric_makes_another_adapter(checkpoint_dir, tmp_path, capsys):
    adapter = ["adapter", "--checkpoint", str(checkpoint_dir), "--instruction", INSTRUCTION]
    plain = written_id(capsys, [*adapter, "--out", str(tmp_path / "plain")])
    ruled = written_id(capsys, [*adapter, "--rubric", RUBRIC, "--out", str(tmp_path / "ruled")])
    rubric_file = tmp_path / "rubric.txt"
    rubric_file.write_text(RUBRIC + "\n")
    from_file = written_id(capsys, [*adapter, "--rubric-file", str(rubric_file), "--out", str(tmp_path / "file")])
    fingerprint = load_checkpoint(checkpoint_dir).fingerprint
    assert plain == adapter_id(fingerprint, INSTRUCTION)
    assert ruled == from_file == adapter_id(fingerprint, with_rubric(INSTRUCTION, RUBRIC)) != plain


def test_run_answers_with_the_rubric_adapter(checkpoint_dir, capsys):
    run = ["run", "--checkpoint", str(checkpoint_dir), "--instruction", INSTRUCTION, "--max-new-tokens", "4"]
    for text in INPUTS:
        run += ["--input", text]
    assert main([*run, "--rubric", RUBRIC]) == 0
    printed = capsys.readouterr().out.splitlines()
    model = load_checkpoint(checkpoint_dir)
    expected = model.generate(INPUTS, model.adapter(with_rubric(INSTRUCTION, RUBRIC)), fusion=True, max_new_tokens=4)
    plain = model.generate(INPUTS, model.adapter(INSTRUCTION), fusion=True, max_new_tokens=4)
    assert printed == [text.replace("\n", " ") for text in expected]
    assert expected != plain, "the micro checkpoint's adapters differ by instruction, so this checks the rubric is used"


@pytest.mark.parametrize(
    ("command", "extra", "fragment"),
    [
        ("run", ["--rubric", "   "], "rubric is empty"),
        ("run", ["--rubric", "x" * (MAX_RUBRIC_CHARS + 1)], f"the limit is {MAX_RUBRIC_CHARS}"),
        ("run", ["--rubric-file", "/nonexistent/rubric.txt"], "cannot read rubric file /nonexistent/rubric.txt"),
        ("adapter", ["--rubric", ""], "rubric is empty"),
        ("adapter-batch", ["--rubric", "x"], "--rubric and --rubric-file go with --instruction"),
    ],
)
def test_a_bad_rubric_is_one_line(tmp_path, capsys, command, extra, fragment):
    argv = {
        "run": ["run", "--instruction", INSTRUCTION, "--input", "a, b"],
        "adapter": ["adapter", "--instruction", INSTRUCTION, "--out", str(tmp_path / "a")],
        "adapter-batch": ["adapter", "--instructions", str(tmp_path / "i.txt"), "--out-dir", str(tmp_path / "d")],
    }[command]
    assert main([*argv, "--checkpoint", str(tmp_path / "no-checkpoint"), *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tagi: error:") and fragment in lines[0], lines


def test_rubric_and_rubric_file_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["run", "--instruction", INSTRUCTION, "--input", "a", "--rubric", "x", "--rubric-file", "f"])
    assert caught.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
