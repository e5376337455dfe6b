"""The lite engine and the face module must work without torch (the default install has none)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_lite_engine_imports_and_runs_without_torch():
    code = (
        "import sys, numpy as np\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
        "from avatarstream.engines.registry import load_engine\n"
        "from avatarstream.engines.portraits import load_portrait\n"
        "import avatarstream.engines.face, avatarstream.bench.lite, avatarstream.cli.render\n"
        "s = load_engine('lite').open_stream(load_portrait('human'), size=128)\n"
        "frames = s.feed(np.zeros(3 * 640, np.float32)) + s.flush()\n"
        "assert [f.index for f in frames] == [0, 1, 2]\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
