"""``avatar bench --suite gpu``: refuses without a GPU; ``--dry-run`` runs the same code on CPU, from the bare
tree as the GPU machine runs it (``avatarstream/cli/tree_runner.py``, without av/aiortc/dlib/tensorrt/psutil/
matplotlib/aiohttp), and writes every field of the check; its parts (the time budget, the viewer that counts
delivered frames and onsets, the torch.compile child) are checked on their own."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the gpu suite needs torch (pip install 'avatarstream[neural]')")
pytest.importorskip("transformers", reason="the gpu suite's engine needs transformers (pip install 'avatarstream[neural]')")

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "avatarstream" / "cli" / "tree_runner.py"
ABSENT_ON_GPU_MACHINE = ("av", "aiortc", "dlib", "tensorrt", "psutil", "matplotlib", "aiohttp", "playwright")
STAGES = {"audio_encoder", "dit_step", "warping", "spade", "host_copy", "keypoints", "paste_back"}


def _gpu_machine_env(tmp_path: Path) -> dict:
    """The environment of the GPU machine: the packages it lacks made unimportable."""
    block = tmp_path / "block"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        f"for name in {ABSENT_ON_GPU_MACHINE!r}:\n"
        "    sys.modules[name] = None  # as if not installed\n")
    return {**os.environ, "PYTHONPATH": str(block), "PYTHON": sys.executable}


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), "bench", "--suite", "gpu", "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, env=_gpu_machine_env(tmp_path), cwd=tmp_path, timeout=900)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the suite would run for real")
def test_refuses_without_a_gpu(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode != 0
    assert "needs a CUDA GPU" in proc.stderr + proc.stdout


@pytest.mark.slow  # ~40-80 s on a shared 2-core CPU: the miniature renderer is far from real time there
def test_the_device_command_dry_run_writes_every_field_and_the_files_it_keeps(tmp_path):
    """docs/gpu-check.md's device command (bench/gpu/device_check.sh) end to end with --dry-run in place of the GPU,
    from the bare tree as the GPU machine runs it, then its keep step (bench/gpu/keep_results.sh) into a folder."""
    env = {**_gpu_machine_env(tmp_path), "OUT": str(tmp_path / "device-out")}
    proc = subprocess.run(["bash", "bench/gpu/device_check.sh", "--dry-run"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=1600)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-2000:])
    kept = tmp_path / "kept"
    keep = subprocess.run(["bash", "bench/gpu/keep_results.sh", str(tmp_path / "device-out"), str(kept)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert keep.returncode == 0 and "missing" not in keep.stdout, (keep.stdout, keep.stderr)
    assert {p.name for p in kept.iterdir()} == {"gpu.json", "gpu.png", "torch_compile.json", "log.txt", "machine.txt"}
    report = json.loads((kept / "gpu.json").read_text())
    result = report["result"]
    assert report["suite"] == "gpu" and result["device"] == "cpu" and report["partial"] is False
    sections = result["time_budget"]["sections"]
    assert all(s["status"] == "ran" for s in sections.values()), sections
    assert result["time_budget"]["hung"] is None
    # what runs, stated: the GPU kind and compute mode (none on a CPU, with why), TF32 and cuDNN flags
    assert result["gpu"]["name"] == "cpu" and "compute_mode" in result["gpu"] and result["gpu"]["why"]
    assert {"matmul_allow_tf32", "cudnn_allow_tf32", "cudnn_benchmark"} <= set(result["backends"])
    assert json.loads((kept / "torch_compile.json").read_text())["status"].startswith("not run: dry run")

    # 1. sessions per GPU: served joyvasa sessions, fps per session
    assert result["product"]["engine"] == "joyvasa" and result["product"]["size"] == 512
    rows = result["sessions"]["rows"]
    assert [r["sessions"] for r in rows] == [1, 2]
    for r in rows:
        assert len(r["fps_per_session"]) == r["sessions"] and 0 <= r["fps_min"] <= 25
        assert r["ticks"] > 0 and "frame_time_p50_ms" in r and "frame_time_p99_ms" in r and "fps_p5" in r
        assert r["gpu_util_percent_mean"] is None and r["gpu_util_unavailable"] == "no CUDA device"
    assert result["fps"]["per_session_min"] == {str(r["sessions"]): r["fps_min"] for r in rows}
    # 2. first frame, the CPU part named apart, the face detection stated
    first = result["first_frame"]
    assert first["sessions"] == 2 and first["p50_ms"] > 0 and first["p99_ms"] >= first["p50_ms"]
    assert first["gpu_p50_ms"] > 0 and first["cpu_p50_ms"] > 0 and first["frames_in_first_feed"] >= 1
    assert first["face_detection"]["detect_warm_ms"] > 0 and first["p50_with_detection_ms"] > first["p50_ms"]
    # 3. audio in to mouth out, at 1 session
    a2m = result["audio_to_mouth"]
    assert [r["sessions"] for r in a2m["rows"]] == [1] and "AvatarSession" in a2m["path"]
    row = a2m["rows"][0]
    assert row["onsets"] + row["onsets_lost"] >= 1 and row["designed_ms"] == pytest.approx(row["delay_ms"] + 20, abs=0.1)
    # 1 + 3 again at the engine's latency "low" (2-frame chunks, 40 ms lookahead), side by side with the default
    low = result["low_latency"]
    assert (low["chunk_frames"], low["lookahead_ms"]) == (2, 40.0) and "latency='low'" in low["engine_option"]
    assert low["session_options_source"] == "ServerConfig(engine='joyvasa', latency='low')"  # as --latency low serves
    assert [r["sessions"] for r in low["sessions"]["rows"]] == [1] and low["sessions"]["rows"][0]["ticks"] > 0
    low_row = low["audio_to_mouth"]["rows"][0]
    assert low_row["onsets"] + low_row["onsets_lost"] >= 1
    assert low_row["delay_frames"] < row["delay_frames"]  # the server's lip-sync delay counts 2 frames, not 11
    configs = {c["latency"]: c for c in result["latency_configs"]["rows"]}
    assert (configs["default"]["chunk_frames"], configs["default"]["engine_wait_ms"]) == (10, 440.0)
    assert (configs["low"]["engine_wait_ms"], configs["low"]["windows_per_s_per_session"]) == (80.0, 12.5)
    for name, a2m_rows in (("default", a2m["rows"]), ("low", low["audio_to_mouth"]["rows"])):
        measured = configs[name]["audio_to_mouth"][0]
        assert measured["designed_ms"] == a2m_rows[0]["designed_ms"] and measured["p50_ms"] == a2m_rows[0]["p50_ms"]
        assert measured["designed_ms"] == pytest.approx(measured["engine_wait_ms"] + measured["server_margin_ms"]
                                                        + 20, abs=0.2)
    cost = {r["latency"]: r for r in result["latency_cost"]["rows"]}
    assert cost["low"]["windows"] > 3 * cost["default"]["windows"] > 0  # 5x the windows per second of audio
    assert cost["low"]["frames"] == cost["default"]["frames"] > 0  # the same frames for the same audio
    assert result["latency_cost"]["low_over_default"]["windows"] == pytest.approx(
        cost["low"]["windows"] / cost["default"]["windows"], abs=0.01)
    # 4. memory: the weights counted once; the torch.cuda figures null on the CPU, with the reason
    memory = result["memory"]
    assert memory["weights_mb"] > 0 and memory["at_rest_mb"] is None and "CUDA" in memory["unavailable"]
    # 5. stage budget
    budget = result["stage_budget"]
    assert STAGES <= {r["stage"] for r in budget["rows"]}
    assert all(r["ms_per_frame"] > 0 for r in budget["rows"])
    assert budget["product"][0]["gpu_ms_per_frame"] > 0 and budget["product"][0]["cpu_ms_per_frame"] > 0
    assert result["torch_compile"] == {"skipped": "dry run: torch.compile is tried on the GPU"}
    assert {r["cudnn_benchmark"] for r in budget["rows"] if r["stage"] == "warping"} == {False}
    # the denoiser's cost per window and per session, both configs, what batching buys
    denoiser = {r["latency"]: r for r in result["denoiser_cost"]["rows"]}
    assert set(denoiser) == {"default", "low"} and "TF32 off" in result["denoiser_cost"]["precision"]
    for row in denoiser.values():
        ks = row["by_windows_per_call"]
        assert [k["windows_per_call"] for k in ks] == [1, 2] and all(k["ms_per_window"] > 0 for k in ks)
        assert ks[0]["gpu_ms_per_s_at_k_sessions"] == pytest.approx(
            row["windows_per_s_per_session"] * row["steps"] * ks[0]["call_ms"], rel=0.01)
    # targets stated, not judged on a CPU
    targets = result["targets"]
    assert {"sessions_at_25fps", "audio_to_mouth_p50_ms", "audio_to_mouth_p50_ms_low_latency", "first_frame_p50_ms",
            "wg_fp16_batched_speedup"} <= set(targets)
    assert all(t["met"] is None for k, t in targets.items() if k != "note")

    # the component sections kept from the first check
    renderer = result["renderer"]["rows"]
    assert {(r["mode"], r["batch"], r["tf32"]) for r in renderer} == {("eager_fp32", 1, False), ("eager_fp32", 2, False)}
    assert all(r["ms_per_frame"] > 0 for r in renderer)
    assert result["joyvasa"]["eager_fp32"]["window_ms"] > 0
    workers = result["worker"]["rows"]
    assert [w["sessions"] for w in workers] == [1, 2]
    assert all(w["fps_total"] > 0 and w["min_session_chunks"] >= 1 for w in workers)
    assert "skipped" in result["parity"]
    motion = result["motion_worker"]["rows"]
    assert [m["sessions"] for m in motion] == [1, 2, 4, 8]
    for m in motion:
        for mode in ("alone", "worker"):
            assert m[mode]["windows_per_s"] > 0 and m[mode]["min_session_windows"] >= 1, m
    assert motion[-1]["worker"]["multi_session_calls"] >= 1  # 8 sessions back to back share DiT calls
    assert (kept / "gpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_time_budget_skips_what_does_not_fit_and_survives_a_failure():
    from avatarstream.bench.gpu.deadline import Deadline

    deadline = Deadline(total_s=10.0)
    assert deadline.run("fits", 5.0, lambda: {"x": 1}) == {"x": 1}
    assert "skipped" in deadline.run("too long", 60.0, lambda: {"x": 2})

    def broken() -> dict:
        raise RuntimeError("boom")

    assert deadline.run("broken", 1.0, broken)["error"] == "RuntimeError: boom"
    report = deadline.report()
    assert [s["status"] for s in report["sections"].values()] == ["ran", "skipped", "error"]
    assert report["estimated_s"] == 66.0
    limited = Deadline(total_s=100.0)
    assert 4.0 < limited.section_left(5.0)() <= 5.0  # a section with steps stops at its own estimate
    assert 4.0 < Deadline(total_s=5.0).section_left(50.0)() <= 5.0  # or at the whole budget
    limited.section_limits = False  # the CPU dry run
    assert limited.section_left(5.0)() > 99.0


def test_the_plans_fit_the_h100_budgets_and_the_device_time():
    import re

    from avatarstream.bench.gpu import BUDGET_S, DEVICE_CALL_S, DEVICE_TIME_S, PLAN, QUICK_BUDGET_S, QUICK_PLAN

    assert sum(PLAN.values()) <= BUDGET_S <= 360 and sum(QUICK_PLAN.values()) <= QUICK_BUDGET_S <= 180
    script = (REPO / "bench" / "gpu" / "device_check.sh").read_text()
    full = int(re.search(r"^guard=(\d+)$", script, re.M).group(1))
    quick = int(re.search(r'\*" --quick "\*\) guard=(\d+)', script).group(1))
    # the check's budget + a hung section's 30 s slack + closing fit its guard, the guard fits the device call
    assert BUDGET_S + 45 <= full < DEVICE_CALL_S["full"] and QUICK_BUDGET_S + 35 <= quick < DEVICE_CALL_S["quick"]
    assert DEVICE_CALL_S["full"] + DEVICE_CALL_S["quick"] + 180 <= DEVICE_TIME_S  # 3 minutes left for the start
    assert {"low_latency_sessions", "low_latency_audio_to_mouth"} <= set(QUICK_PLAN) <= set(PLAN)


def test_the_sink_counts_delivered_frames_and_the_onset_of_a_served_session():
    """The viewer the check counts with, on a real served session of the lite engine (real time on this CPU)."""
    from avatarstream.bench.gpu.audio_to_mouth import lip_sync_delay_ms
    from avatarstream.bench.gpu.inputs import speech, speech_burst
    from avatarstream.bench.gpu.sink import FrameSink
    from avatarstream.engines.portraits import load_portrait
    from avatarstream.engines.registry import load_engine
    from avatarstream.realtime.session.session import AvatarSession, SessionOptions

    async def main():
        session = AvatarSession(load_engine("lite"), load_portrait("human"), options=SessionOptions(size=256))
        await session.start()
        sink = FrameSink(session)
        sink.start()
        try:
            await asyncio.sleep(0.6)
            t0 = time.monotonic()
            sink.watch_onset(t0)
            session.push_audio(speech_burst(speech(), 0.6))
            session.end_utterance()
            await asyncio.wait_for(sink.onset_seen.wait(), 5.0)
            await asyncio.sleep(0.8)
            return lip_sync_delay_ms(session), sink, t0, time.monotonic()
        finally:
            await sink.close()
            await session.close()

    delay, sink, t0, t1 = asyncio.run(main())
    assert len(sink.onset_latencies_ms) == 1
    # the onset leaves after the lip-sync delay and the wait for the next tick (+- scheduling on a shared CPU)
    assert delay - 15 <= sink.onset_latencies_ms[0] <= delay + 40 + 150, (delay, sink.onset_latencies_ms)
    assert sink.delivered_fps(t0, t1) > 20  # the lite engine keeps up: (nearly) every tick a fresh frame
    intervals = sink.fresh_intervals_ms(t0, t1)
    assert np.median(intervals) == pytest.approx(40, abs=8)
    assert any(f.speaking for f in sink.sent) and not sink.sent[0].speaking


@pytest.mark.slow
def test_the_torch_compile_child_reports_its_rows(tmp_path):
    from avatarstream.bench.gpu.compile_probe import probe

    out = probe(tmp_path / "tc.json", [1], dry_run=True, timeout_s=300.0, reps=1)
    assert out["status"] == "ok", out
    (row,) = out["rows"]
    assert row["stage"] == "warping+spade" and row["ms_per_frame"] > 0 and row["same_run_eager_ms_per_frame"] > 0
    assert out["compile_s"]["1"] >= 0 and out["backend"] == "eager"


def test_a_hung_section_leaves_the_json_of_every_earlier_one(tmp_path, monkeypatch):
    """A section that never returns (injected into the sessions step): while it hangs, gpu.json on disk already
    holds the sections before it (a device kill then keeps them); the check abandons it after its limit, skips the
    rest, and still writes gpu.json, gpu.png and torch_compile.json."""
    import argparse
    import threading

    import avatarstream.bench.gpu as gpu
    from avatarstream.cli.bench import add_arguments, run

    release = threading.Event()
    seen: dict = {}

    def hangs(product, deadline, **kwargs) -> dict:
        seen["on_disk"] = json.loads((tmp_path / "out" / "gpu.json").read_text())
        release.wait(120)
        return {"never": "used"}

    monkeypatch.setattr(gpu, "sessions_per_gpu", hangs)
    monkeypatch.setattr(gpu, "DRY_RUN_HANG_LIMITS_S", {"sessions": 3.0})
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    try:
        assert run(parser.parse_args(["--suite", "gpu", "--dry-run", "--out", str(tmp_path / "out")])) == 0
    finally:
        release.set()
    during = seen["on_disk"]
    assert during["partial"] is True and during["result"]["product"]["engine"] == "joyvasa"  # setup, before the hang
    assert during["result"]["time_budget"]["sections"]["setup"]["status"] == "ran"
    report = json.loads((tmp_path / "out" / "gpu.json").read_text())
    result = report["result"]
    sections = result["time_budget"]["sections"]
    assert sections["setup"]["status"] == "ran" and sections["sessions"]["status"] == "hung"
    assert result["time_budget"]["hung"] == "sessions" and result["sessions"]["hung"] is True
    later = [name for name in sections if name not in ("setup", "sessions")]
    assert later and all(sections[n]["status"] == "skipped" and "hang" in sections[n]["note"] for n in later)
    assert result["product"] == during["result"]["product"]
    compile_json = json.loads((tmp_path / "out" / "torch_compile.json").read_text())
    assert compile_json["status"].startswith("not run")
    assert (tmp_path / "out" / "gpu.png").read_bytes()[:4] == b"\x89PNG"
