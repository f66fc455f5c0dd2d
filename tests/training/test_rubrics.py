"""Rubrics (CITING) derived from the list world's training pairs: every category gets one, no
training reference breaks its own rubric, typical wrong answers break the criterion they should,
and user rubric files round-trip or fail in one line naming the file."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from hypernet.cli import main
from hypernet.errors import UserError
from training.common import Pair, TaskSet
from training.presets import get_preset
from training.rubrics import Criterion, Rubric, derive_rubric, derive_rubrics, load_rubrics, save_rubrics, synthetic_task_set


@pytest.fixture(scope="module")
def tiny() -> TaskSet:
    """The shipped recipe's training task set. Its held-out splits are drawn with one instance per
    task only to save time: training tasks are seeded by name and planned before any instance is
    drawn, so they are the same whatever test_instances says."""
    recipe = get_preset("tiny")
    return synthetic_task_set(replace(recipe.suite, test_instances=1), recipe.seed, recipe.held_back)


@pytest.fixture(scope="module")
def rubrics(tiny: TaskSet) -> dict[str, Rubric]:
    return derive_rubrics(tiny)


def test_every_category_gets_a_rubric_that_no_training_reference_breaks(tiny, rubrics):
    assert set(rubrics) == set(tiny.categories()) and len(rubrics) == 15
    categories = tiny.categories()
    broken = [(p.input, p.output) for p in tiny.train if rubrics[categories[p.task]].violations(p.input, p.output)]
    assert broken == []
    assert rubrics["contains"].criteria[0] == Criterion(
        "one_of", "The answer is one of: no, yes.", "one_of", {"labels": ["no", "yes"]}
    )
    assert {c.name for c in rubrics["sort_asc"].criteria} == {"same_items", "sorted", "length", "non_empty"}
    assert rubrics["count"].text() == (
        "The answer is a whole number from 2 to 4. The answer is the number of items in the input. The answer is not empty."
    )


@pytest.mark.parametrize(
    ("category", "input_text", "answer", "broken"),
    [
        ("contains", "apple, pear", "maybe", ["one_of"]),  # not in the label set
        ("is_sorted", "3, 5", "true", ["one_of"]),
        ("max", "12, 57", "100", ["number", "items_from_input"]),  # out of range, and not an input item
        ("max", "12, 57", "13", ["items_from_input"]),
        ("count", "apple, pear", "5", ["number", "count_vs_input"]),
        ("count", "apple, pear, fig", "2", ["count_vs_input"]),
        ("above", "3, 80, 60", "80, 99", ["items_from_input"]),  # an item that is not in the input
        ("first_k", "apple, pear, fig", "pear, apple", ["order_kept"]),  # order changed where it is kept
        ("drop_first_k", "apple, pear", "apple, pear", ["count_vs_input"]),  # as many items, where fewer
        ("reverse", "apple, pear", "pear, fig", ["same_items"]),
        ("sort_asc", "5, 3, 9", "9, 5, 3", ["sorted"]),
        ("sort_desc", "5, 3, 9", "3, 5, 9", ["sorted"]),
        ("every_second", "1, 2, 3", "1, 2, 3", ["count_vs_input", "length"]),  # not fewer items; 3: over the range seen
    ],
)
def test_typical_wrong_answers_break_the_right_criterion(rubrics, category, input_text, answer, broken):
    assert rubrics[category].violations(input_text, answer) == broken


def test_an_empty_answer_breaks_every_rubric(rubrics):
    for category, rubric in rubrics.items():
        assert "non_empty" in rubric.violations("apple, 12", ""), category
        assert "non_empty" in rubric.violations("apple, 12", "  "), category


def test_derivation_is_deterministic_and_reads_training_pairs_only(tiny, rubrics):
    assert derive_rubrics(tiny) == rubrics
    odd = [Pair(0, "apple, pear", "a free sentence with many words, 12345 and more") for _ in range(50)]
    assert derive_rubrics(TaskSet(tiny.tasks, tiny.instructions, tiny.train, odd)) == rubrics
    # A relation one training pair breaks is not a criterion: adding a reversed pair drops the order.
    category = tiny.categories().index("first_k")
    extra = [*tiny.train, Pair(category, "apple, pear", "pear, apple")]
    first_k = derive_rubrics(TaskSet(tiny.tasks, tiny.instructions, extra, tiny.held_back))["first_k"]
    assert "order_kept" in [c.name for c in rubrics["first_k"].criteria]
    assert "order_kept" not in [c.name for c in first_k.criteria] and not first_k.violations("apple, pear", "pear, apple")


def test_free_text_and_labels_as_in_sni():
    sentences = [
        ("The cat sat on the mat, quietly.", "The cat sat."),
        ("Dogs bark, birds sing, fish swim.", "Dogs bark loudly here."),
    ]
    text = derive_rubric("Question Rewriting", sentences)
    assert [c.name for c in text.criteria] == ["length", "non_empty"], "no item relations on free text"
    assert text.criteria[0].params == {"unit": "words", "min": 3, "max": 4}
    assert text.violations("x", "one two three four five") == ["length"]
    labels = derive_rubric("Sentiment Analysis", [("good film", "POS"), ("bad film", "NEG")] * 4 + [("ok", "Yes.")] * 4)
    assert labels.criteria[0].text == 'The answer is one of: "NEG", "POS", "Yes.".'
    assert labels.violations("fine film", "pos") == [], "labels compare as SNI's exact match does"
    assert labels.violations("fine film", "neutral") == ["one_of"]


def test_a_blank_answer_is_no_label_and_breaks_nothing():
    pairs = [("a, b", "yes"), ("c, d", "no"), ("e", "")] * 4
    rubric = derive_rubric("Blank Answers", pairs)
    assert "one_of" not in [c.name for c in rubric.criteria]
    assert all(rubric.violations(given, answer) == [] for given, answer in pairs)


def test_user_rubrics_round_trip_as_json_and_yaml(tmp_path, rubrics):
    path = tmp_path / "rubrics.json"
    save_rubrics(rubrics, path)
    assert load_rubrics(path) == rubrics
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text(
        "contains:\n"
        "  text: Answer yes or no, in lowercase.\n"
        "  criteria:\n"
        "    - {name: label, text: The answer is yes or no., kind: one_of, params: {labels: ['yes', 'no']}}\n"
        "    - {name: polite, text: The answer is polite., kind: text}\n"
    )
    mine = load_rubrics(yaml_file)["contains"]
    assert mine.text() == "Answer yes or no, in lowercase."
    assert mine.violations("apple", "maybe") == ["label"], "a text criterion has no check"
    save_rubrics({"contains": mine}, tmp_path / "again.json")
    assert load_rubrics(tmp_path / "again.json") == {"contains": mine}


def _criterion(**fields) -> dict:
    return {"x": {"criteria": [{"name": "a", "text": "t", **fields}]}}


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("r.json", "{oops", "invalid JSON at line 1"),
        ("r.yaml", "x: [1,\n", "invalid YAML at line"),
        ("r.txt", "{}", "ends in .json, .yaml or .yml"),
        ("r.json", "[]", "non-empty mapping of category -> rubric"),
        ("r.json", json.dumps({"x": {"criteria": []}}), "category 'x': 'criteria' must be a non-empty list"),
        ("r.json", json.dumps({"x": {"criteria": [], "rules": 1}}), "expected a mapping with 'criteria'"),
        ("r.json", json.dumps(_criterion(kind="bogus")), "unknown kind 'bogus'"),
        ("r.json", json.dumps(_criterion(kind="number", params={"min": 5})), "bad params ['max'] for kind 'number'"),
        ("r.json", json.dumps(_criterion(kind="number", params={"min": 5, "max": 1})), "min 5 is above max 1"),
        ("r.json", json.dumps(_criterion(kind="one_of", params={"labels": []})), "labels: a non-empty list"),
        ("r.json", json.dumps(_criterion(kind="text", params={"n": 1})), "bad params ['n'] for kind 'text'"),
        ("r.json", json.dumps({"x": {"criteria": [{"name": "a", "kind": "text"}]}}), "criterion 0: missing ['text']"),
        ("r.json", json.dumps({"x": {"criteria": [{"name": "a", "text": "t", "kind": "text"}] * 2}}), "names repeat: ['a']"),
    ],
)
def test_a_bad_rubrics_file_is_one_line_naming_it(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError) as caught:
        load_rubrics(path)
    message = str(caught.value)
    assert str(path) in message and fragment in message and "\n" not in message, message


def test_a_missing_rubrics_file(tmp_path):
    with pytest.raises(UserError, match="cannot read rubrics file .*nothing.json"):
        load_rubrics(tmp_path / "nothing.json")


def test_tagi_rubrics_writes_the_presets_rubrics(tmp_path, capsys):
    out = tmp_path / "rubrics.json"
    assert main(["rubrics", "--preset", "smoke", "--out", str(out)]) == 0
    recipe = get_preset("smoke")
    assert load_rubrics(out) == derive_rubrics(synthetic_task_set(recipe.suite, recipe.seed, recipe.held_back))
    assert main(["rubrics", "--preset", "smoke", "--out", str(out)]) == 2
    assert main(["rubrics", "--preset", "sni-smoke", "--out", str(tmp_path / "sni.json")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        f"tagi: error: {out} already exists; pass --overwrite to replace it",
        "tagi: error: preset sni-smoke trains on SNI tasks: pass their files with --tasks PATH",
    ]


def test_rubric_text_joins_its_criteria():
    """Rubric.text() is what hypernet.rubric.with_rubric appends: the criteria's texts, in order."""
    rubric = Rubric("c", (Criterion("a", "One.", "non_empty"), Criterion("b", "Two.", "text")))
    assert rubric.text() == "One. Two." and rubric.violations("x", "y") == []
