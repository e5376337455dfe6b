"""``torch.compile`` of W + G (warping + SPADE, FP16 autocast on CUDA), tried in a child process under a hard
time limit: a compile that fails or runs long is reported, and never takes the check's other sections with it.

The child builds the LivePortrait networks with random weights (the real shapes; the miniatures in the dry
run's), compiles ``W then G`` once per batch size (static shapes; inductor on CUDA, the ``eager`` backend in the
dry run, which traces with dynamo but generates no code) and writes, after each batch, its compile seconds and
ms per frame next to the same function eager. The parent keeps what was written before a time-out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The child maps the tree as avatarstream/cli/tree_runner.py does (the GPU machine has no install of the project):
# the runner is loaded from its file, since importing avatarstream.cli first would need the mapping already.
CHILD = ("import sys, importlib.util; "
         "spec = importlib.util.spec_from_file_location('tree_runner', sys.argv[1] + '/avatarstream/cli/tree_runner.py'); "
         "runner = importlib.util.module_from_spec(spec); spec.loader.exec_module(runner); runner.map_tree(); "
         "from avatarstream.bench.gpu.compile_probe import child; child(sys.argv[2:])")


def probe(out_json: Path, batches: list[int], dry_run: bool, timeout_s: float, reps: int) -> dict:
    """Run the child; returns {"rows": [...], "compile_s": {...}} or what it wrote before failing, with why."""
    cmd = [sys.executable, "-c", CHILD, str(ROOT), str(out_json), ",".join(map(str, batches)),
           "dry" if dry_run else "cuda", str(reps)]
    t = time.perf_counter()
    status = "ok"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            status = f"failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}"
    except subprocess.TimeoutExpired:
        status = f"timed out after {timeout_s:.0f} s (the limit left by the time budget)"
    out = json.loads(out_json.read_text()) if out_json.is_file() else {"rows": [], "compile_s": {}}
    out.update({"status": status, "wall_s": round(time.perf_counter() - t, 1), "timeout_s": round(timeout_s, 1)})
    print(f"gpu check: torch.compile probe: {status[:200]} ({out['wall_s']} s)", flush=True)
    return out


def child(argv: list[str]) -> None:
    import torch

    from avatarstream.bench.gpu.components import median_ms, render_inputs
    from avatarstream.bench.gpu.product import DRY_RUN_RENDERER
    from avatarstream.engines.liveportrait.checkpoint import LivePortraitNetworks

    out_json, batches, kind, reps = Path(argv[0]), [int(b) for b in argv[1].split(",")], argv[2], int(argv[3])
    dry = kind == "dry"
    device = torch.device("cpu") if dry else torch.device("cuda", 0)
    if dry:
        torch.set_num_threads(1)
    networks = LivePortraitNetworks.random(seed=0, config=DRY_RUN_RENDERER if dry else None).to(device)

    def warp_decode(f_s, kp_s, kp_d):
        with torch.autocast("cuda", dtype=torch.float16, enabled=not dry):
            warped = networks.warping_module(f_s, kp_driving=kp_d, kp_source=kp_s)["out"]
            return networks.spade_generator(warped)

    backend = "eager" if dry else "inductor"
    compiled = torch.compile(warp_decode, backend=backend, dynamic=False)
    result: dict = {"backend": backend, "mode": "default", "torch": torch.__version__, "rows": [], "compile_s": {}}
    for batch in batches:
        inputs = render_inputs(networks, batch, device, seed=batch)
        with torch.inference_mode():
            t = time.perf_counter()
            compiled(*inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            result["compile_s"][str(batch)] = round(time.perf_counter() - t, 1)
            ms = median_ms(lambda a=inputs: compiled(*a), device, reps)
            eager = median_ms(lambda a=inputs: warp_decode(*a), device, reps)
        mode = "torch_compile_fp16" if not dry else "torch_compile_eager_backend"
        result["rows"].append({"stage": "warping+spade", "mode": mode, "batch": batch, "ms_per_call": round(ms, 3),
                               "ms_per_frame": round(ms / batch, 3), "same_run_eager_ms_per_frame": round(eager / batch, 3),
                               "speedup_vs_eager": round(eager / ms, 2) if ms > 0 else None,
                               "compile_s": result["compile_s"][str(batch)]})
        out_json.write_text(json.dumps(result))
