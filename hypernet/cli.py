"""The `tagi` command: the model's subcommands (adapter, run, bench core), plus those other
packages register through the `tagi.commands` entry-point group (serving: serve, bench serve;
training: init, data, train, eval, ...). The dependency points one way: this module never
imports serving or training; they plug in by declaring `register(sub, bench)` in pyproject.toml.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

from hypernet.cli_common import add_checkpoint_argument, load_model, read_text_argument, refuse_existing
from hypernet.config import DEFAULT_MAX_NEW_TOKENS
from hypernet.errors import UserError
from hypernet.rubric import revision_input, with_rubric

ENTRY_POINT_GROUP = "tagi.commands"
DEFAULT_EXPORT_BATCH_SIZE = 64
log = logging.getLogger("tagi")


# ---- rubric ----------------------------------------------------------------------------------


def add_rubric_arguments(p: argparse.ArgumentParser) -> None:
    rubric = p.add_mutually_exclusive_group()
    rubric.add_argument(
        "--rubric",
        metavar="TEXT",
        help="what a good answer must satisfy (CITING), read by the hypernetwork with the instruction: another adapter",
    )
    rubric.add_argument(
        "--rubric-file", metavar="FILE", help="read the rubric from a text file (e.g. a rubric's text from `tagi rubrics`)"
    )


def with_given_rubric(instruction: str, args: argparse.Namespace) -> str:
    """The instruction as the generator reads it: with the rubric of --rubric / --rubric-file, if any."""
    rubric = args.rubric if args.rubric_file is None else read_text_argument(f"@{args.rubric_file}", "rubric")
    return instruction if rubric is None else with_rubric(instruction, rubric)


# ---- adapter ---------------------------------------------------------------------------------


def cmd_adapter(args: argparse.Namespace) -> None:
    if (args.instruction is None) == (args.instructions is None):
        raise UserError("give either --instruction TEXT with --out DIR, or --instructions FILE with --out-dir DIR")
    if args.instructions is not None:
        export_instructions_file(args)
        return
    from hypernet.export import Exporter

    if args.out is None or args.out_dir is not None or args.strict:
        raise UserError("--instruction writes one adapter to --out DIR; --out-dir and --strict go with --instructions FILE")
    instruction = with_given_rubric(read_text_argument(args.instruction, "instruction"), args)
    out = Path(args.out)
    refuse_existing(out, args.overwrite)
    model = load_model(args.checkpoint)
    adapter = model.adapter(instruction)
    Exporter(model, merge=args.merge).write(adapter, out, overwrite=args.overwrite)
    kind = "merged model: from_pretrained, no PEFT" if args.merge else "PEFT format; load with PeftModel.from_pretrained"
    print(f"adapter {adapter.adapter_id} written to {out} ({kind})")


def export_instructions_file(args: argparse.Namespace) -> None:
    """Bad lines are all found (and, with --strict, refused) before anything is written."""
    from hypernet.export import check_entries, export_batch, read_instructions

    if args.out_dir is None or args.out is not None:
        raise UserError("--instructions FILE writes into --out-dir DIR (one directory per instruction and manifest.jsonl)")
    if args.rubric is not None or args.rubric_file is not None:
        raise UserError("--rubric and --rubric-file go with --instruction")
    path = Path(args.instructions)
    entries, bad = read_instructions(path)
    model = load_model(args.checkpoint)
    good, rejected = check_entries(model, entries)
    bad = sorted(bad + rejected, key=lambda b: b.line)
    if bad and args.strict:
        raise UserError(f"{path} {bad[0]} ({len(bad)} bad line(s) in all; --strict: nothing was written)")
    for line in bad:
        print(f"tagi: skipped {path} {line}", file=sys.stderr)
    result = export_batch(model, good, Path(args.out_dir), batch_size=args.batch_size, merge=args.merge, overwrite=args.overwrite)
    print(
        f"{result.written} written, {result.skipped} already complete, {len(bad)} bad line(s) skipped; "
        f"manifest: {result.manifest}"
    )


def add_adapter(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapter",
        help="generate adapters for instructions and export them (PEFT directories or merged models)",
        description="Generate the LoRA adapter of an instruction and write it as a PEFT directory "
        "(adapter_config.json, adapter_model.safetensors, tagi.json with the input template); with "
        "--instructions FILE, one per line of FILE into --out-dir, batched and resumable.",
    )
    add_checkpoint_argument(p)
    p.add_argument("--instruction", help="task instruction text, or @FILE to read it from a file")
    p.add_argument("--out", metavar="DIR", help="directory to write (atomically) for --instruction")
    add_rubric_arguments(p)
    p.add_argument(
        "--instructions",
        metavar="FILE",
        help='many instructions: JSONL ({"instruction": ..., "name": optional}) if FILE ends in .jsonl, '
        "else one instruction per line",
    )
    p.add_argument(
        "--out-dir",
        metavar="DIR",
        help="for --instructions: one directory per instruction (named by name or adapter id) and manifest.jsonl; "
        "a rerun skips what is complete and verified",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="with --instructions: fail (exit 2, nothing written) on any bad line instead of skipping it",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_EXPORT_BATCH_SIZE,
        help=f"with --instructions: instructions generated and written per step (default {DEFAULT_EXPORT_BATCH_SIZE})",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="write a full model with the adapter merged into the base weights (from_pretrained loads it, no PEFT)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output directories that hold something else")
    p.set_defaults(func=cmd_adapter)


# ---- adapters map ----------------------------------------------------------------------------


def cmd_adapters_map(args: argparse.Namespace) -> None:
    from hypernet.adapter_map import build_map, write_map
    from hypernet.export import accepted_instructions, read_instructions

    path = Path(args.instructions)
    entries, bad = read_instructions(path, label_field=args.label_field)
    model = load_model(args.checkpoint)
    good, refused = accepted_instructions(model, entries)
    bad += refused
    for line in sorted(bad, key=lambda b: b.line):
        print(f"tagi: skipped {path} {line}", file=sys.stderr)
    adapter_map = build_map(model, good, batch_size=args.batch_size)
    sidecar = write_map(adapter_map, Path(args.out), title=args.title or f"{len(good)} adapters from {path.name}")
    s = adapter_map.similarity
    print(f"map of {len(good)} adapters: {args.out} (points with instruction, label, coordinates: {sidecar})")
    if s.same_task is not None and s.different_task is not None:
        print(
            f"mean cosine similarity of delta-W: same task {s.same_task:.4f} ({s.same_pairs} pairs), "
            f"different tasks {s.different_task:.4f} ({s.different_pairs} pairs)"
        )


def add_adapters(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapters", help="look at many generated adapters together")
    adapters = p.add_subparsers(dest="adapters_command", required=True, metavar="{map}")
    m = adapters.add_parser(
        "map",
        help="PCA map of generated adapters, coloured by task, with a JSON sidecar",
        description="Generate the adapter of every instruction in FILE, project the flattened delta-W "
        "(scale * B @ A of every target) to two dimensions by PCA, and draw it coloured by the label "
        "field; also print the mean cosine similarity of same-label vs different-label adapters.",
    )
    add_checkpoint_argument(m)
    m.add_argument(
        "--instructions",
        required=True,
        metavar="FILE",
        help="JSONL (.jsonl) with an instruction and a label per line, or one instruction per line (no labels)",
    )
    m.add_argument("--out", required=True, metavar="PNG", help="image to write; the JSON sidecar goes next to it (.json)")
    m.add_argument("--label-field", default="label", help="JSONL field that names the task (default: label)")
    m.add_argument("--title", default=None, help="plot title (default: the number of adapters and the file name)")
    m.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_EXPORT_BATCH_SIZE,
        help=f"instructions generated per step (default {DEFAULT_EXPORT_BATCH_SIZE})",
    )
    m.set_defaults(func=cmd_adapters_map)


# ---- run -------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> None:
    instruction = read_text_argument(args.instruction, "instruction")
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be >= 1")
    instruction = with_given_rubric(instruction, args)
    model = load_model(args.checkpoint)
    adapter = model.adapter(instruction)
    outputs = model.generate(args.input, adapter, fusion=not args.no_fusion, max_new_tokens=args.max_new_tokens)
    if args.revise:  # the self-correction pass (training.citing): the same adapter reads input + draft
        revised = [revision_input(text, draft) for text, draft in zip(args.input, outputs)]
        outputs = model.generate(revised, adapter, fusion=not args.no_fusion, max_new_tokens=args.max_new_tokens)
    for output in outputs:
        print(output.replace("\n", " "))


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="answer inputs zero-shot from an instruction",
        description="Generate the adapter of --instruction and print the greedy output for each --input, one per line.",
    )
    add_checkpoint_argument(p)
    p.add_argument("--instruction", required=True, help="task instruction text, or @FILE to read it from a file")
    p.add_argument("--input", required=True, action="append", help="an input; repeat for several (one batch)")
    add_rubric_arguments(p)
    p.add_argument("--no-fusion", action="store_true", help="adapter only, no instruction fusion: what a PEFT export reproduces")
    p.add_argument(
        "--revise",
        action="store_true",
        help="a second pass that turns each first answer into a revised one (input + draft; a checkpoint trained with "
        "the citing curriculum learned it, best with the rubric it was trained with via --rubric); about twice the "
        "generation time; off by default",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"output length limit in tokens (default {DEFAULT_MAX_NEW_TOKENS})",
    )
    p.set_defaults(func=cmd_run)


# ---- bench -----------------------------------------------------------------------------------


def cmd_bench_core(args: argparse.Namespace) -> None:
    from hypernet.bench import run_core_benchmark

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.rounds is not None and args.rounds < 1:
        raise UserError("--rounds must be >= 1")
    json_path = Path(args.json) if args.json else None
    run_core_benchmark(json_path=json_path, rounds=args.rounds, quick=args.quick, family=args.family)


def cmd_bench_export(args: argparse.Namespace) -> None:
    from hypernet.bench_export import run_export_benchmark
    from hypernet.cli_common import resolve_checkpoint

    if args.count < 1 or args.single < 1:
        raise UserError("--count and --single must be >= 1")
    run_export_benchmark(
        resolve_checkpoint(args.checkpoint),
        count=args.count,
        single=args.single,
        threads=args.threads,
        json_path=Path(args.json) if args.json else None,
    )


def cmd_bench_encoders(args: argparse.Namespace) -> None:
    from hypernet.bench_encoders import run_encoder_benchmark
    from hypernet.cli_common import resolve_checkpoint

    if args.rounds < 1:
        raise UserError("--rounds must be >= 1")
    try:
        json_path = Path(args.json) if args.json else None
        run_encoder_benchmark(resolve_checkpoint(args.checkpoint), rounds=args.rounds, json_path=json_path)
    except ValueError as err:
        raise UserError(str(err)) from None


def add_bench(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    p = sub.add_parser("bench", help="benchmarks that print figures")
    bench = p.add_subparsers(dest="bench", required=True, metavar="{core,export,encoders,serve,train}")
    core = bench.add_parser(
        "core",
        help="mixed-adapter forward vs base vs PEFT, adapter generation, swap time (and decode steps for a decoder)",
        description="Measure side by side, median over rounds, on random weights: --family t5 a t5-base-size T5 "
        "(d_model 768, 12+12 layers; rank 8 on q k v o wi wo), --family causal a Qwen2-0.5B-shaped decoder (hidden "
        "896, 24 layers, 14 heads with 2 KV heads; rank 8 on all seven projections), also timing 32 decode steps "
        "with the key/value cache. Batch 8 with 8 different adapters, 128 input tokens, 32 answer tokens.",
    )
    core.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    core.add_argument(
        "--family",
        choices=("t5", "causal"),
        default="t5",
        help="base layout: t5 (encoder-decoder, the default) or causal (decoder-only, Qwen2 layout)",
    )
    core.add_argument(
        "--rounds", type=int, help="timing rounds; medians are reported (default: 7 for t5, 3 for the slower causal run)"
    )
    core.add_argument("--quick", action="store_true", help="a small config instead of the full size (smoke test only)")
    core.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice, one per core)")
    core.set_defaults(func=cmd_bench_core)
    export = bench.add_parser(
        "export",
        help="adapters per second: a file of instructions in one process vs one process each",
        description="Time `tagi adapter --instructions` on COUNT instructions in one process against "
        "`tagi adapter --instruction` run once per instruction (measured on --single of them and "
        "extrapolated), end to end with the model load; also the in-process generation rate.",
    )
    add_checkpoint_argument(export)
    export.add_argument("--count", type=int, default=1000, help="instructions exported by the batched process (default 1000)")
    export.add_argument("--single", type=int, default=10, help="one-per-process runs to measure (default 10)")
    export.add_argument("--threads", type=int, default=0, help="torch threads in every process (default: torch's choice)")
    export.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    export.set_defaults(func=cmd_bench_export)
    encoders = bench.add_parser(
        "encoders",
        help="adapter generation time per instruction: the base's encoder vs the checkpoint's sentence encoder",
        description="Time TagiModel.adapter and TagiModel.adapters on a dozen everyday instructions with the "
        "checkpoint's sentence encoder and with the base's own encoder (same base and generator shape), side by "
        "side; medians over rounds and their ratio.",
    )
    add_checkpoint_argument(encoders)
    encoders.add_argument("--rounds", type=int, default=5, help="timing rounds; medians are reported (default 5)")
    encoders.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    encoders.set_defaults(func=cmd_bench_encoders)
    return bench


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tagi",
        description="Task adapters generated from instructions: "
        "instruction -> LoRA adapter -> zero-shot outputs, served or exported to PEFT.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    add_adapter(sub)
    add_adapters(sub)
    add_run(sub)
    bench = add_bench(sub)
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        entry.load()(sub, bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        args.func(args)
    # Only mistakes of the user's get one line; any other exception is a bug and keeps its traceback.
    except (UserError, FileExistsError) as err:
        if args.debug:
            raise
        print(f"tagi: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
