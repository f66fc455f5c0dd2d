"""The benchmark is a script, not a timed test: check it runs and reports what it promises."""

import json

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
