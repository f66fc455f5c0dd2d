"""Ablations at equal compute, each written as a JSON next to the shipped checkpoint and
summarised in its model card.

`tagi ablate-curriculum`: stage 3 with the uniform and the tapir data schedule (same steps, same
batch, so the same number of training examples), each scored on the synthetic held-out sets
and the SNI test tasks (`curriculum.json`). Both arms start from the same pretrained
hypernetwork (stage 2) and distil from the same teachers; the arm the preset already uses is
the pipeline's own stage 3 (reused when done).

`tagi ablate-encoder`: what reads the instruction, stages 2 and 3 rerun per arm from the same
base and teachers at one shared, reduced budget (`encoder.json`): the sentence encoder with the
generator's attention over its token states (the recipe), the same with the pooled vector only,
and the base's own encoder with attention.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

from hypernet.config import DEFAULT_MAX_NEW_TOKENS
from hypernet.errors import UserError
from hypernet.io import load_checkpoint
from training.citing import CitingConfig, read_records
from training.common import load_task_set
from training.curriculum import KINDS, read_plans
from training.evaluate import REVISED, run_eval, write_json
from training.loop import resume_view
from training.pipeline import SNI_TEST_SPLIT, SYNTH_SETS, train_tasks
from training.presets import Preset, replace_path, with_steps
from training.stages import STAGE, StageInputs, result_path, run_stage, stage_config

ABLATION_FILE = "curriculum.json"
ARMS = ("uniform", "tapir")
METHODS = ("tagi", "tagi_no_fusion")
DISTILL = STAGE["distill"]


def arm_dir(work: Path, recipe: Preset, kind: str) -> Path:
    """The recipe's own arm is the pipeline's stage 3 (reused when done); the other gets its own directory."""
    return work / (DISTILL.directory if kind == recipe.distill.curriculum.kind else f"{DISTILL.directory}_{kind}")


def summarise(result: dict) -> dict:
    """Mean, per category and worst category of TAGI (with and without fusion)."""
    by_category = {c: row["tagi"] for c, row in result["by_category"].items() if "tagi" in row}
    worst = min(by_category, key=lambda c: (by_category[c]["exact_match"], by_category[c]["rougeL"]))
    return {
        "mean": result["overall"]["tagi"],
        "mean_no_fusion": result["overall"].get("tagi_no_fusion"),
        "by_category": by_category,
        "worst_category": {"name": worst, **by_category[worst]},
        "tasks": result["tasks"],
        "instances": result["instances"],
    }


def stage_results(recipe: Preset, work: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """The finished pipeline stages an ablation starts from; a missing one names the command to run."""
    results = {name: result_path(STAGE[name], work) for name in names}
    for path in results.values():
        if not path.exists():
            raise UserError(f"{path} is missing: run `tagi train --preset {recipe.name} --work {work}` first")
    return results


def score_synthetic(
    checkpoint: Path,
    work: Path,
    recipe: Preset,
    max_instances: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> dict[str, dict]:
    """TAGI with and without fusion on every synthetic set (held-back instances of the training tasks too).
    Generation dominates the cost (a barely trained model writes `max_new_tokens` per answer), so a
    test may shorten it."""
    scores = {}
    for name, split in SYNTH_SETS.items():
        held = recipe.held_back if split == "train" else None
        result = run_eval(
            checkpoint,
            [str(work / "data" / split)],
            "def",
            held_back=held,
            seed=recipe.seed,
            max_instances=max_instances or recipe.eval_instances,
            max_new_tokens=max_new_tokens,
            methods=METHODS,
            timing_tasks=0,
        )
        scores[name] = summarise(result)
    return scores


def run_ablation(
    recipe: Preset,
    work: Path,
    out: Path,
    sni_dir: Path | None,
    device: str = "auto",
    resume: bool = True,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> dict:
    """Stage 3 per schedule, each scored on the held-out synthetic sets (and SNI's test tasks with
    `sni_dir`); `max_new_tokens` as in score_synthetic."""
    task_set = load_task_set(train_tasks(work), recipe.held_back, recipe.seed)
    results = stage_results(recipe, work, DISTILL.inputs)
    sets = {name: [str(work / "data" / split)] for name, split in SYNTH_SETS.items() if split != "train"}
    report: dict = {"steps": recipe.distill.loop.steps, "batch_size": recipe.distill.loop.batch_size, "arms": {}, "sets": {}}
    for kind in ARMS:
        arm = replace_path(recipe, "distill.curriculum", replace(recipe.distill.curriculum, kind=kind))
        stage = arm_dir(work, recipe, kind)
        checkpoint = run_stage(DISTILL, arm, StageInputs(task_set, results, device, resume), stage)
        report["arms"][kind] = {
            "stage_dir": str(stage),
            "examples_seen": arm.distill.loop.steps * arm.distill.loop.batch_size,
            "rounds": read_plans(stage) if kind == "tapir" else [],
        }
        for name, paths in sets.items():
            result = run_eval(
                checkpoint,
                paths,
                "def",
                max_instances=recipe.eval_instances,
                max_new_tokens=max_new_tokens,
                methods=METHODS,
                timing_tasks=0,
            )
            report["sets"].setdefault(name, {})[kind] = summarise(result)
        if sni_dir is not None:
            result = run_eval(
                checkpoint,
                [str(Path(sni_dir) / "tasks")],
                "def+2pos",
                max_instances=recipe.eval_instances,
                max_input_tokens=2048,
                max_new_tokens=max_new_tokens,
                split_file=str(Path(sni_dir) / SNI_TEST_SPLIT),
                methods=METHODS,
                timing_tasks=0,
            )
            report["sets"].setdefault("sni_test", {})[kind] = summarise(result)
    synthetic = [n for n in report["sets"] if n.startswith("synthetic")]
    means = {kind: sum(report["sets"][n][kind]["mean"]["exact_match"] for n in synthetic) / len(synthetic) for kind in ARMS}
    report["synthetic_mean_exact_match"] = means
    report["winner"] = max(ARMS, key=lambda k: (means[k], k == "uniform"))  # a tie keeps the default
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / ABLATION_FILE, report)
    return report


def card_section(report: dict) -> list[str]:
    """Model-card lines for curriculum.json."""
    lines = [
        "## Curriculum ablation (stage 3 at equal compute)",
        "",
        f"Both arms: {report['steps']} steps of {report['batch_size']} examples from the same stage-2 hypernetwork. "
        "uniform = every training instance, epoch by epoch; tapir = rounds balanced across categories with a growing "
        "share of the tasks furthest behind the meta-trained teacher (training.curriculum). TAGI with fusion, "
        "exact match / Rouge-L (percent).",
        "",
        "| task set | uniform mean | tapir mean | uniform worst category | tapir worst category |",
        "|---|---|---|---|---|",
    ]
    for name, arms in report["sets"].items():
        cells = []
        for part in ("mean", "worst_category"):
            for kind in ARMS:
                row = arms[kind][part]
                label = f"{row['name']}: " if part == "worst_category" else ""
                cells.append(f"{label}{row['exact_match']:.1f} / {row['rougeL']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells[:2]) + " | " + " | ".join(cells[2:]) + " |")
    means = report["synthetic_mean_exact_match"]
    lines += [
        "",
        f"Mean exact match over the synthetic held-out sets: uniform {means['uniform']:.1f}, tapir {means['tapir']:.1f}; "
        f"winner: **{report['winner']}**"
        + (" (kept as the preset's default)." if report["winner"] == "uniform" else " (now the preset's default)."),
        "Per-category tables, the tapir rounds (hard share, sampled category mix, per-task difficulty, dropped tasks): "
        "`curriculum.json`.",
        "",
    ]
    return lines


def load_report(out: Path, name: str = ABLATION_FILE) -> dict | None:
    path = Path(out) / name
    return json.loads(path.read_text()) if path.exists() else None


ENCODER_FILE = "encoder.json"
ENCODER_ARMS: dict[str, dict[str, object]] = {
    "sentence+attention": {},
    "sentence+pooled": {"generator.attention_heads": 0},
    "base+attention": {"instruction_encoder": "base"},
}
"""Arm -> recipe fields it changes (dotted paths); the first arm is the recipe itself."""


def run_encoder_ablation(
    recipe: Preset,
    work: Path,
    out: Path,
    steps: int,
    device: str = "auto",
    resume: bool = True,
    max_instances: int = 10,
    arms: tuple[str, ...] = tuple(ENCODER_ARMS),
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> dict:
    """Stages 2 and 3 per arm (stage 3 cut to `steps` for every arm), scored on the synthetic sets.

    `arms` runs some of them; their results are merged into an existing encoder.json of the same
    settings, so arms may run as separate processes side by side (a 2-core machine runs two
    one-thread arms faster than one after the other) and the file still ends up whole."""
    if steps < 1:
        raise UserError("--steps must be >= 1")
    unknown = sorted(set(arms) - set(ENCODER_ARMS))
    if unknown:
        raise UserError(f"unknown arms {unknown}; choose from {list(ENCODER_ARMS)}")
    task_set = load_task_set(train_tasks(work), recipe.held_back, recipe.seed)
    teachers = stage_results(recipe, work, ("base", "meta-teacher", "teachers"))
    pretrain = STAGE["hypernet-pretrain"]
    report: dict = {
        "distill_steps": steps,
        "hypernet_pretrain_steps": recipe.hypernet_pretrain.loop.steps,
        "batch_size": recipe.distill.loop.batch_size,
        "eval_instances_per_task": max_instances,
        "max_new_tokens": max_new_tokens,
        "arms": {},
        "sets": {},
    }
    for arm in arms:
        changes = ENCODER_ARMS[arm]
        variant = replace_path(recipe, "distill.loop", with_steps(recipe.distill.loop, steps))
        for path, value in changes.items():
            variant = replace_path(variant, path, value)
        directory = work / "ablate_encoder" / arm.replace("+", "_")
        inputs = StageInputs(task_set, dict(teachers), device, resume)
        inputs.results["hypernet-pretrain"] = run_stage(pretrain, variant, inputs, directory / pretrain.directory)
        checkpoint = run_stage(DISTILL, variant, inputs, directory / DISTILL.directory)
        report["arms"][arm] = {
            "changes": changes,
            "stage_dir": str(directory),
            "examples_seen": steps * variant.distill.loop.batch_size,
            "parameters": load_checkpoint(checkpoint).parameter_counts(),
        }
        for name, summary in score_synthetic(checkpoint, work, variant, max_instances, max_new_tokens).items():
            report["sets"].setdefault(name, {})[arm] = summary
    # Merge with what other processes wrote meanwhile (read now, at the end, not when this one
    # started), then arms in the table's order whichever process ran them.
    previous = load_report(out, ENCODER_FILE)
    settings = ("distill_steps", "hypernet_pretrain_steps", "batch_size", "eval_instances_per_task", "max_new_tokens")
    if previous is not None and all(previous.get(k) == report[k] for k in settings):
        report["arms"] = {**previous["arms"], **report["arms"]}
        for name, row in previous["sets"].items():
            report["sets"][name] = {**row, **report["sets"].get(name, {})}
    report["arms"] = {a: report["arms"][a] for a in ENCODER_ARMS if a in report["arms"]}
    report["sets"] = {n: {a: row[a] for a in ENCODER_ARMS if a in row} for n, row in report["sets"].items()}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / ENCODER_FILE, report)
    return report


def encoder_card_section(report: dict) -> list[str]:
    """Model-card lines for encoder.json."""
    arms = list(report["arms"])
    lines = [
        "## Instruction encoder ablation (stages 2 and 3 per arm, equal compute)",
        "",
        f"Every arm: stage 2 for {report['hypernet_pretrain_steps']} steps, then stage 3 for {report['distill_steps']} steps "
        f"of {report['batch_size']} examples (a reduced budget, the same for all), from the same base and teachers. "
        "TAGI with fusion / without fusion, exact match (percent), "
        f"{report['eval_instances_per_task']} instances per task.",
        "",
        "| task set | " + " | ".join(arms) + " |",
        "|---|" + "---|" * len(arms),
    ]
    for name, row in report["sets"].items():
        cells = [
            f"{row[a]['mean']['exact_match']:.1f} / {row[a]['mean_no_fusion']['exact_match']:.1f}" if a in row else "-"
            for a in arms
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per-category tables and parameter counts: `encoder.json`.", ""]
    return lines


CITING_FILE = "citing.json"
CITING_ARMS = tuple(f"{kind}{'+rubric' * rubric}" for kind in KINDS for rubric in (False, True))
"""Every curriculum kind, without and with the rubric in the instruction ("+rubric")."""


def _citing_arm(recipe: Preset, arm: str, steps: int) -> Preset:
    """The recipe of one arm: its curriculum kind and rubric use, stage 3 cut to `steps`."""
    kind, rubric = arm.removesuffix("+rubric"), arm.endswith("+rubric")
    variant = replace_path(recipe, "distill.loop", with_steps(recipe.distill.loop, steps))
    variant = replace_path(variant, "distill.curriculum", replace(recipe.distill.curriculum, kind=kind))
    if not rubric and "citing" not in kind and recipe.distill.citing is None:
        return variant  # nothing reads the rounds' knobs: the arm stays the recipe's own stage 3 where it can
    return replace_path(variant, "distill.citing", replace(recipe.distill.citing or CitingConfig(), rubric_in_instruction=rubric))


def _citing_arm_dir(work: Path, recipe: Preset, variant: Preset, arm: str) -> Path:
    """The arm that is the recipe's own stage 3 (same config, same budget) is the pipeline's stage 3,
    reused when done; every other arm gets its own directory."""
    if stage_config(DISTILL, variant) == stage_config(DISTILL, recipe):
        return work / DISTILL.directory
    return work / "ablate_citing" / arm.replace("+", "_")


def _compact_rounds(records: list[dict]) -> list[dict]:
    """A round record (training.citing) as the checkpoint's JSON keeps it, within the directory's size
    budget: totals and means; the full record (per task, per category, the examples) is the stage's citing.jsonl."""
    out = []
    for r in records:
        criteria: Counter[str] = Counter()
        for broken in r["failing_by_criterion"].values():
            criteria.update(broken)
        out.append(
            {
                "round": r["round"],
                "drafts": r["sampled"],
                "failing": sum(r["failing"].values()),
                "failing_by_criterion": dict(sorted(criteria.items())),
                "revisions": r["revisions"],
                "teacher_chosen": dict(Counter(r["teacher"].values())),
                "student_em": round(sum(r["student_em"].values()) / max(1, len(r["student_em"])), 3),
                "teacher_em": round(sum(r["teacher_em"].values()) / max(1, len(r["teacher_em"])), 3),
            }
        )
    return out


def _compact_set(row: dict) -> dict:
    """One arm's scores on one set, rounded; per category the first pass's exact match (the size budget
    leaves the revise pass its mean only)."""

    def cut(values: dict) -> dict:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in values.items()}

    return {
        "mean": cut(row["mean"]),
        "revised": {"mean": cut(row["revised"]["mean"])},
        "by_category": {c: round(v["exact_match"], 1) for c, v in row["by_category"].items()},
        "worst_category": {"name": row["worst_category"]["name"], "exact_match": round(row["worst_category"]["exact_match"], 1)},
        "revise": {k: round(row["revise"][k], 2) for k in ("gain_exact_match", "cost_ratio")},
        "instances": row["instances"],
    }


def _revised(result: dict) -> dict:
    """The revise pass of one evaluation: mean, per category and worst category, gain and cost."""
    by_category = {c: row[REVISED] for c, row in result["by_category"].items() if REVISED in row}
    worst = min(by_category, key=lambda c: (by_category[c]["exact_match"], by_category[c]["rougeL"]))
    worst_row = {"name": worst, **by_category[worst]}
    return {"mean": result["overall"][REVISED], "by_category": by_category, "worst_category": worst_row}


def run_citing_ablation(
    recipe: Preset,
    work: Path,
    out: Path,
    steps: int,
    device: str = "auto",
    resume: bool = True,
    max_instances: int = 10,
    arms: tuple[str, ...] = CITING_ARMS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> dict:
    """Stage 3 per arm of CITING_ARMS from the pipeline's stage 2 and teachers, every arm `steps`
    steps of the recipe's batch (equal examples seen), each scored on the synthetic sets with and
    without the revise pass; `arms` runs some of them, merged into an existing citing.json of the
    same settings (as run_encoder_ablation does)."""
    if steps < 1:
        raise UserError("--steps must be >= 1")
    unknown = sorted(set(arms) - set(CITING_ARMS))
    if unknown:
        raise UserError(f"unknown arms {unknown}; choose from {list(CITING_ARMS)}")
    task_set = load_task_set(train_tasks(work), recipe.held_back, recipe.seed)
    results = stage_results(recipe, work, DISTILL.inputs)
    report: dict = {
        "distill_steps": steps,
        "recipe_distill_steps": recipe.distill.loop.steps,
        "batch_size": recipe.distill.loop.batch_size,
        "rounds": recipe.distill.curriculum.rounds,
        "citing": resume_view(recipe.distill.citing or CitingConfig()),
        "eval_instances_per_task": max_instances,
        "max_new_tokens": max_new_tokens,
        "arms": {},
        "sets": {},
    }
    for arm in arms:
        variant = _citing_arm(recipe, arm, steps)
        stage = _citing_arm_dir(work, recipe, variant, arm)
        checkpoint = run_stage(DISTILL, variant, StageInputs(task_set, dict(results), device, resume), stage)
        report["arms"][arm] = {
            "stage_dir": str(stage),
            "examples_seen": steps * variant.distill.loop.batch_size,
            "tapir_rounds": len(read_plans(stage)),
            "citing_rounds": _compact_rounds(read_records(stage)),
        }
        for name, split in SYNTH_SETS.items():
            if split == "train":  # held-out sets only: the JSON ships within the checkpoint's size budget
                continue
            result = run_eval(
                checkpoint,
                [str(work / "data" / split)],
                "def",
                max_instances=max_instances,
                max_new_tokens=max_new_tokens,
                methods=METHODS,
                timing_tasks=0,
                revise=True,
            )
            row = _compact_set(summarise(result) | {"revised": _revised(result), "revise": result["revise"]})
            report["sets"].setdefault(name, {})[arm] = row
        report = _merge_citing(out, report)  # after every arm: a long run stopped early keeps what it finished
    return report


def _merge_citing(out: Path, report: dict) -> dict:
    """`report` merged with the citing.json other processes wrote meanwhile (same settings), arms in
    the table's order, with the means and the winner over the arms that have every held-out set; written."""
    previous = load_report(out, CITING_FILE)
    settings = ("distill_steps", "batch_size", "rounds", "citing", "eval_instances_per_task", "max_new_tokens")
    if previous is not None and all(previous.get(k) == report[k] for k in settings):
        report["arms"] = {**previous["arms"], **report["arms"]}
        for name, row in previous["sets"].items():
            report["sets"][name] = {**row, **report["sets"].get(name, {})}
    report["arms"] = {a: report["arms"][a] for a in CITING_ARMS if a in report["arms"]}
    report["sets"] = {n: {a: row[a] for a in CITING_ARMS if a in row} for n, row in report["sets"].items()}
    held_out = [n for n, split in SYNTH_SETS.items() if split != "train" and n in report["sets"]]
    done = [a for a in report["arms"] if all(a in report["sets"][n] for n in held_out)]
    passes = (("synthetic_mean_exact_match", lambda r: r), ("synthetic_mean_exact_match_revised", lambda r: r["revised"]))
    for key, rows in passes:
        report[key] = {
            a: sum(rows(report["sets"][n][a])["mean"]["exact_match"] for n in held_out) / max(1, len(held_out)) for a in done
        }
    if "uniform" in done:
        report["vs_uniform"] = {a: _gain_over_uniform(report, held_out, a) for a in done if a != "uniform"}
        report["winner"] = _winner(report["vs_uniform"])
    else:  # nothing to beat yet
        report["vs_uniform"], report["winner"] = {}, None
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CITING_FILE, report)
    return report


def _gain_over_uniform(report: dict, held_out: list[str], arm: str) -> dict:
    """The arm's held-out mean exact match minus uniform's, with the noise it must clear: twice the
    standard error of that difference, each set's exact match taken as a binomial proportion over its
    instances (add-one smoothed, so that a set scored 0 or 100 still counts as uncertain) and the two
    arms as independent. Both arms read the same instances, so the paired error is smaller: this bound
    is the cautious one, for a result that changes a default."""

    def variance(a: str) -> float:
        rows = [report["sets"][n][a] for n in held_out]
        total = 0.0
        for r in rows:
            n = r["instances"]
            q = (r["mean"]["exact_match"] / 100 * n + 1) / (n + 2)
            total += q * (1 - q) / n
        return total / len(rows) ** 2

    gain = report["synthetic_mean_exact_match"][arm] - report["synthetic_mean_exact_match"]["uniform"]
    noise = 2 * 100 * (variance(arm) + variance("uniform")) ** 0.5
    return {"gain": round(gain, 2), "noise": round(noise, 2)}


def _winner(vs_uniform: dict[str, dict]) -> str:
    """The arm with the largest gain over uniform that clears its noise; uniform when none does."""
    clear = {a: g["gain"] for a, g in vs_uniform.items() if g["gain"] > g["noise"]}
    return max(clear, key=lambda a: clear[a]) if clear else "uniform"


def citing_card_section(report: dict) -> list[str]:
    """Model-card lines for citing.json, arms in CITING_ARMS's order (the JSON's keys are sorted)."""
    arms = [a for a in CITING_ARMS if a in report["arms"]]
    missing = [a for a in CITING_ARMS if a not in arms]
    lines = [
        "## CITING ablation (stage 3 at equal compute: curriculum x rubric in the instruction x revise pass)",
        "",
        f"Every arm: {report['distill_steps']} stage-3 steps of {report['batch_size']} examples from the same stage-2 "
        f"hypernetwork and teachers ({report['rounds']} rounds where the arm has rounds). uniform / tapir / citing "
        "(revision rounds, training.citing) / tapir+citing; `+rubric`: the generator reads each category's rubric with "
        f"the instruction. TAGI with fusion, exact match (percent), {report['eval_instances_per_task']} instances per task; "
        "each cell: first pass / after the revise pass; worst category of the first pass.",
        "",
        "| task set | " + " | ".join(arms) + " |",
        "|---|" + "---|" * len(arms),
    ]
    for name, row in report["sets"].items():
        cells = []
        for a in arms:
            if a not in row:
                cells.append("-")
                continue
            worst = row[a]["worst_category"]
            cells.append(
                f"{row[a]['mean']['exact_match']:.1f} / {row[a]['revised']['mean']['exact_match']:.1f} "
                f"(worst {worst['name']} {worst['exact_match']:.1f})"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means, revised = report["synthetic_mean_exact_match"], report["synthetic_mean_exact_match_revised"]
    lines += [
        "",
        "Mean over the held-out synthetic sets (first pass / revised): "
        + ", ".join(f"{a} {means[a]:.1f} / {revised[a]:.1f}" for a in arms if a in means)
        + (
            f"; winner: **{report['winner']}**"
            + (" (no arm beats uniform by more than the noise)." if report["winner"] == "uniform" else ".")
            if report["winner"] is not None
            else "; no winner: the uniform arm has not run."
        ),
        "Gain over uniform, held-out mean, first pass (the noise to clear: twice the standard error of the difference, "
        "binomial per set, arms independent): "
        + ", ".join(
            f"{a} {report['vs_uniform'][a]['gain']:+.1f} (noise {report['vs_uniform'][a]['noise']:.1f})"
            for a in arms
            if a in report["vs_uniform"]
        )
        + "."
        + (f" Not run at this budget: {', '.join(missing)}." if missing else ""),
        "Revise pass, generation time over the first pass's (mean over the sets): "
        + ", ".join(
            f"{a} {sum(row[a]['revise']['cost_ratio'] for row in report['sets'].values() if a in row) / len(report['sets']):.2f}x"
            for a in arms
        )
        + ".",
        (
            f"Budget: the recipe's own ({report['distill_steps']} stage-3 steps per arm)."
            if report["distill_steps"] == report["recipe_distill_steps"]
            else f"Budget: {report['distill_steps']} of the recipe's {report['recipe_distill_steps']} stage-3 steps per arm, "
            "too few to choose the recipe's default from."
        )
        + f" The revise pass raised the mean for: {', '.join(a for a in means if revised[a] > means[a]) or 'none'}; "
        "arms never trained on self-correction examples (uniform, tapir) are not meant to use it.",
        "Per-category tables, the revise pass's cost and each round's totals (drafts failing per "
        "criterion, revisions kept and rejected, teachers chosen, student and teacher exact match): `citing.json`; "
        "per task and per category, each arm's stage directory's citing.jsonl.",
        "",
    ]
    return lines
