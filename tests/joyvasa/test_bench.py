"""``avatar bench --engine joyvasa --quick`` smoke run: JSON fields and plots exist and are consistent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="the bench plots need matplotlib")


def test_quick_bench_writes_json_and_plots(tmp_path):
    from avatarstream.cli.bench import add_arguments, run
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--engine", "joyvasa", "--quick", "--seconds", "2", "--out", str(tmp_path)])
    assert run(args) == 0
    report = json.loads((tmp_path / "joyvasa.json").read_text())["result"]
    study = report["streaming_vs_offline"]
    assert study["frames"] == 32000 // 640  # one frame per 40 ms (the stream count; offline trimmed to it)
    exact = [r for r in study["runs"] if r["chunk_frames"] == 100 and r["lookahead_ms"] == 0]
    assert exact and all(r["mean_normalized"] == 0.0 for r in exact)  # chunk = window reproduces offline
    assert all(len(r["per_dim_normalized"]) == 70 for r in study["runs"])
    live = report["live_vs_offline"]  # the engine's default streaming path vs its render_file path
    assert live["frames"] == study["frames"] and live["live"]["chunk_frames"] == 10 and live["live"]["cfg_scale"] == 2.8
    assert live["live_vs_offline"]["mean_normalized"] > 0 and len(live["live_vs_offline"]["per_dim_normalized"]) == 70
    lat = report["latency_cpu"]["threads_1"]
    assert lat["window"]["window_ms"] > lat["window"]["denoise_step_ms"] > 0
    for path in report["plots"]:
        assert Path(path).stat().st_size > 1000


def test_live_vs_offline_alone_writes_json(tmp_path, capsys):
    from avatarstream.bench.joyvasa import main
    from avatarstream.engines.joyvasa.options import LIVE_PRESET, OFFLINE_PRESET, JoyVasaOptions

    out = tmp_path / "live.json"
    assert main(["--quick", "--seconds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["frames"] == 25 and result["offline_cfg_scale"] == OFFLINE_PRESET.cfg_scale
    assert result["live"]["cfg_scale"] == LIVE_PRESET.cfg_scale
    assert result["live"]["lookahead_ms"] == JoyVasaOptions().lookahead_ms
    assert "live vs offline: rmse" in capsys.readouterr().out


def test_every_timed_denoiser_call_runs_without_autograd(small_model):
    """bench/joyvasa.py's window_latency (the GPU check's joyvasa section, eager and graphed) times the denoiser
    under inference_mode: the eager step carries no autograd bookkeeping that the graphed one does not."""
    import torch

    from avatarstream.bench.joyvasa import window_latency

    net = small_model.denoising_net
    seen: list[tuple[bool, bool]] = []
    forward = net.forward

    def spy(*args, **kwargs):
        seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return forward(*args, **kwargs)

    net.forward = spy
    try:
        window_latency(small_model, reps=1)
    finally:
        del net.forward
    assert seen and all(not grad and inference for grad, inference in seen)
