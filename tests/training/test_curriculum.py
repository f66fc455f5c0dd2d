"""The TAPIR curriculum: sampled mix matches the target, the hard share never decreases, tasks
the teacher fails are dropped, and difficulty is never measured on an evaluation instance."""

from __future__ import annotations

from collections import Counter

import pytest

from training.common import Pair, TaskSet
from training.curriculum import (
    CurriculumConfig,
    RoundSampler,
    hard_shares,
    plan_from_record,
    plan_record,
    plan_round,
    round_ends,
    sampled_mix,
    split_probes,
)
from training.data import Instance, Task

CATEGORIES = ["reverse", "reverse", "count", "composition", "composition", "composition", "composition", "max"]
NAMES = [f"task{i}" for i in range(len(CATEGORIES))]


def _task_set() -> TaskSet:
    tasks = [
        Task(
            name=n,
            definition=f"do {c}",
            positive_examples=(),
            negative_examples=(),
            instances=tuple(Instance(f"{n}-{j}", f"{n} input {j}", ("x",)) for j in range(40)),
            categories=(c,),
        )
        for n, c in zip(NAMES, CATEGORIES)
    ]
    train = [Pair(t, f"{NAMES[t]} input {j}", "x") for t in range(len(tasks)) for j in range(30)]
    held = [Pair(t, f"{NAMES[t]} input {j}", "x") for t in range(len(tasks)) for j in range(30, 40)]
    return TaskSet(tasks, [t.definition for t in tasks], train, held)


def _plan(config: CurriculumConfig, index: int = 0, teacher=None, student=None):
    teacher = teacher or [0.9] * len(NAMES)
    student = student or [0.9, 0.1, 0.5, 0.8, 0.2, 0.7, 0.9, 0.6]
    return plan_round(index, NAMES, CATEGORIES, teacher, student, config)


@pytest.mark.parametrize("mix", [{}, {"reverse": 0.5, "count": 0.1, "composition": 0.2, "max": 0.2}])
def test_sampled_mix_matches_the_target(mix: dict):
    config = CurriculumConfig(kind="tapir", category_mix=mix, hard_share_start=0.0, hard_share_end=0.0)
    task_set = _task_set()
    plan = _plan(config)
    sampler = RoundSampler(plan, NAMES, CATEGORIES, task_set.train)
    got = sampled_mix(sampler, CATEGORIES, task_set.train, [(64, seed) for seed in range(300)])
    target = mix or {c: 0.25 for c in set(CATEGORIES)}
    total = sum(target.values())
    for category, share in target.items():
        assert got[category] == pytest.approx(share / total, abs=0.02), (category, got)


def test_uniform_category_mix_is_not_the_task_mix():
    """Compositions are half of the tasks but a quarter of a balanced round."""
    task_set = _task_set()
    sampler = RoundSampler(
        _plan(CurriculumConfig(kind="tapir", hard_share_start=0, hard_share_end=0)), NAMES, CATEGORIES, task_set.train
    )
    assert sampled_mix(sampler, CATEGORIES, task_set.train, [(64, s) for s in range(100)])["composition"] < 0.3


def test_hard_share_never_decreases_and_hard_tasks_get_it():
    config = CurriculumConfig(kind="tapir", rounds=5, hard_share_start=0.1, hard_share_end=0.6)
    shares = hard_shares(config)
    assert shares[0] == pytest.approx(0.1) and shares[-1] == pytest.approx(0.6)
    assert all(a <= b for a, b in zip(shares, shares[1:]))
    plans = [_plan(config, index=r) for r in range(config.rounds)]
    assert [p.hard_share for p in plans] == shares
    # The hardest quarter (largest teacher-student gap) is the hard pool.
    assert set(plans[0].hard) == {"task1", "task4"}
    task_set = _task_set()
    hard_task = NAMES.index("task1")
    share = []
    for plan in (plans[0], plans[-1]):
        drawn = RoundSampler(plan, NAMES, CATEGORIES, task_set.train).draw(4000, seed=1)
        share.append(sum(task_set.train[k].task == hard_task for k in drawn) / 4000)
    assert share[1] > share[0] + 0.2


def test_tasks_the_teacher_cannot_do_are_dropped():
    config = CurriculumConfig(kind="tapir", min_teacher_em=0.5)
    teacher = [0.9, 0.9, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9]  # the only count task fails
    plan = _plan(config, teacher=teacher)
    assert plan.dropped == ["task2"] and "count" not in plan.category_mix
    task_set = _task_set()
    drawn = RoundSampler(plan, NAMES, CATEGORIES, task_set.train).draw(2000, seed=0)
    assert not any(task_set.train[k].task == 2 for k in drawn)
    with pytest.raises(ValueError, match="nothing to distil"):
        _plan(config, teacher=[0.1] * len(NAMES))


def test_difficulty_probes_are_training_instances_never_evaluation_ones():
    task_set = _task_set()
    train, probes = split_probes(task_set, 6, seed=0)
    held = {(p.task, p.input) for p in task_set.held_back}
    assert probes and not held & {(p.task, p.input) for p in probes}
    assert not {(p.task, p.input) for p in train} & {(p.task, p.input) for p in probes}
    assert len(train) + len(probes) == len(task_set.train)
    assert Counter(p.task for p in probes) == {t: 6 for t in range(len(NAMES))}


def test_plan_round_trips_through_its_record_and_rounds_cover_the_steps():
    plan = _plan(CurriculumConfig(kind="tapir"))
    assert plan_from_record(plan_record(plan, {"reverse": 1.0})) == plan
    assert round_ends(2500, 4) == [625, 1250, 1875, 2500]
    assert round_ends(10, 3)[-1] == 10


@pytest.mark.parametrize(
    "bad",
    [
        dict(kind="greedy"),
        dict(rounds=0),
        dict(hard_share_start=0.6, hard_share_end=0.2),
        dict(hard_fraction=0),
        dict(category_mix={"a": -1.0}),
    ],
)
def test_bad_configs_are_refused(bad: dict):
    with pytest.raises(ValueError):
        CurriculumConfig(**bad)


def test_tapir_sampler_plans_each_round_at_its_first_step_and_resumes_from_its_state(tmp_path):
    from training.curriculum import TapirSampler, read_plans
    from training.loop import step_seed

    task_set = _task_set()
    config = CurriculumConfig(kind="tapir", rounds=3, hard_share_start=0.2, hard_share_end=0.6)
    measured: list[int] = []

    def student_em() -> list[float]:
        measured.append(1)
        return [0.9, 0.1, 0.5, 0.8, 0.2, 0.7, 0.9, 0.6][: len(NAMES)]

    def sampler(out) -> TapirSampler:
        return TapirSampler(config, 9, 4, 7, NAMES, CATEGORIES, task_set.train, [0.9] * len(NAMES), student_em, out)

    straight = sampler(tmp_path / "a")
    (tmp_path / "a").mkdir()
    drawn = [straight.take(4, step) for step in range(9)]
    assert len(measured) == 3 and [r["round"] for r in read_plans(tmp_path / "a")] == [0, 1, 2]
    for record, (begin, end) in zip(read_plans(tmp_path / "a"), [(0, 3), (3, 6), (6, 9)]):
        # The logged mix is what the round's steps drew.
        picks = [CATEGORIES[task_set.train[k].task] for step in range(begin, end) for k in drawn[step]]
        assert record["sampled_mix"] == {c: picks.count(c) / len(picks) for c in sorted(set(picks))}
        assert (
            RoundSampler(plan_from_record(record), NAMES, CATEGORIES, task_set.train).draw(4, step_seed(7, begin)) == drawn[begin]
        )
    # Saved after step 4 (two rounds planned); the process went on to plan round 3, then died.
    (tmp_path / "b").mkdir()
    first = sampler(tmp_path / "b")
    for step in range(5):
        first.take(4, step)
    state = first.state()
    first.take(4, 6)
    resumed = sampler(tmp_path / "b")
    resumed.restore(state)
    measured.clear()
    assert [resumed.take(4, step) for step in range(5, 9)] == drawn[5:] and len(measured) == 1  # round 3 planned again
    assert read_plans(tmp_path / "b") == read_plans(tmp_path / "a")
