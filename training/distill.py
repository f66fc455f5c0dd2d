"""Stage 3: finetuning the generator with instructions ("learning with instruction").

    L = L_ce + lambda1 * L_kl + lambda2 * L_ins      (each term switchable)

- L_ce: gold targets; the student is base + generated LoRA, its input WITHOUT the
  instruction (the instruction reaches it only through the generator and fusion).
- L_kl: KL(meta teacher || student) with temperature T, over target tokens, times T^2. The
  teacher sees instruction + input; both predict the same target tokens, so their logits
  align position by position.
- L_ins: the generated update vs the task's instance-trained PEFT LoRA in delta-W space,
  each with its own alpha/r (training.losses.alignment_loss).

A share of batches runs without fusion so that the adapter alone (what a PEFT export
carries) learns the task too. Teacher forward passes run inside the loss function, never in
batch building. With `config.curriculum.kind == "tapir"` the steps are split into rounds
whose data mix training.curriculum plans from the student's gap to the teacher.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from hypernet.fusion import InstructionEncoding, masked_mean
from hypernet.model import TagiModel
from training.common import Pair, TaskSet, concat_inputs, encode, exact_match_by_group, greedy, seq2seq_batch, spread
from training.curriculum import (
    RoundSampler,
    em_by_task,
    plan_from_record,
    plan_record,
    plan_round,
    read_plans,
    round_ends,
    sampled_mix,
    split_probes,
    write_plans,
)
from training.data import exact_match
from training.losses import alignment_loss, cross_entropy, distill_kl, target_mask
from training.loop import LoopConfig, checkpoint_step, has_checkpoint, load_weights, step_seed, train
from training.presets import DistillConfig
from training.teachers import load_base, load_teacher_weights, read_teacher_index


def finetune(
    model: TagiModel,
    task_set: TaskSet,
    out_dir: Path,
    config: DistillConfig,
    loop: LoopConfig,
    meta_teacher_dir: Path | None,
    teachers_dir: Path | None,
    resume: bool = True,
) -> None:
    if not (config.use_ce or config.use_kl or config.use_ins):
        raise ValueError("at least one of L_ce, L_kl, L_ins must be on")
    tokenizer = model.tokenizer
    device = model.device
    teacher = None
    if config.use_kl:
        if meta_teacher_dir is None:
            raise ValueError("L_kl needs the meta-trained teacher (--meta-teacher)")
        teacher = load_base(meta_teacher_dir, device)
        teacher.requires_grad_(False)
        teacher.eval()
    teacher_rows = None
    teacher_lora = None
    if config.use_ins:
        if teachers_dir is None:
            raise ValueError("L_ins needs the instance teachers (--teachers)")
        index = read_teacher_index(teachers_dir)
        names = sorted(set(index["task_to_teacher"].values()))
        teacher_lora = load_teacher_weights(teachers_dir, names, model.layout).to(device)
        teacher_rows = [names.index(index["task_to_teacher"][t.name]) for t in task_set.tasks]
    groups = task_set.categories()
    curriculum = config.curriculum
    pairs, probes = (task_set.train, []) if curriculum.kind == "uniform" else split_probes(task_set, curriculum.probe_instances, loop.seed)
    if probes and teacher is None:
        if meta_teacher_dir is None:
            raise ValueError("the tapir curriculum measures difficulty against the meta-trained teacher (--meta-teacher)")
        teacher = load_base(meta_teacher_dir, device)
        teacher.requires_grad_(False)
        teacher.eval()
    current: list[RoundSampler] = []  # the running round's sampler (tapir only)

    def make_batch(indices: list[int], batch_seed: int) -> dict:
        if current:
            indices = current[0].draw(len(indices), batch_seed)
        chosen = [pairs[i] for i in indices]
        tasks = sorted({p.task for p in chosen})
        batch = seq2seq_batch(tokenizer, [p.input for p in chosen], [p.output for p in chosen], config.max_input_tokens, config.max_output_tokens)
        instructions = encode(tokenizer, [task_set.instructions[t] for t in tasks], model.config.max_instruction_tokens)
        batch.update({f"instruction_{k}": v for k, v in instructions.items()})
        batch["rows"] = torch.tensor([tasks.index(p.task) for p in chosen])
        batch["tasks"] = torch.tensor(tasks)
        batch["fusion"] = random.Random(batch_seed).random() >= config.no_fusion_prob
        if config.use_kl:
            concat = encode(tokenizer, concat_inputs(task_set, chosen), 4 * config.max_input_tokens)
            batch.update({f"teacher_{k}": v for k, v in concat.items()})
        return batch

    def student(batch: dict) -> tuple[torch.Tensor, object]:
        # One instruction encoding and one adapter per distinct task of the batch.
        with torch.no_grad():
            states = model.base.encoder(input_ids=batch["instruction_input_ids"], attention_mask=batch["instruction_attention_mask"]).last_hidden_state
        encoding = InstructionEncoding(states, batch["instruction_attention_mask"], masked_mean(states, batch["instruction_attention_mask"]))
        lora = model.generate_lora(encoding)
        rows = batch["rows"]
        fused = encoding.select(rows) if batch["fusion"] else None
        logits = model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"], lora=lora.select(rows), instruction=fused)
        return logits, lora

    def loss_fn(batch: dict) -> tuple[torch.Tensor, dict]:
        logits, lora = student(batch)
        total = logits.new_zeros(())
        metrics = {}
        ce = cross_entropy(logits, batch["labels"])
        metrics["ce"] = float(ce.detach())
        if config.use_ce:
            total = total + ce
        if config.use_kl:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"],
                                         decoder_input_ids=batch["decoder_input_ids"]).logits
            kl = distill_kl(logits, teacher_logits, target_mask(batch["labels"]), config.temperature)
            total = total + config.lambda_kl * kl
            metrics["kl"] = float(kl.detach())
        if teacher_lora is not None:
            rows = torch.tensor([teacher_rows[t] for t in batch["tasks"].tolist()])
            ins = alignment_loss(lora, teacher_lora.select(rows))
            total = total + config.lambda_ins * ins
            metrics["ins"] = float(ins.detach())
        metrics["fusion"] = float(batch["fusion"])
        return total, metrics

    probe = spread(task_set.held_back, config.eval_instances)

    def student_outputs(scored: list[Pair], fusion: bool) -> list[str]:
        """Greedy outputs of the current student (TAGI) on `scored`, one adapter per task."""
        adapters = {t: model.make_adapter(task_set.instructions[t], formatted=True) for t in sorted({p.task for p in scored})}
        outputs = []
        for start in range(0, len(scored), 64):
            chunk = scored[start : start + 64]
            outputs += model.generate([p.input for p in chunk], [adapters[p.task] for p in chunk], fusion=fusion,
                                      max_new_tokens=config.max_output_tokens)
        return outputs

    def evaluate(_step: int) -> dict:
        scores = {}
        for fusion in (True, False):
            result = exact_match_by_group(student_outputs(probe, fusion), probe, groups)
            suffix = "" if fusion else "_no_fusion"
            scores[f"em{suffix}"] = result["em"]
            if fusion:
                scores.update({k: v for k, v in result.items() if k != "em"})
        return scores

    eval_fn = evaluate if probe else None
    if not probes:
        train(model, len(pairs), make_batch, loss_fn, loop, out_dir, name="stage3-distill", resume=resume, eval_fn=eval_fn)
        return

    names = [t.name for t in task_set.tasks]
    teacher_outputs = greedy(teacher, tokenizer, concat_inputs(task_set, probes), 4 * config.max_input_tokens, config.max_output_tokens)
    teacher_em = em_by_task(teacher_outputs, probes, len(names), exact_match)


    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_plans(out_dir, [])
    records = read_plans(out_dir)
    ends = round_ends(loop.steps, curriculum.rounds)
    in_memory = False  # whether the model holds the latest trained state (else: the checkpoint does)
    for index, end in enumerate(ends):
        begin = ends[index - 1] if index else 0
        continuing = resume or index > 0
        last = index == len(ends) - 1
        seeds = [(loop.batch_size, step_seed(loop.seed, step)) for step in range(begin, end)]
        if continuing and not last and has_checkpoint(out_dir) and checkpoint_step(out_dir) >= end:
            if "sampled_mix" not in records[index]:  # interrupted right after the round
                records[index]["sampled_mix"] = sampled_mix(RoundSampler(plan_from_record(records[index]), names, groups, pairs), groups, pairs, seeds)
                write_plans(out_dir, records)
            continue  # the last round always runs: resuming a finished run is what loads its weights
        if len(records) <= index:
            if continuing and not in_memory and has_checkpoint(out_dir):
                load_weights(out_dir, model)  # a resumed run plans from the saved student, not stage 2's
            model.eval()
            student_em = em_by_task(student_outputs(probes, fusion=True), probes, len(names), exact_match)
            plan = plan_round(index, names, groups, teacher_em, student_em, curriculum)
            records = records[:index] + [plan_record(plan)]
            write_plans(out_dir, records)
        plan = plan_from_record(records[index])
        current[:] = [RoundSampler(plan, names, groups, pairs)]
        train(model, len(pairs), make_batch, loss_fn, loop, out_dir, name=f"stage3-distill (tapir round {index + 1}/{len(ends)})",
              resume=continuing, eval_fn=eval_fn, stop_after=end)
        in_memory = True
        records[index] = plan_record(plan, sampled_mix(current[0], groups, pairs, seeds))
        write_plans(out_dir, records)
    current.clear()
