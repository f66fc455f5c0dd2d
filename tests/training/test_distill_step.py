"""Stage 3's step (training.distill.Distillation: make_batch, student, loss) on a micro checkpoint
in seconds: what a batch holds, what the student runs, and how the loss adds up its terms.

Teachers are built by hand here (a plain T5 as the meta teacher, random instance LoRAs mapped to
tasks by a permutation), so each expected value is computed from the public model API and the
loss functions without the step's own code. tests/training/test_stage3_wiring.py checks the
same wiring against teachers trained by stage 1 and real PEFT.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hypernet.errors import InputTooLong
from hypernet.io import load_checkpoint
from hypernet.model import TagiModel
from hypernet.targets import LoraWeights
from training.common import Pair, TaskSet, load_base_model
from training.data import Task, format_concat, format_instruction
from training.distill import Distillation, Teachers
from training.losses import IGNORE, alignment_loss, cross_entropy, distill_kl, target_mask
from training.presets import DistillConfig

DEFINITIONS = ("Reverse the list.", "Sort the items of the list.", "Count the words.")
PAIRS = [
    Pair(0, "apple, river", "river, apple"),
    Pair(1, "stone, apple, green", "apple, green, stone"),
    Pair(2, "house cloud seven", "3"),
    Pair(0, "paper, garden, silver", "silver, garden, paper"),
    Pair(1, "window, music", "music, window"),
    Pair(2, "bright table", "2"),
]
ROW_OF_TASK = [2, 0, 1]  # task t's instance teacher is row ROW_OF_TASK[t]: not the identity


def task_set() -> TaskSet:
    tasks = [Task(f"task{i}_list", d, (), (), (), ("reverse",)) for i, d in enumerate(DEFINITIONS)]
    return TaskSet(tasks, [format_instruction(t, "def") for t in tasks], list(PAIRS), [])


def teacher_loras(model: TagiModel) -> LoraWeights:
    """Three instance teachers, row ROW_OF_TASK[t] close to task t's generated update (1.1 times it,
    at another scale and factorisation), so the right mapping gives a small L_ins and any other a large one."""
    with torch.no_grad():
        generated = model.generate_lora(model.encode_instructions(list(DEFINITIONS)))
    near = generated.select([ROW_OF_TASK.index(row) for row in range(3)])
    return LoraWeights({g: a * 0.55 for g, a in near.lora_A.items()}, near.lora_B, 2 * near.scale)


@pytest.fixture()
def parts(checkpoint_dir: Path) -> tuple[TagiModel, TaskSet, Teachers]:
    model = load_checkpoint(checkpoint_dir)
    model.eval()  # no dropout: values are compared across calls
    # The template `tagi train` checkpoints carry, so a batch built without it differs.
    model.config = replace(model.config, instruction_template="Definition: {instruction}")
    meta = load_base_model(checkpoint_dir / "base").eval().requires_grad_(False)
    return model, task_set(), Teachers(meta, teacher_loras(model), ROW_OF_TASK)


def work_for(parts: tuple[TagiModel, TaskSet, Teachers], **config) -> Distillation:
    model, tasks, teachers = parts
    return Distillation(model, tasks, tasks.train, DistillConfig(**config), teachers)


def tokens(model: TagiModel, texts: list[str]) -> dict[str, torch.Tensor]:
    return model.tokenizer(texts, padding=True, return_tensors="pt")


def test_a_batch_holds_inputs_without_instructions_and_each_tasks_instruction_once(parts):
    model, tasks, _ = parts
    work = work_for(parts, max_input_tokens=64, max_output_tokens=32)
    indices = [5, 0, 3, 2]  # tasks 2, 0, 0, 2
    batch = work.make_batch(indices, batch_seed=0)
    chosen = [PAIRS[i] for i in indices]
    assert batch["tasks"].tolist() == [0, 2]  # distinct, sorted
    assert batch["rows"].tolist() == [1, 0, 0, 1]  # example -> its task's position in `tasks`
    # each distinct task's wording, bare: the student encodes it (template applied) once per text
    assert batch["instructions"] == [DEFINITIONS[0], DEFINITIONS[2]]
    inputs = tokens(model, [p.input for p in chosen])  # the student's input has no instruction
    assert torch.equal(batch["input_ids"], inputs["input_ids"])
    assert torch.equal(batch["attention_mask"], inputs["attention_mask"])
    labels = tokens(model, [p.output for p in chosen])["input_ids"]
    labels[labels == model.tokenizer.pad_token_id] = IGNORE
    assert torch.equal(batch["labels"], labels)
    assert torch.equal(batch["decoder_input_ids"][:, 1:], labels[:, :-1].clamp(min=0))
    assert (batch["decoder_input_ids"][:, 0] == 0).all()
    # The meta teacher reads SNI's concatenation: the task's definition prompt, then the input.
    concat = tokens(model, [format_concat(format_instruction(tasks.tasks[p.task], "def"), p.input) for p in chosen])
    assert torch.equal(batch["teacher_input_ids"], concat["input_ids"])
    assert torch.equal(batch["teacher_attention_mask"], concat["attention_mask"])
    assert "teacher_input_ids" not in work_for(parts, use_kl=False).make_batch(indices, 0)


def test_a_batch_is_truncated_to_the_configured_lengths_and_a_too_long_instruction_is_refused(parts):
    model = parts[0]
    work = work_for(parts, max_input_tokens=2, max_output_tokens=3)
    batch = work.make_batch([1, 3], batch_seed=0)
    assert batch["input_ids"].shape[1] == 2 and batch["labels"].shape[1] == 3
    assert batch["teacher_input_ids"].shape[1] == 4 * 2  # the teacher's input also holds the instruction
    # Instructions are never cut: one over the checkpoint's limit is an error, not a silently shorter task.
    model.config = replace(model.config, max_instruction_tokens=3)
    with pytest.raises(InputTooLong):
        work_for(parts).student(batch)


def test_each_batch_draws_one_of_each_tasks_wordings_from_its_seed(parts):
    model, tasks, teachers = parts
    wordings = ("Flip the list.", "Write the list backwards.", "reverse it please")
    tasks.tasks[0] = replace(tasks.tasks[0], paraphrases=wordings)
    work = Distillation(model, tasks, tasks.train, DistillConfig(), teachers)
    drawn = [work.make_batch([0, 1], seed)["instructions"] for seed in range(40)]
    assert drawn == [work.make_batch([0, 1], seed)["instructions"] for seed in range(40)]  # a resume sees the same
    assert {d[0] for d in drawn} == {DEFINITIONS[0], *wordings}  # every wording, the definition included
    assert {d[1] for d in drawn} == {DEFINITIONS[1]}  # a task without paraphrases keeps its definition
    # evaluation still reads the definition
    assert work.instructions[0] == DEFINITIONS[0]


def test_the_no_fusion_share_follows_the_batch_seed(parts):
    always = work_for(parts, no_fusion_prob=0.0)
    never = work_for(parts, no_fusion_prob=1.0)
    share = work_for(parts, no_fusion_prob=0.3)
    seeds = range(40)
    assert all(always.make_batch([0], s)["fusion"] for s in seeds)
    assert not any(never.make_batch([0], s)["fusion"] for s in seeds)
    # the batch's rng first draws each task's wording (one here), then whether fusion is on
    expected = []
    for s in seeds:
        rng = random.Random(s)
        rng.choice([DEFINITIONS[0]])
        expected.append(rng.random() >= 0.3)
    assert [share.make_batch([0], s)["fusion"] for s in seeds] == expected
    assert 0.5 < sum(expected) / len(expected) < 0.9


@pytest.mark.parametrize("fusion", [True, False])
def test_the_student_runs_each_example_with_its_own_tasks_adapter(parts, fusion: bool):
    model, _, _ = parts
    work = work_for(parts)
    indices = [4, 2, 1]  # tasks 1, 2, 1
    batch = work.make_batch(indices, 0)
    batch["fusion"] = fusion
    with torch.no_grad():
        logits, lora = work.student(batch)
        assert lora.batch_size == 2  # one adapter per distinct task, not per example
        for row, index in enumerate(indices):
            text = model.format_instruction(DEFINITIONS[PAIRS[index].task])
            encoding = model.encode_instructions([DEFINITIONS[PAIRS[index].task]])
            adapter = model.generate_lora(encoding)
            alone = model(
                batch["input_ids"][row : row + 1],
                batch["attention_mask"][row : row + 1],
                batch["decoder_input_ids"][row : row + 1],
                lora=adapter,
                instruction=encoding if fusion else None,
            )
            positions = batch["labels"][row] != IGNORE
            assert torch.allclose(logits[row][positions], alone[0][positions], atol=1e-4), (row, text)
        other, _ = work.student({**batch, "fusion": not fusion})
    assert (other - logits).abs().max() > 1e-4  # fusion on and off differ, so the flag is honoured


def test_the_loss_adds_its_terms_with_their_weights(parts):
    model, tasks, teachers = parts
    indices = [0, 5, 4, 3]  # tasks 0, 2, 1, 0
    work = work_for(parts, lambda_kl=0.3, lambda_ins=0.7, temperature=2.0)
    batch = work.make_batch(indices, 0)
    total, metrics = work.loss(batch)
    with torch.no_grad():
        logits, lora = work.student(batch)
        teacher_logits = teachers.meta(
            input_ids=batch["teacher_input_ids"],
            attention_mask=batch["teacher_attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
        ).logits
    ce = cross_entropy(logits, batch["labels"])
    kl = distill_kl(logits, teacher_logits, target_mask(batch["labels"]), 2.0)
    # L_ins pairs the adapter of task t (batch["tasks"] order) with teacher row ROW_OF_TASK[t]
    ins = alignment_loss(lora, teachers.loras.select([ROW_OF_TASK[t] for t in batch["tasks"].tolist()]))
    assert float(total.detach()) == pytest.approx(float(ce + 0.3 * kl + 0.7 * ins), rel=1e-5)
    expected = {"ce": float(ce), "kl": float(kl), "ins": float(ins), "fusion": float(batch["fusion"])}
    assert metrics == pytest.approx(expected, rel=1e-5)
    assert float(kl) > 1e-3 and float(ins) > 1e-3  # every term is live, so each weight shows in the total
    wrong_rows = alignment_loss(lora, teachers.loras.select(batch["tasks"].tolist()))
    assert abs(float(wrong_rows) - float(ins)) > 1e-3 * float(ins)  # the mapping shows in the value

    # L_ce off; no instance teachers, as training.distill.load_teachers gives when L_ins is off
    kl_only = DistillConfig(use_ce=False, use_ins=False, lambda_kl=0.3, temperature=2.0)
    ce_off, metrics_off = Distillation(model, tasks, tasks.train, kl_only, Teachers(teachers.meta, None, [])).loss(batch)
    assert float(ce_off.detach()) == pytest.approx(float(0.3 * kl), rel=1e-5)  # L_ce off: reported, not added
    assert metrics_off.keys() == {"ce", "kl", "fusion"} and metrics_off["ce"] == pytest.approx(float(ce), rel=1e-5)
    only_ce, metrics_ce = Distillation(
        model, tasks, tasks.train, DistillConfig(use_kl=False, use_ins=False), Teachers(None, None, [])
    ).loss(batch)
    assert float(only_ce.detach()) == pytest.approx(float(ce), rel=1e-5) and metrics_ce.keys() == {"ce", "fusion"}


def test_the_loss_trains_the_generator_and_nothing_else(parts):
    model, _, teachers = parts
    model.train()
    work = work_for(parts)
    total, _ = work.loss(work.make_batch([0, 1, 2], 0))
    total.backward()
    generator_grads = [p.grad for p in model.generator.parameters()]
    assert all(g is not None for g in generator_grads) and sum(float(g.abs().sum()) for g in generator_grads) > 0
    assert all(p.grad is None for p in model.base.parameters())  # the base stays frozen
    assert all(p.grad is None for p in teachers.meta.parameters())
    assert all(not t.requires_grad for t in (*teachers.loras.lora_A.values(), *teachers.loras.lora_B.values()))
