"""ONNX -> TensorRT engine with the ``tensorrt`` Python API: optimisation profiles, FP16, timing cache, engine cache.

Engines are cached under a key made of the GPU name, the TensorRT version, the ONNX model hash and the build
settings (precision, profile shapes, workspace), so a driver/GPU/TensorRT change or a new export rebuilds, and
nothing else does. The timing cache is one file per GPU + TensorRT version, shared by all stages.

In FP16 builds the grid coordinates stay FP32: every GridSample layer, and the coordinate arithmetic that
produces its grid (element-wise, shuffles, slices, softmax... up to the nearest convolution), are pinned to
FP32 with ``OBEY_PRECISION_CONSTRAINTS``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from avatarstream.engines.base import EngineError
from avatarstream.engines.runtimes.manifest import OnnxGraph
from avatarstream.engines.runtimes.stage_runtime import import_tensorrt
from avatarstream.engines.runtimes.stage_spec import ProfileShapes


@dataclass(frozen=True)
class BuiltEngine:
    path: Path
    key: str
    cached: bool
    build_s: float


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        raise EngineError("no CUDA GPU: TensorRT engines are built on and for the GPU that runs them")
    return torch.cuda.get_device_name(torch.cuda.current_device())


def engine_cache_key(
    onnx_sha256: str, *, gpu: str, trt_version: str, fp16: bool, profiles: Mapping[str, ProfileShapes], workspace_gb: float
) -> str:
    doc = {
        "gpu": gpu, "tensorrt": trt_version, "onnx": onnx_sha256, "fp16": fp16, "workspace_gb": workspace_gb,
        "profiles": {k: [list(p.min), list(p.opt), list(p.max)] for k, p in sorted(profiles.items())},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-").lower()


def build_engine(
    graph: OnnxGraph,
    cache_dir: Path,
    *,
    name: str,
    profiles: Mapping[str, ProfileShapes],
    fp16: bool = False,
    workspace_gb: float = 4.0,
) -> BuiltEngine:
    """Build (or reuse from ``cache_dir``) the engine for ``graph``; returns the ``.engine`` path."""
    trt = import_tensorrt()
    gpu = gpu_name()
    key = engine_cache_key(graph.sha256, gpu=gpu, trt_version=trt.__version__, fp16=fp16, profiles=profiles,
                           workspace_gb=workspace_gb)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    engine_path = cache_dir / f"{name}-{'fp16' if fp16 else 'fp32'}-{key[:16]}.engine"
    if engine_path.exists():
        return BuiltEngine(engine_path, key, cached=True, build_s=0.0)

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph.path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT {trt.__version__} cannot parse {graph.path.name}: {errors}"
                          " (for a 5-D GridSample on TensorRT < 10 export with --grid-sample decomposed)")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = keep_grid_coordinates_fp32(trt, network)
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)

    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name in profiles:
            p = profiles[tensor.name]
            profile.set_shape(tensor.name, p.min, p.opt, p.max)
        elif any(d < 0 for d in tensor.shape):
            raise EngineError(f"input {tensor.name} of {name} has dynamic shape {tuple(tensor.shape)} but no profile")
    config.add_optimization_profile(profile)

    timing_path = cache_dir / f"timing-{_slug(gpu)}-trt{trt.__version__}.cache"
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.exists() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {name}; see the TensorRT log above")
    tmp = engine_path.with_suffix(".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    build_s = time.perf_counter() - t0
    engine_path.with_suffix(".json").write_text(json.dumps({
        "stage": name, "key": key, "gpu": gpu, "tensorrt": trt.__version__, "onnx_sha256": graph.sha256, "fp16": fp16,
        "profiles": {k: [list(p.min), list(p.opt), list(p.max)] for k, p in profiles.items()}, "build_s": round(build_s, 1),
    }, indent=2))
    return BuiltEngine(engine_path, key, cached=False, build_s=build_s)


# Layer kinds that only move or combine coordinates; the FP32 walk back from a grid stops at anything else
# (convolutions, pooling, normalisation), which keeps the heavy feature path in FP16.
_COORDINATE_LAYERS = (
    "ELEMENTWISE", "UNARY", "SHUFFLE", "SLICE", "CONCATENATION", "CONSTANT", "REDUCE", "SOFTMAX", "IDENTITY", "CAST",
    "SELECT", "ACTIVATION", "GATHER", "MATRIX_MULTIPLY", "FILL", "SHAPE", "SCATTER", "PADDING", "GRID_SAMPLE",
)


def keep_grid_coordinates_fp32(trt, network) -> int:
    """Pin GridSample layers and the coordinate arithmetic feeding their grids (and blend weights) to FP32."""
    producers = {}
    consumers: dict[str, list] = {}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    for layer in layers:
        for j in range(layer.num_outputs):
            producers[layer.get_output(j).name] = layer
        for j in range(layer.num_inputs):
            t = layer.get_input(j)
            if t is not None:
                consumers.setdefault(t.name, []).append(layer)
    coordinate_types = {getattr(trt.LayerType, n) for n in _COORDINATE_LAYERS if hasattr(trt.LayerType, n)}
    float_types = {trt.float32, trt.float16}
    pinned: set[str] = set()

    def pin(layer) -> None:
        if layer.name in pinned:
            return
        pinned.add(layer.name)
        float_outputs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in float_types]
        if not float_outputs:  # shape / index arithmetic: nothing to pin
            return
        layer.precision = trt.float32
        for j in float_outputs:
            layer.set_output_type(j, trt.float32)

    def walk_back(tensor) -> None:
        stack = [tensor]
        while stack:
            t = stack.pop()
            layer = producers.get(t.name) if t is not None else None
            if layer is None or layer.name in pinned or layer.type not in coordinate_types:
                continue
            pin(layer)
            stack.extend(layer.get_input(j) for j in range(layer.num_inputs))

    for layer in layers:
        if layer.type != trt.LayerType.GRID_SAMPLE:
            continue
        pin(layer)
        walk_back(layer.get_input(1))
        # The decomposed form blends two samples with depth weights computed from the same coordinates.
        for consumer in consumers.get(layer.get_output(0).name, []):
            if consumer.type == trt.LayerType.ELEMENTWISE:
                for j in range(consumer.num_inputs):
                    other = consumer.get_input(j)
                    if other is not None and other.name != layer.get_output(0).name:
                        walk_back(other)
    return len(pinned)
