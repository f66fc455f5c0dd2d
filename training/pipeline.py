"""`tagi train`: the training tasks, every stage of training.stages, then the shipped directory
and its evaluation.

Two worlds, chosen by the recipe:
- the synthetic list world (`--preset tiny`): the suite is written into the work directory and
  stage 0 builds the base from scratch;
- a local Hugging Face base, T5 or causal (`--recipe configs/t5-lm-adapt-base.yaml --base DIR --sni DIR`, a
  recipe with an `sni` section): stage 0 is skipped, the base is given, the tasks are a split of
  Super-Natural Instructions (training.sni), and `--meta-teacher DIR` may give stage 1's
  meta-trained teacher (e.g. Tk-Instruct) instead of training it.

The output directory is a normal tagi checkpoint plus what `tagi eval` needs:
    teachers/ (PEFT LoRAs, float16), meta_teacher/ (HF base), pipeline.json, eval.json.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from hypernet.errors import UserError
from hypernet.families import read_family
from hypernet.files import SPIECE, atomic_directory, directory_bytes, write_json
from hypernet.io import copy_peft_dir, is_peft_dir, load_checkpoint, save_checkpoint
from training.base_pretrain import read_base_card
from training.common import TEACHER_INDEX, TaskSet, load_task_set
from training.distributed import barrier, is_main
from training.loop import resolve_device
from training.presets import Preset
from training.sni import TEST_LIST, sni_task_set, split_tasks
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


def work_task_set(recipe: Preset, work: Path, sni_dir: Path | None = None) -> TaskSet:
    """The training tasks of `work`: with an `sni` recipe, the split of `sni_dir` (its pairs stored
    under work/data/sni by rank 0, opened by the others); else the recipe's synthetic suite,
    written there first if missing."""
    data = Path(work) / "data"
    if recipe.sni is not None:
        if sni_dir is None:
            raise UserError(f"recipe {recipe.name} trains on Super-Natural Instructions: pass --sni DIR")

        def task_set(rank0: bool) -> TaskSet:
            config = recipe.sni
            return sni_task_set(
                sni_dir,
                config.split,
                data / "sni",
                prompt_format=config.prompt_format,
                max_instances_per_task=config.max_instances_per_task,
                held_back=recipe.held_back,
                seed=recipe.seed,
                rank0=rank0,
            )

        built = task_set(rank0=True) if is_main() else None
        barrier()
        return built if built is not None else task_set(rank0=False)
    if is_main() and not (data / "splits" / "train.txt").exists():
        write_synthetic(data, recipe.seed, recipe.suite)
    barrier()  # the other ranks read the suite rank 0 wrote
    return load_task_set(train_tasks(work), recipe.held_back, recipe.seed)


def check_base_dir(path: Path, option: str) -> Path:
    """`path` if it is a local Hugging Face base tagi can train on (a T5, or a causal LM of a family
    hypernet.families supports), else one UserError line naming what is wrong (before any stage
    starts, not as a traceback an hour in)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{option} {path}: no such directory")
    read_family(path, option)
    if not ((path / "tokenizer_config.json").is_file() or (path / SPIECE).is_file()):
        raise UserError(f"{option} {path} has no tokenizer (tokenizer_config.json or {SPIECE})")
    if not ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()):
        raise UserError(
            f"{option} {path} has no safetensors weights (model.safetensors); tagi loads no pickle: "
            "convert pytorch_model.bin with transformers' save_pretrained(safe_serialization=True)"
        )
    return path


META_FILES = ("config.json", "generation_config.json", "meta_card.json", "model.safetensors.index.json")


def package(checkpoint: Path, teachers: Path, meta: Path, out: Path, info: dict, overwrite: bool) -> None:
    """The shipped directory: checkpoint + float16 teachers + the meta teacher as stored."""
    model = load_checkpoint(checkpoint)
    save_checkpoint(model, out, overwrite=overwrite)
    with atomic_directory(out / "teachers", overwrite=True) as tmp:
        for src in sorted(p for p in Path(teachers).iterdir() if is_peft_dir(p)):
            copy_peft_dir(src, tmp / src.name, torch.float16)
        shutil.copy(Path(teachers) / TEACHER_INDEX, tmp / TEACHER_INDEX)
    with atomic_directory(out / "meta_teacher", overwrite=True) as tmp:
        # Weights and config only (one file or shards): it shares the checkpoint's tokenizer
        # (base/), which saves 0.6 MB of the tiny checkpoint's 30 MB budget.
        for src in sorted(Path(meta).iterdir()):
            if src.name in META_FILES or src.suffix == ".safetensors":
                shutil.copy(src, tmp / src.name)
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
    base: Path | None = None,
    meta_teacher: Path | None = None,
) -> dict | None:
    """Every stage, then (rank 0) the shipped directory `out` and its evaluation; returns
    pipeline.json's content on rank 0, None on the other ranks. `base` (an `sni` recipe only)
    replaces stage 0, `meta_teacher` the meta-teacher stage."""
    began = time.time()
    given = given_results(recipe, base, meta_teacher)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    task_set = work_task_set(recipe, work, sni_dir)
    results = run_all(recipe, work, task_set, device=device, resume=resume, timings=timings, given=given)
    if not is_main():
        return None  # rank 0 packages and evaluates alone (no barrier: that may outlast --dist-timeout)
    info = {
        "preset": recipe.to_dict(),
        "stage_seconds": timings,
        "train_seconds": round(time.time() - began, 1),
        "base": read_base_card(results["base"]) if base is None else {"path": str(Path(base).resolve())},
        "meta_teacher_given": None if meta_teacher is None else str(Path(meta_teacher).resolve()),
        "train_tasks": [t.name for t in task_set.tasks],
        "train_pairs": len(task_set.train),
        "held_back_per_task": recipe.held_back,
        "torch_threads": torch.get_num_threads(),
    }
    package(results["distill"], results["teachers"], results["meta-teacher"], out, info, overwrite=overwrite)
    if evaluate:
        info["eval"] = evaluate_all(out, work, recipe, sni_dir, device)
        info["total_seconds"] = round(time.time() - began, 1)
        write_json(out / PIPELINE_FILE, info)
    info["bytes"] = directory_bytes(out)
    return info


def given_results(recipe: Preset, base: Path | None, meta_teacher: Path | None) -> dict[str, Path]:
    """The stage results the user supplies, checked: an `sni` recipe needs --base (there is no
    stage 0 for a real base), the synthetic world builds its own."""
    if recipe.sni is None and base is not None:
        raise UserError(
            f"recipe {recipe.name} trains the synthetic world's from-scratch base; with --base use a recipe with an "
            "`sni` section (configs/sni-smoke.yaml, configs/t5-lm-adapt-base.yaml)"
        )
    if recipe.sni is not None and base is None:
        raise UserError(f"recipe {recipe.name} trains a local base on Super-Natural Instructions: pass --base DIR")
    if base is None:
        if meta_teacher is not None:
            raise UserError("--meta-teacher needs --base: the teacher must share the base's vocabulary")
        return {}
    given = {"base": check_base_dir(base, "--base")}
    if meta_teacher is not None:
        given["meta-teacher"] = check_base_dir(meta_teacher, "--meta-teacher")
        families = [read_family(given[name]).name for name in ("base", "meta-teacher")]
        if families[0] != families[1]:
            raise UserError(
                f"--meta-teacher {meta_teacher} is a {families[1]} model, the base a {families[0]}: L_kl aligns their "
                "answer positions, so the teacher must be a finetune of the base"
            )
        sizes = [json.loads((given[name] / "config.json").read_text()).get("vocab_size") for name in ("base", "meta-teacher")]
        if sizes[0] != sizes[1]:
            raise UserError(
                f"--meta-teacher {meta_teacher} has a vocabulary of {sizes[1]} tokens, the base {sizes[0]}: L_kl compares "
                "their distributions token by token, so the teacher must be a finetune of the same base family"
            )
    return given


def evaluate_all(out: Path, work: Path, recipe: Preset, sni_dir: Path | None, device: str) -> dict:
    """eval.json: one `tagi eval` result per task set: the synthetic sets and the repository's SNI
    test subset (when `sni_dir` is given), or with an `sni` recipe the split's test tasks."""
    from training.evaluate import format_table, run_eval

    if recipe.sni is not None:
        return evaluate_sni(out, recipe, sni_dir, device)
    results = {}
    for name, split in SYNTH_SETS.items():
        held = recipe.held_back if split == "train" else None
        results[name] = run_eval(
            out,
            [str(work / "data" / split)],
            "def",
            held_back=held,
            seed=recipe.seed,
            max_instances=recipe.eval_instances,
            max_new_tokens=recipe.eval_max_new_tokens,
            max_tasks=recipe.eval_tasks,
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
            max_tasks=recipe.eval_tasks,
        )
        print(format_table(results["sni_test"], title="== sni_test"))
    write_json(out / EVAL_FILE, results, compact=True)
    return {k: v["overall"] for k, v in results.items()}


def evaluate_sni(out: Path, recipe: Preset, sni_dir: Path, device: str) -> dict:
    """eval.json of an `sni` recipe: the split's test tasks as Tk-Instruct scores them (their first
    `test_instances` instances, the recipe's prompt format), inputs cut at the teachers' limit."""
    from training.evaluate import format_table, run_eval

    config = recipe.sni
    result = run_eval(
        out,
        [str(path) for path in split_tasks(sni_dir, config.split, TEST_LIST)],
        config.prompt_format,
        max_instances=config.test_instances,
        max_input_tokens=recipe.teachers.max_input_tokens,
        max_new_tokens=recipe.distill.max_output_tokens,
        device=resolve_device(device).type,
    )
    print(format_table(result, title="== sni_test"))
    write_json(out / EVAL_FILE, {"sni_test": result}, compact=True)
    return {"sni_test": result["overall"]}
