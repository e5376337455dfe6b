"""Smoke run of ``avatar bench --engine loopy --quick`` on a saved tiny model (JSON + PNG)."""

import json

from avatarstream.cli.bench import BenchOptions


def test_bench_quick_writes_json_ready_result_and_plot(tiny_weights_dir, tmp_path):
    from avatarstream.bench.loopy import run_bench

    result = run_bench(BenchOptions(out_dir=tmp_path, quick=True, weights=str(tiny_weights_dir)))
    (run,) = result["runs"]
    assert run["config"] == "tiny" and run["frames"] == 12 and run["ddim_steps"] == 5
    assert run["ms_per_frame"] > 0 and run["stage_ms_per_frame"]["denoise"] > 0
    assert (tmp_path / "loopy.png").stat().st_size > 1000
    json.dumps(result)
