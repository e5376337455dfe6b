"""One runtime shared by several threads (one engine serves every session): each caller gets its own results.

The onnxruntime runtime with I/O binding shares one binding object between calls; on CPU the same binding path
runs with ``io_binding=True``, so the race between one thread binding its inputs and another thread running is
exercised here without a GPU.
"""

from __future__ import annotations

import sys
import threading

import pytest

pytest.importorskip("torch", reason="torch not installed (pip install -e .[neural])")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e .[neural,cpu])")

import torch

from avatarstream.engines.runtimes.network_source import NetworkSource
from avatarstream.engines.runtimes.stage_registry import get_stage
from avatarstream.engines.runtimes.stage_runtime import OnnxRuntime
from avatarstream.export.exporter import export_stage

THREADS = 4
CALLS = 300


@pytest.fixture(scope="module")
def stitching_graph(tmp_path_factory):
    spec = get_stage("stitching")
    return spec, export_stage(spec, NetworkSource(seed=5), tmp_path_factory.mktemp("threads"))


@pytest.mark.parametrize("io_binding", [True, False])
def test_concurrent_callers_get_their_own_outputs(stitching_graph, io_binding):
    spec, graph = stitching_graph
    runtime = OnnxRuntime(graph.path, threads=1, io_binding=io_binding)
    # Each thread has its own batch size and inputs, so a result computed from another thread's inputs (or
    # overwritten by another thread's run) differs in shape or values.
    feeds = {}
    expected = {}
    for k in range(THREADS):
        x = spec.example_inputs(k + 1, torch.Generator().manual_seed(100 + k))[0]
        feeds[k] = {"x": x}
        expected[k] = runtime.run(feeds[k])["delta"].clone()
    failures: list[str] = []
    start = threading.Barrier(THREADS)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: interleave bind / run of different callers

    def caller(k: int) -> None:
        start.wait()
        kept = []
        for i in range(CALLS):
            try:
                out = runtime.run(feeds[k])["delta"]
            except Exception as exc:  # noqa: BLE001 - a call broken by another caller's bindings counts as a failure
                failures.append(f"thread {k} call {i}: {type(exc).__name__}: {exc}")
                return
            kept.append(out)
            if out.shape != expected[k].shape or not torch.equal(out, expected[k]):
                failures.append(f"thread {k} call {i}: got {tuple(out.shape)}, another caller's result")
                return
        # Results handed out earlier must not change when later calls run (no views of shared buffers).
        for out in kept:
            if not torch.equal(out, expected[k]):
                failures.append(f"thread {k}: an earlier result was overwritten")
                return

    workers = [threading.Thread(target=caller, args=(k,)) for k in range(THREADS)]
    for w in workers:
        w.start()
    try:
        for w in workers:
            w.join(timeout=120)
    finally:
        sys.setswitchinterval(switch)
    assert not any(w.is_alive() for w in workers)
    assert not failures, failures[:3]
