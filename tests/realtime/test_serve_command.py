"""``avatar serve`` as a user runs it: a real subprocess, the page and health over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from avatarstream.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def test_serve_defaults():
    args = build_parser().parse_args(["serve"])
    assert (args.image, args.engine, args.host, args.port, args.max_sessions, args.size) == \
        (None, "lite", "127.0.0.1", 8080, 0, 512)  # 0: no fixed cap, admission by measured load
    args = build_parser().parse_args(["serve", "--image", "cat", "--max-sessions", "2", "--size", "256"])
    assert (args.image, args.max_sessions, args.size) == ("cat", 2, 256)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(90)
def test_avatar_serve_with_no_arguments_serves_the_page(tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")  # a file, not a pipe nobody reads
    proc = subprocess.Popen([sys.executable, "-m", "avatarstream.cli", "serve", "--port", str(port)], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read().decode()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"server did not start: {(tmp_path / 'serve.log').read_text()}") from None
                time.sleep(0.3)
        assert '"engine": "lite"' in health
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "<video" in page and "/static/app.js" in page
        js = urllib.request.urlopen(f"http://127.0.0.1:{port}/static/app.js", timeout=5).read().decode()
        assert "/offer" in js
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_avatar_serve_refuses_an_image_without_face(tmp_path):
    import cv2
    import numpy as np

    flat = tmp_path / "wall.png"
    cv2.imwrite(str(flat), np.full((240, 240, 3), 200, np.uint8))
    out = subprocess.run([sys.executable, "-m", "avatarstream.cli", "serve", "--image", str(flat), "--port", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "face" in out.stderr.lower() and "avatar serve: error" in out.stderr
