"""Training commands of `tagi`: `init`, `data synth`, `train [<stage>]`, `eval`, `ablate-curriculum`.

`hypernet.cli` finds `register(sub, bench)` through the `tagi.commands` entry point. The
stage subcommands come from the one stage table (training.stages): `tagi train` runs every
stage in a --work directory and writes the shipped checkpoint, `tagi train <stage>` one stage.
The recipe is `--preset NAME` (configs/NAME.yaml) or `--recipe FILE`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from hypernet.cli_common import add_checkpoint_argument, load_model, refuse_existing, resolve_checkpoint
from hypernet.config import DEFAULT_MAX_NEW_TOKENS
from hypernet.errors import UserError
from training.data import SNI_DIR

# ---- init ------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> None:
    import tempfile

    from hypernet.config import CheckpointConfig, GeneratorConfig, InstructionEncoderConfig
    from hypernet.encoders import sentence_encoder_config
    from hypernet.families import FAMILIES, read_family
    from hypernet.io import create_checkpoint
    from hypernet.tiny import PRESETS, build_tiny_base

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    targets = args.target_modules or (read_family(Path(args.base)) if args.base else FAMILIES["t5"]).default_targets
    try:
        generator = GeneratorConfig(
            rank=args.rank, alpha=args.alpha, target_modules=tuple(targets), attention_heads=args.attention_heads
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.instruction_encoder == "base":
        if args.instruction_encoder_dir:
            raise UserError("--instruction-encoder-dir needs a sentence encoder (--instruction-encoder NAME)")
        encoder = InstructionEncoderConfig(layer=args.instruction_layer)
    else:
        if args.instruction_layer is not None:
            raise UserError("--instruction-layer applies to the base encoder only")
        encoder = sentence_encoder_config(args.instruction_encoder, args.instruction_encoder_dir)
    config = CheckpointConfig(generator=generator, instruction_encoder=encoder)
    directory = args.instruction_encoder_dir
    if args.base:
        create_checkpoint(Path(args.base), out, config, seed=args.seed, overwrite=args.overwrite, encoder_dir=directory)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build_tiny_base(init_corpus(args.corpus), Path(tmp), PRESETS[args.preset], seed=args.seed)
            create_checkpoint(Path(tmp), out, config, seed=args.seed, overwrite=args.overwrite, encoder_dir=directory)
    counts = load_model(str(out), encoder_dir=directory).parameter_counts()
    print(
        f"wrote untrained checkpoint to {out}: trainable generator {counts['generator']:,} parameters, "
        f"frozen base {counts['base_frozen']:,}, instruction encoder: {args.instruction_encoder}"
    )


def init_corpus(paths: list[str] | None) -> list[str]:
    """Tokenizer texts: the given files (one text per line), else the synthetic suite's texts."""
    if not paths:
        from training.suite import SuiteConfig, build_suite, corpus_texts

        return corpus_texts(build_suite(0, SuiteConfig()))
    texts = []
    for path in paths:
        try:
            texts.extend(line for line in Path(path).read_text().splitlines() if line.strip())
        except OSError as err:
            raise UserError(f"cannot read corpus file {path}: {err.strerror}") from err
    if not texts:
        raise UserError("the corpus files hold no text")
    return texts


def cmd_init_base(args: argparse.Namespace) -> None:
    from hypernet.tiny import PRESETS, build_tiny_base
    from hypernet.tiny_causal import CAUSAL_FAMILIES, CAUSAL_PRESETS, build_tiny_causal_base
    from training.data import load_task
    from training.sni import TRAIN_LIST, split_tasks

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    if args.max_instances < 1:
        raise UserError(f"--max-instances must be >= 1, got {args.max_instances}")
    if args.chat_template and args.family == "t5":
        raise UserError(f"--chat-template needs a decoder-only --family ({', '.join(CAUSAL_FAMILIES)})")
    texts: list[str] = []
    for path in split_tasks(Path(args.sni), args.split, TRAIN_LIST):
        task = load_task(path, args.max_instances)
        texts.append(task.definition)
        texts += [text for e in task.positive_examples for text in (e.input, e.output)]
        texts += [text for i in task.instances for text in (i.input, *i.outputs)]
    if args.family == "t5":
        build_tiny_base(texts, out, PRESETS[args.preset], seed=args.seed)
    else:
        build_tiny_causal_base(texts, out, args.family, CAUSAL_PRESETS[args.preset], args.seed, args.chat_template)
    print(f"wrote a random-initialised {args.preset} {args.family} to {out}, its tokenizer trained on split {args.split}")


# ---- data ------------------------------------------------------------------------------------


def cmd_data_synth(args: argparse.Namespace) -> None:
    from training.pipeline import write_synthetic
    from training.presets import get_preset

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} is not empty; pass --overwrite to write into it (stale tasks are refused)")
    write_synthetic(out, args.seed, get_preset(args.preset).suite)
    counts = {p.name: len(list(p.glob("*.json"))) for p in sorted(out.iterdir()) if p.is_dir() and p.name != "splits"}
    print(f"wrote the synthetic suite (seed {args.seed}) to {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


# ---- train -----------------------------------------------------------------------------------


def _recipe(args: argparse.Namespace):
    """The recipe of --preset or --recipe, with --seed and --threads applied."""
    from training.presets import get_preset, load_recipe, with_threads

    recipe = load_recipe(args.recipe) if args.recipe else get_preset(args.preset)
    if args.seed is not None:
        recipe = replace(recipe, seed=args.seed)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        recipe = with_threads(recipe, args.threads)
    return recipe


def _distill_overrides(args: argparse.Namespace, recipe):
    """--no-ce/--no-kl/--no-ins, the lambdas and --curriculum on the recipe's distill section."""
    distill = recipe.distill
    changes = {
        "use_ce": distill.use_ce and not args.no_ce,
        "use_kl": distill.use_kl and not args.no_kl,
        "use_ins": distill.use_ins and not args.no_ins,
    }
    if args.lambda_kl is not None:
        changes["lambda_kl"] = args.lambda_kl
    if args.lambda_ins is not None:
        changes["lambda_ins"] = args.lambda_ins
    if args.curriculum is not None:
        changes["curriculum"] = replace(distill.curriculum, kind=args.curriculum)
    try:
        return replace(recipe, distill=replace(distill, **changes))
    except ValueError as error:
        raise UserError(str(error)) from None


def _sni_dir(args: argparse.Namespace) -> Path | None:
    from training.pipeline import SNI_TEST_SPLIT

    if args.no_sni:
        return None
    sni = Path(args.sni)
    if not (sni / SNI_TEST_SPLIT).exists():
        raise UserError(f"{sni} is not an SNI subset (no {SNI_TEST_SPLIT}); pass --sni DIR or --no-sni")
    return sni


def _with_corpus(args: argparse.Namespace, recipe):
    """--corpus FILE as the recipe's stage-2 corpus (recorded in that stage's config)."""
    from training.presets import replace_path

    if not getattr(args, "corpus", None):
        return recipe
    corpus = Path(args.corpus)
    if not corpus.is_file():
        raise UserError(f"--corpus {corpus}: no such file")
    return replace_path(recipe, "hypernet_pretrain.corpus", str(corpus.resolve()))


def _training_sni(args: argparse.Namespace, recipe) -> Path | None:
    """The SNI directory: the training data of an `sni` recipe, else the synthetic world's extra test set."""
    if recipe.sni is None:
        return _sni_dir(args)
    if getattr(args, "no_sni", False):
        raise UserError(f"recipe {recipe.name} trains on Super-Natural Instructions: --no-sni does not apply")
    return Path(args.sni)


def cmd_train(args: argparse.Namespace) -> None:
    from training.distributed import init_distributed
    from training.pipeline import run_pipeline

    init_distributed(args.dist_timeout)  # under torchrun: join the process group once, before any stage
    recipe = _with_corpus(args, _recipe(args))
    if args.stage is not None:
        return cmd_train_stage(args, recipe)
    if not args.out:
        raise UserError("tagi train without a stage runs every stage and needs --out DIR (or name a stage)")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    sni = _training_sni(args, recipe)
    work = Path(args.work) if args.work else Path("runs") / f"train-{recipe.name}"
    info = run_pipeline(
        recipe,
        out,
        work,
        device=args.device,
        resume=not args.no_resume,
        overwrite=True,
        evaluate=not args.no_eval,
        sni_dir=sni,
        base=Path(args.base) if args.base else None,
        meta_teacher=Path(args.meta_teacher) if args.meta_teacher else None,
    )
    if info is None:  # not rank 0: rank 0 writes and reports
        return
    from training.card import write_card

    write_card(out, "tagi " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print(
        f"wrote {out} ({info['bytes'] / 1e6:.1f} MB) in {info['train_seconds'] / 60:.1f} min of training; "
        f"stages: {info['stage_seconds']}"
    )


def cmd_train_stage(args: argparse.Namespace, recipe) -> None:
    from training.common import load_task_set
    from training.distributed import is_main
    from training.pipeline import work_task_set
    from training.presets import get_path, replace_path, with_steps
    from training.stages import STAGE, StageInputs, result_path, run_stage

    stage = STAGE[args.stage]
    if args.steps is not None:
        if args.steps < 1:
            raise UserError(f"--steps must be >= 1, got {args.steps}")
        recipe = replace_path(recipe, stage.loop, with_steps(get_path(recipe, stage.loop), args.steps))
    if stage.name == "distill":
        recipe = _distill_overrides(args, recipe)
    work = Path(args.work)
    results = {}
    for name in stage.needed(recipe):
        path = result_path(STAGE[name], work)
        if not path.exists():
            raise UserError(f"the result of stage {name} is not at {path}; run `tagi train {name}` first (same --work)")
        results[name] = path
    if args.tasks:
        task_set = load_task_set(args.tasks, recipe.held_back, recipe.seed)
    else:
        task_set = work_task_set(recipe, work, Path(args.sni) if recipe.sni is not None else None)
    out = Path(args.stage_dir) if getattr(args, "stage_dir", None) else work / stage.directory
    path = run_stage(stage, recipe, StageInputs(task_set, results, args.device, not args.no_resume), out)
    if is_main():
        print(f"stage {stage.name} done: {path}")


# ---- eval ------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> None:
    from training.evaluate import TIMING_TASKS, format_table, run_eval, write_json

    checkpoint = resolve_checkpoint(args.checkpoint)
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    for option, path in (("--json", args.json), ("--predictions", args.predictions)):
        if path is not None and Path(path).is_dir():
            raise UserError(f"{option} {path} is a directory; give a file name")
    result = run_eval(
        checkpoint,
        args.tasks,
        args.format,
        held_back=args.held_back,
        seed=args.seed,
        max_instances=args.max_instances,
        max_input_tokens=args.max_input_tokens,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        device=args.device,
        split_file=args.split,
        timing_tasks=0 if args.no_timing else TIMING_TASKS,
        predictions_file=None if args.predictions is None else Path(args.predictions),
        revise=args.revise,
    )
    print(format_table(result))
    if args.revise:
        revise = result["revise"]
        print(
            f"revise pass: exact match {revise['gain_exact_match']:+.1f}, Rouge-L {revise['gain_rougeL']:+.1f} over tagi, "
            f"at {revise['cost_ratio']:.2f}x the first pass's generation time"
        )
    if args.json:
        write_json(Path(args.json), result)
        print(f"wrote {args.json}")
    if args.predictions:
        print(f"wrote {args.predictions}")


# ---- curriculum ablation ---------------------------------------------------------------------


def _synthetic_recipe(args: argparse.Namespace):
    """The recipe of an ablation: they compare arms on the synthetic world's held-out sets."""
    recipe = _recipe(args)
    if recipe.sni is not None:
        raise UserError(f"recipe {recipe.name} trains a given base on SNI; the ablations compare on the synthetic world")
    return recipe


def _ablation_paths(args: argparse.Namespace):
    """(recipe, the `tagi train` output the ablation reports into, the work directory of its stages)."""
    from training.pipeline import PIPELINE_FILE

    recipe = _synthetic_recipe(args)
    out = Path(args.out)
    if not (out / PIPELINE_FILE).exists():
        raise UserError(f"{out} is not a `tagi train` output (no {PIPELINE_FILE}); pass the checkpoint the pipeline wrote")
    if getattr(args, "eval_instances", 1) < 1:
        raise UserError("--eval-instances must be >= 1")
    return recipe, out, Path(args.work) if args.work else Path("runs") / f"train-{recipe.name}"


def cmd_ablate_curriculum(args: argparse.Namespace) -> None:
    from training.ablation import run_ablation
    from training.card import write_card

    recipe, out, work = _ablation_paths(args)
    report = run_ablation(recipe, work, out, _sni_dir(args), device=args.device, resume=not args.no_resume)
    write_card(out)
    means = report["synthetic_mean_exact_match"]
    print(
        f"wrote {out / 'curriculum.json'}: synthetic held-out mean exact match uniform {means['uniform']:.1f}, "
        f"tapir {means['tapir']:.1f}; winner {report['winner']}"
    )


def cmd_ablate_citing(args: argparse.Namespace) -> None:
    from training.ablation import CITING_FILE, run_citing_ablation
    from training.card import write_card

    recipe, out, work = _ablation_paths(args)
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    report = run_citing_ablation(
        recipe,
        work,
        out,
        args.steps if args.steps is not None else recipe.distill.loop.steps,
        device=args.device,
        resume=not args.no_resume,
        max_instances=args.eval_instances,
        max_new_tokens=args.max_new_tokens,
        **({"arms": tuple(args.arms)} if args.arms else {}),
    )
    write_card(out)
    means, revised = report["synthetic_mean_exact_match"], report["synthetic_mean_exact_match_revised"]
    print(
        f"wrote {out / CITING_FILE}: held-out mean exact match (first pass / revised) "
        + ", ".join(f"{a} {means[a]:.1f} / {revised[a]:.1f}" for a in means)
        + f"; winner {report['winner']}"
    )


def cmd_ablate_encoder(args: argparse.Namespace) -> None:
    from training.ablation import run_encoder_ablation
    from training.card import write_card

    recipe, out, work = _ablation_paths(args)
    report = run_encoder_ablation(
        recipe,
        work,
        out,
        args.steps,
        device=args.device,
        resume=not args.no_resume,
        max_instances=args.eval_instances,
        **({"arms": tuple(args.arms)} if args.arms else {}),
    )
    write_card(out)
    natural = report["sets"].get("synthetic_natural_wording", {})
    print(
        f"wrote {out / 'encoder.json'}: natural-wording exact match "
        + ", ".join(f"{arm} {row['mean']['exact_match']:.1f}" for arm, row in natural.items())
    )


# ---- rubrics ---------------------------------------------------------------------------------


def cmd_rubrics(args: argparse.Namespace) -> None:
    from training.common import load_task_set
    from training.presets import get_preset
    from training.rubrics import derive_rubrics, save_rubrics, synthetic_task_set

    out = Path(args.out)
    refuse_existing(out, args.overwrite)
    recipe = get_preset(args.preset)
    if args.tasks:
        try:
            task_set = load_task_set(args.tasks, recipe.held_back, recipe.seed, recipe.prompt_format)
        except ValueError as err:
            raise UserError(str(err)) from None
    elif recipe.sni is not None:
        raise UserError(f"preset {recipe.name} trains on SNI tasks: pass their files with --tasks PATH")
    else:
        task_set = synthetic_task_set(recipe.suite, recipe.seed, recipe.held_back)
    rubrics = derive_rubrics(task_set)
    save_rubrics(rubrics, out)
    print(f"wrote the rubrics of {len(rubrics)} categories, from {len(task_set.train)} training pairs, to {out}")


def _add_rubrics(sub: argparse._SubParsersAction) -> None:
    from training.presets import preset_names

    p = sub.add_parser(
        "rubrics",
        help="write the rubric of each task category, derived from the training pairs (CITING)",
        description="Derive one rubric per task category from its training pairs only (the answer's type and the "
        "relations every training answer keeps with its input; training.rubrics) and write them as JSON, in the "
        "format a user's own rubrics take: edit them and give them back. A rubric's text (its criteria's texts, "
        "joined) is what `tagi run --rubric` reads.",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="JSON file to write (atomically)")
    p.add_argument(
        "--preset",
        choices=preset_names(),
        default="tiny",
        help="recipe whose training data (its list-world suite, seed and held-back instances) the rubrics come from "
        "(default: tiny)",
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        metavar="PATH",
        help="training task files or directories (SNI format) instead of the preset's list-world suite",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_rubrics)


# ---- registration ----------------------------------------------------------------------------


def _recipe_args(p: argparse.ArgumentParser) -> None:
    from training.presets import preset_names

    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--preset",
        choices=preset_names(),
        default="tiny",
        help="built-in recipe configs/NAME.yaml (default: tiny, the shipped one; smoke: ~1 minute, for tests)",
    )
    which.add_argument(
        "--recipe", metavar="FILE", help="recipe YAML file (see configs/); values it does not name keep their defaults"
    )
    p.add_argument(
        "--seed", type=int, default=None, help="seed of data, initialisation and batch order (default: the recipe's, 0)"
    )
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train; bf16 autocast on CUDA (default: auto)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads of every stage (default: the recipe's; tiny uses all cores, so run it alone, "
        "or pass 1 when sharing the machine)",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start an interrupted stage over instead of resuming from its last periodic checkpoint",
    )


def _corpus_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus",
        metavar="FILE",
        help="stage 2's pretraining text (the paper used C4): plain text, one document per line, or JSONL with a "
        "\"text\" field (*.jsonl); read lazily (default: the recipe's hypernet_pretrain.corpus, else the training tasks' texts)",
    )


def _sni_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--sni", default=str(SNI_DIR), metavar="DIR", help=f"SNI subset directory for {what} (default: the repository's data/sni)"
    )
    p.add_argument("--no-sni", action="store_true", help="skip the SNI test tasks")


def _add_init(sub: argparse._SubParsersAction) -> None:
    from hypernet.config import KNOWN_TARGETS, GeneratorConfig
    from hypernet.families import FAMILIES
    from hypernet.tiny import PRESETS

    p = sub.add_parser(
        "init",
        help="create an untrained checkpoint (tiny base + tokenizer + generator)",
        description="Create an untrained checkpoint: a from-scratch tiny T5 and tokenizer (or a local HF T5 "
        "directory given with --base) plus a generator whose first adapters are exactly zero.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to create")
    p.add_argument(
        "--preset", choices=sorted(PRESETS), default="tiny", help="size of the from-scratch base (default: tiny, 7.6M)"
    )
    p.add_argument(
        "--base",
        metavar="DIR",
        help="use this local HF model directory instead of a tiny base: a T5 (t5-lm-adapt, flan-t5, mt5) or a decoder-only "
        "Llama, Mistral, Qwen2/Qwen3 or GPT-2 (safetensors weights)",
    )
    p.add_argument(
        "--corpus",
        nargs="+",
        metavar="FILE",
        help="text files (one text per line) to train the tokenizer on (default: the texts of the built-in synthetic task suite)",
    )
    defaults = GeneratorConfig()
    p.add_argument(
        "--rank",
        type=int,
        default=defaults.rank,
        help=f"LoRA rank (default {defaults.rank}; at most 512 on a decoder-only base, the largest vLLM serves)",
    )
    p.add_argument("--alpha", type=float, default=defaults.alpha, help=f"LoRA alpha (default {defaults.alpha})")
    p.add_argument(
        "--target-modules",
        nargs="+",
        choices=KNOWN_TARGETS,
        help="modules to adapt in every layer that has them (default: the base family's, "
        + "; ".join(f"{f.name}: {' '.join(f.default_targets)}" for f in FAMILIES.values() if f.name in ("t5", "llama", "gpt2"))
        + "; see hypernet.families)",
    )
    p.add_argument(
        "--attention-heads",
        type=int,
        default=defaults.attention_heads,
        help=f"heads of the generator's attention over the instruction's tokens; 0 = pooled vector only "
        f"(default {defaults.attention_heads})",
    )
    p.add_argument(
        "--instruction-encoder",
        default="base",
        metavar="NAME",
        help="what reads instructions: 'base' (the base's own encoder, the paper's choice; default) or a frozen "
        "sentence encoder: 'all-minilm-l6-v2' (installed with tagi) or any name with --instruction-encoder-dir",
    )
    p.add_argument(
        "--instruction-encoder-dir",
        metavar="DIR",
        help="a local BERT-style sentence-transformers directory to use as the sentence encoder (not copied into "
        "the checkpoint: at load time it is found through $TAGI_INSTRUCTION_ENCODER_DIR)",
    )
    p.add_argument(
        "--instruction-layer",
        type=int,
        metavar="N",
        help="with the base encoder of a decoder-only base: read the hidden state after layer N (0: the embeddings, "
        "negative: from the end) instead of the last one",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for weights and generator init (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_init)


def _add_init_base(sub: argparse._SubParsersAction) -> None:
    from hypernet.tiny import PRESETS
    from hypernet.tiny_causal import CAUSAL_FAMILIES

    p = sub.add_parser(
        "init-base",
        help="write a small random-initialised base + tokenizer for `tagi train --base` (smoke tests, CI)",
        description="Write a Hugging Face model directory with random weights and a tokenizer trained on the training "
        "tasks of an SNI split (T5: SentencePiece; decoder-only families: byte-level BPE): a stand-in for a real "
        "base (t5-lm-adapt, Qwen2, ...) that needs no download, e.g. for "
        "`tagi train --recipe configs/sni-smoke.yaml --base DIR`.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="base directory to create")
    p.add_argument("--sni", default=str(SNI_DIR), metavar="DIR", help="natural-instructions directory (default: data/sni)")
    p.add_argument("--split", default="subset", help="split whose training tasks the tokenizer reads (default: subset)")
    p.add_argument(
        "--max-instances", type=int, default=100, metavar="N", help="instances read per task for the tokenizer (default 100)"
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="micro",
        help="size (hypernet.tiny.PRESETS, for a decoder hypernet.tiny_causal.CAUSAL_PRESETS; default: micro)",
    )
    p.add_argument(
        "--family",
        choices=("t5", *CAUSAL_FAMILIES),
        default="t5",
        help="model family: t5 (encoder-decoder, the default) or a decoder-only layout in its own transformers class",
    )
    p.add_argument(
        "--chat-template",
        action="store_true",
        help="give a decoder's tokenizer a ChatML chat template (as Qwen2/Qwen3 chat models have), to stand in for "
        "an instruct checkpoint",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the weights (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_init_base)


def _dist_arg(p: argparse.ArgumentParser) -> None:
    from training.distributed import DEFAULT_TIMEOUT_S

    p.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="under torchrun (`torchrun --nproc-per-node N --no-python tagi train ...`): how long a process waits in a "
        "collective for the others before it fails; must exceed rank 0's evaluations and saves "
        f"(default {DEFAULT_TIMEOUT_S:g})",
    )


def _add_train(sub: argparse._SubParsersAction) -> None:
    from training.curriculum import KINDS
    from training.stages import STAGES

    train = sub.add_parser(
        "train",
        help="train: every stage (--out) or one stage",
        description="Without a stage: run every stage end to end in --work and write the shipped checkpoint to "
        "--out (a tagi checkpoint + teachers/ + meta_teacher/ + eval.json). With a stage: run that stage only, "
        "reading earlier stages' results from --work.",
    )
    _recipe_args(train)
    _dist_arg(train)
    train.add_argument("--out", metavar="DIR", help="output checkpoint directory (all stages)")
    train.add_argument(
        "--base",
        metavar="DIR",
        help="a local Hugging Face T5 directory (t5-lm-adapt, flan-t5, mt5; safetensors) to train on instead of stage 0's "
        "from-scratch base; needs a recipe with an `sni` section (configs/sni-smoke.yaml, configs/t5-lm-adapt-base.yaml)",
    )
    train.add_argument(
        "--meta-teacher",
        metavar="DIR",
        help="a local HF T5 directory (e.g. Tk-Instruct) used as stage 1's meta-trained teacher instead of training one",
    )
    _corpus_arg(train)
    train.add_argument(
        "--work", metavar="DIR", help="work directory for stage states, logs, plots (default: runs/train-<recipe name>)"
    )
    train.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    train.add_argument("--no-eval", action="store_true", help="skip the final evaluation (eval.json)")
    _sni_args(train, "the training tasks of an `sni` recipe, else the sni_test evaluation")
    stages = train.add_subparsers(dest="stage", required=False, metavar="{" + ",".join(s.name for s in STAGES) + "}")
    for stage in STAGES:
        p = stages.add_parser(
            stage.name, help=stage.help, description=f"{stage.help}. Writes WORK/{stage.directory}/{stage.result}."
        )
        _recipe_args(p)
        _dist_arg(p)
        p.add_argument("--work", required=True, metavar="DIR", help="work directory shared by the stages")
        p.add_argument(
            "--tasks",
            nargs="+",
            metavar="PATH",
            help="training task files/directories (default: the synthetic suite's train split in --work)",
        )
        p.add_argument("--steps", type=int, help=f"override the recipe's number of optimizer steps ({stage.loop}.steps)")
        p.add_argument(
            "--sni",
            default=str(SNI_DIR),
            metavar="DIR",
            help="with an `sni` recipe: the natural-instructions directory the tasks come from (default: data/sni)",
        )
        if stage.name == "hypernet-pretrain":
            _corpus_arg(p)
        if stage.name == "distill":
            p.add_argument("--no-ce", action="store_true", help="switch off L_ce")
            p.add_argument(
                "--no-kl", action="store_true", help="switch off L_kl (no meta teacher needed, unless --curriculum tapir)"
            )
            p.add_argument("--no-ins", action="store_true", help="switch off L_ins (no instance teachers needed)")
            p.add_argument("--lambda-kl", type=float, help="weight lambda1 of L_kl")
            p.add_argument("--lambda-ins", type=float, help="weight lambda2 of L_ins")
            p.add_argument(
                "--curriculum",
                choices=KINDS,
                help="data schedule: uniform (every training instance, epoch by epoch), tapir (rounds balanced "
                "across categories with a growing share of the tasks furthest behind the teacher), citing (rounds "
                "in which the student's failing drafts, revised by the better teacher, are trained on, with "
                "self-correction examples) or tapir+citing; default: the recipe's",
            )
            p.add_argument(
                "--stage-dir", metavar="DIR", help=f"where this run's state and checkpoint go (default: WORK/{stage.directory})"
            )
        p.set_defaults(func=cmd_train)
    train.set_defaults(func=cmd_train, stage=None)


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction | None = None) -> None:
    if bench is not None:
        from training.bench import add_bench_train

        add_bench_train(bench)
    _add_init(sub)
    _add_init_base(sub)
    data = sub.add_parser("data", help="build training data", description="Build training data.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="{synth}")
    synth = data_sub.add_parser(
        "synth",
        help="write the synthetic list-world suite in SNI format",
        description="Write the synthetic list-world suite: <out>/<split>/<task>.json and <out>/splits/<split>.txt "
        "for the splits train, unseen_composition, unseen_parameter, unseen_paraphrase.",
    )
    synth.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    synth.add_argument("--seed", type=int, default=0, help="suite seed: the same seed gives identical tasks (default 0)")
    from training.presets import preset_names

    synth.add_argument(
        "--preset", choices=preset_names(), default="tiny", help="suite size of this recipe (default: tiny = the full suite)"
    )
    synth.add_argument("--overwrite", action="store_true", help="write into a non-empty directory")
    synth.set_defaults(func=cmd_data_synth)

    _add_train(sub)
    _add_rubrics(sub)

    ablate = sub.add_parser(
        "ablate-curriculum",
        help="stage 3 with the uniform vs the tapir curriculum at equal compute",
        description="Run stage 3 with both data schedules (uniform, tapir) from the same pretrained "
        "hypernetwork and teachers, for the same number of steps and examples; score TAGI on the "
        "synthetic held-out sets and the SNI test tasks; write OUT/curriculum.json and a section of "
        "OUT/README.md. The arm the recipe already uses is the pipeline's own stage 3.",
    )
    _recipe_args(ablate)
    ablate.add_argument("--work", metavar="DIR", help="the pipeline's work directory (default: runs/train-<recipe name>)")
    ablate.add_argument("--out", required=True, metavar="DIR", help="the checkpoint `tagi train` wrote (gets curriculum.json)")
    _sni_args(ablate, "the sni_test set")
    ablate.set_defaults(func=cmd_ablate_curriculum)

    encoder = sub.add_parser(
        "ablate-encoder",
        help="stages 2 and 3 per instruction-encoder arm at equal, reduced compute",
        description="Rerun stages 2 and 3 from the pipeline's base and teachers for each arm of "
        "training.ablation.ENCODER_ARMS (sentence encoder + attention = the recipe; sentence encoder, pooled "
        "only; the base's encoder + attention), stage 3 cut to --steps for every arm; score TAGI with and "
        "without fusion on the synthetic sets; write OUT/encoder.json and a section of OUT/README.md.",
    )
    _recipe_args(encoder)
    encoder.add_argument("--work", metavar="DIR", help="the pipeline's work directory (default: runs/train-<recipe name>)")
    encoder.add_argument("--out", required=True, metavar="DIR", help="the checkpoint `tagi train` wrote (gets encoder.json)")
    encoder.add_argument("--steps", type=int, default=600, help="stage-3 steps of every arm (default 600)")
    encoder.add_argument("--eval-instances", type=int, default=10, help="instances per task scored for every set (default 10)")
    encoder.add_argument(
        "--arms",
        nargs="+",
        metavar="ARM",
        help="run only these arms of training.ablation.ENCODER_ARMS (sentence+attention, sentence+pooled, "
        "base+attention), merged into an existing encoder.json of the same settings (default: all)",
    )
    encoder.set_defaults(func=cmd_ablate_encoder)

    from training.ablation import CITING_ARMS

    citing = sub.add_parser(
        "ablate-citing",
        help="stage 3 per curriculum (uniform, tapir, citing, tapir+citing) x rubric in the instruction, with and "
        "without the revise pass, at equal compute",
        description="Rerun stage 3 from the pipeline's stage 2 and teachers for each arm of training.ablation.CITING_ARMS "
        "(each curriculum kind, without and with the rubric in the instruction), cut to --steps for every arm; score "
        "TAGI on the synthetic sets with and without the revise pass; write OUT/citing.json and a section of OUT/README.md.",
    )
    _recipe_args(citing)
    citing.add_argument("--work", metavar="DIR", help="the pipeline's work directory (default: runs/train-<recipe name>)")
    citing.add_argument("--out", required=True, metavar="DIR", help="the checkpoint `tagi train` wrote (gets citing.json)")
    citing.add_argument(
        "--steps",
        type=int,
        help="stage-3 steps of every arm (default: the recipe's own, so that its uniform arm is the pipeline's stage 3, "
        "reused when done)",
    )
    citing.add_argument("--eval-instances", type=int, default=10, help="instances per task scored for every set (default 10)")
    citing.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"output length limit when scoring (default {DEFAULT_MAX_NEW_TOKENS})",
    )
    citing.add_argument(
        "--arms",
        nargs="+",
        metavar="ARM",
        help=f"run only these arms ({', '.join(CITING_ARMS)}), merged into an existing citing.json of the same settings "
        "(default: all)",
    )
    citing.set_defaults(func=cmd_ablate_citing)

    ev = sub.add_parser(
        "eval",
        help="score every method side by side on task files",
        description="Per task, per category and overall Rouge-L and exact match (percent; the official SNI "
        "definitions of Tk-Instruct's compute_metrics.py) for base_concat, meta_teacher, task_lora_oracle, "
        "tagi_no_fusion, tagi_fusion_only, tagi, tagi_wrong_instruction, plus measured time per instance of TAGI vs "
        "instruction concatenation.",
    )
    add_checkpoint_argument(ev)
    ev.add_argument("--tasks", nargs="+", required=True, metavar="PATH", help="SNI task files or directories of them")
    ev.add_argument("--split", metavar="FILE", help="only the tasks named in this split file")
    ev.add_argument("--format", choices=("def", "def+2pos"), default="def", help="instruction format (default: def)")
    ev.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    ev.add_argument(
        "--predictions",
        metavar="FILE",
        help="also write every prediction as JSONL, one line per instance and method, in Tk-Instruct's "
        'predicted_examples.jsonl shape plus "Method" (rescorable with its compute_metrics.py)',
    )
    ev.add_argument(
        "--held-back", type=int, metavar="N", help="score only each task's N held-back instances (for training tasks)"
    )
    ev.add_argument("--seed", type=int, default=0, help="seed of the held-back split (default 0, as in training)")
    ev.add_argument("--max-instances", type=int, metavar="N", help="at most N instances per task")
    ev.add_argument(
        "--max-input-tokens", type=int, metavar="N", help="truncate longer inputs (counted in the JSON; default 1024)"
    )
    ev.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"output length limit (default {DEFAULT_MAX_NEW_TOKENS}, hypernet.config.DEFAULT_MAX_NEW_TOKENS)",
    )
    ev.add_argument("--batch-size", type=int, default=64, help="instances per forward pass (default 64)")
    ev.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default cpu)")
    ev.add_argument(
        "--no-timing",
        action="store_true",
        help="skip timing TAGI against instruction concatenation (on the first tasks otherwise; the JSON's ratio is then null)",
    )
    ev.add_argument(
        "--revise",
        action="store_true",
        help="also score the revise pass (tagi_revised: the self-correction pass on tagi's answers, training.citing) "
        "with its gain and cost; off by default",
    )
    ev.set_defaults(func=cmd_eval)
