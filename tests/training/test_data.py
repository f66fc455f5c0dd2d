"""Tests for training.data: SNI loading, prompt layouts, instance splits, metrics."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from training.data import (
    SNI_DIR,
    Example,
    Instance,
    Task,
    exact_match,
    format_concat,
    format_instruction,
    instruction_text,
    label_definition,
    load_task,
    load_tasks,
    normalize_answer,
    read_split,
    rouge_l,
    split_instances,
    task_to_dict,
)


@pytest.fixture(scope="module")
def sni_dir() -> Path:
    """The subset the repository ships (data/sni): never skipped, a missing copy is a failure."""
    assert (SNI_DIR / "README.md").is_file() and (SNI_DIR / "tasks").is_dir(), f"the shipped SNI subset is missing: {SNI_DIR}"
    return SNI_DIR


def partition_split(tasks_dir: Path, split_file: Path) -> tuple[list[str], list[str]]:
    """(present, absent) task names of a split, each sorted: the split lists are SNI's full
    splits while only a subset of the task files ships."""
    names = read_split(split_file)
    present = sorted(n for n in names if (tasks_dir / f"{n}.json").is_file())
    return present, sorted(set(names) - set(present))


def load_split(tasks_dir: Path, split_file: Path, max_instances: int | None = None) -> list[Task]:
    """Tasks of a split that exist in ``tasks_dir``, sorted by name."""
    present, _ = partition_split(tasks_dir, split_file)
    return [load_task(tasks_dir / f"{name}.json", max_instances) for name in present]


def _task(definition: str = "Say the word twice.", positives: int = 3) -> Task:
    return Task(
        name="toy",
        definition=definition,
        positive_examples=tuple(
            Example(input=f"in{i}", output=f"out{i}", explanation=f"why{i}") for i in range(1, positives + 1)
        ),
        negative_examples=(Example(input="neg", output="bad", explanation="wrong"),),
        instances=tuple(Instance(id=f"toy-{i}", input=f"x{i}", outputs=(f"y{i}",)) for i in range(10)),
        categories=("Toy", "Other"),
    )


def _write(tmp_path: Path, data: object, name: str = "task_x.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


# --------------------------------------------------------------------------
# Real data


def test_every_shipped_sni_task_loads_with_expected_totals(sni_dir: Path) -> None:
    tasks = load_tasks([sni_dir / "tasks"])
    assert len(tasks) == 38
    assert sum(len(t.instances) for t in tasks) == 1954
    assert [t.name for t in tasks] == sorted(t.name for t in tasks)
    splits = sni_dir / "splits" / "subset"
    subset = {name for split in ("train_tasks.txt", "test_tasks.txt") for name in read_split(splits / split)}
    assert {t.name for t in tasks} == subset
    for task in tasks:
        assert task.definition.strip()
        assert len(task.positive_examples) >= 2
        assert task.category == task.categories[0]
        assert all(inst.outputs and inst.id for inst in task.instances)


def test_known_task_content(sni_dir: Path) -> None:
    task = load_task(sni_dir / "tasks" / "task063_first_i_elements.json")
    assert task.name == "task063_first_i_elements"
    assert task.definition.startswith("In this task, you are given inputs i and A")
    assert task.category == "Program Execution"
    assert len(task.instances) == 49
    assert task.instances[1] == Instance(
        id="task063-62a4be2dbad84644895e452d7d5db203",
        input="2, ['n', 'f', 'V', 'a', '4729', '1347']",
        outputs=("n, f",),
    )
    assert task.positive_examples[0].output == "a, 34, f"


@pytest.mark.parametrize(
    ("split", "present", "listed"),
    [("train_tasks.txt", 18, 756), ("test_tasks.txt", 20, 119)],
)
def test_shipped_subset_is_part_of_the_full_split(sni_dir: Path, split: str, present: int, listed: int) -> None:
    full = sni_dir / "splits" / "default" / split
    tasks = load_split(sni_dir / "tasks", full)
    names = [t.name for t in tasks]
    assert names == sorted(read_split(sni_dir / "splits" / "subset" / split))
    assert len(names) == present
    assert len(read_split(full)) == listed
    found, absent = partition_split(sni_dir / "tasks", full)
    assert found == names and len(absent) == listed - present
    assert absent == sorted(absent) and not set(absent) & set(found)


def test_subset_split_lists_only_shipped_tasks(sni_dir: Path) -> None:
    assert partition_split(sni_dir / "tasks", sni_dir / "splits" / "subset" / "test_tasks.txt")[1] == []
    tasks = load_split(sni_dir / "tasks", sni_dir / "splits" / "subset" / "test_tasks.txt", max_instances=3)
    assert len(tasks) == 20
    assert all(len(t.instances) == 3 for t in tasks)
    assert all(t.function is None and t.function_key == t.name for t in tasks)  # SNI tasks: each its own function


def test_max_instances_keeps_file_order_prefix(sni_dir: Path) -> None:
    path = sni_dir / "tasks" / "task1331_reverse_array.json"
    full = load_task(path)
    capped = load_task(path, max_instances=5)
    assert capped.instances == full.instances[:5]
    assert load_task(path, max_instances=0).instances == ()
    assert load_task(path, max_instances=10_000).instances == full.instances
    assert [len(t.instances) for t in load_tasks([path], max_instances=7)] == [7]
    with pytest.raises(ValueError, match="max_instances"):
        load_task(path, max_instances=-1)


# --------------------------------------------------------------------------
# Explicit paths and malformed files


def test_missing_requested_task_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "task999_absent.json"
    with pytest.raises(ValueError, match="task999_absent.json"):
        load_tasks([missing])
    with pytest.raises(ValueError, match="task999_absent.json"):
        load_task(missing)
    with pytest.raises(ValueError, match="no task files"):
        load_tasks([tmp_path])
    with pytest.raises(ValueError, match="split file not found"):
        load_split(tmp_path, tmp_path / "nope.txt")


def test_load_tasks_mixes_files_and_dirs_and_rejects_duplicates(tmp_path: Path) -> None:
    data = task_to_dict(_task())
    (tmp_path / "d").mkdir()
    for name in ("b", "a"):
        _write(tmp_path / "d", data, f"{name}.json")
    single = _write(tmp_path, data, "c.json")
    assert [t.name for t in load_tasks([tmp_path / "d", single])] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="given twice"):
        load_tasks([tmp_path / "d", tmp_path / "d" / "a.json"])


def test_round_trip_through_task_to_dict(tmp_path: Path) -> None:
    task = _task()
    path = _write(tmp_path, task_to_dict(task), "toy.json")
    assert load_task(path) == task


def test_declared_function_round_trips_and_names_the_function(tmp_path: Path) -> None:
    task = replace(_task(), function=(("first_k", 3), ("reverse", None)))
    data = task_to_dict(task)
    assert data["tagi_function"] == {"steps": [{"primitive": "first_k", "param": 3}, {"primitive": "reverse", "param": None}]}
    assert load_task(_write(tmp_path, data, "toy.json")) == task
    assert task.function_key == "first_k_3_then_reverse"
    assert replace(task, name="other", definition="Other words.").function_key == task.function_key
    assert replace(task, function=(("contains", "owl"),)).function_key == "contains_owl"
    assert _task().function_key == "toy" and "tagi_function" not in task_to_dict(_task())


def _valid() -> dict:
    return task_to_dict(_task())


def _without(key: str) -> dict:
    data = _valid()
    del data[key]
    return data


def _with(key: str, value: object) -> dict:
    data = _valid()
    data[key] = value
    return data


def _instance_with(**changes: object) -> dict:
    data = _valid()
    data["Instances"][2].update(changes)
    for key, value in changes.items():
        if value is None:
            del data["Instances"][2][key]
    return data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", r"invalid JSON at line 1"),
        ('{"Definition": NaN}', r"NaN"),
        ([1, 2], r"expected an object"),
        (_without("Definition"), r"missing required key 'Definition'"),
        (_without("Instances"), r"missing required key 'Instances'"),
        (_without("Positive Examples"), r"missing required key 'Positive Examples'"),
        (_without("Negative Examples"), r"missing required key 'Negative Examples'"),
        (_without("Categories"), r"missing required key 'Categories'"),
        (_with("Definition", "not a list"), r"'Definition': expected a list"),
        (_with("Definition", []), r"'Definition': expected a non-empty list"),
        (_with("Categories", []), r"'Categories': expected a non-empty list"),
        (_with("Instances", {"id": "x"}), r"'Instances': expected a list"),
        (
            _with("Positive Examples", [{"output": "o"}]),
            r"'Positive Examples'\[0\]: missing required key 'input'",
        ),
        (_instance_with(output=None), r"'Instances'\[2\]: missing required key 'output'"),
        (_instance_with(output="y2"), r"'Instances'\[2\]\.output: expected a list"),
        (_instance_with(output=[]), r"'Instances'\[2\]\.output: expected a non-empty list"),
        (_instance_with(output=["ok", 3]), r"'Instances'\[2\]\.output\[1\]: expected a string, got int"),
        (_instance_with(id="toy-1"), r"duplicate instance id 'toy-1'"),
        (_instance_with(input=None), r"missing required key 'input'"),
        (_with("tagi_function", []), r"'tagi_function': expected an object"),
        (_with("tagi_function", {"steps": []}), r"'tagi_function'.steps: expected a non-empty list"),
        (_with("tagi_function", {"steps": [{"param": 3}]}), r"steps\[0\]: missing required key 'primitive'"),
        (_with("tagi_function", {"steps": [{"primitive": "first_k", "param": [3]}]}), r"steps\[0\]\.param: expected an int"),
        (_with("tagi_function", {"steps": [{"primitive": "first_k", "param": True}]}), r"steps\[0\]\.param: expected an int"),
    ],
)
def test_malformed_files_raise_clear_value_errors(tmp_path: Path, content: object, message: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(ValueError, match=message) as excinfo:
        load_task(path)
    assert "task_x.json" in str(excinfo.value)


def test_non_utf8_file_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "task_x.json"
    path.write_bytes(b'{"Definition": ["\xff"]}')
    with pytest.raises(ValueError, match="task_x.json.*UTF-8"):
        load_task(path)


# --------------------------------------------------------------------------
# Prompts


def test_def_format_is_definition_only() -> None:
    task = _task(definition="  Say the word twice.\n")
    assert format_instruction(task, "def") == "Definition: Say the word twice."


def test_def_2pos_format_has_definition_and_first_two_examples() -> None:
    text = format_instruction(_task(), "def+2pos")
    assert text == (
        "Definition: Say the word twice.\n\n"
        "Positive Example 1 -\nInput: in1\nOutput: out1\n\n"
        "Positive Example 2 -\nInput: in2\nOutput: out2"
    )
    assert "in3" not in text and "why1" not in text and "neg" not in text


def test_def_2pos_on_real_tasks(sni_dir: Path) -> None:
    for task in load_tasks([sni_dir / "tasks"], max_instances=1):
        text = format_instruction(task, "def+2pos")
        assert text.startswith("Definition: " + task.definition.strip())
        for example in task.positive_examples[:2]:
            assert f"Input: {example.input.strip()}\nOutput: {example.output.strip()}" in text
        assert "Positive Example 2 -" in text and "Positive Example 3 -" not in text


def test_instruction_text_is_the_prompt_without_its_label() -> None:
    """A checkpoint's "Definition: {instruction}" template turns the bare text into SNI's prompt."""
    for fmt in ("def", "def+2pos"):
        text = instruction_text(_task(definition="  Say the word twice.\n"), fmt)  # type: ignore[arg-type]
        assert text.startswith("Say the word twice.") and "Definition" not in text
        assert label_definition(text) == format_instruction(_task(definition="  Say the word twice.\n"), fmt)  # type: ignore[arg-type]
        assert "Definition: {instruction}".replace("{instruction}", text) == label_definition(text)
    assert instruction_text(_task(), "def") == "Say the word twice."


def test_def_2pos_with_fewer_examples_uses_what_exists() -> None:
    text = format_instruction(_task(positives=1), "def+2pos")
    assert "Positive Example 1 -" in text and "Positive Example 2" not in text
    with pytest.raises(ValueError, match="unknown prompt format"):
        format_instruction(_task(), "def+5pos")  # type: ignore[arg-type]


def test_concat_layout() -> None:
    assert format_concat("Definition: D.", " apple, 7 ") == (
        "Definition: D.\n\nNow complete the following example -\nInput: apple, 7\nOutput:"
    )


# --------------------------------------------------------------------------
# Instance splits


def test_split_instances_is_deterministic_disjoint_and_ordered() -> None:
    task = _task()
    train, held = split_instances(task, 0.3, seed=1)
    assert (train, held) == split_instances(task, 0.3, seed=1)
    assert len(held) == 3 and len(train) == 7
    assert {i.id for i in train} | {i.id for i in held} == {i.id for i in task.instances}
    assert not {i.id for i in train} & {i.id for i in held}
    order = [i.id for i in task.instances]
    assert [i.id for i in held] == sorted((i.id for i in held), key=order.index)
    other_seeds = {tuple(i.id for i in split_instances(task, 3, seed=s)[1]) for s in range(10)}
    assert len(other_seeds) > 1
    assert split_instances(task, 0, seed=1) == (task.instances, ())
    assert split_instances(task, 10, seed=1) == ((), task.instances)


@pytest.mark.parametrize("held_out", [0.0, 1.0, -1, 11, True, "2"])
def test_split_instances_rejects_bad_sizes(held_out: object) -> None:
    with pytest.raises(ValueError, match="held_out"):
        split_instances(_task(), held_out, seed=0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Metrics


def test_normalize_answer_follows_sni() -> None:
    # SNI's compute_metrics keeps articles (SQuAD's normalisation drops them).
    assert normalize_answer("  The Cat, sat on A mat!  ") == "the cat sat on a mat"
    assert normalize_answer("Don't") == "dont"
    assert normalize_answer("theatre an") == "theatre an"


def test_exact_match() -> None:
    assert exact_match("The answer.", ["the answer"]) == 1.0
    assert exact_match("The answer.", ["answer"]) == 0.0
    assert exact_match("cat", ["dog", "CAT!"]) == 1.0
    assert exact_match("cats", ["cat"]) == 0.0
    assert exact_match("apple, river", "Apple river") == 1.0
    with pytest.raises(ValueError, match="reference"):
        exact_match("x", [])


def test_rouge_l_hand_computed() -> None:
    # "the cat sat on the mat" vs "the cat is on the mat": LCS 5 of 6 tokens each side.
    assert rouge_l("the cat sat on the mat", ["the cat is on the mat"]) == pytest.approx(5 / 6)
    # LCS 2; precision 2/3, recall 2/4 -> F = 4/7.
    assert rouge_l("red green blue", ["green blue yellow black"]) == pytest.approx(4 / 7)
    # Order matters: only one token can be matched in sequence.
    assert rouge_l("blue green red", ["red green blue"]) == pytest.approx(1 / 3)
    assert rouge_l("Red, GREEN blue.", ["red green blue"]) == 1.0
    assert rouge_l("x y", ["z"]) == 0.0


def test_rouge_l_max_over_references_and_edge_cases() -> None:
    assert rouge_l("red green blue", ["yellow", "green blue yellow black", "red green blue"]) == 1.0
    assert rouge_l("red green blue", ["yellow", "green blue yellow black"]) == pytest.approx(4 / 7)
    assert rouge_l("cat", "cat") == 1.0  # a bare string is one reference, not characters
    assert rouge_l("", ["cat"]) == 0.0
    assert rouge_l("cat", ["!"]) == 0.0
    assert rouge_l("the", ["a"]) == 0.0  # articles are words like any other
    assert rouge_l("", [""]) == 0.0  # rouge_score: no tokens on a side score 0
    assert rouge_l("cats", ["cat"]) == 1.0  # stemmed
    with pytest.raises(ValueError, match="reference"):
        rouge_l("x", [])
