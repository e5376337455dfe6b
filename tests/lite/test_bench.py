"""``avatar bench --engine lite --quick``: a smoke run that writes the JSON report and the plot."""

from __future__ import annotations

import json

import numpy as np

from avatarstream.cli import main


def test_bench_quick_writes_json_with_stage_keys(tmp_path, capsys):
    assert main(["bench", "--engine", "lite", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "lite.json").read_text())
    result = report["result"]
    for stage in ("features", "motion", "render", "encode", "encode_vp8", "encode_h264"):
        assert result["stage_ms"][stage] > 0
    assert result["throughput"]["frames"] == 49 and result["throughput"]["fps"] > 0
    for run in ("engine", "engine_vp8"):
        assert result["realtime_25fps"][run]["frames"] == 49
        assert 0 < result["realtime_25fps"][run]["cpu_cores"] < 16
    assert result["cat"]["stage_ms"]["render"] > 0
    assert (tmp_path / "lite.png").stat().st_size > 10_000
    assert "wrote" in capsys.readouterr().out


def test_speechlike_audio_has_syllables_and_pauses():
    from avatarstream.bench.speech import speechlike_audio

    a = speechlike_audio(4.0)
    rms = np.sqrt((a[: 100 * 640].reshape(100, 640) ** 2).mean(axis=1))
    assert rms.max() > 0.05 and (rms < 0.01).mean() > 0.2 and (rms > 0.03).mean() > 0.2
