"""The training stages, as one table: what each reads, where it writes, which config it takes.

`tagi train` runs every row in order; `tagi train <stage>` runs one row, reading the results of
the rows it names as inputs from the same work directory. Each stage is a function
`run(recipe, inputs, out)` (its `entry`: in the stage's own module, or below for the two of
stage 1, whose module trains both); it reads the recipe fields named in `reads` (its config)
and the `inputs` results, and writes everything into `out`, its directory under the work
directory. A stage that finished is marked DONE with the config it ran under, so a rerun
reuses it, and refuses to when that config has changed. A stage whose result the user gives
(`tagi train --base DIR`, `--meta-teacher DIR`) is not run: its directory holds given.json.

Under torchrun (training.distributed) every rank runs every stage; rank 0 alone writes what a
stage produces (its checkpoints, its result, its DONE file), and the ranks meet at a barrier
after each stage, so no rank reads a result that is not whole.

Work directory layout:
    data/                    the synthetic suite (only data/train/ reaches any stage), or data/sni/,
                             the pair store of an SNI split (training.sni)
    stage0_base/             base pretraining state, log.jsonl, curves.png; model/ = the base
                             (given.json instead with --base)
    stage1_teachers/         teachers/<name>/ PEFT dirs + index.json; teacher_states/
    stage1_meta_teacher/     state/ (log, plot); model/ = the meta-trained teacher
    stage2_hypernet/         hypernetwork pretraining state; checkpoint/ = tagi checkpoint
    stage3_distill/          distillation state; checkpoint/ = tagi checkpoint
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from hypernet.errors import UserError
from hypernet.files import write_json
from training.common import TaskSet
from training.distributed import barrier, is_main
from training.loop import LoopConfig, config_differences, resume_view
from training.presets import Preset, get_path

DONE = "DONE"
GIVEN = "given.json"
"""What a stage directory holds instead of DONE when the user gave that stage's result."""


@dataclass(frozen=True)
class StageInputs:
    """What a stage reads besides its config."""

    task_set: TaskSet
    """The training tasks (never a held-out task, held-back instances set apart)."""
    results: dict[str, Path]
    """Result of every earlier stage, by stage name (a stage uses those it lists as inputs)."""
    device: str
    resume: bool
    """Continue an interrupted stage from its last checkpoint (else start it over)."""


def stage_loop(recipe: Preset, path: str, device: str) -> LoopConfig:
    """The loop at dotted `path` of the recipe, seeded from the recipe's seed, on `device`."""
    loop = get_path(recipe, path)
    return replace(loop, seed=recipe.seed + loop.seed, device=device)


def run_teachers(recipe: Preset, inputs: StageInputs, out: Path) -> None:
    """Stage 1, instance teachers: out/teachers/<name>/ PEFT directories and index.json."""
    from training.teachers import train_instance_teachers

    train_instance_teachers(
        inputs.task_set,
        inputs.results["base"],
        out / "teachers",
        recipe.teachers,
        stage_loop(recipe, "teachers.teacher_loop", inputs.device),
        resume=inputs.resume,
    )


def run_meta_teacher(recipe: Preset, inputs: StageInputs, out: Path) -> None:
    """Stage 1, the meta-trained teacher: out/model (bfloat16, the base's own class), its state in out/state."""
    from training.teachers import train_meta_teacher

    train_meta_teacher(
        inputs.task_set,
        inputs.results["base"],
        out,
        recipe.teachers,
        stage_loop(recipe, "teachers.meta_loop", inputs.device),
        resume=inputs.resume,
    )


def _distill_needs(recipe: Preset) -> tuple[str, ...]:
    """Stage 3 reads the meta teacher only for L_kl, TAPIR or CITING, the instance teachers only for
    L_ins or CITING (whose revisions come from the better of the two per task)."""
    config = recipe.distill
    citing = "citing" in config.curriculum.kind
    meta = ("meta-teacher",) if config.use_kl or config.curriculum.kind != "uniform" else ()
    return ("hypernet-pretrain", *meta, *(("teachers",) if config.use_ins or citing else ()))


@dataclass(frozen=True)
class Stage:
    """One row of the table: everything `tagi train` needs to know about a stage."""

    name: str
    """Its `tagi train <name>` subcommand and its key in StageInputs.results."""
    directory: str
    """Its directory under the work directory."""
    inputs: tuple[str, ...]
    """Earlier stages whose results it may read."""
    reads: tuple[str, ...]
    """Recipe fields (dotted paths) that make its config: a change to any invalidates its result."""
    loop: str
    """Dotted recipe path of its LoopConfig (what `--steps` changes)."""
    result: str
    """Its product, relative to its directory."""
    entry: str
    """Its `run(recipe, inputs, out)`, as module.function (imported when it runs, so the CLI
    builds its parser without loading every stage)."""
    help: str
    needs: Callable[[Preset], tuple[str, ...]] | None = None
    """The inputs a given recipe makes it read (default: all of `inputs`)."""

    def needed(self, recipe: Preset) -> tuple[str, ...]:
        return self.needs(recipe) if self.needs is not None else self.inputs

    def run(self, recipe: Preset, inputs: StageInputs, out: Path) -> None:
        module, _, function = self.entry.rpartition(".")
        getattr(importlib.import_module(module), function)(recipe, inputs, out)


# The two stage-1 stages share TeacherConfig; each depends on its own part of it.
INSTANCE_TEACHERS = tuple(
    f"teachers.{name}"
    for name in ("per", "rank", "alpha", "target_modules", "teacher_loop", "max_input_tokens", "max_output_tokens")
)
META_TEACHER = tuple(f"teachers.{name}" for name in ("meta_loop", "max_input_tokens", "max_output_tokens", "eval_instances"))

STAGES: tuple[Stage, ...] = (
    Stage(
        "base",
        "stage0_base",
        (),
        ("seed", "held_back", "suite", "base"),
        "base.loop",
        "model",
        "training.base_pretrain.run",
        "stage 0: tokenizer + tiny base from scratch (span corruption or continuation + instruction-free skills)",
    ),
    Stage(
        "teachers",
        "stage1_teachers",
        ("base",),
        ("seed", "held_back", "sni", *INSTANCE_TEACHERS),
        "teachers.teacher_loop",
        "teachers",
        "training.stages.run_teachers",
        "stage 1: one PEFT LoRA per training task (or function, or category)",
    ),
    Stage(
        "meta-teacher",
        "stage1_meta_teacher",
        ("base",),
        ("seed", "held_back", "sni", *META_TEACHER),
        "teachers.meta_loop",
        "model",
        "training.stages.run_meta_teacher",
        "stage 1: the meta-trained teacher (base finetuned on instruction + input)",
    ),
    Stage(
        "hypernet-pretrain",
        "stage2_hypernet",
        ("base",),
        ("seed", "held_back", "sni", "generator", "instruction_encoder", "instruction_template", "hypernet_pretrain"),
        "hypernet_pretrain.loop",
        "checkpoint",
        "training.hypernet_pretrain.run",
        "stage 2: hypernetwork pretraining (a -> generator, b -> input, c -> target)",
    ),
    Stage(
        "distill",
        "stage3_distill",
        ("hypernet-pretrain", "meta-teacher", "teachers"),
        ("seed", "held_back", "sni", "distill"),
        "distill.loop",
        "checkpoint",
        "training.distill.run",
        "stage 3: distillation into the generator, L_ce + lambda1 L_kl + lambda2 L_ins",
        needs=_distill_needs,
    ),
)
STAGE = {stage.name: stage for stage in STAGES}


def stage_config(stage: Stage, recipe: Preset) -> dict:
    """The part of the recipe `stage` depends on, as recorded in its DONE file (JSON values;
    where and how fast a loop runs is left out: a stage may finish on another machine)."""
    return {name: resume_view(get_path(recipe, name)) for name in stage.reads}


def result_path(stage: Stage, work: Path) -> Path:
    """Where `stage`'s result is: the one given for it (record_given), else its own product."""
    given = Path(work) / stage.directory / GIVEN
    if given.exists():
        return Path(json.loads(given.read_text())["result"])
    return Path(work) / stage.directory / stage.result


def run_stage(stage: Stage, recipe: Preset, inputs: StageInputs, out: Path) -> Path:
    """Run `stage` in `out` unless it finished there under the same config; returns its result."""
    out = Path(out)
    config = stage_config(stage, recipe)
    if (out / GIVEN).exists():
        used = json.loads((out / GIVEN).read_text())["result"]
        raise UserError(f"{out} was run with the {stage.name} {used} given; give it again or use another --work")
    if (out / DONE).exists():
        changed = config_differences(json.loads((out / DONE).read_text()).get("config"), config)
        if changed:
            raise UserError(
                f"{out} holds a finished `{stage.name}` stage of another config ({'; '.join(changed)}); "
                "use another --work directory, or delete that stage directory to retrain it"
            )
        return out / stage.result
    missing = [name for name in stage.needed(recipe) if name not in inputs.results]
    if missing:
        raise ValueError(f"stage {stage.name} needs the results of {missing}")
    stage.run(recipe, inputs, out)
    if is_main():
        write_json(out / DONE, {"stage": stage.name, "config": config})
    barrier()
    return out / stage.result


def record_given(stage: Stage, result: Path, out: Path) -> Path:
    """A stage whose result the user supplies (`tagi train --base DIR`, `--meta-teacher DIR`) is not
    run: its directory records what was used, and the later stages, trained on it, are not reused
    with another one."""
    out, record = Path(out), {"stage": stage.name, "result": str(Path(result).resolve())}
    if (out / DONE).exists():
        raise UserError(f"{out} holds a `{stage.name}` stage trained here; use another --work to give one instead")
    if (out / GIVEN).exists() and json.loads((out / GIVEN).read_text()) != record:
        used = json.loads((out / GIVEN).read_text())["result"]
        raise UserError(f"{out} was run with {stage.name} {used}, not {result}; use another --work")
    if is_main():  # every rank uses the given path itself; only the record is rank 0's to write
        write_json(out / GIVEN, record)
    return Path(result)


def run_all(
    recipe: Preset,
    work: Path,
    task_set: TaskSet,
    device: str = "auto",
    resume: bool = True,
    timings: dict[str, float] | None = None,
    given: dict[str, Path] | None = None,
) -> dict[str, Path]:
    """Every stage in table order in `work`; returns each stage's result by name. A stage named in
    `given` is not run: its result is the given path, recorded in its directory (record_given)."""
    results: dict[str, Path] = {}
    for stage in STAGES:
        if given and stage.name in given:
            results[stage.name] = record_given(stage, given[stage.name], Path(work) / stage.directory)
            continue
        began = time.time()
        results[stage.name] = run_stage(
            stage, recipe, StageInputs(task_set, dict(results), device, resume), Path(work) / stage.directory
        )
        if timings is not None:
            timings[stage.directory] = round(time.time() - began, 1)
    return results
