"""``avatar export``: the neural stages to ONNX (and TensorRT engines), then a parity check against torch.

    avatar export --weights pretrained_weights --out engines/ [--backend onnx|tensorrt] [--precision fp32|fp16]
                  [--grid-sample auto|native|decomposed] [--stages warping_spade,stitching] [--no-parity]

Without ``--weights`` the networks get seeded random weights of the real shapes (for trying the tool chain).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avatarstream.engines.base import EngineError
from avatarstream.export.grid_sample_5d import GRID_SAMPLE_MODES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", type=Path, default=None,
                   help="pretrained_weights directory (LivePortrait + JoyVASA); random weights of the real shapes if omitted")
    p.add_argument("--out", type=Path, required=True, help="ENGINES_DIR for the .onnx graphs, engines and manifest.json")
    p.add_argument("--backend", default="onnx", choices=["onnx", "tensorrt"],
                   help="onnx: ONNX graphs only; tensorrt: also build TensorRT engines (needs an NVIDIA GPU)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"],
                   help="fp16: also write mixed-precision <stage>.fp16.onnx graphs (grid coordinates, keypoint math and "
                        "softmax stay FP32; audio encoder, motion extractor and stitching stay FP32 graphs), which "
                        "onnxruntime and TensorRT then run; TensorRT 11 builds FP16 engines only from these")
    p.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="same as --precision fp16")
    p.add_argument("--grid-sample", default="auto", choices=["auto", *GRID_SAMPLE_MODES],
                   help="5-D grid sample as one opset-20 GridSample (native) or two 4-D GridSamples + blend "
                        "(decomposed); auto: native, or decomposed for TensorRT before 11.2")
    p.add_argument("--stages", default=None, help="comma-separated subset of stages (default: all)")
    p.add_argument("--variant", default="human", choices=["human", "animal-v1.0", "animal-v1.1"],
                   help="LivePortrait weights variant under --weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and parity inputs")
    p.add_argument("--no-parity", action="store_true", help="skip the parity check against eager torch")
    p.add_argument("--dynamo", action="store_true", help="export with torch.export (slower) instead of the tracer")


def run(args: argparse.Namespace) -> int:
    from avatarstream.engines.runtimes.network_source import NetworkSource
    from avatarstream.engines.runtimes.stage_registry import stage_names
    from avatarstream.export.exporter import export_all
    from avatarstream.export.parity import check_export

    stages = None
    if args.stages:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        unknown = sorted(set(stages) - set(stage_names()))
        if unknown:
            raise EngineError(f"unknown stages {unknown}; stages: {', '.join(stage_names())}")
    if args.weights is not None and not Path(args.weights).is_dir():
        raise EngineError(f"--weights {args.weights} is not a directory")
    source = NetworkSource(weights=args.weights, seed=args.seed, variant=args.variant)
    result = export_all(source, args.out, stages=stages, backend=args.backend, fp16=args.precision == "fp16",
                        grid_sample=args.grid_sample, dynamo=args.dynamo)
    for name, graph in result.graphs.items():
        size_mb = graph.path.stat().st_size / 2**20
        print(f"{name:<30} {graph.path.name:<36} {size_mb:8.1f} MB  sha256 {graph.sha256[:12]}"
              + (f"  engine {result.engines[name].name}" if name in result.engines else ""))
    if args.no_parity:
        return 0
    reports = check_export(source, result)
    failed = [r for r in reports if not r.within_bound]
    for r in reports:
        print(r.summary() + ("" if r.within_bound else "  EXCEEDS BOUND"))
    (Path(args.out) / "parity.json").write_text(json.dumps([r.to_json() for r in reports], indent=2))
    if failed:
        print(f"parity check failed for {[r.stage for r in failed]}", file=sys.stderr)
        return 1
    return 0
