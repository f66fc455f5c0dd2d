"""Stage 3: finetuning the generator with instructions ("learning with instruction").

    L = L_ce + lambda1 * L_kl + lambda2 * L_ins      (each term switchable; lambda2 may be sigmoid(L_ins))

- L_ce: gold targets; the student is base + generated LoRA, its input WITHOUT the
  instruction (the instruction reaches it only through the generator and fusion).
- L_kl: KL(meta teacher || student) with temperature T, over target tokens, times T^2. The
  teacher sees instruction + input; both predict the same target tokens, so their logits
  align position by position (a causal teacher reads that prompt then the answer, and its logits
  are taken at the answer positions: training.common.answer_logits).
- L_ins: the generated update vs the task's instance-trained PEFT LoRA in delta-W space,
  each with its own alpha/r (training.losses.alignment_loss).

A share of batches runs without fusion so that the adapter alone (what a PEFT export
carries) learns the task too. Teacher forward passes run inside the loss, never in batch
building. The data schedule is the loop's: its epoch sampler (`curriculum.kind == "uniform"`)
or training.curriculum.TapirSampler, which plans rounds from the student's gap to the teacher;
with `citing` / `tapir+citing`, training.citing.CitingSampler over either, whose rounds add the
student's revised failures and self-correction examples (rubrics: training.rubrics).

Entry point: `run(recipe, inputs, out)` (the stage table, training.stages); the training
itself: `distill(model, task_set, out_dir, config, loop, meta_teacher_dir, teachers_dir)`.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from hypernet.errors import UserError
from hypernet.io import load_checkpoint, load_peft_loras, save_checkpoint
from hypernet.model import TagiModel
from hypernet.targets import LoraWeights
from training.citing import (
    CitingConfig,
    CitingSampler,
    PoolPairs,
    draft_round,
    rubric_instruction,
    rubric_texts,
    rubrics_for,
    save_checkpoint_rubrics,
    write_stage_rubrics,
)
from training.common import (
    InstructionCache,
    Pair,
    TaskSet,
    answer_logits,
    concat_inputs,
    encode,
    exact_match_by_group,
    fit_instruction,
    greedy,
    load_frozen_base,
    read_teacher_index,
    seq2seq_batch,
    spread,
)
from training.curriculum import TapirSampler, em_by_task, split_probes
from training.data import PromptFormat, exact_match, instruction_text
from training.distributed import is_main
from training.loop import EpochSampler, LoopConfig, Sampler, resolve_device, train
from training.losses import alignment_loss, cross_entropy, distill_kl, target_mask
from training.presets import DistillConfig
from training.rubrics import RUBRICS_FILE, load_rubrics

if TYPE_CHECKING:
    from training.presets import Preset
    from training.stages import StageInputs

LOG_NAME = "stage3-distill"


@dataclass(frozen=True)
class Teachers:
    """What the student learns from besides gold targets, on the student's device."""

    meta: PreTrainedModel | None
    """The meta-trained teacher: L_kl's distributions and TAPIR's difficulty reference."""
    loras: LoraWeights | None
    """The instance teachers' LoRAs (L_ins), one row per teacher."""
    row_of_task: list[int]
    """Task index -> row of `loras`."""


def load_teachers(
    model: TagiModel, task_set: TaskSet, config: DistillConfig, meta_dir: Path | None, teachers_dir: Path | None
) -> Teachers:
    """Only the teachers this config needs; a missing one is a usage error naming the option. The
    revision rounds use whichever teachers are given (they choose the better per task)."""
    meta = None
    citing = "citing" in config.curriculum.kind
    if config.use_kl or "tapir" in config.curriculum.kind or (citing and meta_dir is not None):
        if meta_dir is None:
            why = "L_kl" if config.use_kl else "the tapir curriculum (difficulty is measured against it)"
            raise UserError(f"{why} needs the meta-trained teacher (--meta-teacher)")
        meta = load_frozen_base(meta_dir, model.device)
    if citing and meta_dir is None and teachers_dir is None:
        raise UserError("the citing curriculum needs a teacher to revise drafts (--meta-teacher or --teachers)")
    if not (config.use_ins or (citing and teachers_dir is not None)):
        return Teachers(meta, None, [])
    if teachers_dir is None:
        raise UserError("L_ins needs the instance teachers (--teachers)")
    task_to_teacher = read_teacher_index(teachers_dir)["task_to_teacher"]
    names = sorted(set(task_to_teacher.values()))
    loras = load_peft_loras([Path(teachers_dir) / name for name in names], model.layout).to(model.device)
    return Teachers(meta, loras, [names.index(task_to_teacher[t.name]) for t in task_set.tasks])


class Distillation:
    """Stage 3's pieces over one student: the loop calls `make_batch` and `loss`, its
    evaluation hook `evaluate`, and the TAPIR sampler `probe_em` once per round."""

    def __init__(
        self,
        model: TagiModel,
        task_set: TaskSet,
        pairs: Sequence[Pair],
        config: DistillConfig,
        teachers: Teachers,
        prompt_format: PromptFormat = "def",
        rubrics: list[str | None] | None = None,
        rubric_in_instruction: bool = False,
    ) -> None:
        """`rubrics`: each task's rubric text (training.citing.rubric_texts), which the self-correction
        examples' instructions carry, and with `rubric_in_instruction` every instruction."""
        self.model, self.task_set, self.pairs, self.config, self.teachers = model, task_set, pairs, config, teachers
        self.cut: dict[str, str] = {}
        """Each prompt that was cut -> what the generator reads instead."""
        # The generator reads each task's definition (evaluation) or one of its wordings
        # (training), in the checkpoint's one instruction template; with def+2pos (SNI), each
        # followed by the task's first two positive examples, as the evaluation shows them.
        # A def+2pos prompt longer than the checkpoint's limit loses the end of its examples, as
        # Tk-Instruct cuts its 1024-token prompts and as the evaluation cuts it (counted in `cut`,
        # reported by distill()); a bare definition is never cut: too long is an error (InputTooLong).
        self.fits = prompt_format == "def+2pos"
        rubrics = rubrics or [None] * len(task_set.tasks)
        read = rubrics if rubric_in_instruction else [None] * len(task_set.tasks)
        self.instructions = [
            rubric_instruction(self._fit(instruction_text(task, prompt_format)), r) for task, r in zip(task_set.tasks, read)
        ]
        plain = [
            tuple(self._fit(instruction_text(replace(task, definition=wording), prompt_format)) for wording in task.wordings)
            for task in task_set.tasks
        ]
        self.wordings = [tuple(rubric_instruction(w, r) for w in ws) for ws, r in zip(plain, read)]
        self.revise_wordings = [tuple(rubric_instruction(w, r) for w in ws) for ws, r in zip(plain, rubrics)]
        """What the generator reads for a self-correction example: the instruction with its rubric."""
        self.encodings = InstructionCache(model)
        self.groups = task_set.categories()
        self.scored = spread(task_set.held_back, config.eval_instances)

    def _fit(self, text: str) -> str:
        if not self.fits:
            return text
        fitted = fit_instruction(self.model, text)
        if fitted != text:
            self.cut[text] = fitted
        return fitted

    def make_batch(self, indices: list[int], batch_seed: int) -> dict:
        """Tensors only (no model call): inputs, targets, one wording of each distinct task
        (drawn from the batch seed, so a resumed run sees the same ones)."""
        config, tokenizer = self.config, self.model.tokenizer
        rng = random.Random(batch_seed)
        chosen = [self.pairs[i] for i in indices]
        # One generated adapter per distinct (task, form): a self-correction example (training.citing.Example)
        # reads its task's instruction with the rubric. A plain Pair has no form: (task, False), as before.
        keys = sorted({(p.task, getattr(p, "revise", False)) for p in chosen})
        batch = seq2seq_batch(
            tokenizer,
            self.model.format_inputs([p.input for p in chosen]),
            [p.output for p in chosen],
            config.max_input_tokens,
            config.max_output_tokens,
        )
        batch["instructions"] = [rng.choice((self.revise_wordings if revise else self.wordings)[t]) for t, revise in keys]
        batch["fusion"] = rng.random() >= config.no_fusion_prob
        batch["rows"] = torch.tensor([keys.index((p.task, getattr(p, "revise", False))) for p in chosen])
        batch["tasks"] = torch.tensor([t for t, _ in keys])
        if config.use_kl:
            prompts = self.model.format_inputs(concat_inputs(self.task_set, chosen))
            concat = encode(tokenizer, prompts, 4 * config.max_input_tokens)
            batch.update({f"teacher_{k}": v for k, v in concat.items()})
        return batch

    def student(self, batch: dict) -> tuple[torch.Tensor, LoraWeights]:
        """Student logits, and the generated LoRA of each distinct task of the batch."""
        encoding = self.encodings(batch["instructions"])
        lora = self.model.generate_lora(encoding)
        rows = batch["rows"]
        fused = self.model.fusion_states(encoding).select(rows) if batch["fusion"] else None
        logits = self.model(
            batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"], lora=lora.select(rows), instruction=fused
        )
        return logits, lora

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        config, teachers = self.config, self.teachers
        logits, lora = self.student(batch)
        ce = cross_entropy(logits, batch["labels"])
        total = ce if config.use_ce else logits.new_zeros(())
        metrics = {"ce": float(ce.detach())}
        if config.use_kl:
            with torch.no_grad():
                teacher_logits = answer_logits(
                    teachers.meta, batch["teacher_input_ids"], batch["teacher_attention_mask"], batch["decoder_input_ids"]
                )
            kl = distill_kl(logits, teacher_logits, target_mask(batch["labels"]), config.temperature)
            total = total + config.lambda_kl * kl
            metrics["kl"] = float(kl.detach())
        if config.use_ins:  # load_teachers refuses a config with L_ins and no teachers
            rows = torch.tensor([teachers.row_of_task[t] for t in batch["tasks"].tolist()])
            ins = alignment_loss(lora, teachers.loras.select(rows))
            weight = lambda_ins(config, ins)
            total = total + weight * ins
            metrics["ins"] = float(ins.detach())
            if config.lambda_ins == "sigmoid":
                metrics["lambda_ins"] = float(weight)
        metrics["fusion"] = float(batch["fusion"])
        return total, metrics

    def outputs(self, scored: list[Pair], fusion: bool) -> list[str]:
        """Greedy outputs of the current student (TAGI) on `scored`, one adapter per task."""
        adapters = {t: self.model.adapter(self.instructions[t]) for t in sorted({p.task for p in scored})}
        outputs = []
        for start in range(0, len(scored), 64):
            chunk = scored[start : start + 64]
            outputs += self.model.generate(
                [p.input for p in chunk],
                [adapters[p.task] for p in chunk],
                fusion=fusion,
                max_new_tokens=self.config.max_output_tokens,
            )
        return outputs

    def evaluate(self, _step: int) -> dict[str, float]:
        """Exact match on held-back instances, with fusion (overall and per group) and without."""
        scores = {}
        for fusion in (True, False):
            result = exact_match_by_group(self.outputs(self.scored, fusion), self.scored, self.groups)
            if fusion:
                scores.update(result)
            else:
                scores["em_no_fusion"] = result["em"]
        return scores

    def probe_em(self, probes: list[Pair]) -> list[float]:
        """Each task's exact match of the student (with fusion) on the curriculum's probes."""
        was_training = self.model.training
        self.model.eval()
        scores = em_by_task(self.outputs(probes, fusion=True), probes, len(self.task_set.tasks), exact_match)
        self.model.train(was_training)
        return scores


def lambda_ins(config: DistillConfig, ins: torch.Tensor) -> torch.Tensor | float:
    """lambda2 of this batch: the recipe's number, or with "sigmoid" the paper's sigmoid(L_ins),
    detached: it is a weight that grows with the misalignment (from 0.5 at L_ins = 0 towards 1),
    not part of the objective, so the gradient stays lambda2 * dL_ins rather than also pushing
    through the weight (which would add sigmoid'(L_ins) * L_ins)."""
    return torch.sigmoid(ins.detach()) if config.lambda_ins == "sigmoid" else config.lambda_ins


def tapir_sampler(work: Distillation, pairs: Sequence[Pair], probes: list[Pair], loop: LoopConfig, out_dir: Path) -> TapirSampler:
    """The curriculum's sampler over `pairs`: the teacher is scored on the probes once, the student per round."""
    config, task_set = work.config, work.task_set
    teacher_outputs = greedy(
        work.teachers.meta,
        work.model.tokenizer,
        work.model.format_inputs(concat_inputs(task_set, probes)),
        4 * config.max_input_tokens,
        config.max_output_tokens,
    )
    teacher_em = em_by_task(teacher_outputs, probes, len(task_set.tasks), exact_match)
    return TapirSampler(
        config.curriculum,
        loop.steps,
        loop.batch_size,
        loop.seed,
        [t.name for t in task_set.tasks],
        work.groups,
        pairs,
        teacher_em,
        lambda: work.probe_em(probes),
        out_dir,
    )


def distill(
    model: TagiModel,
    task_set: TaskSet,
    out_dir: Path,
    config: DistillConfig,
    loop: LoopConfig,
    meta_teacher_dir: Path | None,
    teachers_dir: Path | None,
    resume: bool = True,
    prompt_format: PromptFormat = "def",
) -> None:
    """Train model.generator (and fusion) in place; `out_dir` holds the loop state, log, plot and,
    with the tapir curriculum, its plans (curriculum.jsonl), with citing its rounds (citing.jsonl),
    and with either rubric use the rubrics (rubrics.json)."""
    teachers = load_teachers(model, task_set, config, meta_teacher_dir, teachers_dir)
    tapir, citing = "tapir" in config.curriculum.kind, "citing" in config.curriculum.kind
    cite = config.citing or CitingConfig()
    pairs, probes = split_probes(task_set, config.curriculum.probe_instances, loop.seed) if tapir else (task_set.train, [])
    rubrics = rubrics_for(task_set, cite) if citing or cite.rubric_in_instruction else {}
    if rubrics:
        write_stage_rubrics(out_dir, rubrics)
    pool = PoolPairs(pairs)
    texts = rubric_texts(task_set, rubrics) if rubrics else None
    work = Distillation(
        model, task_set, pool if citing else pairs, config, teachers, prompt_format, texts, cite.rubric_in_instruction
    )
    if work.cut and is_main():
        print(
            f"stage 3: {len(work.cut)} instruction(s) cut to the checkpoint's {model.config.max_instruction_tokens} tokens",
            file=sys.stderr,
        )
    sampler: Sampler | None = tapir_sampler(work, pairs, probes, loop, out_dir) if tapir else None
    if citing:
        sampler = CitingSampler(
            cite,
            config.curriculum.rounds,
            loop.steps,
            loop.seed,
            sampler or EpochSampler(len(pairs), loop.seed),
            pool,
            lambda index: draft_round(index, work, pairs, rubrics, cite, loop.seed),
            out_dir,
        )
    train(
        model,
        len(pairs),
        work.make_batch,
        work.loss,
        loop,
        out_dir,
        name=LOG_NAME,
        resume=resume,
        eval_fn=work.evaluate if work.scored else None,
        sampler=sampler,
        settings=config,
    )


def run(recipe: Preset, inputs: StageInputs, out: Path) -> None:
    """Stage 3 from stage 2's checkpoint and stage 1's teachers; writes out/checkpoint."""
    from training.stages import stage_loop

    model = load_checkpoint(inputs.results["hypernet-pretrain"], device=resolve_device(inputs.device))
    distill(
        model,
        inputs.task_set,
        out,
        recipe.distill,
        stage_loop(recipe, "distill.loop", inputs.device),
        inputs.results.get("meta-teacher"),
        inputs.results.get("teachers"),
        resume=inputs.resume,
        prompt_format=recipe.prompt_format,
    )
    if is_main():
        save_checkpoint(model.to("cpu"), out / "checkpoint", overwrite=True)
        if (out / RUBRICS_FILE).exists():
            cite = recipe.distill.citing or CitingConfig()
            save_checkpoint_rubrics(out / "checkpoint", load_rubrics(out / RUBRICS_FILE), cite.rubric_in_instruction)
