"""`tagi bench export`: adapters per second, a file of instructions in one process vs one process each.

Both figures are end to end, as a user meets them: a `tagi adapter` process that loads the
checkpoint, generates and writes PEFT directories (and, in batch mode, the manifest). The
one-per-process figure is measured on fewer instructions (each costs a model load) and
extrapolated linearly, which is exact when every process does the same work; the report says
how many were run. The in-process generation rate (`TagiModel.adapters`, load excluded) is given
alongside, to show what is left once the load is paid once.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from hypernet.files import atomic_write_text, write_json
from hypernet.io import load_checkpoint

_VERBS = ["Sort", "Reverse", "Count", "Keep", "Drop", "Return", "List", "Find", "Remove", "Double"]
_WHAT = [
    "the numbers",
    "the items",
    "the words",
    "every second item",
    "the first three items",
    "the duplicates",
    "the largest number",
    "the colours",
    "the animals",
    "the list",
]
_HOW = ["from smallest to largest", "in reverse order", "above fifty", "that start with a vowel", "once each"]


def bench_instructions(count: int) -> list[str]:
    """`count` distinct instructions of varied length (a catalogue of task descriptions), deterministic."""
    texts = []
    for i in range(count):
        verb, what, how = _VERBS[i % 10], _WHAT[(i // 10) % 10], _HOW[(i // 100) % 5]
        texts.append(f"{verb} {what} {how}." + (f" Case {i // 500}." if i >= 500 else ""))
    return texts


def _tagi(args: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hypernet.cli", *args], check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def run_export_benchmark(
    checkpoint: Path, count: int = 1000, single: int = 10, threads: int = 0, json_path: Path | None = None
) -> dict:
    texts = bench_instructions(count)
    with tempfile.TemporaryDirectory(prefix="tagi-bench-export-") as tmp:
        root = Path(tmp)
        source = root / "instructions.txt"
        atomic_write_text(source, "".join(t + "\n" for t in texts))
        print(f"batched: one process, {count} instructions ...", flush=True)
        batched_s = _tagi(
            ["adapter", "--checkpoint", str(checkpoint), "--instructions", str(source), "--out-dir", str(root / "batched")],
            threads,
        )
        per_process = []
        for i in tqdm(range(single), desc="one per process"):
            per_process.append(
                _tagi(
                    ["adapter", "--checkpoint", str(checkpoint), "--instruction", texts[i], "--out", str(root / f"single{i}")],
                    threads,
                )
            )

    if threads:
        torch.set_num_threads(threads)
    model = load_checkpoint(Path(checkpoint))
    model.adapters(texts[:8])  # warm-up
    start = time.perf_counter()
    model.adapters(texts)
    in_process_s = time.perf_counter() - start

    single_s = statistics.fmean(per_process)
    result = {
        "instructions": count,
        "batched_process_s": batched_s,
        "batched_adapters_per_s": count / batched_s,
        "one_per_process_measured": single,
        "one_per_process_mean_s": single_s,
        "one_per_process_adapters_per_s": 1 / single_s,
        "one_per_process_extrapolated_s": single_s * count,
        "speedup": single_s * count / batched_s,
        "in_process_generation_adapters_per_s": count / in_process_s,
        "threads": threads or torch.get_num_threads(),
        "checkpoint": str(checkpoint),
        "torch": torch.__version__,
    }
    rows = [
        (
            "batched, one process",
            f"{result['batched_adapters_per_s']:8.1f} adapters/s",
            f"{count} in {batched_s:.1f} s, load included",
        ),
        (
            "one per process",
            f"{result['one_per_process_adapters_per_s']:8.2f} adapters/s",
            f"mean {single_s:.2f} s per process over {single}; {count} would take ~{single_s * count:.0f} s",
        ),
        ("speedup", f"{result['speedup']:8.1f}x", ""),
        (
            "generation only, batched",
            f"{result['in_process_generation_adapters_per_s']:8.1f} adapters/s",
            "TagiModel.adapters, load excluded",
        ),
    ]
    for name, value, note in rows:
        print(f"{name + ':':<27}{value}  {note}".rstrip())
    if json_path is not None:
        write_json(json_path, result)
    return result
