"""`tagi train --preset NAME --out DIR`: every stage end to end, then the shipped checkpoint.

Work directory layout (each stage resumes from its own state; a finished stage is skipped):
    data/                    the synthetic suite (only data/train/ reaches any stage)
    stage0_base/             base pretraining state, log.jsonl, curves.png; model/ = the base
    stage1_teachers/         teachers/<name>/ PEFT dirs + index.json; teacher_states/
    stage1_meta_teacher/     state/ (log, plot); model/ = the meta-trained teacher
    stage2_hypernet/         hypernetwork pretraining state; checkpoint/ = tagi checkpoint
    stage3_distill/          finetuning state; checkpoint/ = tagi checkpoint
The output directory is a normal tagi checkpoint plus what `tagi eval` needs:
    teachers/ (PEFT LoRAs, float16), meta_teacher/ (bfloat16 HF T5), pipeline.json.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from hypernet.config import CheckpointConfig, GeneratorConfig
from hypernet.io import atomic_directory, copy_peft_dir, create_checkpoint, is_peft_dir, load_checkpoint, save_checkpoint
from training.base_pretrain import pretrain_base, read_base_card
from training.common import TaskSet, load_task_set
from training.data import DEFINITION_TEMPLATE
from training.distill import finetune
from training.hypernet_pretrain import pretrain_hypernet
from training.loop import LoopConfig, resolve_device
from training.presets import Preset
from training.suite import SuiteConfig, build_suite
from training.suite_files import write_suite
from training.teachers import INDEX_FILE, train_instance_teachers, train_meta_teacher

DONE = "DONE"
DISTILL_DIR = "stage3_distill"
SYNTH_SETS = {
    "synthetic_unseen_composition": "unseen_composition",
    "synthetic_unseen_parameter": "unseen_parameter",
    "synthetic_unseen_paraphrase": "unseen_paraphrase",
    "synthetic_train_tasks": "train",
}


def write_synthetic(out: Path, seed: int, suite_values: dict[str, int]) -> Path:
    suite = build_suite(seed, SuiteConfig(**suite_values))
    write_suite(suite, out)
    return out


def train_tasks(work: Path) -> list[str]:
    """The only task files any stage reads."""
    return [str(work / "data" / "train")]


def _done(path: Path) -> bool:
    return (path / DONE).exists()


def _mark(path: Path, info: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / DONE).write_text(json.dumps(info, indent=2) + "\n")


def loop_for(loop: LoopConfig, seed: int, device: str) -> LoopConfig:
    return replace(loop, seed=seed + loop.seed, device=device)


def checkpoint_config(preset: Preset) -> CheckpointConfig:
    generator = GeneratorConfig(rank=preset.generator_rank, alpha=preset.generator_alpha, target_modules=preset.target_modules)
    # Stages feed the generator SNI "def" prompts, so a user's bare instruction gets the same form.
    template = DEFINITION_TEMPLATE.replace("{definition}", "{instruction}")
    return CheckpointConfig(generator=generator, instruction_template=template, max_instruction_tokens=1024,
                            max_input_tokens=preset.distill.max_input_tokens * 8)


def stage_base(preset: Preset, work: Path, task_set: TaskSet, device: str, resume: bool) -> Path:
    stage = work / "stage0_base"
    if not _done(stage):
        pretrain_base(task_set, stage, preset.base, loop_for(preset.base.loop, preset.seed, device), preset.seed, resume=resume,
                      world_config=SuiteConfig(**preset.suite))
        _mark(stage, {"stage": "base"})
    return stage / "model"


def stage_teachers(preset: Preset, work: Path, task_set: TaskSet, base: Path, device: str, resume: bool) -> Path:
    stage = work / "stage1_teachers"
    if not _done(stage):
        train_instance_teachers(task_set, base, stage / "teachers", preset.teachers, loop_for(preset.teachers.teacher_loop, preset.seed, device), resume=resume)
        _mark(stage, {"stage": "teachers"})
    return stage / "teachers"


def stage_meta_teacher(preset: Preset, work: Path, task_set: TaskSet, base: Path, device: str, resume: bool) -> Path:
    stage = work / "stage1_meta_teacher"
    if not _done(stage):
        train_meta_teacher(task_set, base, stage, preset.teachers, loop_for(preset.teachers.meta_loop, preset.seed, device), resume=resume)
        _mark(stage, {"stage": "meta_teacher"})
    return stage / "model"


def stage_hypernet(preset: Preset, work: Path, task_set: TaskSet, base: Path, device: str, resume: bool) -> Path:
    stage = work / "stage2_hypernet"
    ckpt = stage / "checkpoint"
    if not _done(stage):
        if not (ckpt / "config.json").exists():
            create_checkpoint(base, ckpt, checkpoint_config(preset), seed=preset.seed, overwrite=True)
        model = load_checkpoint(ckpt, device=resolve_device(device))
        pretrain_hypernet(model, task_set, stage, preset.hypernet_pretrain, loop_for(preset.hypernet_pretrain.loop, preset.seed, device), resume=resume)
        save_checkpoint(model.to("cpu"), ckpt, overwrite=True)
        _mark(stage, {"stage": "hypernet_pretrain"})
    return ckpt


def stage_distill(preset: Preset, work: Path, task_set: TaskSet, start: Path, meta: Path | None, teachers: Path | None, device: str,
                  resume: bool, stage_dir: Path | None = None) -> Path:
    stage = stage_dir or work / DISTILL_DIR
    ckpt = stage / "checkpoint"
    if not _done(stage):
        model = load_checkpoint(start, device=resolve_device(device))
        finetune(model, task_set, stage, preset.distill, loop_for(preset.distill.loop, preset.seed, device), meta, teachers, resume=resume)
        save_checkpoint(model.to("cpu"), ckpt, overwrite=True)
        _mark(stage, {"stage": "distill"})
    return ckpt


def package(checkpoint: Path, teachers: Path, meta: Path, out: Path, info: dict, overwrite: bool) -> None:
    """The shipped directory: checkpoint + float16 teachers + bfloat16 meta teacher."""
    model = load_checkpoint(checkpoint)
    save_checkpoint(model, out, overwrite=overwrite)
    with atomic_directory(out / "teachers", overwrite=True) as tmp:
        for src in sorted(p for p in Path(teachers).iterdir() if is_peft_dir(p)):
            copy_peft_dir(src, tmp / src.name, torch.float16)
        shutil.copy(Path(teachers) / INDEX_FILE, tmp / INDEX_FILE)
    with atomic_directory(out / "meta_teacher", overwrite=True) as tmp:
        # Weights and config only: it shares the checkpoint's tokenizer (base/), which saves
        # 0.6 MB of the 30 MB budget.
        for name in ("config.json", "generation_config.json", "model.safetensors", "meta_card.json"):
            if (Path(meta) / name).exists():
                shutil.copy(Path(meta) / name, tmp / name)
    (out / "pipeline.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run_pipeline(preset: Preset, out: Path, work: Path, device: str = "auto", resume: bool = True, overwrite: bool = False,
                 evaluate: bool = True, sni_dir: Path | None = None) -> dict:
    began = time.time()
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args):
        start = time.time()
        result = fn(*args)
        timings[name] = round(time.time() - start, 1)
        return result

    data = work / "data"
    if not (data / "splits" / "train.txt").exists():
        write_synthetic(data, preset.seed, preset.suite)
    task_set = load_task_set(train_tasks(work), preset.held_back, preset.seed)
    base = timed("stage0_base", stage_base, preset, work, task_set, device, resume)
    teachers = timed("stage1_teachers", stage_teachers, preset, work, task_set, base, device, resume)
    meta = timed("stage1_meta_teacher", stage_meta_teacher, preset, work, task_set, base, device, resume)
    pretrained = timed("stage2_hypernet", stage_hypernet, preset, work, task_set, base, device, resume)
    final = timed("stage3_distill", stage_distill, preset, work, task_set, pretrained, meta, teachers, device, resume)
    info = {
        "preset": preset.to_dict(),
        "stage_seconds": timings,
        "train_seconds": round(time.time() - began, 1),
        "base": read_base_card(base),
        "train_tasks": [t.name for t in task_set.tasks],
        "held_back_per_task": preset.held_back,
        "torch_threads": torch.get_num_threads(),
    }
    package(final, teachers, meta, out, info, overwrite=overwrite)
    if evaluate:
        info["eval"] = evaluate_all(out, work, preset, sni_dir)
        info["total_seconds"] = round(time.time() - began, 1)
        (out / "pipeline.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    info["bytes"] = directory_bytes(out)
    return info


def evaluate_all(out: Path, work: Path, preset: Preset, sni_dir: Path | None) -> dict:
    """eval.json: one `tagi eval` result per task set."""
    from training.evaluate import format_table, run_eval, write_json

    results = {}
    for name, split in SYNTH_SETS.items():
        held = preset.held_back if split == "train" else None
        results[name] = run_eval(out, [str(work / "data" / split)], "def", held_back=held, seed=preset.seed,
                                 max_instances=preset.eval_instances)
        print(format_table(results[name], title=f"== {name}"))
    if sni_dir is not None and (Path(sni_dir) / "splits" / "subset_test.txt").exists():
        results["sni_test"] = run_eval(out, [str(Path(sni_dir) / "tasks")], "def+2pos", max_instances=preset.eval_instances,
                                       max_input_tokens=2048, split_file=str(Path(sni_dir) / "splits" / "subset_test.txt"))
        print(format_table(results["sni_test"], title="== sni_test"))
    write_json(out / "eval.json", results)
    return {k: v["overall"] for k, v in results.items()}


def describe(preset: Preset) -> str:
    return json.dumps(asdict(preset), indent=2)
