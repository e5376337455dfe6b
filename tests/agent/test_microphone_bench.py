"""``avatar bench --engine microphone --quick`` runs end to end: a microphone track's speech moves the mouth
for every latency preset, each with the delay its settings say (smoke, ~60 s). Which preset is faster
depends on the machine's load (the measured margin follows it) and is the bench's figure, not asserted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from avatarstream.cli import main as avatar


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")
def test_microphone_benchmark_measures_every_preset(tmp_path):
    assert avatar(["bench", "--engine", "microphone", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "microphone.json").read_text())["result"]
    rows = {row["preset"]: row for row in report["side_by_side"]}
    assert set(rows) == {"classic", "adaptive", "low"}
    for row in rows.values():
        assert row["viewer_p50"] is not None and row["viewer_p50"] > row["sender_p50"] > 0
    # classic: the fixed 120 ms lip-sync delay (lookahead 40 + margin 80); the measured presets: lookahead
    # + their own measured margin (on a quiet machine well under 80 ms; under load more: the api bench
    # once measured adaptive's delay at 122 ms on a loaded machine, see test_latency_bench), so which
    # preset is faster is the bench's figure (docs/latency/), not asserted
    assert rows["classic"]["delay_ms"] == 120.0 and rows["classic"]["margin_ms"] == 80.0
    for name in ("adaptive", "low"):
        assert rows[name]["delay_ms"] == pytest.approx(40.0 + rows[name]["margin_ms"], abs=0.2)
        assert rows[name]["margin_ms"] != 80.0  # measured, not the fixed setting
    assert Path(report["plot"]).is_file()
