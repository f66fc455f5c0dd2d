"""Training commands of `tagi`: `data synth`, `train [<stage>]`, `eval`.

`hypernet.cli` calls `register(sub, bench)` when this module exists. Every stage is its own
subcommand working in a shared --work directory (see training.pipeline for the layout);
`tagi train --preset NAME --out DIR` runs them all and writes the shipped checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hypernet.cli import UsageError, add_checkpoint_argument, resolve_checkpoint

STAGES = ("base", "teachers", "meta-teacher", "hypernet-pretrain", "distill")


# ---- data ------------------------------------------------------------------------------------

def cmd_data_synth(args: argparse.Namespace) -> None:
    from training.pipeline import write_synthetic
    from training.presets import get_preset

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"{out} is not empty; pass --overwrite to write into it (stale tasks are refused)")
    write_synthetic(out, args.seed, get_preset(args.preset).suite)
    counts = {p.name: len(list(p.glob("*.json"))) for p in sorted(out.iterdir()) if p.is_dir() and p.name != "splits"}
    print(f"wrote the synthetic suite (seed {args.seed}) to {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


# ---- train -----------------------------------------------------------------------------------

def _preset(args: argparse.Namespace):
    from dataclasses import replace

    from training.presets import get_preset, with_threads

    preset = get_preset(args.preset)
    if args.seed is not None:
        preset = replace(preset, seed=args.seed)
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        preset = with_threads(preset, args.threads)
    return preset


def _steps(args: argparse.Namespace, loop):
    from training.presets import with_steps

    return with_steps(loop, steps=args.steps)


def _work_task_set(args: argparse.Namespace, preset):
    from training.common import load_task_set
    from training.pipeline import train_tasks, write_synthetic

    work = Path(args.work)
    if args.tasks:
        return load_task_set(args.tasks, preset.held_back, preset.seed)
    if not (work / "data" / "splits" / "train.txt").exists():
        write_synthetic(work / "data", preset.seed, preset.suite)
    return load_task_set(train_tasks(work), preset.held_back, preset.seed)


def _need(path: Path, what: str, stage: str) -> Path:
    if not path.exists():
        raise UsageError(f"{what} not found at {path}; run `tagi train {stage}` first (same --work)")
    return path


def cmd_train(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from training import pipeline as P

    if args.stage is None:
        if not args.out:
            raise UsageError("tagi train without a stage runs every stage and needs --out DIR (or name a stage)")
        out = Path(args.out)
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise UsageError(f"{out} exists; pass --overwrite to replace it")
        preset = _preset(args)
        work = Path(args.work) if args.work else Path("runs") / f"train-{preset.name}"
        info = P.run_pipeline(preset, out, work, device=args.device, resume=not args.no_resume, overwrite=True,
                              evaluate=not args.no_eval, sni_dir=None if args.no_sni else Path(args.sni))
        import shlex
        import sys

        from training.card import write_card

        write_card(out, "tagi " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
        print(f"wrote {out} ({info['bytes'] / 1e6:.1f} MB) in {info['train_seconds'] / 60:.1f} min of training; stages: {info['stage_seconds']}")
        return
    if args.stage == "finetune":  # the name for stage 3
        args.stage = "distill"
    preset = _preset(args)
    if args.steps is not None:
        loops = {
            "base": ("base", "loop"), "teachers": ("teachers", "teacher_loop"), "meta-teacher": ("teachers", "meta_loop"),
            "hypernet-pretrain": ("hypernet_pretrain", "loop"), "distill": ("distill", "loop"),
        }
        part, field = loops[args.stage]
        section = getattr(preset, part)
        section = replace(section, **{field: _steps(args, getattr(section, field))})
        preset = replace(preset, **{part: section})
    work = Path(args.work)
    task_set = _work_task_set(args, preset)
    resume = not args.no_resume
    device = args.device
    if args.stage == "base":
        path = P.stage_base(preset, work, task_set, device, resume)
    elif args.stage == "teachers":
        base = _need(work / "stage0_base" / "model", "the base", "base")
        path = P.stage_teachers(preset, work, task_set, base, device, resume)
    elif args.stage == "meta-teacher":
        base = _need(work / "stage0_base" / "model", "the base", "base")
        path = P.stage_meta_teacher(preset, work, task_set, base, device, resume)
    elif args.stage == "hypernet-pretrain":
        base = _need(work / "stage0_base" / "model", "the base", "base")
        path = P.stage_hypernet(preset, work, task_set, base, device, resume)
    else:
        start = _need(work / "stage2_hypernet" / "checkpoint", "the pretrained hypernetwork", "hypernet-pretrain")
        distill = preset.distill
        distill = replace(distill, use_ce=not args.no_ce, use_kl=not args.no_kl and distill.use_kl, use_ins=not args.no_ins and distill.use_ins)
        if args.lambda_kl is not None:
            distill = replace(distill, lambda_kl=args.lambda_kl)
        if args.lambda_ins is not None:
            distill = replace(distill, lambda_ins=args.lambda_ins)
        if args.curriculum is not None:
            distill = replace(distill, curriculum=replace(distill.curriculum, kind=args.curriculum))
        preset = replace(preset, distill=distill)
        meta = work / "stage1_meta_teacher" / "model"
        teachers = work / "stage1_teachers" / "teachers"
        if distill.use_kl:
            _need(meta, "the meta-trained teacher", "meta-teacher")
        if distill.use_ins:
            _need(teachers, "the instance teachers", "teachers")
        stage_dir = Path(args.stage_dir) if args.stage_dir else work / P.DISTILL_DIR
        path = P.stage_distill(preset, work, task_set, start, meta, teachers, device, resume, stage_dir=stage_dir)
    print(f"stage {args.stage} done: {path}")


# ---- eval ------------------------------------------------------------------------------------

def cmd_eval(args: argparse.Namespace) -> None:
    from training.evaluate import format_table, run_eval, write_json

    checkpoint = resolve_checkpoint(args.checkpoint)
    result = run_eval(checkpoint, args.tasks, args.format, held_back=args.held_back, seed=args.seed,
                      max_instances=args.max_instances, max_input_tokens=args.max_input_tokens,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, device=args.device, split_file=args.split)
    print(format_table(result))
    if args.json:
        write_json(Path(args.json), result)
        print(f"wrote {args.json}")


# ---- curriculum ablation ---------------------------------------------------------------------

def cmd_ablate_curriculum(args: argparse.Namespace) -> None:
    from training.ablation import run_ablation
    from training.card import write_card

    preset = _preset(args)
    out = Path(args.out)
    if not (out / "pipeline.json").exists():
        raise UsageError(f"{out} is not a `tagi train` output (no pipeline.json); pass the checkpoint the pipeline wrote")
    work = Path(args.work) if args.work else Path("runs") / f"train-{preset.name}"
    try:
        report = run_ablation(preset, work, out, None if args.no_sni else Path(args.sni), device=args.device, resume=not args.no_resume)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    write_card(out)
    means = report["synthetic_mean_exact_match"]
    print(f"wrote {out / 'curriculum.json'}: synthetic held-out mean exact match uniform {means['uniform']:.1f}, "
          f"tapir {means['tapir']:.1f}; winner {report['winner']}")


# ---- registration ----------------------------------------------------------------------------

def _common_train_args(p: argparse.ArgumentParser) -> None:
    from training.presets import PRESETS

    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="sizes and budgets of every stage (default: tiny; smoke: ~1 minute, for tests)")
    p.add_argument("--seed", type=int, default=None, help="seed of data, initialisation and batch order (default: the preset's, 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train; bf16 autocast on CUDA (default: auto)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads of every stage (default: the preset's; tiny uses all cores, so run it alone, "
                   "or pass 1 when sharing the machine)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming from the last periodic checkpoint")


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction | None = None) -> None:
    data = sub.add_parser("data", help="build training data", description="Build training data.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="{synth}")
    synth = data_sub.add_parser("synth", help="write the synthetic list-world suite in SNI format",
                                description="Write the synthetic list-world suite: <out>/<split>/<task>.json and <out>/splits/<split>.txt "
                                "for the splits train, unseen_composition, unseen_parameter, unseen_paraphrase.")
    synth.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    synth.add_argument("--seed", type=int, default=0, help="suite seed: the same seed gives identical tasks (default 0)")
    synth.add_argument("--preset", choices=("tiny", "smoke"), default="tiny", help="suite size of this preset (default: tiny = the full suite)")
    synth.add_argument("--overwrite", action="store_true", help="write into a non-empty directory")
    synth.set_defaults(func=cmd_data_synth)

    train = sub.add_parser("train", help="train: every stage (--preset/--out) or one stage",
                           description="Without a stage: run every stage end to end in --work and write the shipped checkpoint to "
                           "--out (a tagi checkpoint + teachers/ + meta_teacher/ + eval.json). With a stage: run that stage only, "
                           "reading earlier stages' results from --work.")
    _common_train_args(train)
    train.add_argument("--out", metavar="DIR", help="output checkpoint directory (all stages)")
    train.add_argument("--work", metavar="DIR", help="work directory for stage states, logs, plots (default: runs/train-<preset>)")
    train.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    train.add_argument("--no-eval", action="store_true", help="skip the final evaluation (eval.json)")
    train.add_argument("--sni", default="/work/shared/data/sni", metavar="DIR", help="SNI subset directory for the sni_test evaluation")
    train.add_argument("--no-sni", action="store_true", help="skip the SNI evaluation")
    stages = train.add_subparsers(dest="stage", required=False, metavar="{" + ",".join(STAGES) + "}")
    helps = {
        "base": "stage 0: tokenizer + tiny T5 from scratch (span corruption + instruction-free skills)",
        "teachers": "stage 1: one PEFT LoRA per training task (or category)",
        "meta-teacher": "stage 1: the meta-trained teacher (base finetuned on instruction + input)",
        "hypernet-pretrain": "stage 2: hypernetwork pretraining (a -> generator, b -> input, c -> target)",
        "distill": "stage 3: finetuning with L_ce + lambda1 L_kl + lambda2 L_ins",
    }
    for stage in STAGES:
        aliases = ["finetune"] if stage == "distill" else []
        p = stages.add_parser(stage, help=helps[stage], description=helps[stage], aliases=aliases)
        _common_train_args(p)
        p.add_argument("--work", required=True, metavar="DIR", help="work directory shared by the stages")
        p.add_argument("--tasks", nargs="+", metavar="PATH", help="training task files/directories (default: the synthetic suite's train split in --work)")
        p.add_argument("--steps", type=int, help="override the preset's number of optimizer steps")
        if stage == "distill":
            p.add_argument("--no-ce", action="store_true", help="switch off L_ce")
            p.add_argument("--no-kl", action="store_true", help="switch off L_kl (no meta teacher needed)")
            p.add_argument("--no-ins", action="store_true", help="switch off L_ins (no instance teachers needed)")
            p.add_argument("--lambda-kl", type=float, help="weight lambda1 of L_kl")
            p.add_argument("--lambda-ins", type=float, help="weight lambda2 of L_ins")
            p.add_argument("--curriculum", choices=("uniform", "tapir"),
                           help="data schedule: uniform (every training instance, epoch by epoch) or tapir (rounds balanced "
                           "across categories with a growing share of the tasks furthest behind the teacher); default: the preset's")
            p.add_argument("--stage-dir", metavar="DIR", help="where this run's state and checkpoint go (default: WORK/stage3_distill)")
        p.set_defaults(func=cmd_train)
    train.set_defaults(func=cmd_train, stage=None)

    ablate = sub.add_parser("ablate-curriculum", help="stage 3 with the uniform vs the tapir curriculum at equal compute",
                            description="Run stage 3 with both data schedules (uniform, tapir) from the same pretrained "
                            "hypernetwork and teachers, for the same number of steps and examples; score TAGI on the "
                            "synthetic held-out sets and the SNI test tasks; write OUT/curriculum.json and a section of "
                            "OUT/README.md. The arm the preset already uses is the pipeline's own stage 3.")
    _common_train_args(ablate)
    ablate.add_argument("--work", metavar="DIR", help="the pipeline's work directory (default: runs/train-<preset>)")
    ablate.add_argument("--out", required=True, metavar="DIR", help="the checkpoint `tagi train` wrote (gets curriculum.json)")
    ablate.add_argument("--sni", default="/work/shared/data/sni", metavar="DIR", help="SNI subset directory for the sni_test set")
    ablate.add_argument("--no-sni", action="store_true", help="skip the SNI test tasks")
    ablate.set_defaults(func=cmd_ablate_curriculum)

    ev = sub.add_parser("eval", help="score every method side by side on task files",
                        description="Per task, per category and overall Rouge-L and exact match (SNI convention, percent) for "
                        "base_concat, meta_teacher, task_lora_oracle, tagi_no_fusion, tagi, tagi_wrong_instruction, plus "
                        "measured time per instance of TAGI vs instruction concatenation.")
    add_checkpoint_argument(ev)
    ev.add_argument("--tasks", nargs="+", required=True, metavar="PATH", help="SNI task files or directories of them")
    ev.add_argument("--split", metavar="FILE", help="only the tasks named in this split file")
    ev.add_argument("--format", choices=("def", "def+2pos"), default="def", help="instruction format (default: def)")
    ev.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    ev.add_argument("--held-back", type=int, metavar="N", help="score only each task's N held-back instances (for training tasks)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the held-back split (default 0, as in training)")
    ev.add_argument("--max-instances", type=int, metavar="N", help="at most N instances per task")
    ev.add_argument("--max-input-tokens", type=int, metavar="N", help="truncate longer inputs (counted in the JSON; default 1024)")
    ev.add_argument("--max-new-tokens", type=int, default=48, help="output length limit (default 48)")
    ev.add_argument("--batch-size", type=int, default=64, help="instances per forward pass (default 64)")
    ev.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default cpu)")
    ev.set_defaults(func=cmd_eval)
