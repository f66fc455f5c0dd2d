"""The training commands of `tagi`: help on every option, data synth, user errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from hypernet.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _walk(parser: argparse.ArgumentParser, prefix: str = ""):
    yield prefix, parser
    for name, child in _subparsers(parser):
        yield from _walk(child, f"{prefix} {name}".strip())


def test_every_training_option_has_help():
    parser = build_parser()
    seen = set()
    for name, sub in _walk(parser):
        if name.split(" ")[0] not in ("train", "eval", "data", "ablate-curriculum", "ablate-citing", "ablate-encoder"):
            continue
        seen.add(name)
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"tagi {name} {action.option_strings} has no help"
    assert {
        "data synth",
        "train",
        "train base",
        "train teachers",
        "train meta-teacher",
        "train hypernet-pretrain",
        "train distill",
        "eval",
        "ablate-citing",
    } <= seen


def test_data_synth_writes_the_suite(tmp_path: Path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--seed", "3", "--preset", "smoke"]) == 0
    assert (tmp_path / "s" / "splits" / "train.txt").exists()
    assert list((tmp_path / "s" / "unseen_composition").glob("*.json"))
    assert "wrote the synthetic suite" in capsys.readouterr().out
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--preset", "smoke"]) == 2  # not empty


def test_train_without_stage_needs_out(capsys):
    assert main(["train", "--preset", "smoke"]) == 2
    assert "--out" in capsys.readouterr().err


def test_stage_without_its_inputs_is_a_usage_error(tmp_path: Path, capsys):
    assert main(["train", "distill", "--preset", "smoke", "--work", str(tmp_path)]) == 2
    assert "tagi train hypernet-pretrain" in capsys.readouterr().err


def test_eval_defaults_to_the_shipped_checkpoint_or_says_so(tmp_path: Path, capsys, monkeypatch):
    import hypernet.cli_common as cli_common

    monkeypatch.setattr(cli_common, "DEFAULT_CHECKPOINT", tmp_path / "missing")
    assert main(["eval", "--tasks", str(tmp_path)]) == 2
    assert "no --checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["train", "--help"], ["train", "distill", "--help"], ["eval", "--help"]])
def test_help_runs(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_train_one_stage_from_the_command_line(tmp_path: Path, capsys):
    work = tmp_path / "work"
    assert main(["train", "base", "--preset", "smoke", "--work", str(work), "--steps", "2", "--device", "cpu"]) == 0
    assert "stage base done" in capsys.readouterr().out
    assert (work / "stage0_base" / "model" / "config.json").exists()
    assert (work / "stage0_base" / "log.jsonl").exists()
    assert (work / "data" / "splits" / "train.txt").exists()


def test_a_recipe_file_drives_a_stage_and_a_bad_one_is_one_line(tmp_path: Path, capsys):
    from training.presets import CONFIGS_DIR

    recipe = tmp_path / "mine.yaml"
    recipe.write_text((CONFIGS_DIR / "smoke.yaml").read_text().replace("name: smoke", "name: mine"))
    work = tmp_path / "work"
    assert main(["train", "base", "--recipe", str(recipe), "--work", str(work), "--steps", "2", "--device", "cpu"]) == 0
    done = json.loads((work / "stage0_base" / "DONE").read_text())
    assert done["config"]["base"]["loop"]["steps"] == 2 and done["config"]["base"]["model"]["d_model"] == 64
    capsys.readouterr()
    # A finished stage is not silently reused under another config.
    assert main(["train", "base", "--recipe", str(recipe), "--work", str(work), "--steps", "3", "--device", "cpu"]) == 2
    assert "base.loop.steps 2 -> 3" in capsys.readouterr().err
    recipe.write_text("name: mine\ndistill:\n  lambda_kl: lots\n")
    assert main(["train", "base", "--recipe", str(recipe), "--work", str(work)]) == 2
    err = capsys.readouterr().err
    assert "mine.yaml: distill.lambda_kl: must be float" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "finetune", "--work", "w"],  # stage 3 has one name: distill
        ["train", "--preset", "smoke", "--recipe", "r.yaml", "--out", "o"],
        ["train", "--preset", "huge", "--out", "o"],
    ],
)
def test_refused_train_command_lines(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_steps_and_threads_must_be_positive(tmp_path: Path, capsys):
    assert main(["train", "base", "--preset", "smoke", "--work", str(tmp_path), "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    assert main(["train", "--preset", "smoke", "--threads", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--eval-instances", "0"], "--eval-instances must be >= 1"),
        (["--arms", "uniform", "citing+lots"], "unknown arms ['citing+lots']"),
    ],
)
def test_ablate_citing_refuses_bad_options_in_one_line(tmp_path: Path, capsys, extra: list[str], message: str):
    from training.pipeline import PIPELINE_FILE

    assert main(["ablate-citing", "--preset", "smoke", "--out", str(tmp_path)]) == 2  # not a `tagi train` output
    assert "not a `tagi train` output" in capsys.readouterr().err
    (tmp_path / PIPELINE_FILE).write_text("{}")
    assert main(["ablate-citing", "--preset", "smoke", "--out", str(tmp_path), "--work", str(tmp_path / "w"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
