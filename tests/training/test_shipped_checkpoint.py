"""The committed checkpoints/tiny: loads as the default, follows list-world instructions, stays
within its size budget, and ships the evaluation files the card is built from."""

from __future__ import annotations

import json
import random

import pytest

from hypernet.cli import DEFAULT_CHECKPOINT, resolve_checkpoint
from hypernet.io import load_checkpoint
from training.evaluate import METHODS
from training.synthetic import SuiteConfig, sample_instance, steps_from_slug

pytestmark = pytest.mark.skipif(not (DEFAULT_CHECKPOINT / "config.json").exists(), reason="no shipped checkpoint")

EVAL_SETS = {"synthetic_unseen_composition", "synthetic_unseen_parameter", "synthetic_unseen_paraphrase", "synthetic_train_tasks", "sni_test"}


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
    # The card's headline: the meta-trained teacher reaches 80% on held-back training instances.
    assert results["synthetic_train_tasks"]["overall"]["meta_teacher"]["exact_match"] >= 80


def _accuracy(model, instruction: str, slug: str, count: int = 40, seed: int = 0) -> float:
    """Exact match of the generated adapter on fresh random inputs of the function `slug`."""
    rng = random.Random(seed)
    pairs = [sample_instance(rng, steps_from_slug(slug), SuiteConfig()) for _ in range(count)]
    adapter = model.make_adapter(instruction)
    outputs = model.generate([x for x, _ in pairs], [adapter] * count, max_new_tokens=24)
    return sum(o == y for o, (_, y) in zip(outputs, pairs)) / count


# Training-task wordings, typed bare (the checkpoint's instruction_template adds "Definition: ").
# The card holds the real measurement (held-back instances of every task); this guards the
# committed artefact against a broken export or config, with a margin below what it scores.
@pytest.mark.parametrize(
    ("instruction", "slug"),
    [
        ("Return the list in reverse order.", "reverse"),
        ("Find the largest number in the list.", "max"),
        ("Output the numbers that are bigger than 50.", "above_50"),
    ],
)
def test_follows_instructions_on_fresh_inputs(shipped, instruction: str, slug: str):
    assert _accuracy(shipped, instruction, slug) >= 0.6


def test_the_instruction_not_the_input_decides(shipped):
    """The max adapter answers max, not min, on the same inputs."""
    assert _accuracy(shipped, "Find the largest number in the list.", "min") < 0.3
