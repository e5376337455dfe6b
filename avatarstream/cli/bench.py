"""``avatar bench``: runs one benchmark suite, prints a summary and writes JSON (+ plots).

Each suite is a module exposing ``run_bench(options: BenchOptions) -> dict`` which may write
PNG plots into ``options.out_dir`` and returns a JSON-serialisable result. A suite that measures in sections may
call ``options.checkpoint(result_so_far)`` after each: the JSON is then written at once (``"partial": true``), so
a run killed midway (a hang, a device's time limit) leaves everything measured before.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

SUITES: dict[str, str] = {
    "lite": "avatarstream.bench.lite",
    "joyvasa": "avatarstream.bench.joyvasa",
    "liveportrait": "avatarstream.bench.liveportrait",
    "export": "avatarstream.bench.export",
    "loopy": "avatarstream.bench.loopy",
    "api": "avatarstream.bench.api_latency",
    "microphone": "avatarstream.bench.microphone",
    "soak": "avatarstream.bench.soak",
    "capacity": "avatarstream.bench.capacity",
    "calibration": "avatarstream.bench.calibration",
    "placement": "avatarstream.bench.placement",
    "failover": "avatarstream.bench.failover",
    "gpu": "avatarstream.bench.gpu",
    "portraits": "avatarstream.bench.portraits",
}
# Suites that send WebRTC media between a server and a client started here: they run in a private network
# namespace where they can (avatarstream.bench.private_network), so the media never meets on this machine's
# outward address; the JSON's "network" says where they ran.
MEDIA_SUITES = frozenset({"api", "microphone", "soak", "capacity", "calibration", "placement", "failover"})


@dataclass
class BenchOptions:
    out_dir: Path
    device: str = "cpu"  # "cpu" or "cuda"
    quick: bool = False  # fewer iterations (smoke runs in tests)
    seconds: float = 10.0  # audio / run length where the suite streams
    backend: str = "all"  # export suite: torch|onnxruntime|tensorrt|all
    fp16: bool = False
    weights: str | None = None
    sessions: int = 3  # soak: concurrent sessions
    dry_run: bool = False  # gpu suite: the same code on CPU with miniature networks
    # the suite's partial result, written as the JSON at once (set by ``run``)
    checkpoint: Callable[[dict], None] = field(default=lambda result: None, repr=False, compare=False)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", "--suite", dest="suite", default="lite", choices=list(SUITES), help="what to benchmark")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="directory for JSON and plots")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="few iterations (smoke test)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the streamed audio")
    p.add_argument("--backend", default="all", help="export suite: torch, onnxruntime, tensorrt or all")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--weights", default=None, help="checkpoint directory (random weights of the real shapes if absent)")
    p.add_argument("--soak", type=float, default=None, metavar="SECONDS",
                   help="run the soak benchmark for this long (same as --suite soak --seconds SECONDS)")
    p.add_argument("--sessions", type=int, default=3, help="soak: concurrent sessions (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="gpu suite: run on CPU with miniature networks (checks the suite without a GPU)")


def run(args: argparse.Namespace) -> int:
    if args.soak is not None:
        args.suite, args.seconds = "soak", args.soak
    opts = BenchOptions(
        out_dir=args.out, device=args.device, quick=args.quick, seconds=args.seconds,
        backend=args.backend, fp16=args.fp16, weights=args.weights, sessions=args.sessions,
        dry_run=getattr(args, "dry_run", False),
    )
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    network = None
    if args.suite in MEDIA_SUITES:  # before the suite starts any thread or process
        from avatarstream.bench.private_network import enter_private_network

        network = enter_private_network().describe()
    module = importlib.import_module(SUITES[args.suite])
    from avatarstream.bench.machine import machine_info  # measurement is imported only when a suite runs
    t0 = time.time()
    path = opts.out_dir / f"{args.suite}.json"
    machine = machine_info()

    def write(result: dict, partial: bool) -> None:
        report: dict[str, Any] = {
            "suite": args.suite, "partial": partial,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
            "wall_s": round(time.time() - t0, 2),
            "options": {k: str(v) for k, v in asdict(opts).items() if k != "checkpoint"},
            "machine": machine_info() if not partial else machine,
            "result": result,
        }
        if network is not None:
            report["network"] = network
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str))
        tmp.replace(path)  # a reader (or a kill) never sees half a file

    opts.checkpoint = lambda result: write(result, partial=True)
    result = module.run_bench(opts)
    write(result, partial=False)
    json.dump(result, sys.stdout, indent=2, default=str)
    print(f"\nwrote {path}")
    return 0
