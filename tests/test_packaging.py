"""The embedded default (lite engine, serve, render) must work without torch installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PORTRAITS = REPO / "engines" / "lite" / "portraits"

BLOCK_TORCH = textwrap.dedent(
    """
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('torch', 'torchvision', 'torchaudio', 'transformers', 'diffusers', 'tensorrt'):
                raise ImportError(f'{name} is blocked in this test (simulating a machine without torch)')
            return None
    sys.meta_path.insert(0, _NoTorch())
    """
)


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


def test_cli_parser_and_lite_engine_need_no_torch():
    r = run_without_torch(
        f"""
        from realtime.cli import build_parser
        build_parser().parse_args(['serve', '--help']) if False else None
        for cmd in ('serve', 'render', 'bench'):
            try:
                build_parser().parse_args([cmd, '--help'])
            except SystemExit as e:
                assert e.code == 0, cmd
        import numpy as np, cv2
        from engines.registry import load_engine
        from engines.base import Portrait
        img = cv2.cvtColor(cv2.imread(r'{PORTRAITS / "astronaut.jpg"}'), cv2.COLOR_BGR2RGB)
        stream = load_engine('lite').open_stream(Portrait(img), size=256)
        t = np.arange(16000) / 16000
        frames = stream.feed((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)) + stream.flush()
        assert len(frames) >= 24, len(frames)
        assert 'torch' not in sys.modules
        print('ok', len(frames))
        """
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok" in r.stdout


def test_neural_engine_without_torch_says_what_to_install():
    r = run_without_torch(
        """
        from engines.registry import load_engine
        from engines.base import EngineError
        try:
            load_engine('joyvasa', weights='/nonexistent')
        except EngineError as e:
            print('error:', e)
        """
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pip install" in r.stdout and "neural" in r.stdout
