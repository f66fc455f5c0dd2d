"""`tagi bench export` on a micro checkpoint: real processes, figures that agree with each other."""

from __future__ import annotations

import argparse
import json

import pytest

from hypernet.bench_export import bench_instructions, run_export_benchmark
from hypernet.cli import build_parser


def test_bench_instructions_are_distinct_and_deterministic():
    texts = bench_instructions(1000)
    assert len(set(texts)) == 1000 and texts == bench_instructions(1000)


def test_batched_export_beats_one_process_per_instruction(checkpoint_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = run_export_benchmark(checkpoint_dir, count=6, single=1, threads=1, json_path=out)
    assert json.loads(out.read_text()) == pytest.approx(result)
    assert result["batched_adapters_per_s"] == pytest.approx(6 / result["batched_process_s"])
    assert result["one_per_process_extrapolated_s"] == pytest.approx(6 * result["one_per_process_mean_s"])
    # Six adapters in one process cost about one model load; six processes cost six.
    assert result["speedup"] > 2
    assert "adapters/s" in capsys.readouterr().out


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[name]


@pytest.mark.parametrize("command", [["adapter"], ["adapters", "map"], ["bench", "export"]])
def test_help_explains_every_new_option(command):
    parser = build_parser()
    for name in command:
        parser = subcommand(parser, name)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 4
    for action in options:
        assert action.help and len(action.help) > 10, f"{action.option_strings} has no help"
