"""Stage 1: the teachers.

- Instance teachers ("training with instance"): one LoRA per training task (or per function
  or task category), trained with real PEFT on that task's instances, input only (no
  instruction), saved as standard PEFT directories (hypernet.io owns that format).
  `teachers/index.json` maps every task to its teacher. They are the targets of L_ins and the
  per-task "oracle" of the evaluation.
- The meta-trained teacher (Tk-Instruct recipe): the base finetuned on instruction + input of
  all training tasks. Its output distributions feed the KL term, and it is the baseline TAGI
  has to match. It is saved as an HF directory in bfloat16 (half the bytes; it is cast back
  to float32 when loaded) so that the shipped checkpoint stays under 30 MB.

Under torchrun the instance teachers are spread over the ranks: the i-th teacher still missing,
in name order, goes to rank i % W (so a resumed run splits what is left evenly), trained by that
rank alone and written by it into its own directories; rank 0 writes the index once every rank
is done. A teacher's seed is the loop's, whatever rank trains it, so its weights do not depend on
the number of processes. The ranks that finish first wait for the others at a barrier: with
teachers that take long to train, --dist-timeout must exceed one teacher's training. The meta teacher is one model: every rank
trains it together (training.loop), rank 0 writes it.
"""

from __future__ import annotations

import random
import re
import shutil
from array import array
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel

from hypernet.families import read_family
from hypernet.files import SPIECE, atomic_directory, write_json
from hypernet.io import is_peft_dir, load_peft_loras, peft_lora_config, save_peft_model
from hypernet.targets import LoraWeights, TargetLayout
from training.common import (
    TEACHER_INDEX,
    BaseText,
    Pair,
    PairsAt,
    TaskSet,
    answer_loss,
    concat_inputs,
    exact_match_by_group,
    greedy,
    load_base_model,
    seq2seq_batch,
    spread,
)
from training.distributed import barrier, is_main, world
from training.loop import LoopConfig, resolve_device, seed_everything, train
from training.presets import TeacherConfig

META_CARD = "meta_card.json"


def teacher_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)[:120]


def teacher_groups(task_set: TaskSet, per: str) -> dict[str, list[int]]:
    """teacher name -> task indices it is trained on.

    per="task": one teacher per task; "function": per task up to wording (paraphrases of the
    same function have identically distributed instances; the function is the one the task
    file declares, and a task that declares none is its own); "category": per task category."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, task in enumerate(task_set.tasks):
        key = {"task": task.name, "function": task.function_key, "category": task.category}[per]
        groups[teacher_name(key)].append(index)
    return dict(groups)


def pairs_by_task(task_set: TaskSet, tasks: set[int]) -> dict[int, list[int]]:
    """Task index -> indices of its training pairs, for `tasks`, in one pass over the training pairs
    (a pass per teacher would read a stored SNI set once per task: 756 passes of 75k pairs)."""
    rows: dict[int, list[int]] = {task: [] for task in tasks}
    for index, pair in enumerate(task_set.train):
        if pair.task in rows:
            rows[pair.task].append(index)
    return rows


def train_instance_teachers(
    task_set: TaskSet, base_dir: Path, out_dir: Path, config: TeacherConfig, loop: LoopConfig, resume: bool = True
) -> Path:
    """Train every missing teacher of this rank; a finished teacher directory is kept (resume = per
    teacher, and within the teacher that was interrupted, from its last checkpoint)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text, family = BaseText.of(base_dir), read_family(base_dir)
    device = resolve_device(loop.device)
    groups = teacher_groups(task_set, config.per)
    names = sorted(groups)
    missing = [name for name in names if not (resume and is_peft_dir(out_dir / name))]
    barrier()  # every rank has listed the missing teachers before any rank writes one
    place = world()
    mine = missing[place.rank :: place.world_size]
    rows = pairs_by_task(task_set, {task for name in mine for task in groups[name]})
    for name in mine:
        task_ids, target = groups[name], out_dir / name
        pairs = PairsAt(task_set.train, array("q", sorted(i for task in task_ids for i in rows[task])))
        seed_everything(loop.seed)
        base = load_base_model(base_dir, device)
        model = get_peft_model(base, peft_lora_config(config.rank, config.alpha, config.target_modules, family))

        def make_batch(indices: list[int], _seed: int, pairs: Sequence[Pair] = pairs) -> dict:
            chosen = [pairs[i] for i in indices]
            return seq2seq_batch(
                text.tokenizer,
                text.prompts([p.input for p in chosen]),
                [p.output for p in chosen],
                config.max_input_tokens,
                config.max_output_tokens,
            )

        def loss_fn(batch: dict, model: PeftModel = model) -> tuple[torch.Tensor, dict]:
            return answer_loss(model, batch), {}

        state_dir = out_dir.parent / "teacher_states" / name
        train(
            model,
            len(pairs),
            make_batch,
            loss_fn,
            loop,
            state_dir,
            name=f"teacher {names.index(name) + 1}/{len(names)}",
            resume=resume,
            alone=True,
        )
        save_peft_model(model, target)
    barrier()  # every rank's teachers are written
    if not is_main():
        return out_dir
    index = {
        "per": config.per,
        "rank": config.rank,
        "alpha": config.alpha,
        "target_modules": list(config.target_modules),
        "task_to_teacher": {task_set.tasks[i].name: name for name, ids in groups.items() for i in ids},
        "loop": asdict(loop),
    }
    write_json(out_dir / TEACHER_INDEX, index)
    return out_dir


def load_teacher_weights(teachers_dir: Path, names: list[str], layout: TargetLayout) -> LoraWeights:
    """Teachers by name -> one LoraWeights batch (row i = names[i]) in the layout of a TagiModel,
    each with the alpha/r PEFT applies it with (read by hypernet.io from its adapter_config)."""
    return load_peft_loras([Path(teachers_dir) / name for name in names], layout)


# ---- meta-trained teacher ---------------------------------------------------------------------


def train_meta_teacher(
    task_set: TaskSet, base_dir: Path, out_dir: Path, config: TeacherConfig, loop: LoopConfig, resume: bool = True
) -> Path:
    """Tk-Instruct: full finetune of the base on (instruction + input) -> output (a causal base:
    the answer tokens after that prompt, the prompt itself never scored)."""
    out_dir = Path(out_dir)
    text = BaseText.of(base_dir)
    seed_everything(loop.seed)
    model = load_base_model(base_dir, resolve_device(loop.device))
    groups = task_set.categories()
    probe = spread(task_set.held_back, config.eval_instances)
    probe_inputs = text.prompts(concat_inputs(task_set, probe))

    def make_batch(indices: list[int], batch_seed: int) -> dict:
        pairs = [task_set.train[i] for i in indices]
        return seq2seq_batch(
            text.tokenizer,
            text.prompts(concat_inputs(task_set, pairs, random.Random(batch_seed))),
            [task_set.train[i].output for i in indices],
            config.max_input_tokens,
            config.max_output_tokens,
        )

    def loss_fn(batch: dict) -> tuple[torch.Tensor, dict]:
        return answer_loss(model, batch), {}

    def evaluate(_step: int) -> dict:
        predictions = greedy(model, text.tokenizer, probe_inputs, config.max_input_tokens, config.max_output_tokens)
        return exact_match_by_group(predictions, probe, groups)

    result = train(
        model,
        len(task_set.train),
        make_batch,
        loss_fn,
        loop,
        out_dir / "state",
        name="stage1-meta-teacher",
        resume=resume,
        eval_fn=evaluate if probe else None,
    )
    final = out_dir / "model"
    if not is_main():
        return final
    scores = result.last_eval or (evaluate(result.steps_done) if probe else {})
    with atomic_directory(final, overwrite=True) as tmp:  # the teacher is whole or absent
        save_half(model, tmp)
        text.tokenizer.save_pretrained(tmp)
        if (Path(base_dir) / SPIECE).exists():  # a T5 tokenizer's SentencePiece model
            shutil.copyfile(Path(base_dir) / SPIECE, tmp / SPIECE)
        write_json(
            tmp / META_CARD,
            {
                "stage": "meta_teacher",
                "what": "the stage-0 base fully finetuned on 'instruction + input' of the training tasks (Tk-Instruct recipe), "
                "stored in bfloat16",
                "tasks": len(task_set.tasks),
                "train_pairs": len(task_set.train),
                "held_back_em": scores,
                "loop": asdict(loop),
                "seconds": round(result.seconds, 1),
            },
        )
    return final


def save_half(model: PreTrainedModel, out_dir: Path) -> None:
    """bfloat16 weights on disk, in the model's own class; the live model stays float32."""
    half = type(model)(model.config).to(torch.bfloat16)
    half.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    half.generation_config = model.generation_config
    half.save_pretrained(out_dir)
