"""Tests for training.sni: the official natural-instructions layout, Tk-Instruct caps, and the
on-disk pair store that stands in for eager lists of pairs."""

from __future__ import annotations

import json
import os
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest

from hypernet.errors import UserError
from training.common import PairsAt, TaskSet, load_task_set
from training.curriculum import split_probes
from training.data import SNI_DIR, format_instruction, load_task, read_split
from training.sni import MANIFEST, StoredPairs, sni_task_set, sni_test_tasks, split_tasks

# The fake clone: name -> instance count. "big" has more instances than the cap; "gone" is
# excluded by the split; "extra" lies in tasks/ but no list names it.
TRAIN = {"task001_big": 12, "task002_small": 3, "task003_gone": 4, "task004_one": 1}
TEST = {"task101_test": 120, "task102_test_gone": 5}
EXCLUDED = ["task003_gone", "task102_test_gone"]


def _doc(name: str, count: int, positives: int = 3) -> dict:
    return {
        "Categories": [f"Category of {name}"],
        "Definition": [f"Do {name}.", "Answer briefly."],
        "Positive Examples": [{"input": f"{name} p{i}", "output": f"P{i}", "explanation": "."} for i in range(positives)],
        "Negative Examples": [{"input": f"{name} n", "output": "N", "explanation": "."}],
        "Instances": [{"id": f"{name}-{i}", "input": f"{name} x{i}", "output": [f"y{i}", "other"]} for i in range(count)],
    }


def _write_task(root: Path, name: str, count: int) -> Path:
    path = root / "tasks" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_doc(name, count)), encoding="utf-8")
    return path


def _write_split(root: Path, split: str, train: list[str], test: list[str], excluded: list[str] | None = None) -> None:
    folder = root / "splits" / split
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_tasks.txt").write_text("\n".join(train) + "\n")
    (folder / "test_tasks.txt").write_text("\n".join(test) + "\n")
    if excluded is not None:
        (folder / "excluded_tasks.txt").write_text("\n".join(excluded) + "\n")


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A small copy of the natural-instructions layout: split "default" as listed above, split
    "broken" naming a task tasks/ lacks."""
    root = tmp_path / "natural-instructions"
    for name, count in {**TRAIN, **TEST, "task999_extra": 2}.items():
        _write_task(root, name, count)
    _write_split(root, "default", list(TRAIN), list(TEST), EXCLUDED)
    _write_split(root, "broken", ["task001_big", "task404_absent"], list(TEST))
    return root


def _load(root: Path, store: Path, split: str = "default", **overrides: object) -> TaskSet:
    settings = {"prompt_format": "def", "max_instances_per_task": 5, "held_back": 0, "seed": 0, **overrides}
    return sni_task_set(root, split, store, **settings)


def test_caps_keep_the_file_order_prefix_and_excluded_tasks_are_dropped(clone: Path, tmp_path: Path) -> None:
    task_set = _load(clone, tmp_path / "store")
    assert [t.name for t in task_set.tasks] == ["task001_big", "task002_small", "task004_one"]
    assert all(t.instances == () for t in task_set.tasks)  # metadata only: instances live in the store
    by_task = [[(p.input, p.output) for p in task_set.train if p.task == i] for i in range(3)]
    assert by_task[0] == [(f"task001_big x{i}", f"y{i}") for i in range(5)]  # first 5 of 12, first reference
    assert by_task[1] == [(f"task002_small x{i}", f"y{i}") for i in range(3)]
    assert len(task_set.held_back) == 0

    tests = sni_test_tasks(clone, "default")
    assert [t.name for t in tests] == ["task101_test"]
    assert [i.id for i in tests[0].instances] == [f"task101_test-{i}" for i in range(100)]  # Tk-Instruct: first 100
    assert len(sni_test_tasks(clone, "default", max_instances=7)[0].instances) == 7


def test_def_2pos_instructions_and_task_metadata(clone: Path, tmp_path: Path) -> None:
    task_set = _load(clone, tmp_path / "store", prompt_format="def+2pos")
    first = task_set.instructions[0]
    assert first.startswith("Definition: Do task001_big.\nAnswer briefly.")
    assert "Positive Example 1 -\nInput: task001_big p0\nOutput: P0" in first
    assert "Positive Example 2 -" in first and "Positive Example 3" not in first
    for task, instruction in zip(task_set.tasks, task_set.instructions):
        on_disk = load_task(clone / "tasks" / f"{task.name}.json")
        assert task == replace(on_disk, instances=())
        assert instruction == format_instruction(on_disk, "def+2pos")
    assert _load(clone, tmp_path / "def").instructions[0] == "Definition: Do task001_big.\nAnswer briefly."


@pytest.mark.parametrize(("held_back", "seed", "cap"), [(0, 0, 5), (2, 0, 5), (2, 7, 12), (50, 3, 9)])
def test_stored_pairs_equal_the_eager_task_set(clone: Path, tmp_path: Path, held_back: int, seed: int, cap: int) -> None:
    lazy = _load(clone, tmp_path / "store", held_back=held_back, seed=seed, max_instances_per_task=cap, prompt_format="def+2pos")
    eager = load_task_set(split_tasks(clone, "default", "train_tasks.txt"), held_back, seed, "def+2pos", max_instances=cap)
    assert isinstance(lazy.train, StoredPairs) and isinstance(lazy.held_back, StoredPairs)
    assert list(lazy.train) == eager.train and list(lazy.held_back) == eager.held_back
    assert len(lazy.train) == len(eager.train) and len(lazy.held_back) == len(eager.held_back)
    assert lazy.instructions == eager.instructions
    assert lazy.tasks == [replace(t, instances=()) for t in eager.tasks]
    assert [lazy.train[i] for i in range(-len(eager.train), len(eager.train))] == eager.train * 2
    assert list(lazy.train[1:-1:3]) == eager.train[1:-1:3] and list(lazy.train[2:][::-2]) == eager.train[2:][::-2]
    with pytest.raises(IndexError):
        lazy.train[len(eager.train)]


def test_curriculum_probes_select_from_the_store_without_copying_it(clone: Path, tmp_path: Path) -> None:
    lazy = _load(clone, tmp_path / "store", held_back=1, max_instances_per_task=12)
    eager = load_task_set(split_tasks(clone, "default", "train_tasks.txt"), 1, 0, max_instances=12)
    (train, probes), (eager_train, eager_probes) = split_probes(lazy, 2, seed=4), split_probes(eager, 2, seed=4)
    assert isinstance(train, PairsAt) and train.base is lazy.train
    assert list(train) == list(eager_train) and probes == eager_probes
    assert len(probes) == 2 + 1 + 0  # each task keeps a pair to train on
    assert list(train[::2]) == list(eager_train)[::2] and train[-1] == list(eager_train)[-1]


def test_store_is_reused_rebuilt_on_other_inputs_and_opened_by_other_ranks(clone: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = _load(clone, store, held_back=2, seed=1)
    built = (store / "train.jsonl").stat().st_ino
    assert list(_load(clone, store, held_back=2, seed=1).train) == list(first.train)
    assert (store / "train.jsonl").stat().st_ino == built  # same settings, same inputs: not rebuilt
    other_rank = _load(clone, store, held_back=2, seed=1, rank0=False)
    assert list(other_rank.train) == list(first.train) and list(other_rank.held_back) == list(first.held_back)

    with pytest.raises(UserError, match="built with other settings"):
        _load(clone, store, held_back=2, seed=2, rank0=False)
    reseeded = _load(clone, store, held_back=2, seed=2)  # rank 0 rebuilds
    assert json.loads((store / MANIFEST).read_text())["seed"] == 2
    assert list(reseeded.held_back) != list(first.held_back)

    _write_task(clone, "task002_small", 4)  # an edited task file is a different input
    os.utime(clone / "tasks" / "task002_small.json", ns=(1, 1))
    assert len(_load(clone, store, held_back=2, seed=2).train) == len(reseeded.train) + 1

    with pytest.raises(UserError, match="holds no SNI store"):
        _load(clone, tmp_path / "never-built", rank0=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an SNI store"):
        _load(clone, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_missing_tasks_splits_and_malformed_files_are_clear_errors(clone: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"task404_absent") as missing:
        _load(clone, tmp_path / "store", split="broken")
    assert str(clone / "tasks") in str(missing.value)
    with pytest.raises(UserError, match=r"split 'nope'.*splits found: broken, default"):
        sni_test_tasks(clone, "nope")
    with pytest.raises(UserError, match="held_back must be an int >= 0"):
        _load(clone, tmp_path / "store", held_back=-1)

    doc = _doc("task002_small", 3)
    del doc["Instances"][1]["output"]
    (clone / "tasks" / "task002_small.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"task002_small.json 'Instances'\[1\]: missing required key 'output'"):
        _load(clone, tmp_path / "store")
    (clone / "tasks" / "task101_test.json").write_text("{")
    with pytest.raises(UserError, match=r"task101_test.json: invalid JSON at line 1"):
        sni_test_tasks(clone, "default")
    assert not (tmp_path / "store").exists()  # a failed build leaves no half store behind


def test_iterating_a_large_store_holds_no_pairs_in_memory(tmp_path: Path) -> None:
    root = tmp_path / "big"
    _write_task(root, "task500_huge", 20_000)
    _write_split(root, "default", ["task500_huge"], [])
    _load(root, tmp_path / "store", max_instances_per_task=20_000, held_back=10)

    tracemalloc.start()
    try:
        task_set = _load(root, tmp_path / "store", max_instances_per_task=20_000, held_back=10, rank0=False)
        opened, _ = tracemalloc.get_traced_memory()
        count = sum(1 for _ in task_set.train)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        eager = list(task_set.train)
        materialised, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == len(task_set.train) == 19_990 and len(eager) == count
    assert opened < 64_000 and peak < 128_000  # ~3 MB if the pairs were held as objects
    assert materialised > 2_000_000  # the same pairs as a list: the bound above can fail


def test_the_shipped_subset_split(tmp_path: Path) -> None:
    subset = SNI_DIR / "splits" / "subset"
    task_set = sni_task_set(
        SNI_DIR, "subset", tmp_path / "store", prompt_format="def+2pos", max_instances_per_task=40, held_back=5, seed=0
    )
    assert [t.name for t in task_set.tasks] == read_split(subset / "train_tasks.txt")
    expected = sum(min(40, len(load_task(SNI_DIR / "tasks" / f"{t.name}.json").instances)) for t in task_set.tasks)
    assert len(task_set.train) + len(task_set.held_back) == expected
    assert len(task_set.held_back) == 5 * len(task_set.tasks)
    assert all("Positive Example 2 -" in text for text in task_set.instructions)
    assert [t.name for t in sni_test_tasks(SNI_DIR, "subset")] == read_split(subset / "test_tasks.txt")
    with pytest.raises(UserError, match=r"split 'default' names 738 task\(s\) missing"):  # only the subset ships
        split_tasks(SNI_DIR, "default", "train_tasks.txt")
