"""``avatar bench --engine api --quick`` runs end to end and writes its JSON and plot (smoke)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from avatarstream.bench.private_network import enter_private_network
from avatarstream.cli import main as avatar


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")
def test_api_latency_benchmark_writes_json_and_plot(tmp_path):
    assert avatar(["bench", "--engine", "api", "--quick", "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "api.json").read_text())
    network = enter_private_network()  # the suite's media ran in the test's private network, and says so
    assert written["network"] == network.describe() and (written["network"]["network"] == "private namespace") == network.private
    report = written["result"]
    assert set(report["presets"]) == {"classic", "adaptive", "low"}  # today's fixed settings side by side
    for preset in report["presets"].values():
        for key in ("create_to_first_frame_ms", "push_to_playback_started_ms"):
            assert preset[key]["n"] >= 1 and preset[key]["p50"] > 0
        assert preset["push_to_mouth_ms"]["viewer"]["n"] >= 1
    rows = {row["preset"]: row for row in report["side_by_side"]}
    assert rows["classic"]["delay_ms"] == 120.0  # lookahead 40 + the fixed 80 ms margin
    # adaptive: the margin is the session's measured render time (p99 + guard), not the fixed 80 ms; how it
    # compares with 80 ms depends on the machine's load (a loaded CI machine measured 122 ms), so only its
    # origin is asserted here; the figures are the bench's (docs/latency/)
    assert rows["adaptive"]["delay_ms"] == pytest.approx(40.0 + rows["adaptive"]["margin_ms"], abs=0.2)
    assert rows["adaptive"]["margin_ms"] != 80.0
    assert Path(report["plot"]).is_file()
