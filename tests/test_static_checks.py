"""Static checks run with the suite: ruff over the repository, mypy over the contract and server modules.

Settings live in pyproject.toml ([tool.ruff], [tool.mypy]); docs/server.md "Static checks" has the commands.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_ruff_finds_nothing():
    result = _run("-m", "ruff", "check", ".")
    assert result.returncode == 0, f"ruff check . failed:\n{result.stdout}{result.stderr}"


@pytest.mark.slow  # a cold mypy cache: ~10 s on 2 cores (torch, transformers ... not followed); later runs reuse build/mypy-cache
def test_mypy_contract_and_server_modules():
    result = _run(".ci/typecheck.py")
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mypy (.ci/typecheck.py) failed:\n{output}"
    assert "Success: no issues found" in output, output
