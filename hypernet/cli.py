"""The `tagi` command: one subcommand per function; training and serving add their own."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny"
log = logging.getLogger("tagi")


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2, no traceback."""


def resolve_checkpoint(path: str | None) -> Path:
    if path is not None:
        return Path(path)
    if (DEFAULT_CHECKPOINT / "config.json").exists():
        return DEFAULT_CHECKPOINT
    raise UsageError(f"no --checkpoint given and no shipped checkpoint at {DEFAULT_CHECKPOINT}; create one with `tagi init --out DIR`")


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", default=None, metavar="DIR",
        help=f"tagi checkpoint directory (default: the shipped {DEFAULT_CHECKPOINT.parent.name}/tiny when present)",
    )


def load_model(path: str | None, device: str = "cpu"):
    from hypernet.io import load_checkpoint

    return load_checkpoint(resolve_checkpoint(path), device=device)


def read_text_argument(value: str, what: str) -> str:
    """`@file` reads the text from a file, like curl; anything else is the text itself."""
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text()
        except OSError as err:
            raise UsageError(f"cannot read {what} file {value[1:]}: {err.strerror}") from err
    return value


# ---- init ------------------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> None:
    import tempfile

    from hypernet.config import CheckpointConfig, GeneratorConfig
    from hypernet.io import create_checkpoint
    from hypernet.tiny import PRESETS, build_tiny_base

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it")
    generator = GeneratorConfig(rank=args.rank, alpha=args.alpha, target_modules=tuple(args.target_modules))
    config = CheckpointConfig(generator=generator)
    if args.base:
        create_checkpoint(Path(args.base), out, config, seed=args.seed, overwrite=args.overwrite)
    else:
        texts = corpus_for_init(args.corpus)
        with tempfile.TemporaryDirectory() as tmp:
            build_tiny_base(texts, Path(tmp), PRESETS[args.preset], seed=args.seed)
            create_checkpoint(Path(tmp), out, config, seed=args.seed, overwrite=args.overwrite)
    counts = load_model(str(out)).parameter_counts()
    print(
        f"wrote untrained checkpoint to {out}: trainable generator {counts['generator']:,} parameters, "
        f"fusion {counts['fusion']:,}, frozen base {counts['base_frozen']:,}"
    )


def corpus_for_init(paths: list[str] | None) -> list[str]:
    if paths:
        texts = []
        for path in paths:
            try:
                texts.extend(line for line in Path(path).read_text().splitlines() if line.strip())
            except OSError as err:
                raise UsageError(f"cannot read corpus file {path}: {err.strerror}") from err
        if not texts:
            raise UsageError("the corpus files hold no text")
        return texts
    from training.synthetic import SuiteConfig, build_suite, corpus_texts

    return corpus_texts(build_suite(0, SuiteConfig()))


def add_init(sub: argparse._SubParsersAction) -> None:
    from hypernet.config import KNOWN_TARGETS, GeneratorConfig
    from hypernet.tiny import PRESETS

    p = sub.add_parser("init", help="create an untrained checkpoint (tiny base + tokenizer + generator)",
                       description="Create an untrained checkpoint: a from-scratch tiny T5 and tokenizer (or a local HF T5 "
                       "directory given with --base) plus a generator whose first adapters are exactly zero.")
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to create")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="size of the from-scratch base (default: tiny, 7.6M)")
    p.add_argument("--base", metavar="DIR", help="use this local HF T5 directory (t5-lm-adapt, flan-t5) instead of a tiny base")
    p.add_argument("--corpus", nargs="+", metavar="FILE", help="text files (one text per line) to train the tokenizer on "
                   "(default: the texts of the built-in synthetic task suite)")
    defaults = GeneratorConfig()
    p.add_argument("--rank", type=int, default=defaults.rank, help=f"LoRA rank (default {defaults.rank})")
    p.add_argument("--alpha", type=float, default=defaults.alpha, help=f"LoRA alpha (default {defaults.alpha})")
    p.add_argument("--target-modules", nargs="+", default=list(defaults.target_modules), choices=KNOWN_TARGETS,
                   help="T5 modules to adapt in every block (default: q v)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and generator init (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_init)


# ---- adapter ---------------------------------------------------------------------------------

def cmd_adapter(args: argparse.Namespace) -> None:
    from hypernet.io import export_peft

    instruction = read_text_argument(args.instruction, "instruction")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it")
    model = load_model(args.checkpoint)
    adapter = model.make_adapter(instruction)
    export_peft(model, adapter, out, overwrite=args.overwrite)
    print(f"adapter {adapter.adapter_id} written to {out} (PEFT format; load with PeftModel.from_pretrained)")


def add_adapter(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapter", help="generate an adapter for an instruction and export it as a PEFT directory",
                       description="Generate the LoRA adapter of an instruction and write it as a PEFT directory "
                       "(adapter_config.json, adapter_model.safetensors, tagi.json with the input template).")
    add_checkpoint_argument(p)
    p.add_argument("--instruction", required=True, help="task instruction text, or @FILE to read it from a file")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write (atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_adapter)


# ---- run -------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> None:
    instruction = read_text_argument(args.instruction, "instruction")
    if args.max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be >= 1")
    model = load_model(args.checkpoint)
    adapter = model.make_adapter(instruction)
    outputs = model.generate(args.input, [adapter] * len(args.input), fusion=not args.no_fusion, max_new_tokens=args.max_new_tokens)
    for output in outputs:
        print(output.replace("\n", " "))


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="answer inputs zero-shot from an instruction",
                       description="Generate the adapter of --instruction and print the greedy output for each --input, one per line.")
    add_checkpoint_argument(p)
    p.add_argument("--instruction", required=True, help="task instruction text, or @FILE to read it from a file")
    p.add_argument("--input", required=True, action="append", help="an input; repeat for several (one batch)")
    p.add_argument("--no-fusion", action="store_true", help="adapter only, no instruction fusion: what a PEFT export reproduces")
    p.add_argument("--max-new-tokens", type=int, default=64, help="output length limit in tokens (default 64)")
    p.set_defaults(func=cmd_run)


# ---- bench -----------------------------------------------------------------------------------

def cmd_bench_core(args: argparse.Namespace) -> None:
    from hypernet.bench import run_core_benchmark

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run_core_benchmark(json_path=Path(args.json) if args.json else None, rounds=args.rounds, quick=args.quick)


def add_bench(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    p = sub.add_parser("bench", help="benchmarks that print figures")
    bench = p.add_subparsers(dest="bench", required=True, metavar="{core,serve}")
    core = bench.add_parser("core", help="mixed-adapter forward vs base vs PEFT, adapter generation, swap time",
                            description="Measure on a t5-base-size random T5 (d_model 768, 12+12 layers; batch 8, 128 input "
                            "tokens, 32 decoder tokens, rank 8, q k v o wi wo), side by side, median over rounds.")
    core.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    core.add_argument("--rounds", type=int, default=7, help="timing rounds; medians are reported (default 7)")
    core.add_argument("--quick", action="store_true", help="a small config instead of t5-base size (smoke test only)")
    core.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice, one per core)")
    core.set_defaults(func=cmd_bench_core)
    return bench


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagi", description="Task adapters generated from instructions: "
                                     "instruction -> LoRA adapter -> zero-shot outputs, served or exported to PEFT.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    add_init(sub)
    add_adapter(sub)
    add_run(sub)
    bench = add_bench(sub)
    for module in ("serving.cli", "training.cli"):
        if importlib.util.find_spec(module.partition(".")[0]) and importlib.util.find_spec(module):
            importlib.import_module(module).register(sub, bench)
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
    # CheckpointError and InputTooLong are ValueErrors; so are bad values that reach the library
    # (an empty instruction): all are the user's to fix, and get one line, not a traceback.
    except (UsageError, ValueError, FileExistsError) as err:
        if args.debug:
            raise
        print(f"tagi: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
