"""``avatar bench --suite placement --quick``: an ``avatar serve`` and an ``avatar cluster head --workers 1``
(in-process Ray node, one worker actor) each in its own process; sessions through both reach a
real aiortc viewer; the JSON and the plot are written."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray", reason="ray is not installed (pip install 'avatarstream[cluster]')")
pytest.importorskip("matplotlib", reason="matplotlib is not installed (the bench extra)")

from avatarstream.cli import main  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_placement_bench_quick(tmp_path):
    assert main(["bench", "--suite", "placement", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "placement.json").read_text())
    result = report["result"]
    assert result["trials"] == 3
    for name in ("single", "cluster"):
        target = result["targets"][name]
        assert len(target["samples"]) == 3
        assert 0 < target["create_ms"]["p50"] < target["first_frame_ms"]["p50"]
        assert target["first_frame_ms"]["p50"] <= target["first_frame_ms"]["p99"]
    assert set(result["cluster_over_single"]) == {"p50", "p99"}
    assert (tmp_path / "placement.png").stat().st_size > 0


def test_cluster_command_without_a_role_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["cluster"])
    assert exc.value.code == 2
    assert "ROLE" in capsys.readouterr().err
