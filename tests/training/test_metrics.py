"""Our metrics are SNI's official ones (the definitions of Tk-Instruct's compute_metrics.py), and
`tagi eval --predictions` writes a file that the official definitions rescore to the same numbers.

The reference below is written from the definitions (lowercase, drop string.punctuation, collapse
whitespace; rouge_score's stemmed Rouge-L F-measure on the raw strings; max over references),
independently of training.data, so a drift in ours (articles removed again, no stemming, our own
tokenizer) shows up on the real SNI references."""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from hypernet.cli import main
from hypernet.cli_common import DEFAULT_CHECKPOINT
from training.data import SNI_DIR, Instance, exact_match, load_tasks, normalize_answer, read_split, rouge_l

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def official_normalize(text: str) -> str:
    kept = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(kept.split())


def official_exact_match(prediction: str, references: Sequence[str]) -> float:
    return max(float(official_normalize(prediction) == official_normalize(ref)) for ref in references)


def official_rouge_l(prediction: str, references: Sequence[str]) -> float:
    return max(_SCORER.score(prediction=prediction, target=ref)["rougeL"].fmeasure for ref in references)


# ---- the definitions, on every reference of the shipped SNI tasks ---------------------------------


def _stemmed(text: str) -> str:
    """Inflect every longer word ("runs" for "run", "tasks" for "task"): the stemmer may undo it, exact match must not."""
    return " ".join(w + "s" if len(w) > 3 and w.isalpha() else w for w in text.split())


PERTURBATIONS: dict[str, Callable[[str], str]] = {
    "itself": lambda ref: ref,
    "upper case and punctuation": lambda ref: "  " + ref.upper().replace(" ", " , ") + "?!",
    "inflected": _stemmed,
    "an article more": lambda ref: "the " + ref,
}


@pytest.fixture(scope="module")
def sni_instances() -> list[Instance]:
    instances = [inst for task in load_tasks([str(SNI_DIR / "tasks")]) for inst in task.instances]
    assert len(instances) > 1500 and any(len(inst.outputs) > 1 for inst in instances)
    return instances


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_the_metrics_equal_the_official_definitions_on_the_sni_references(sni_instances: list[Instance], perturbation: str):
    """Each reference perturbed, scored against the next instance's references (partial overlaps) and
    against those plus its own (the max); every reference of a multi-reference instance is the prediction once."""
    perturb = PERTURBATIONS[perturbation]
    checked = 0
    for inst, other in zip(sni_instances, sni_instances[1:] + sni_instances[:1]):
        for ref in inst.outputs:
            prediction = perturb(ref)
            assert normalize_answer(prediction) == official_normalize(prediction)
            for refs in (other.outputs, (*other.outputs, *inst.outputs)):
                assert exact_match(prediction, refs) == official_exact_match(prediction, refs), (prediction, refs)
                assert rouge_l(prediction, refs) == official_rouge_l(prediction, refs), (prediction, refs)
                checked += 1
    assert checked > 3000


def test_what_the_official_definitions_change():
    """Articles count, inflections match in Rouge-L only, the best reference wins, a bare string is one reference."""
    assert normalize_answer("  The Cat, sat on A mat!  ") == "the cat sat on a mat"
    assert exact_match("the cat", ["cat"]) == 0.0
    assert exact_match("The CAT!", ["the cat"]) == 1.0
    assert rouge_l("the cat", ["cat"]) == pytest.approx(2 / 3)
    assert exact_match("runs", ["running"]) == 0.0
    assert rouge_l("runs", ["running"]) == 1.0
    assert rouge_l("red green blue", ["yellow", "green blue yellow black"]) == pytest.approx(4 / 7)
    assert rouge_l("red green blue", ["yellow", "green blue yellow black", "Red, green; BLUE."]) == 1.0
    assert exact_match("apple, river", ["pear", "Apple river"]) == 1.0
    assert rouge_l("don't", "don t") == 1.0  # rouge_score splits on what is not a letter or digit
    assert exact_match("don't", "don t") == 0.0  # exact match drops punctuation without a space


# ---- tagi eval --predictions ---------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_eval_writes_predictions_the_official_definitions_rescore(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """Two SNI test tasks (the third instance of the first has six references), three instances each, on the
    shipped checkpoint: one line per instance and method in Tk-Instruct's shape, and the official
    definitions over the file give back every per-task and overall figure `tagi eval` wrote."""
    tasks = ["task039_qasc_find_overlapping_words", "task190_snli_classification"]
    assert set(tasks) <= set(read_split(SNI_DIR / "splits" / "subset" / "test_tasks.txt"))
    predictions, report = tmp_path / "out" / "predicted_examples.jsonl", tmp_path / "eval.json"
    argv = ["eval", "--checkpoint", str(DEFAULT_CHECKPOINT), "--tasks", *(str(SNI_DIR / "tasks" / f"{t}.json") for t in tasks)]
    argv += ["--format", "def", "--max-instances", "3", "--max-new-tokens", "8", "--no-timing", "--json", str(report)]
    assert main([*argv, "--predictions", str(predictions)]) == 0
    assert f"wrote {predictions}" in capsys.readouterr().out
    result = json.loads(report.read_text())
    assert result["time_ratio_tagi_vs_concat"] is None and result["timing_tasks"] == 0  # --no-timing
    records = [json.loads(line) for line in predictions.read_text().splitlines()]

    loaded = {t.name: t for t in load_tasks([str(SNI_DIR / "tasks" / f"{t}.json") for t in tasks], max_instances=3)}
    assert any(len(inst.outputs) > 1 for inst in loaded[tasks[0]].instances)
    expected = {
        (name, inst.id, method) for name, task in loaded.items() for inst in task.instances for method in result["by_task"][name]
    }
    assert {"meta_teacher", "tagi", "tagi_no_fusion", "tagi_wrong_instruction"} <= set(result["overall"])
    assert len(records) == len(expected) and {(r["Task"], r["Instance"]["id"], r["Method"]) for r in records} == expected
    for record in records:
        assert set(record) == {"Task", "Definition", "Instance", "Prediction", "Method"}
        instance = next(i for i in loaded[record["Task"]].instances if i.id == record["Instance"]["id"])
        assert record["Instance"] == {"id": instance.id, "input": instance.input, "output": list(instance.outputs)}
        assert record["Definition"] == [loaded[record["Task"]].definition] and isinstance(record["Prediction"], str)

    for method in result["overall"]:
        per_task = {}
        for name in tasks:
            rows = [r for r in records if r["Task"] == name and r["Method"] == method]
            per_task[name] = {
                "exact_match": 100 * _mean([official_exact_match(r["Prediction"], r["Instance"]["output"]) for r in rows]),
                "rougeL": 100 * _mean([official_rouge_l(r["Prediction"], r["Instance"]["output"]) for r in rows]),
            }
            assert result["by_task"][name][method] == pytest.approx(per_task[name], abs=1e-9), (name, method)
        overall = {k: _mean([row[k] for row in per_task.values()]) for k in ("exact_match", "rougeL")}
        assert result["overall"][method] == pytest.approx(overall, abs=1e-9), method


def test_eval_predictions_into_a_directory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    task = SNI_DIR / "tasks" / "task190_snli_classification.json"
    argv = ["eval", "--checkpoint", str(DEFAULT_CHECKPOINT), "--tasks", str(task)]
    assert main([*argv, "--predictions", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--predictions" in err[0] and "directory" in err[0]
