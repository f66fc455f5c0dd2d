"""Stage 3's wiring, through its public step (training.distill.Distillation): which teacher L_ins
compares each generated adapter with, at which scale, and what the KL teacher reads.

The loss functions have their own unit tests (test_losses.py); these check what the stage feeds
them, against values computed here without the stage's code: the teachers' updates as real PEFT
applies them, and the meta teacher run on SNI's concatenated prompt.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from support import make_checkpoint

from hypernet.io import PEFT_WEIGHTS_FILE, is_peft_dir, load_checkpoint
from hypernet.model import TagiModel
from training.common import TaskSet, load_task_set, read_teacher_index
from training.data import format_concat, format_instruction
from training.distill import Distillation, load_teachers
from training.loop import LoopConfig
from training.losses import delta_weights, distill_kl, target_mask
from training.presets import DistillConfig, TeacherConfig
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
# alpha/r = 3: an inverted scale (r/alpha) would shrink every teacher update ninefold.
TEACHERS = TeacherConfig(per="task", rank=4, alpha=12.0, target_modules=("q", "v"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A micro checkpoint with a random (non-zero) generator, three training tasks, and their
    PEFT teachers trained by stage 1's own code, with a learning rate that makes them differ."""
    root = tmp_path_factory.mktemp("wiring")
    checkpoint = make_checkpoint(root, ("q", "v"), trained=True)
    suite = root / "suite"
    write_suite(build_suite(0, SUITE), suite)
    chosen = root / "tasks"
    chosen.mkdir()
    for path in sorted((suite / "train").glob("*.json"))[::5][:3]:
        shutil.copy(path, chosen / path.name)
    task_set = load_task_set([str(chosen)], held_back=2, seed=0)
    loop = LoopConfig(steps=4, batch_size=4, lr=0.05, warmup_steps=0, checkpoint_every=100, log_every=1, device="cpu")
    teachers = train_instance_teachers(task_set, root / "base_src", root / "teachers", TEACHERS, loop)
    # Random updates are nearly orthogonal, so teachers of equal size would give almost the same
    # L_ins whichever a task met: sizes 1, 5 and 25 make the pairing show in the value.
    for factor, directory in zip((1.0, 5.0, 25.0), sorted(p for p in teachers.iterdir() if is_peft_dir(p))):
        weights = load_file(directory / PEFT_WEIGHTS_FILE)
        save_file({k: v * factor if ".lora_B." in k else v for k, v in weights.items()}, directory / PEFT_WEIGHTS_FILE)
    return {"checkpoint": checkpoint, "base": root / "base_src", "task_set": task_set, "teachers": teachers}


def _model(setup: dict) -> TagiModel:
    model = load_checkpoint(setup["checkpoint"])
    model.eval()
    return model


def _one_pair_per_task(task_set: TaskSet, tasks: list[int]) -> list[int]:
    return [next(i for i, p in enumerate(task_set.train) if p.task == t) for t in tasks]


def _peft_updates(base_dir: Path, teacher_dir: Path) -> dict[str, torch.Tensor]:
    """Module path -> the dense update real PEFT applies for this teacher (its own scaling)."""
    from training.common import load_base_model

    peft_model = PeftModel.from_pretrained(load_base_model(base_dir), teacher_dir)
    prefix = "base_model.model."
    return {
        name.removeprefix(prefix): module.get_delta_weight("default").detach().float()
        for name, module in peft_model.named_modules()
        if hasattr(module, "get_delta_weight") and hasattr(module, "lora_A")
    }


def _generated_updates(model: TagiModel, instruction: str) -> dict[str, torch.Tensor]:
    dense = delta_weights(model.adapter(instruction).weights)
    return {target.path: dense[group][index, 0] for target, group, index in model.layout.slots()}


def _relative_distance(generated: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> float:
    assert generated.keys() == teacher.keys()
    diff = sum(float(((generated[k] - teacher[k]) ** 2).sum()) for k in generated)
    return diff / sum(float((teacher[k] ** 2).sum()) for k in teacher)


def test_l_ins_compares_each_adapter_with_its_own_tasks_teacher_at_peft_scale(setup: dict):
    model, task_set = _model(setup), setup["task_set"]
    config = DistillConfig(use_kl=False, use_ins=True, lambda_ins=1.0)
    work = Distillation(model, task_set, task_set.train, config, load_teachers(model, task_set, config, None, setup["teachers"]))
    batch_tasks = [2, 0]
    batch = work.make_batch(_one_pair_per_task(task_set, batch_tasks), 0)
    _, metrics = work.loss(batch)

    task_to_teacher = read_teacher_index(setup["teachers"])["task_to_teacher"]
    teacher_updates = [_peft_updates(setup["base"], setup["teachers"] / task_to_teacher[t.name]) for t in task_set.tasks]
    # the wording the batch drew for each task (its tasks in sorted order), one of that task's wordings
    drawn = dict(zip(batch["tasks"].tolist(), batch["instructions"]))
    assert all(drawn[t] in task_set.tasks[t].wordings for t in batch_tasks)
    generated = {t: _generated_updates(model, drawn[t]) for t in batch_tasks}

    def expected(teacher_of: dict[int, int]) -> float:
        return sum(_relative_distance(generated[t], teacher_updates[teacher_of[t]]) for t in batch_tasks) / len(batch_tasks)

    right = expected({t: t for t in batch_tasks})
    assert metrics["ins"] == pytest.approx(right, rel=1e-4)
    # The test can tell: any other task's teacher, or the teachers at another scale, give another value.
    for wrong in itertools.permutations(range(len(task_set.tasks)), len(batch_tasks)):
        if list(wrong) != batch_tasks:
            assert abs(expected(dict(zip(batch_tasks, wrong))) - right) > 1e-3 * right, wrong
    inverted = {t: {k: v / 9.0 for k, v in u.items()} for t, u in enumerate(teacher_updates)}
    assert abs(sum(_relative_distance(generated[t], inverted[t]) for t in batch_tasks) / 2 - right) > 1e-3 * right


def test_kl_teacher_reads_the_instruction_and_the_input(setup: dict):
    from training.common import load_base_model

    model, task_set = _model(setup), setup["task_set"]
    config = DistillConfig(use_kl=True, use_ins=False, temperature=2.0)
    # Any real T5 whose output depends on its input serves as the meta teacher: the micro base.
    work = Distillation(model, task_set, task_set.train, config, load_teachers(model, task_set, config, setup["base"], None))
    indices = _one_pair_per_task(task_set, [1, 2, 0])
    batch = work.make_batch(indices, 0)
    _, metrics = work.loss(batch)

    chosen = [task_set.train[i] for i in indices]
    prompts = [format_concat(format_instruction(task_set.tasks[p.task], "def"), p.input) for p in chosen]
    encoded = model.tokenizer(prompts, padding=True, return_tensors="pt")
    meta = load_base_model(setup["base"]).eval()
    mask = target_mask(batch["labels"])
    with torch.no_grad():
        student, _ = work.student(batch)

        def kl_against(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> float:
            logits = meta(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=batch["decoder_input_ids"]).logits
            return float(distill_kl(student, logits, mask, config.temperature))

        right = kl_against(encoded["input_ids"], encoded["attention_mask"])
        without_instruction = kl_against(batch["input_ids"], batch["attention_mask"])
        swapped = [
            format_concat(format_instruction(task_set.tasks[chosen[(i + 1) % len(chosen)].task], "def"), p.input)
            for i, p in enumerate(chosen)
        ]  # each input with another task's instruction
        rolled = model.tokenizer(swapped, padding=True, return_tensors="pt")
        other_tasks_instruction = kl_against(rolled["input_ids"], rolled["attention_mask"])
    assert metrics["kl"] == pytest.approx(right, rel=1e-4)
    assert abs(without_instruction - right) > 1e-3 * right  # the test can tell the difference
    assert abs(other_tasks_instruction - right) > 1e-3 * right
