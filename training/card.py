"""The model card (README.md) of a pipeline output, written from pipeline.json and eval.json."""

from __future__ import annotations

import json
from pathlib import Path

from hypernet.files import atomic_write_text, write_json
from training.ablation import CITING_FILE, ENCODER_FILE, card_section, citing_card_section, encoder_card_section, load_report
from training.evaluate import METHODS, format_table


def _overall_table(results: dict) -> list[str]:
    lines = ["| task set | " + " | ".join(METHODS) + " | time TAGI / concat |", "|---" * (len(METHODS) + 2) + "|"]
    for name, result in results.items():
        cells = []
        for method in METHODS:
            row = result["overall"].get(method)
            cells.append("-" if row is None else f"{row['exact_match']:.1f} / {row['rougeL']:.1f}")
        ratio = result.get("time_ratio_tagi_vs_concat")
        timing = f"{ratio:.2f}x" if ratio else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {timing} |")
    return lines


def _ratio(em: dict[str, float], a: str, b: str) -> str:
    return f"{em[a] / em[b]:.2f}" if em.get(b) else "n/a (denominator 0)"


TARGETS: tuple[tuple[str, str, str, float], ...] = (
    # (task set, what, ratio or absolute, threshold): the shipped checkpoint's targets (issue 10)
    ("synthetic_train_tasks", "TAGI exact match", "tagi", 95.0),
    ("synthetic_natural_wording", "TAGI exact match", "tagi", 80.0),
    ("synthetic_natural_wording", "wrong instruction / TAGI (at most)", "tagi_wrong_instruction/tagi", 0.2),
    ("synthetic_unseen_composition", "TAGI exact match", "tagi", 50.0),
    ("synthetic_unseen_composition", "TAGI / meta teacher", "tagi/meta_teacher", 0.9),
    ("synthetic_unseen_parameter", "TAGI / meta teacher", "tagi/meta_teacher", 0.9),
    ("synthetic_unseen_words", "TAGI exact match", "tagi", 90.0),
)


def _targets(results: dict) -> list[str]:
    """Each target with the measured figure and whether it is met; the wrong-instruction ratio is
    an upper bound, every other figure a lower one."""
    lines = ["## Targets", "", "| task set | figure | target | measured | met |", "|---|---|---:|---:|---|"]
    for name, what, formula, threshold in TARGETS:
        if name not in results:
            continue
        em = {m: row["exact_match"] for m, row in results[name]["overall"].items()}
        top, _, bottom = formula.partition("/")
        if bottom and not em.get(bottom):
            measured, met = None, False
        else:
            measured = em.get(top, 0.0) / em[bottom] if bottom else em.get(top, 0.0)
            met = measured <= threshold if top == "tagi_wrong_instruction" else measured >= threshold
        shown = "n/a" if measured is None else (f"{measured:.2f}x" if bottom else f"{measured:.1f}")
        limit = f"{threshold:.2f}x" if bottom else f"{threshold:.0f}"
        lines.append(f"| {name} | {what} | {limit} | {shown} | {'yes' if met else '**no**'} |")
    return [*lines, ""]


MAP_FILE = "adapter_map.json"
MAP_INSTRUCTIONS = "adapter_map_instructions.jsonl"


def _pairs(count: int | None, value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ({count:,})"


def _map_section(out: Path) -> list[str]:
    """The adapter-space section, from adapter_map.json (`tagi adapters map`), when it is there."""
    path = out / MAP_FILE
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    points = data["points"]
    lines = [
        "## The adapter space",
        "",
        "![PCA map of the generated adapters](adapter_map.png)",
        "",
        f"{len(points)} instructions (listed with their task and split in `{MAP_INSTRUCTIONS}`) turned into adapters and "
        "projected by PCA of the flattened delta-W (scale * B @ A of every target). Colour = task; a faint line joins "
        "each wording to its task's centre. Made with",
        "",
        f"    tagi adapters map --instructions {out}/{MAP_INSTRUCTIONS} --out {out}/adapter_map.png",
        "",
        "Mean cosine similarity of the delta-W vectors (pairs): same task "
        + _pairs(data["same_task_pairs"], data["mean_cosine_same_task"])
        + ", different tasks "
        + _pairs(data["different_task_pairs"], data["mean_cosine_different_task"])
        + ".",
        "",
    ]
    by_split = data.get("by_split") or {}
    if by_split:
        lines += ["| pairs of | same task | different tasks |", "|---|---:|---:|"]
        for pair, row in by_split.items():
            same, different = _pairs(row["same"], row["same_task"]), _pairs(row["different"], row["different_task"])
            lines.append(f"| {pair.replace('+', ' and ')} | {same} | {different} |")
        lines.append("")
    return lines


def _own_base_card(info: dict, results: dict, command: str, size: int) -> list[str]:
    """The card of a run on a given base (`tagi train --base`, an `sni` recipe): what it was
    trained from and on, and the SNI test scores."""
    preset, sni = info["preset"], info["preset"]["sni"]
    distill = preset["distill"]
    meta = info.get("meta_teacher_given")
    corpus = preset["hypernet_pretrain"].get("corpus") or "the training tasks' instructions and instances"
    lines = [
        f"# tagi checkpoint: recipe `{preset['name']}` on {info['base']['path']}",
        "",
        "A TAGI hypernetwork over a frozen local base, trained with one command:",
        "",
        f"    {command}",
        "",
        f"Training time: {info['train_seconds'] / 60:.1f} min (stages: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in info["stage_seconds"].items())
        + f"). Size on disk: {size / 1e6:.1f} MB.",
        "",
        "## Data",
        f"- Super-Natural Instructions, split `{sni['split']}`: {len(info['train_tasks'])} training tasks, the first "
        f"{sni['max_instances_per_task']} instances of each ({info.get('train_pairs', '?')} training pairs), "
        f"{info['held_back_per_task']} per task held back; prompts `{sni['prompt_format']}`.",
        f"- Stage 2 text: {corpus}.",
        "",
        "## What each part saw",
        f"- Instance teachers: PEFT LoRA per {preset['teachers']['per']} (r={preset['teachers']['rank']}), input only.",
        "- Meta-trained teacher: "
        + (f"given ({meta}), not trained here." if meta else "the base finetuned on instruction + input (Tk-Instruct)."),
        f"- Distillation: L_ce + {distill['lambda_kl']} L_kl + {distill['lambda_ins']} L_ins "
        f"(lambda2 = sigmoid(L_ins) when `sigmoid`).",
        "",
        f"## Evaluation: the split's test tasks, first {sni['test_instances']} instances each (exact match / Rouge-L)",
        "",
        *_overall_table(results),
        "",
    ]
    for name, result in results.items():
        lines += [f"### {name}", "", "```", format_table(result), "```", ""]
    return lines


def write_card(out: Path, command: str | None = None) -> Path:
    """README.md of `out`. The command is recorded in pipeline.json, so a later rewrite (e.g.
    after the curriculum ablation) can omit it."""
    out = Path(out)
    info = json.loads((out / "pipeline.json").read_text())
    if command is None:
        command = info.get("command", "(command not recorded)")
    elif info.get("command") != command:
        info["command"] = command
        write_json(out / "pipeline.json", info)
    results = json.loads((out / "eval.json").read_text()) if (out / "eval.json").exists() else {}
    preset = info["preset"]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if preset.get("sni") is not None:
        atomic_write_text(out / "README.md", "\n".join(_own_base_card(info, results, command, size)))
        return out / "README.md"
    base = info.get("base", {})
    base_model = preset["base"].get("model", preset["base"])  # inline in pipeline.json before configs/ (checkpoints/tiny)
    family = preset["base"].get("family", "t5")
    causal = preset["base"].get("causal_model") if family != "t5" else None
    targets = " and ".join(preset["generator"]["target_modules"])
    if causal is None:
        built = (
            f"a from-scratch T5 ({base_model['d_model']} wide, {base_model['num_layers']}+{base_model['num_layers']} layers); "
            "span corruption on the training tasks' texts"
        )
    else:
        built = (
            f"a from-scratch {family} decoder ({causal['hidden_size']} wide, {causal['num_layers']} layers, "
            f"{causal['num_heads']} heads with {causal['num_kv_heads']} key/value heads); next-token prediction on the "
            "training tasks' texts (each cut text continued, the continuation scored)"
        )
    lines = [
        f"# tagi checkpoint: preset `{preset['name']}`",
        "",
        "A TAGI hypernetwork (instruction -> LoRA on q and v of every attention block) over a tiny T5 trained"
        if causal is None
        else f"A TAGI hypernetwork (instruction -> LoRA on {targets} of every layer) over a tiny {family} decoder trained",
        f"from scratch on this machine; instructions are read by `{preset.get('instruction_encoder', 'base')}` "
        "(frozen; a sentence encoder is not stored here, see the repository README). Everything here came from one command:",
        "",
        f"    {command}",
        "",
        f"Training time: {info['train_seconds'] / 60:.1f} min (stages: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in info["stage_seconds"].items())
        + f"); total with evaluation: {info.get('total_seconds', info['train_seconds']) / 60:.1f} min. "
        f"Size on disk: {size / 1e6:.1f} MB.",
        "",
        "## Data",
        f"- The synthetic list world (`tagi data synth --seed {preset['seed']}`): {len(info['train_tasks'])} training tasks; "
        f"{info['held_back_per_task']} instances of each are held back from every stage and used to score the training tasks.",
        "- Held-out task sets are never read by any stage: unseen compositions, unseen parameter values, an unseen "
        "paraphrase template per primitive, everyday wordings written apart from the templates "
        "(`synthetic_natural_wording`, data/list_world/natural_wordings.jsonl), and the training functions on real "
        "words no training input contains (`synthetic_unseen_words`).",
        "",
        "## What each part saw",
        f"- Base (stage 0): {built} plus instruction-free skills (`{base.get('saw', {}).get('skills', '?')}`), "
        "never an instruction as a condition. With `world` skills it learned fresh examples of the training tasks' functions, "
        'each primitive named by an opaque symbol with its parameter ("<skill_3> 1 <skill_0> : apple, pear"), parameters '
        "drawn from training values only, held-back inputs excluded; "
        f"{int(100 * preset['base']['unconditioned_share'])}% of them without symbols. "
        + (
            f"Exact match of the coded operations on held-back instances at the end: {100 * base['final_eval']['em']:.1f}%."
            if base.get("final_eval")
            else ""
        ),
        "- Instance teachers (stage 1): PEFT LoRA per "
        + preset["teachers"]["per"]
        + f" (r={preset['teachers']['rank']}, alpha={preset['teachers']['alpha']}), "
        "input only; shipped in `teachers/` (float16).",
        "- Meta-trained teacher (stage 1): the base fully finetuned on instruction + input of the training tasks "
        "(Tk-Instruct recipe); "
        "shipped in `meta_teacher/` as bfloat16 safetensors (cast to float32 on load).",
        "- Hypernetwork pretraining (stage 2): a/b/c split of training-corpus texts, cross-entropy.",
        f"- Distillation (stage 3, `distill`): L_ce + {preset['distill']['lambda_kl']} L_kl "
        f"(T={preset['distill']['temperature']}) + "
        f"{preset['distill']['lambda_ins']} L_ins; {int(100 * preset['distill']['no_fusion_prob'])}% of batches without fusion.",
        "",
        "## Evaluation (exact match / Rouge-L, percent)",
        "",
        *_overall_table(results),
        "",
    ]
    meta_card = out / "meta_teacher" / "meta_card.json"
    meta_scores = json.loads(meta_card.read_text()).get("held_back_em", {}) if meta_card.exists() else {}
    meta_em = meta_scores.get("em")
    if meta_em is not None:
        lines += [
            "## Meta-trained teacher on held-back instances of the training tasks (target >= 80%)",
            "",
            f"{100 * meta_em:.1f}% exact match (per primitive: "
            + ", ".join(f"{k[3:]} {100 * v:.0f}" for k, v in sorted(meta_scores.items()) if k.startswith("em/"))
            + ").",
            "",
        ]
    lines += _targets(results)
    lines += _map_section(out)
    report = load_report(out)
    if report is not None:
        lines += card_section(report)
    encoder_report = load_report(out, ENCODER_FILE)
    if encoder_report is not None:
        lines += encoder_card_section(encoder_report)
    citing_report = load_report(out, CITING_FILE)
    if citing_report is not None:
        lines += citing_card_section(citing_report)
    for name, result in results.items():
        lines += [f"### {name}", "", "```", format_table(result), "```", ""]
    atomic_write_text(out / "README.md", "\n".join(lines))
    return out / "README.md"
