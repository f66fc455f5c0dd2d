"""`tagi train --preset NAME --out DIR`: the synthetic suite, every stage of training.stages,
then the shipped directory and its evaluation.

The output directory is a normal tagi checkpoint plus what `tagi eval` needs:
    teachers/ (PEFT LoRAs, float16), meta_teacher/ (bfloat16 HF T5), pipeline.json, eval.json.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from hypernet.files import atomic_directory, directory_bytes, write_json
from hypernet.io import copy_peft_dir, is_peft_dir, load_checkpoint, save_checkpoint
from training.base_pretrain import read_base_card
from training.common import TEACHER_INDEX, TaskSet, load_task_set
from training.presets import Preset
from training.stages import run_all
from training.suite import SuiteConfig, build_suite
from training.suite_files import write_suite

PIPELINE_FILE = "pipeline.json"
EVAL_FILE = "eval.json"
SNI_TEST_SPLIT = Path("splits") / "subset" / "test_tasks.txt"
SYNTH_SETS = {
    "synthetic_unseen_composition": "unseen_composition",
    "synthetic_unseen_parameter": "unseen_parameter",
    "synthetic_unseen_paraphrase": "unseen_paraphrase",
    "synthetic_natural_wording": "natural_wording",
    "synthetic_unseen_words": "unseen_words",
    "synthetic_train_tasks": "train",
}


def write_synthetic(out: Path, seed: int, suite: SuiteConfig) -> Path:
    write_suite(build_suite(seed, suite), out)
    return out


def train_tasks(work: Path) -> list[str]:
    """The only task files any stage reads."""
    return [str(Path(work) / "data" / "train")]


def work_task_set(recipe: Preset, work: Path) -> TaskSet:
    """The training tasks of `work`, writing the recipe's synthetic suite there first if missing."""
    data = Path(work) / "data"
    if not (data / "splits" / "train.txt").exists():
        write_synthetic(data, recipe.seed, recipe.suite)
    return load_task_set(train_tasks(work), recipe.held_back, recipe.seed)


def package(checkpoint: Path, teachers: Path, meta: Path, out: Path, info: dict, overwrite: bool) -> None:
    """The shipped directory: checkpoint + float16 teachers + bfloat16 meta teacher."""
    model = load_checkpoint(checkpoint)
    save_checkpoint(model, out, overwrite=overwrite)
    with atomic_directory(out / "teachers", overwrite=True) as tmp:
        for src in sorted(p for p in Path(teachers).iterdir() if is_peft_dir(p)):
            copy_peft_dir(src, tmp / src.name, torch.float16)
        shutil.copy(Path(teachers) / TEACHER_INDEX, tmp / TEACHER_INDEX)
    with atomic_directory(out / "meta_teacher", overwrite=True) as tmp:
        # Weights and config only: it shares the checkpoint's tokenizer (base/), which saves
        # 0.6 MB of the 30 MB budget.
        for name in ("config.json", "generation_config.json", "model.safetensors", "meta_card.json"):
            if (Path(meta) / name).exists():
                shutil.copy(Path(meta) / name, tmp / name)
    write_json(out / PIPELINE_FILE, info)


def run_pipeline(
    recipe: Preset,
    out: Path,
    work: Path,
    device: str = "auto",
    resume: bool = True,
    overwrite: bool = False,
    evaluate: bool = True,
    sni_dir: Path | None = None,
) -> dict:
    began = time.time()
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    task_set = work_task_set(recipe, work)
    results = run_all(recipe, work, task_set, device=device, resume=resume, timings=timings)
    info = {
        "preset": recipe.to_dict(),
        "stage_seconds": timings,
        "train_seconds": round(time.time() - began, 1),
        "base": read_base_card(results["base"]),
        "train_tasks": [t.name for t in task_set.tasks],
        "held_back_per_task": recipe.held_back,
        "torch_threads": torch.get_num_threads(),
    }
    package(results["distill"], results["teachers"], results["meta-teacher"], out, info, overwrite=overwrite)
    if evaluate:
        info["eval"] = evaluate_all(out, work, recipe, sni_dir)
        info["total_seconds"] = round(time.time() - began, 1)
        write_json(out / PIPELINE_FILE, info)
    info["bytes"] = directory_bytes(out)
    return info


def evaluate_all(out: Path, work: Path, recipe: Preset, sni_dir: Path | None) -> dict:
    """eval.json: one `tagi eval` result per task set (the SNI test subset when `sni_dir` is given)."""
    from training.evaluate import format_table, run_eval

    results = {}
    for name, split in SYNTH_SETS.items():
        held = recipe.held_back if split == "train" else None
        results[name] = run_eval(
            out, [str(work / "data" / split)], "def", held_back=held, seed=recipe.seed, max_instances=recipe.eval_instances
        )
        print(format_table(results[name], title=f"== {name}"))
    if sni_dir is not None:
        results["sni_test"] = run_eval(
            out,
            [str(Path(sni_dir) / "tasks")],
            "def+2pos",
            max_instances=recipe.eval_instances,
            max_input_tokens=2048,
            split_file=str(Path(sni_dir) / SNI_TEST_SPLIT),
        )
        print(format_table(results["sni_test"], title="== sni_test"))
    write_json(out / EVAL_FILE, results, compact=True)
    return {k: v["overall"] for k, v in results.items()}
