"""Task-aware curriculum for stage 3, after TAPIR (arXiv 2405.13448): rounds of distillation
whose data mix is balanced across task categories and leans more on hard tasks each round.

Difficulty is how far the student is behind its teacher: before every round, each training
task's exact match under the meta-trained teacher (instruction + input) and under the current
student (TAGI with fusion) is measured on *probe* instances. Probes are taken out of the
task's training instances for the whole stage, so they are neither trained on nor among the
held-back instances that evaluation scores (see `split_probes`). Tasks the teacher itself
fails are dropped: distilling them teaches the student the teacher's mistakes.

Each example of a round is drawn in two steps: with probability `hard_share` from the hard
pool (the hardest `hard_fraction` of the kept tasks, weighted by their gap), otherwise a
category from the target mix (uniform by default) and then a task of it uniformly. The hard
share rises linearly from `hard_share_start` to `hard_share_end` over the rounds.

`TapirSampler` plugs this into the training loop's sampler hook: the step that begins a round
measures the student, plans the round and logs the plan (with the mix it will draw, a pure
function of the plan and the step seeds), so a run killed anywhere resumes exactly. "uniform"
is the plain stage 3: the loop's epoch sampler over every training instance.
"""

from __future__ import annotations

import json
import random
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from hypernet.files import atomic_write_text
from training.common import Pair, PairsAt, TaskSet
from training.distributed import is_main
from training.loop import step_seed

CURRICULUM_LOG = "curriculum.jsonl"
KINDS = ("uniform", "tapir", "citing", "tapir+citing")


@dataclass(frozen=True)
class CurriculumConfig:
    kind: Literal["uniform", "tapir", "citing", "tapir+citing"] = "uniform"
    """uniform, tapir, the revision rounds of training.citing (over the epoch order), or both
    (revision rounds over TAPIR's mix, the rounds coinciding)."""
    rounds: int = 4
    probe_instances: int = 6
    """Per training task, taken out of its training instances to measure difficulty."""
    hard_share_start: float = 0.1
    hard_share_end: float = 0.5
    hard_fraction: float = 0.25
    """The hardest this share of the kept tasks forms the hard pool."""
    min_teacher_em: float = 0.5
    """Tasks whose teacher scores below this on the probes are dropped."""
    category_mix: dict[str, float] = field(default_factory=dict)
    """Target share per category (normalised; absent categories get none). Empty: uniform."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"curriculum must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.rounds < 1 or self.probe_instances < 1:
            raise ValueError("rounds and probe_instances must be >= 1")
        if not 0 <= self.hard_share_start <= self.hard_share_end <= 1:
            raise ValueError(
                f"need 0 <= hard_share_start <= hard_share_end <= 1, got {self.hard_share_start}, {self.hard_share_end}"
            )
        if not 0 < self.hard_fraction <= 1:
            raise ValueError(f"hard_fraction must be in (0, 1], got {self.hard_fraction}")
        if any(v < 0 for v in self.category_mix.values()) or (self.category_mix and sum(self.category_mix.values()) <= 0):
            raise ValueError("category_mix needs non-negative shares with a positive sum")


def hard_shares(config: CurriculumConfig) -> list[float]:
    """Hard share of each round: linear, never decreasing."""
    if config.rounds == 1:
        return [config.hard_share_end]
    step = (config.hard_share_end - config.hard_share_start) / (config.rounds - 1)
    return [config.hard_share_start + step * r for r in range(config.rounds)]


def round_ends(total_steps: int, rounds: int) -> list[int]:
    """Last step (exclusive) of each round; equal rounds, the remainder spread over them."""
    return [round(total_steps * (r + 1) / rounds) for r in range(rounds)]


def split_probes(task_set: TaskSet, per_task: int, seed: int) -> tuple[Sequence[Pair], list[Pair]]:
    """(training pairs, probe pairs): `per_task` of each task's *training* pairs become probes.

    Only `task_set.train` is split, so no held-back (evaluation) instance can be a probe. The
    training pairs are a selection of `task_set.train` by index (a stored SNI set stays on disk);
    the probes, a few per task, are a list.
    """
    by_task: dict[int, list[int]] = {}
    for k, pair in enumerate(task_set.train):
        by_task.setdefault(pair.task, []).append(k)
    train, probes = array("q"), []
    rng = random.Random(f"probes:{seed}")
    for task in sorted(by_task):
        indices = by_task[task]
        keep = min(per_task, max(0, len(indices) - 1))
        chosen = set(rng.sample(range(len(indices)), keep))
        for i, k in enumerate(indices):
            if i in chosen:
                probes.append(task_set.train[k])
            else:
                train.append(k)
    return PairsAt(task_set.train, train), probes


@dataclass(frozen=True)
class RoundPlan:
    """What one round trains on; written to curriculum.jsonl so a resumed run reuses it."""

    round: int
    hard_share: float
    teacher_em: dict[str, float]
    student_em: dict[str, float]
    kept: list[str]
    dropped: list[str]
    hard: dict[str, float]
    """Hard pool: task -> gap (its sampling weight)."""
    category_mix: dict[str, float]
    """Target share per category among the kept tasks."""

    def difficulty(self) -> dict[str, float]:
        return {t: max(0.0, self.teacher_em[t] - self.student_em[t]) for t in self.kept}


def plan_round(
    index: int,
    names: list[str],
    categories: list[str],
    teacher_em: list[float],
    student_em: list[float],
    config: CurriculumConfig,
) -> RoundPlan:
    kept = [i for i in range(len(names)) if teacher_em[i] >= config.min_teacher_em]
    if not kept:
        raise ValueError(f"the teacher scores below {config.min_teacher_em} on every task's probes: nothing to distil")
    gaps = {i: max(0.0, teacher_em[i] - student_em[i]) for i in kept}
    ranked = sorted(kept, key=lambda i: (-gaps[i], names[i]))
    pool = [i for i in ranked[: max(1, round(config.hard_fraction * len(kept)))] if gaps[i] > 0]
    present = sorted({categories[i] for i in kept})
    wanted = config.category_mix or {c: 1.0 for c in present}
    weights = {c: float(wanted.get(c, 0.0)) for c in present}
    if sum(weights.values()) <= 0:
        raise ValueError(f"category_mix gives no weight to any kept category ({present})")
    total = sum(weights.values())
    return RoundPlan(
        round=index,
        hard_share=hard_shares(config)[index],
        teacher_em={names[i]: teacher_em[i] for i in range(len(names))},
        student_em={names[i]: student_em[i] for i in range(len(names))},
        kept=[names[i] for i in kept],
        dropped=[names[i] for i in range(len(names)) if i not in gaps],
        hard={names[i]: gaps[i] for i in pool},
        category_mix={c: w / total for c, w in weights.items() if w > 0},
    )


class RoundSampler:
    """Draws a round's examples: a pure function of (plan, seed), so resumes and logs replay it."""

    def __init__(self, plan: RoundPlan, names: list[str], categories: list[str], pairs: Sequence[Pair]) -> None:
        index = {name: i for i, name in enumerate(names)}
        self.plan = plan
        self.pairs_of: dict[int, list[int]] = {}
        for k, pair in enumerate(pairs):
            self.pairs_of.setdefault(pair.task, []).append(k)
        kept = [index[n] for n in plan.kept if index[n] in self.pairs_of]
        self.tasks_of: dict[str, list[int]] = {}
        for task in kept:
            self.tasks_of.setdefault(categories[task], []).append(task)
        self.mix = [(c, w) for c, w in plan.category_mix.items() if c in self.tasks_of]
        self.hard = [(index[n], gap) for n, gap in plan.hard.items() if index[n] in self.pairs_of]

    def draw(self, count: int, seed: int) -> list[int]:
        """`count` pair indices (into the training pairs)."""
        rng = random.Random(seed)
        out = []
        for _ in range(count):
            if self.hard and rng.random() < self.plan.hard_share:
                task = rng.choices([t for t, _ in self.hard], weights=[g for _, g in self.hard])[0]
            else:
                category = rng.choices([c for c, _ in self.mix], weights=[w for _, w in self.mix])[0]
                task = rng.choice(self.tasks_of[category])
            out.append(rng.choice(self.pairs_of[task]))
        return out


def sampled_mix(
    sampler: RoundSampler, categories: list[str], pairs: Sequence[Pair], batches: list[tuple[int, int]]
) -> dict[str, float]:
    """Category shares of what a round actually drew; `batches` = (count, seed) per step."""
    counts: Counter[str] = Counter()
    for count, seed in batches:
        counts.update(categories[pairs[k].task] for k in sampler.draw(count, seed))
    total = sum(counts.values()) or 1
    return {c: n / total for c, n in sorted(counts.items())}


def read_plans(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / CURRICULUM_LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_plans(out_dir: Path, records: list[dict]) -> None:
    atomic_write_text(Path(out_dir) / CURRICULUM_LOG, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def plan_record(plan: RoundPlan, mix: dict[str, float] | None = None) -> dict:
    record = asdict(plan) | {"difficulty": plan.difficulty()}
    if mix is not None:
        record["sampled_mix"] = mix
    return record


def plan_from_record(record: dict) -> RoundPlan:
    fields = RoundPlan.__dataclass_fields__
    return RoundPlan(**{k: v for k, v in record.items() if k in fields})


def em_by_task(predictions: list[str], probes: list[Pair], count: int, score: Callable[[str, str], float]) -> list[float]:
    hits: dict[int, list[float]] = {}
    for prediction, pair in zip(predictions, probes):
        hits.setdefault(pair.task, []).append(score(prediction, pair.output))
    return [sum(hits[t]) / len(hits[t]) if t in hits else 0.0 for t in range(count)]


class TapirSampler:
    """The training loop's sampler for a TAPIR run (training.loop.Sampler).

    `measure_student()` returns each task's exact match of the current student on the probes;
    it is called once per round, at the round's first step. Plans go to curriculum.jsonl in
    `out_dir`; the saved state is the number of rounds planned, so a resumed run reuses the
    plans of the rounds the checkpoint had begun and re-plans (identically, from the same
    replayed student) any round begun after it.
    """

    def __init__(
        self,
        config: CurriculumConfig,
        steps: int,
        batch_size: int,
        seed: int,
        names: list[str],
        categories: list[str],
        pairs: Sequence[Pair],
        teacher_em: list[float],
        measure_student: Callable[[], list[float]],
        out_dir: Path,
    ) -> None:
        self.config, self.batch_size, self.seed = config, batch_size, seed
        self.names, self.categories, self.pairs = names, categories, pairs
        self.teacher_em, self.measure_student, self.out_dir = teacher_em, measure_student, Path(out_dir)
        self.ends = round_ends(steps, config.rounds)
        self.records: list[dict] = []
        self.samplers: list[RoundSampler] = []

    def _begin_round(self, index: int) -> None:
        plan = plan_round(index, self.names, self.categories, self.teacher_em, self.measure_student(), self.config)
        begin = self.ends[index - 1] if index else 0
        seeds = [(self.batch_size, step_seed(self.seed, step)) for step in range(begin, self.ends[index])]
        sampler = RoundSampler(plan, self.names, self.categories, self.pairs)
        self.records.append(plan_record(plan, sampled_mix(sampler, self.categories, self.pairs, seeds)))
        self.samplers.append(sampler)
        if is_main():  # every rank plans the same rounds; one writes them
            write_plans(self.out_dir, self.records)

    def take(self, count: int, step: int) -> list[int]:
        index = next(i for i, end in enumerate(self.ends) if step < end)
        if index == len(self.samplers):
            self._begin_round(index)
        return self.samplers[index].draw(count, step_seed(self.seed, step))

    def state(self) -> dict[str, int]:
        return {"rounds_planned": len(self.records)}

    def restore(self, state: dict[str, int]) -> None:
        self.records = read_plans(self.out_dir)[: int(state["rounds_planned"])]
        self.samplers = [RoundSampler(plan_from_record(r), self.names, self.categories, self.pairs) for r in self.records]
