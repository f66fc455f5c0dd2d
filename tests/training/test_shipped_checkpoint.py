"""The committed checkpoints/tiny: loads as the default, follows list-world instructions (where an
untrained or wrongly instructed model cannot), stays within its size budget, refuses an empty
instruction, and its eval.json is what the checkpoint does (re-evaluated here on a sample)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hypernet.cli_common import DEFAULT_CHECKPOINT, resolve_checkpoint
from hypernet.io import load_checkpoint
from training.data import SNI_DIR, read_split
from training.evaluate import METHODS, run_eval
from training.suite import SuiteConfig, build_suite, sample_instance
from training.suite_files import write_suite
from training.world import Step

EVAL_SETS = {
    "synthetic_unseen_composition",
    "synthetic_unseen_parameter",
    "synthetic_unseen_paraphrase",
    "synthetic_natural_wording",
    "synthetic_unseen_words",
    "synthetic_train_tasks",
    "sni_test",
}
Function = tuple[tuple[str, object], ...]


@pytest.fixture(scope="module")
def shipped():
    return load_checkpoint(DEFAULT_CHECKPOINT)


def test_it_is_every_commands_default():
    assert resolve_checkpoint(None) == DEFAULT_CHECKPOINT


def test_size_budget_and_parts():
    size = sum(p.stat().st_size for p in DEFAULT_CHECKPOINT.rglob("*") if p.is_file())
    assert size <= 30e6, size
    for part in ("README.md", "eval.json", "pipeline.json", "meta_teacher/config.json", "teachers/index.json"):
        assert (DEFAULT_CHECKPOINT / part).exists(), part


def test_eval_json_has_every_task_set_and_method():
    results = json.loads((DEFAULT_CHECKPOINT / "eval.json").read_text())
    assert set(results) == EVAL_SETS
    for name, result in results.items():
        assert {"overall", "by_category", "by_task"} <= set(result)
        assert set(result["overall"]) <= set(METHODS) and "tagi" in result["overall"]
        assert result["time_ratio_tagi_vs_concat"] > 0, name


@pytest.mark.xfail(
    strict=True,
    reason="missed since issue 10: with ~24 wordings per task in the same budget the meta teacher reaches 65.1 (eval.json)",
)
def test_the_meta_teacher_reaches_80_on_held_back_training_instances():
    results = json.loads((DEFAULT_CHECKPOINT / "eval.json").read_text())
    assert results["synthetic_train_tasks"]["overall"]["meta_teacher"]["exact_match"] >= 80


def _accuracy(model, instruction: str, function: Function, count: int = 40, seed: int = 0) -> float:
    """Exact match of the generated adapter on fresh random inputs of `function` ((primitive, param) steps)."""
    rng = random.Random(seed)
    steps = [Step(name, param, 0) for name, param in function]
    pairs = [sample_instance(rng, steps, SuiteConfig()) for _ in range(count)]
    adapter = model.adapter(instruction)
    outputs = model.generate([x for x, _ in pairs], [adapter] * count, max_new_tokens=24)
    return sum(o == y for o, (_, y) in zip(outputs, pairs)) / count


# Training-task wordings, typed bare (the checkpoint's instruction_template adds "Definition: ").
# The card holds the real measurement (held-back instances of every task); this guards the
# committed artefact against a broken export or config, with a margin below what it scores.
@pytest.mark.parametrize(
    ("instruction", "function"),
    [
        ("Return the list in reverse order.", (("reverse", None),)),
        ("Find the largest number in the list.", (("max", None),)),
        ("Output the numbers that are bigger than 50.", (("above", 50),)),
    ],
)
def test_follows_instructions_on_fresh_inputs(shipped, instruction: str, function: Function):
    assert _accuracy(shipped, instruction, function) >= 0.6


def test_the_instruction_not_the_input_decides(shipped):
    """On the same kind of inputs, the max adapter answers max and the min adapter min: each
    high on its own function and low on the other's (a model that ignores the instruction, or
    an untrained one, cannot be both)."""
    largest, smallest = "Find the largest number in the list.", "Find the smallest number in the list."
    assert _accuracy(shipped, largest, (("max", None),)) >= 0.6
    assert _accuracy(shipped, smallest, (("min", None),)) >= 0.6
    assert _accuracy(shipped, largest, (("min", None),)) < 0.3
    assert _accuracy(shipped, smallest, (("max", None),)) < 0.3


# ---- eval.json, re-evaluated on a sample -----------------------------------------------------

# Set -> (synthetic split or SNI, every k-th task): about 4 tasks each, at the pipeline's own
# instance counts, so the scores per task can be compared with the committed file.
SAMPLE = {
    "synthetic_unseen_composition": ("unseen_composition", 3),
    "synthetic_unseen_parameter": ("unseen_parameter", 2),
    "synthetic_unseen_paraphrase": ("unseen_paraphrase", 3),
    "synthetic_natural_wording": ("natural_wording", 40),
    "synthetic_unseen_words": ("unseen_words", 4),
    "synthetic_train_tasks": ("train", 16),
    "sni_test": ("sni", 10),
}
# Sets on which the shipped checkpoint does not beat the wrong-instruction control, marked strict
# xfail (a checkpoint that starts beating it there makes them fail, so the marks get removed).
# The checkpoint of issue 10 beats it on every set (committed eval.json: unseen paraphrase EM 52.1
# vs 15.7, sni_test 4.8 vs 0.8); the previous one did not on those two.
DOES_NOT_BEAT_CONTROL: set[str] = set()


@pytest.fixture(scope="module")
def fresh_eval(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """`tagi eval` (tagi and its wrong-instruction control) on a sample of every set, with the
    suite rebuilt from the recipe in pipeline.json."""
    recipe = json.loads((DEFAULT_CHECKPOINT / "pipeline.json").read_text())["preset"]
    data = tmp_path_factory.mktemp("suite")
    write_suite(build_suite(recipe["seed"], SuiteConfig(**recipe["suite"])), data)
    methods = ("tagi", "tagi_wrong_instruction")
    results = {}
    for name, (split, every) in SAMPLE.items():
        if split == "sni":
            tasks = sorted(read_split(SNI_DIR / "splits" / "subset" / "test_tasks.txt"))[::every]
            results[name] = run_eval(
                DEFAULT_CHECKPOINT,
                [str(SNI_DIR / "tasks" / f"{t}.json") for t in tasks],
                "def+2pos",
                max_instances=recipe["eval_instances"],
                max_input_tokens=2048,
                max_new_tokens=48,
                methods=methods,
                timing_tasks=0,
            )
        else:
            files = sorted((data / split).glob("*.json"))[::every]
            results[name] = run_eval(
                DEFAULT_CHECKPOINT,
                [str(f) for f in files],
                "def",
                seed=recipe["seed"],
                held_back=recipe["held_back"] if split == "train" else None,
                max_instances=recipe["eval_instances"],
                max_new_tokens=48,
                methods=methods,
                timing_tasks=0,
            )
    return results


def test_committed_eval_json_is_what_the_checkpoint_does(fresh_eval: dict[str, dict]):
    committed = json.loads((DEFAULT_CHECKPOINT / "eval.json").read_text())
    for name, result in fresh_eval.items():
        assert len(result["by_task"]) >= 2, name
        for task, scores in result["by_task"].items():
            # The control pairs each task with another of the evaluated ones, so only tagi compares.
            assert scores["tagi"] == committed[name]["by_task"][task]["tagi"], (name, task)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="does not beat the control here (see eval.json)"))
        if n in DOES_NOT_BEAT_CONTROL
        else n
        for n in SAMPLE
    ],
)
def test_tagi_beats_its_wrong_instruction_control(fresh_eval: dict[str, dict], name: str):
    """The adapter carries the task: another task's instruction scores lower, in both metrics."""
    overall = fresh_eval[name]["overall"]
    for metric in ("exact_match", "rougeL"):
        assert overall["tagi"][metric] > overall["tagi_wrong_instruction"][metric], (name, metric, overall)


# ---- an empty instruction ----------------------------------------------------------------------


@pytest.mark.parametrize("instruction", ["", "   ", "\n\t"])
@pytest.mark.parametrize("command", ["run", "adapter"])
def test_an_empty_instruction_is_refused_on_the_shipped_checkpoint(tmp_path: Path, command: str, instruction: str):
    """Its instruction_template ("Definition: {instruction}") would make "" look non-empty."""
    assert json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())["instruction_template"] != "{instruction}"
    args = ["--input", "1, 2"] if command == "run" else ["--out", str(tmp_path / "adapter")]
    done = subprocess.run(
        [sys.executable, "-m", "hypernet.cli", command, "--instruction", instruction, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "instruction is empty" in lines[0], done.stderr
    assert not (tmp_path / "adapter").exists()


# ---- everyday wordings ---------------------------------------------------------------------------


def test_the_quick_start_everyday_instruction_works_from_the_command_line():
    """The README's quick start and issue 10's acceptance line: a wording no stage trained on."""
    done = subprocess.run(
        [sys.executable, "-m", "hypernet.cli", "run", "--instruction", "What's the biggest number here?", "--input", "42, 7, 19"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"


def test_everyday_wordings_are_never_training_wordings():
    from training.suite import read_natural_wordings

    recipe = json.loads((DEFAULT_CHECKPOINT / "pipeline.json").read_text())["preset"]
    suite = build_suite(recipe["seed"], SuiteConfig(**recipe["suite"]))
    trained = {w.lower().strip(" .?!") for t in suite.train for w in t.task.wordings}
    assert "what's the biggest number here" not in trained
    assert not [text for _, text in read_natural_wordings() if text.lower().strip(" .?!") in trained]
