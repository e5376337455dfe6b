"""``avatar bench --suite calibration`` in its quick form: one server, the idle / silent / speaking windows, the
calibration before and after in this process; every figure is there and positive (no speed is asserted)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow  # ~30 s on 2 busy cores: an avatar serve subprocess, a viewer, 512 px calibrations
def test_calibration_bench_quick(tmp_path):
    pytest.importorskip("psutil", reason="psutil is not installed (pip install 'avatarstream[bench]')")
    from avatarstream.bench import calibration
    from avatarstream.cli.bench import BenchOptions

    result = calibration.run_bench(BenchOptions(out_dir=tmp_path, quick=True))
    json.dumps(result)
    summary = result["summary"]
    terms = summary["calibrated_cores_by_term"]  # the server's own calibration, as /health gives it
    assert list(terms) == ["engine", "vp8 encoding", "opus encoding", "rtp + srtp"] and all(v > 0 for v in terms.values())
    assert summary["calibrated_cores"] == pytest.approx(sum(terms.values()), abs=0.001)
    assert list(summary["calibration_before_median"]) == ["cores", "engine", "vp8 encoding"]
    assert list(summary["calibration_after_median"]) == ["cores", "engine", "vp8 encoding", "opus encoding", "rtp + srtp"]
    (run,) = result["runs"]
    for name in ("watched_silent", "watched_speaking"):
        window = run[name]
        assert window["session"]["cores"] > 0 and window["other_cores"] > 0 and window["loop_cores"] > 0
        assert window["admission_measured_cores"] is None or window["admission_measured_cores"] > 0
        assert summary[name]["calibrated_vs_measured"] > 0
