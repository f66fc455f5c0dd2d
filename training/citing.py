"""Revision rounds for stage 3, after CITING (arXiv 2310.02527): the student drafts, a rubric and
the reference judge each draft, a teacher revises the failures, and the student trains on the
revisions, weighted toward its own failures, and on turning its draft into the revision.

Each round (rounds of `CurriculumConfig.rounds`, kinds `citing` and `tapir+citing`):
1. The current student (TAGI with fusion, greedy) drafts answers for `sample_per_round` training
   instances (never held-back instances, never TAPIR's probes), drawn from a seed per round.
2. Each draft is checked against its category's rubric (training.rubrics: derived from the
   training pairs, or the user's file `distill.citing.rubrics`) and against the reference.
3. The teacher revises the failing drafts. Two teachers exist: the meta-trained teacher
   (instruction + input) and the task's instance LoRA; per task, the one with the higher exact
   match on this round's sample is chosen (ties go to the meta teacher), once per round, and
   recorded. Our teachers are plain models that cannot read a draft: their answer to the
   instance is the revision the draft should have been.
4. A revision is kept only if it passes the rubric AND matches the reference. Why the reference
   too: these are training instances, their reference is known, and a revision that contradicts
   it would teach a wrong answer as right (a derived rubric is loose: "one of the labels", "a
   number from 0 to 9" admit wrong answers); TAPIR drops tasks the teacher fails for the same
   reason. What the teacher contributes is its own wording of the answer and, through the
   choice of failing drafts, which instances to train on. Each round records how many
   revisions the rubric rejected and how many the reference did.
5. The round then trains on the loop's ordinary examples (the uniform epoch order, or TAPIR's
   round mix), each position replaced with probability `revision_weight` by an example of the
   round's pool: the kept revisions, as (instruction, input) -> revision, and with probability
   `self_correction_share` in the self-correction form (instruction with its rubric,
   hypernet.rubric.revision_input(input, draft)) -> revision. A `keep_share` of the
   self-correction examples shows a draft that passed, kept as it is, so the optional revise
   pass at inference (`tagi run --revise`, `tagi eval --revise`) learns to leave a right answer alone.

`rubric_in_instruction`: the generator reads hypernet.rubric.with_rubric(instruction, rubric)
for every example of the stage (any curriculum kind) and its evaluation; the checkpoint records
it (CHECKPOINT_FILE) so `tagi eval` reads the same form.

Resume: a round is a pure function of the student at its first step and the seeds; its record
(with its pool) goes to citing.jsonl, and the sampler state saved with the loop's checkpoints is
the base schedule's state and the number of rounds begun, so a resumed run reuses the records of
the rounds the checkpoint had begun and redoes (identically, from the same replayed student) any
round begun after it.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hypernet.files import atomic_write_text, write_json
from hypernet.rubric import revision_input, with_rubric
from training.common import Pair, TaskSet, concat_inputs, encode, greedy
from training.curriculum import round_ends
from training.data import exact_match
from training.distributed import is_main
from training.loop import Sampler, step_seed
from training.rubrics import RUBRICS_FILE, Rubric, derive_rubrics, load_rubrics, save_rubrics

if TYPE_CHECKING:
    from training.distill import Distillation

CITING_LOG = "citing.jsonl"
CHECKPOINT_FILE = "citing.json"
"""In a stage-3 checkpoint, next to its rubrics.json: whether its generator reads the rubrics."""
TEACHERS = ("meta", "instance")


@dataclass(frozen=True)
class CitingConfig:
    """The revision rounds' knobs (the rounds themselves: CurriculumConfig.rounds)."""

    sample_per_round: int = 64
    """Training instances the student drafts per round."""
    revision_weight: float = 0.3
    """Share of a round's examples drawn from its pool (the student's own failures, revised)."""
    self_correction_share: float = 0.5
    """Share of the pool's examples in the self-correction form (input + draft -> revision)."""
    keep_share: float = 0.25
    """Share of the self-correction examples that show a passing draft kept as it is."""
    rubric_in_instruction: bool = False
    """The generator reads the instruction with its category's rubric (training and evaluation)."""
    rubrics: str | None = None
    """A user's rubrics file (JSON/YAML, training.rubrics.load_rubrics); None: derived from the training pairs."""

    def __post_init__(self) -> None:
        if self.sample_per_round < 1:
            raise ValueError(f"sample_per_round must be >= 1, got {self.sample_per_round}")
        for name in ("revision_weight", "self_correction_share", "keep_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class Example(Pair):
    """A round's training example. `revise`: the self-correction form, whose generator reads the
    instruction with its rubric (the revise pass's adapter) and whose input holds the draft."""

    revise: bool = False


class PoolPairs(Sequence[Pair]):
    """The stage's training pairs followed by every round's pool examples (index len(base) + j):
    one index space for the loop's sampler and the batch builder."""

    def __init__(self, base: Sequence[Pair]) -> None:
        self.base, self.extra = base, []  # type: tuple[Sequence[Pair], list[Example]]

    def __len__(self) -> int:
        return len(self.base) + len(self.extra)

    def __getitem__(self, index: int) -> Pair:  # type: ignore[override]
        return self.base[index] if index < len(self.base) else self.extra[index - len(self.base)]


def rubrics_for(task_set: TaskSet, config: CitingConfig) -> dict[str, Rubric]:
    """The user's rubrics if the recipe names a file, else those derived from the training pairs."""
    return load_rubrics(Path(config.rubrics)) if config.rubrics else derive_rubrics(task_set)


def save_checkpoint_rubrics(checkpoint: Path, rubrics: dict[str, Rubric], rubric_in_instruction: bool) -> None:
    """The rubrics a checkpoint was trained with (the user-editable format) and whether its generator
    reads them, so that `tagi eval` gives it the instructions it was trained on."""
    save_rubrics(rubrics, Path(checkpoint) / RUBRICS_FILE)
    write_json(Path(checkpoint) / CHECKPOINT_FILE, {"rubric_in_instruction": rubric_in_instruction})


def read_checkpoint_rubrics(checkpoint: Path) -> tuple[dict[str, Rubric], bool]:
    """(rubrics by category, whether the generator reads them) of a checkpoint; none recorded: ({}, False)."""
    if not (Path(checkpoint) / RUBRICS_FILE).exists():
        return {}, False
    flag = Path(checkpoint) / CHECKPOINT_FILE
    reads = flag.exists() and bool(json.loads(flag.read_text())["rubric_in_instruction"])
    return load_rubrics(Path(checkpoint) / RUBRICS_FILE), reads


def read_records(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / CITING_LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_records(out_dir: Path, records: list[dict]) -> None:
    atomic_write_text(Path(out_dir) / CITING_LOG, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _lora_outputs(work: Distillation, pairs: list[Pair]) -> list[str]:
    """Greedy answers of each pair's instance teacher (its PEFT LoRA on the base, input only)."""
    model, teachers, config = work.model, work.teachers, work.config
    outputs: list[str] = []
    for start in range(0, len(pairs), 64):
        chunk = pairs[start : start + 64]
        rows = torch.tensor([teachers.row_of_task[p.task] for p in chunk], device=model.device)
        batch = encode(model.tokenizer, model.format_inputs([p.input for p in chunk]), config.max_input_tokens)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        with torch.no_grad():
            tokens = model.generate_tokens(batch, teachers.loras.select(rows), None, config.max_output_tokens)
        outputs += model.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return outputs


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def draft_round(
    index: int, work: Distillation, pairs: Sequence[Pair], rubrics: dict[str, Rubric], config: CitingConfig, seed: int
) -> dict[str, Any]:
    """One round's drafts, checks, teacher choice and revisions, as its record (with its pool)."""
    task_set, categories = work.task_set, work.groups
    rng = random.Random(f"citing:{seed}:{index}")
    sample = [pairs[k] for k in sorted(rng.sample(range(len(pairs)), min(config.sample_per_round, len(pairs))))]
    was_training = work.model.training
    work.model.eval()
    drafts = [d.strip() for d in work.outputs(sample, fusion=True)]
    answers: dict[str, list[str]] = {}
    if work.teachers.meta is not None:
        prompts = work.model.format_inputs(concat_inputs(task_set, sample))
        answers["meta"] = greedy(
            work.teachers.meta, work.model.tokenizer, prompts, 4 * work.config.max_input_tokens, work.config.max_output_tokens
        )
    if work.teachers.loras is not None:
        answers["instance"] = _lora_outputs(work, sample)
    work.model.train(was_training)
    names = [t.name for t in task_set.tasks]
    hits = {who: [exact_match(a, p.output) for a, p in zip(outs, sample)] for who, outs in answers.items()}
    teacher_em: dict[str, dict[str, float]] = {}
    chosen: dict[str, str] = {}
    for task in sorted({p.task for p in sample}):
        rows = [k for k, p in enumerate(sample) if p.task == task]
        scores = {who: _mean([hits[who][k] for k in rows]) for who in answers}
        teacher_em[names[task]] = scores
        chosen[names[task]] = max(TEACHERS, key=lambda w: (scores.get(w, -1.0), w == "meta"))
    drafted: Counter[str] = Counter()
    failing: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    by_criterion: dict[str, Counter[str]] = {}
    outcome = Counter({"kept": 0, "rejected_rubric": 0, "rejected_reference": 0})
    student: dict[str, list[float]] = {}
    teacher: dict[str, list[float]] = {}
    examples: list[dict[str, Any]] = []
    for k, (pair, draft) in enumerate(zip(sample, drafts)):
        category, rubric = categories[pair.task], rubrics.get(categories[pair.task])
        broken = rubric.violations(pair.input, draft) if rubric is not None else []
        right = bool(exact_match(draft, pair.output))
        who = chosen[names[pair.task]]
        drafted[category] += 1
        student.setdefault(category, []).append(float(right))
        teacher.setdefault(category, []).append(hits[who][k])
        by_criterion.setdefault(category, Counter()).update(broken)
        wrong[category] += not right
        record = {"task": pair.task, "input": pair.input, "draft": draft}
        if right and not broken:
            examples.append(record | {"kind": "keep", "target": draft})
            continue
        failing[category] += 1
        revision = answers[who][k].strip()
        if rubric is not None and rubric.violations(pair.input, revision):
            outcome["rejected_rubric"] += 1
        elif not exact_match(revision, pair.output):
            outcome["rejected_reference"] += 1
        else:
            outcome["kept"] += 1
            examples.append(record | {"kind": "revision", "target": revision, "teacher": who, "broken": broken})
    return {
        "round": index,
        "sampled": len(sample),
        "drafts": dict(sorted(drafted.items())),
        "failing": dict(sorted(failing.items())),
        "wrong_by_reference": dict(sorted(wrong.items())),
        "failing_by_criterion": {c: dict(sorted(n.items())) for c, n in sorted(by_criterion.items())},
        "revisions": dict(outcome),
        "teacher": chosen,
        "teacher_em_by_task": teacher_em,
        "student_em": {c: _mean(v) for c, v in sorted(student.items())},
        "teacher_em": {c: _mean(v) for c, v in sorted(teacher.items())},
        "examples": examples,
    }


def pool_examples(record: dict[str, Any]) -> tuple[list[Example], list[Example], list[Example]]:
    """(revisions, self-corrections of failures, self-corrections that keep a passing draft) of a round."""
    revisions, corrections, keeps = [], [], []
    for e in record["examples"]:
        corrected = Example(e["task"], revision_input(e["input"], e["draft"]), e["target"], revise=True)
        if e["kind"] == "keep":
            keeps.append(corrected)
        else:
            revisions.append(Example(e["task"], e["input"], e["target"]))
            corrections.append(corrected)
    return revisions, corrections, keeps


class CitingSampler:
    """The loop's sampler for the revision rounds (training.loop.Sampler), over a base schedule
    (the epoch order, or TAPIR's sampler) whose indices it takes every step, so every arm sees the
    same number of examples and the base advances as it would alone."""

    def __init__(
        self,
        config: CitingConfig,
        rounds: int,
        steps: int,
        seed: int,
        base: Sampler,
        pairs: PoolPairs,
        draft: Callable[[int], dict[str, Any]],
        out_dir: Path,
    ) -> None:
        self.config, self.seed, self.base, self.pairs, self.draft = config, seed, base, pairs, draft
        self.out_dir = Path(out_dir)
        self.ends = round_ends(steps, rounds)
        self.records: list[dict[str, Any]] = []
        self.pools: list[tuple[list[int], list[int], list[int]]] = []

    def _add_pool(self, record: dict[str, Any]) -> None:
        indices = []
        for part in pool_examples(record):
            begin = len(self.pairs)
            self.pairs.extra += part
            indices.append(list(range(begin, len(self.pairs))))
        self.pools.append((indices[0], indices[1], indices[2]))

    def take(self, count: int, step: int) -> list[int]:
        index = next(i for i, end in enumerate(self.ends) if step < end)
        if index == len(self.records):
            record = self.draft(index)
            self.records.append(record)
            self._add_pool(record)
            if is_main():
                _write_records(self.out_dir, self.records)
        out = self.base.take(count, step)
        revisions, corrections, keeps = self.pools[index]
        rng = random.Random(step_seed(self.seed, step) ^ 0x5C17)
        config = self.config
        for position in range(len(out)):
            if rng.random() >= config.revision_weight:
                continue
            if rng.random() < config.self_correction_share:
                source = keeps if rng.random() < config.keep_share else corrections
            else:
                source = revisions
            if source:
                out[position] = rng.choice(source)
        return out

    def state(self) -> dict[str, Any]:
        return {"base": self.base.state(), "rounds_begun": len(self.records)}

    def restore(self, state: dict[str, Any]) -> None:
        self.base.restore(state["base"])
        del self.pairs.extra[:]
        self.records, self.pools = [], []
        for record in read_records(self.out_dir)[: int(state["rounds_begun"])]:
            self.records.append(record)
            self._add_pool(record)


def rubric_texts(task_set: TaskSet, rubrics: dict[str, Rubric]) -> list[str | None]:
    """Each task's rubric text (None: its category has none)."""
    return [rubrics[c].text() if c in rubrics else None for c in task_set.categories()]


def rubric_instruction(instruction: str, rubric: str | None) -> str:
    """The instruction with its rubric, or as it is where there is none."""
    return instruction if rubric is None else with_rubric(instruction, rubric)


def write_stage_rubrics(out_dir: Path, rubrics: dict[str, Rubric]) -> None:
    if is_main():
        save_rubrics(rubrics, Path(out_dir) / RUBRICS_FILE)
