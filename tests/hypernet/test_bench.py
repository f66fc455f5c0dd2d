"""The benchmark is a script, not a timed test: check it runs and reports what it promises."""

import json
import math

from hypernet.bench import run_core_benchmark


def test_bench_core_quick_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = run_core_benchmark(json_path=out, rounds=1, quick=True)
    written = json.loads(out.read_text())
    for key in ("mixed_vs_base", "peft_mixed_vs_base", "generate_adapter_vs_encode", "swap_ms"):
        assert written[key] == result[key] and written[key] > 0
    # The mixed batch is checked against PEFT inside the benchmark, and the adapters are not no-ops.
    assert written["max_abs_logit_diff_vs_peft"] <= 1e-4
    assert written["max_abs_logit_change_by_adapters"] > 1e-2
    assert "mixed_vs_base" in capsys.readouterr().out


def test_bench_core_quick_causal_reports_decode_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = run_core_benchmark(json_path=out, rounds=1, quick=True, family="causal")
    written = json.loads(out.read_text())
    ratios = ("mixed_vs_base", "peft_mixed_vs_base", "generate_adapter_vs_encode", "swap_ms")
    ratios += ("decode_mixed_vs_none", "decode_mixed_vs_base", "decode_peft_mixed_vs_base", "prefill_mixed_vs_base")
    ratios += ("prefill_fusion_vs_concat", "decode_fusion_vs_concat", "decode_fusion_vs_mixed")
    for key in ratios:
        assert written[key] == result[key] and math.isfinite(written[key]) and written[key] > 0
    for variant in ("base", "none", "mixed", "peft_mixed", "fusion", "concat"):
        assert written["median_ms"][f"decode_step_{variant}"] > 0 and written["median_ms"][f"prefill_{variant}"] > 0
    assert written["config"]["layout"] == "qwen2" and len(written["config"]["targets"]) == 7
    assert written["config"]["num_kv_heads"] < written["config"]["num_heads"]
    assert written["max_abs_logit_diff_vs_peft"] <= 1e-4
    assert written["max_abs_logit_change_by_adapters"] > 1e-2
    assert "decode_mixed_vs_none" in capsys.readouterr().out


def test_bench_core_family_option():
    from hypernet.cli import main

    assert main(["bench", "core", "--family", "causal", "--rounds", "0"]) == 2
