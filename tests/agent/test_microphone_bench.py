"""``avatar bench --engine microphone --quick`` runs end to end: a microphone track's speech moves the mouth
for every latency preset, and the measured presets hold less than the classic one (smoke, ~60 s)."""

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
    # the classic path holds 80 ms in aiortc's receive buffer and a fixed 120 ms lip-sync delay more
    assert rows["adaptive"]["viewer_p50"] < rows["classic"]["viewer_p50"]
    assert Path(report["plot"]).is_file()
