"""`tagi bench train` at a micro size: real worker processes (a torchrun launch for 2), figures printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hypernet.cli import main

MICRO = ["--d-model", "32", "--heads", "2", "--d-kv", "16", "--d-ff", "64", "--layers", "1", "--vocab", "300"]
MICRO += ["--batch-size", "4", "--input-tokens", "8", "--output-tokens", "4", "--steps", "3", "--warmup", "0", "--tasks", "2"]


def test_bench_train_prints_one_and_two_process_figures_and_their_ratio(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["bench", "train", *MICRO, "--device", "cpu", "--json", str(tmp_path / "bench.json")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    measured = {line["processes"]: line for line in lines if "examples_per_s" in line and "ratio" not in line}
    assert sorted(measured) == [1, 2]
    for n, line in measured.items():
        assert line["device"] == "cpu" and line["examples_per_s"] > 0
        assert len(line["peak_rss_mb_per_process"]) == n and min(line["peak_rss_mb_per_process"]) > 50
        assert line["peak_rss_mb_total"] == pytest.approx(sum(line["peak_rss_mb_per_process"]), abs=1)
    (ratio,) = [line for line in lines if "ratio" in line]
    assert ratio["examples_per_s"] == pytest.approx(measured[2]["examples_per_s"] / measured[1]["examples_per_s"], abs=0.01)
    assert json.loads((tmp_path / "bench.json").read_text())["results"][-1] == ratio


def test_bench_train_refuses_a_shape_that_does_not_add_up(capsys: pytest.CaptureFixture):
    assert main(["bench", "train", "--d-model", "100", "--heads", "12", "--d-kv", "64"]) == 2
    assert "--d-model (100) must equal --heads x --d-kv (12 x 64)" in capsys.readouterr().err
