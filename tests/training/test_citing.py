"""The revision rounds of stage 3 (training.citing): their records, the teacher choice, the
self-correction examples, exact resume mid-round, and the revise pass of `tagi eval` / `tagi run`.

A micro checkpoint and real teachers (the micro base as the meta teacher, PEFT instance teachers
trained by stage 1's code). Untrained teachers are rarely right, so the training references of
one task are set to what the meta teacher answers and those of another to what its instance
teacher answers: each teacher is then right on "its" task, which makes the choice and the kept
revisions observable without training anyone to accuracy.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import make_checkpoint

from hypernet.io import load_checkpoint, save_checkpoint
from hypernet.rubric import revision_input, with_rubric
from training.citing import (
    CitingConfig,
    PoolPairs,
    _lora_outputs,
    pool_examples,
    read_checkpoint_rubrics,
    read_records,
    rubric_texts,
    save_checkpoint_rubrics,
)
from training.common import Pair, TaskSet, concat_inputs, greedy, load_task_set
from training.curriculum import CurriculumConfig, read_plans, round_ends
from training.data import exact_match
from training.distill import Distillation, distill, load_teachers
from training.loop import LOG_FILE, MODEL_FILE, STATE_DIR, LoopConfig
from training.presets import DistillConfig, TeacherConfig
from training.rubrics import RUBRICS_FILE, derive_rubrics
from training.suite import SuiteConfig, build_suite
from training.suite_files import write_suite
from training.teachers import train_instance_teachers

SUITE = SuiteConfig(
    train_instances=12,
    test_instances=2,
    train_compositions=2,
    unseen_compositions=1,
    paraphrases_per_function=1,
    values_per_primitive=1,
    unseen_values_per_primitive=1,
)
LOOP = LoopConfig(steps=6, batch_size=4, lr=0.01, warmup_steps=1, checkpoint_every=2, log_every=1, device="cpu")


def _config(kind: str, **citing) -> DistillConfig:
    curriculum = CurriculumConfig(kind=kind, rounds=2, probe_instances=2, min_teacher_em=0.0)
    cite = CitingConfig(sample_per_round=12, revision_weight=0.5, **citing)
    return DistillConfig(use_ins=False, max_output_tokens=12, eval_instances=4, curriculum=curriculum, citing=cite)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("citing")
    checkpoint = make_checkpoint(root, ("q", "v"), trained=True)
    model = load_checkpoint(checkpoint)  # room for an instruction and its rubric in the micro tokenizer's many tokens
    model.config = replace(model.config, max_instruction_tokens=512)
    save_checkpoint(model, checkpoint, overwrite=True)
    write_suite(build_suite(0, SUITE), root / "suite")
    chosen = root / "tasks"
    chosen.mkdir()
    for path in sorted((root / "suite" / "train").glob("*.json"))[::5][:3]:
        shutil.copy(path, chosen / path.name)
    real = load_task_set([str(chosen)], held_back=2, seed=0)
    loop = LoopConfig(steps=4, batch_size=4, lr=0.05, warmup_steps=0, checkpoint_every=100, log_every=1, device="cpu")
    teachers = train_instance_teachers(real, root / "base_src", root / "teachers", TeacherConfig(per="task", rank=4), loop)
    model = load_checkpoint(checkpoint).eval()
    config = replace(_config("citing"), max_output_tokens=12)
    parts = load_teachers(model, real, replace(config, use_ins=True), root / "base_src", teachers)
    train = list(real.train)
    meta = greedy(parts.meta, model.tokenizer, model.format_inputs(concat_inputs(real, train)), 256, 12)
    instance = _lora_outputs(Distillation(model, real, train, replace(config, use_ins=True), parts), train)
    # Task 0's references become the meta teacher's answers, task 1's its instance teacher's.
    answers = {0: meta, 1: instance}
    rigged = [
        Pair(p.task, p.input, answers[p.task][k].strip()) if p.task in answers and answers[p.task][k].strip() else p
        for k, p in enumerate(train)
    ]
    task_set = TaskSet(real.tasks, real.instructions, rigged, real.held_back)
    return {"root": root, "checkpoint": checkpoint, "meta": root / "base_src", "teachers": teachers, "task_set": task_set}


def _run(world: dict, name: str, config: DistillConfig, loop: LoopConfig = LOOP) -> Path:
    model = load_checkpoint(world["checkpoint"])
    out = world["root"] / name
    distill(model, world["task_set"], out, config, loop, world["meta"], world["teachers"])
    return out


@pytest.fixture(scope="module")
def straight(world: dict) -> Path:
    return _run(world, "straight", _config("citing"))


def test_round_records_add_up_and_kept_revisions_pass_their_rubric(world: dict, straight: Path):
    records = read_records(straight)
    assert [r["round"] for r in records] == [0, 1]
    rubrics = derive_rubrics(world["task_set"])
    assert json.loads((straight / RUBRICS_FILE).read_text()).keys() == rubrics.keys()
    categories = world["task_set"].categories()
    for record in records:
        assert sum(record["drafts"].values()) == record["sampled"] == 12
        assert all(record["failing"].get(c, 0) <= n for c, n in record["drafts"].items())
        assert sum(record["revisions"].values()) == sum(record["failing"].values())  # each failure: kept or rejected, once
        assert set(record["student_em"]) == set(record["teacher_em"]) == set(record["drafts"])
        kept = [e for e in record["examples"] if e["kind"] == "revision"]
        assert len(kept) == record["revisions"]["kept"]
        for example in kept:
            pair = next(p for p in world["task_set"].train if p.task == example["task"] and p.input == example["input"])
            rubric = rubrics[categories[example["task"]]]
            assert rubric.violations(example["input"], example["target"]) == []
            assert example["target"].strip()
            assert example["teacher"] == record["teacher"][world["task_set"].tasks[example["task"]].name]
            assert exact_match(example["target"], pair.output)
            assert set(example["broken"]) <= {c.name for c in rubric.criteria}
        for category, broken in record["failing_by_criterion"].items():
            assert all(0 < n <= record["drafts"][category] for n in broken.values())
    assert sum(r["revisions"]["kept"] for r in records) > 0  # the rigged references make some revisions right


def test_the_better_teacher_is_chosen_per_task(world: dict, straight: Path):
    names = [t.name for t in world["task_set"].tasks]
    records = read_records(straight)
    for record in records:
        scores = record["teacher_em_by_task"]
        assert set(record["teacher"]) == set(scores) and set(scores) <= set(names)
        assert record["teacher"][names[0]] == "meta" and scores[names[0]]["meta"] == 1.0  # right on every rigged pair
        for name, choice in record["teacher"].items():
            other = "instance" if choice == "meta" else "meta"
            assert scores[name][choice] > scores[name][other] or (
                scores[name][choice] == scores[name][other] and choice == "meta"
            )
    # Task 1's references are its instance teacher's answers where it gave one: some round samples them.
    assert any(r["teacher"].get(names[1]) == "instance" for r in records)


def test_self_correction_examples_read_the_draft_and_the_rubric(world: dict, straight: Path):
    record = next(r for r in read_records(straight) if r["revisions"]["kept"])
    revisions, corrections, keeps = pool_examples(record)
    kept = [e for e in record["examples"] if e["kind"] == "revision"]
    assert len(revisions) == len(corrections) == len(kept)
    for example, plain, corrected in zip(kept, revisions, corrections):
        assert (plain.input, plain.output, plain.revise) == (example["input"], example["target"], False)
        assert corrected.input == revision_input(example["input"], example["draft"]) and corrected.revise
        assert corrected.output == example["target"]
    assert all(k.output == revision_input_draft(k.input) for k in keeps)  # a passing draft is kept as it is
    # The batch gives a self-correction example its task's instruction with the rubric, and the
    # same task's plain example the instruction alone (two adapters of one task).
    task_set = world["task_set"]
    model = load_checkpoint(world["checkpoint"]).eval()
    rubrics = derive_rubrics(task_set)
    texts = rubric_texts(task_set, rubrics)
    pool = PoolPairs(list(task_set.train))
    pool.extra += [plain, corrected]
    config = _config("citing")
    parts = load_teachers(model, task_set, config, world["meta"], world["teachers"])
    work = Distillation(model, task_set, pool, config, parts, rubrics=texts)
    batch = work.make_batch([len(pool) - 2, len(pool) - 1], batch_seed=0)
    task = plain.task
    assert batch["tasks"].tolist() == [task, task]
    assert work.revise_wordings[task] == tuple(with_rubric(w, texts[task]) for w in work.wordings[task])
    assert batch["instructions"][0] in work.wordings[task] and batch["instructions"][1] in work.revise_wordings[task]
    assert batch["rows"].tolist() == [0, 1]


def revision_input_draft(text: str) -> str:
    """The draft part of a revision input."""
    return text.rsplit("\nDraft: ", 1)[1]


def test_killed_mid_round_resumes_bit_exact(world: dict, straight: Path, kill_at_step):
    # Rounds end at steps 3 and 6; saves at 2, 4, 6. Killed after step 5: the last save (step 4) is
    # inside round 2, whose record the resumed run must reuse rather than redo.
    assert round_ends(LOOP.steps, 2) == [3, 6]
    out = world["root"] / "resumed"
    with pytest.raises(kill_at_step(5)):
        _run(world, "resumed", _config("citing"))
    assert len(read_records(out)) == 2
    _run(world, "resumed", _config("citing"))
    assert read_records(out) == read_records(straight)
    left, right = (load_file(d / STATE_DIR / MODEL_FILE) for d in (straight, out))
    assert left.keys() == right.keys() and left
    for name in left:
        assert torch.equal(left[name], right[name]), name
    logs = [
        [{k: v for k, v in json.loads(line).items() if k != "time"} for line in (d / LOG_FILE).read_text().splitlines()]
        for d in (straight, out)
    ]
    assert logs[0] == logs[1]


def test_tapir_citing_writes_both_records(world: dict):
    out = _run(world, "both", _config("tapir+citing"), replace(LOOP, steps=2))  # one step per round
    assert len(read_plans(out)) == 2 and len(read_records(out)) == 2
    probes = {(p.task, p.input) for p in world["task_set"].train} - {
        (e["task"], e["input"]) for r in read_records(out) for e in r["examples"]
    }
    assert probes  # drafts come from the training pairs left after the probes, never all of them


def test_uniform_batches_are_unchanged_by_rubrics_not_read(world: dict):
    task_set = world["task_set"]
    model = load_checkpoint(world["checkpoint"]).eval()
    config = _config("uniform")
    parts = load_teachers(model, task_set, config, world["meta"], None)
    texts = rubric_texts(task_set, derive_rubrics(task_set))
    plain = Distillation(model, task_set, task_set.train, config, parts)
    with_texts = Distillation(model, task_set, task_set.train, config, parts, rubrics=texts)
    reading = Distillation(model, task_set, task_set.train, config, parts, rubrics=texts, rubric_in_instruction=True)
    indices = [0, 5, 13, 20]
    a, b, c = (w.make_batch(indices, batch_seed=3) for w in (plain, with_texts, reading))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]
    assert c["instructions"] == [with_rubric(i, texts[t]) for i, t in zip(a["instructions"], a["tasks"].tolist())]
    assert DistillConfig().citing is None  # a recipe without a citing section records what it always did


def test_revise_pass_in_eval_and_run_is_off_by_default(world: dict, capsys):
    from hypernet.cli import main as tagi
    from training.evaluate import REVISED, run_eval

    checkpoint = world["checkpoint"]
    save_checkpoint_rubrics(checkpoint, derive_rubrics(world["task_set"]), rubric_in_instruction=False)
    assert read_checkpoint_rubrics(checkpoint)[1] is False
    tasks = [str(world["root"] / "tasks")]
    plain = run_eval(checkpoint, tasks, max_instances=1, max_new_tokens=6, methods=("tagi",), timing_tasks=0)
    assert REVISED not in plain["overall"] and "revise" not in plain
    revised = run_eval(checkpoint, tasks, max_instances=1, max_new_tokens=6, methods=("tagi",), timing_tasks=0, revise=True)
    assert revised["overall"]["tagi"] == plain["overall"]["tagi"]
    assert set(revised["revise"]) == {
        "gain_exact_match",
        "gain_rougeL",
        "seconds_first_pass",
        "seconds_revise_pass",
        "cost_ratio",
    }
    assert revised["revise"]["seconds_revise_pass"] > 0
    # tagi run: the revise pass answers revision_input(input, draft) with the same adapter.
    instruction, text = "Reverse the list.", "a, b, c"
    args = ["run", "--checkpoint", str(checkpoint), "--instruction", instruction, "--input", text, "--max-new-tokens", "6"]
    assert tagi(args) in (0, None)
    draft = capsys.readouterr().out.strip()
    assert tagi([*args, "--revise"]) in (0, None)
    second = capsys.readouterr().out.strip()
    model = load_checkpoint(checkpoint)
    expected = model.generate([revision_input(text, draft)], model.adapter(instruction), max_new_tokens=6)[0]
    assert second == expected.replace("\n", " ")
    assert draft == model.generate([text], model.adapter(instruction), max_new_tokens=6)[0].replace("\n", " ")
