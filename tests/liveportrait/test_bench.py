"""The liveportrait bench suite's measurement and plot (narrow networks, batches 1 and 2)."""

from __future__ import annotations

import json

from avatarstream.bench import liveportrait as bench


def test_bench_device_and_plot(small_networks, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "BATCHES", (1, 2))
    monkeypatch.setattr(bench, "_inputs", _small_inputs(bench._inputs))
    result = bench.bench_device(small_networks, "cpu", False, quick=True)
    for name in bench.NETWORKS:
        for b in (1, 2):
            entry = result[name][f"batch_{b}"]
            assert entry["ms"] > 0 and abs(entry["ms_per_frame"] - entry["ms"] / b) < 1e-2 and entry["runs"] == 1
    assert result["render_frame_w_plus_g"]["batch_2"]["fps"] > 0
    bench.plot({"cpu_fp32": result}, tmp_path / "lp.png")
    assert (tmp_path / "lp.png").stat().st_size > 1000
    json.dumps(result)


def _small_inputs(inputs):
    """The bench's inputs reshaped for the narrow test networks (16 x 4 feature volume, 32-channel warp)."""
    def make(batch, device, g):
        x = inputs(batch, device, g)
        x["feature_3d"] = x["feature_3d"][:, :16, :4].contiguous()
        x["warped"] = x["warped"][:, :32].contiguous()
        return x
    return make


def test_bench_paste_back_and_plot(tmp_path):
    result = bench.bench_paste_back(quick=True)
    assert set(result) == {"human", "cat"}
    for entry in result.values():
        assert entry["frame"] == [512, 512] and entry["rounds"] == 2
        assert all(entry["ms_per_frame"][w] > 0 for w in bench.PASTE_WAYS)
        assert entry["ratio_to_reference_per_frame"]["reference_per_frame"] == 1.0
    bench.plot_paste_back(result, tmp_path / "paste.png")
    assert (tmp_path / "paste.png").stat().st_size > 1000
    json.dumps(result)
