"""The example agent runs end to end against a real server (real espeak-ng speech)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")
pytestmark = [pytest.mark.asyncio(loop_scope="module"), needs_espeak]


async def test_espeak_example_agent_speaks_and_is_interrupted(server, capsys):
    spec = importlib.util.spec_from_file_location("espeak_agent", REPO / "examples" / "espeak_agent.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    rc = await example.main(["--server", server.url, "--size", "256", "--interrupt-after", "0.3",
                             "Hello, I am an avatar and I will be interrupted soon.", "Done."])
    assert rc == 0
    out = capsys.readouterr().out
    events = [json.loads(line.split("event: ", 1)[1]) for line in out.splitlines() if "event: " in line]
    finished = [e for e in events if e["type"] == "playback_finished"]
    assert [e["interrupted"] for e in finished] == [True, False]
    assert finished[0]["playback_position"] < 1.5  # cut short
    assert len(server.registry) == 0  # the example deleted its session
