"""ONNX -> TensorRT engine with the ``tensorrt`` Python API (10.x and 11.x): profiles, timing cache, engine cache.

Engines are cached under a key made of the GPU name, the TensorRT version, the ONNX model hash and the build
settings (precision, profile shapes, workspace), so a driver/GPU/TensorRT change or a new export rebuilds, and
nothing else does. The timing cache is one file per GPU + TensorRT version, shared by all stages. Every API
result that can report a failure (``None`` objects, ``False``, a negative profile index) is checked.

What differs between the majors (:class:`TensorRTVersion` decides, from ``tensorrt.__version__``):

* **Precision.** FP32 builds clear ``BuilderFlag.TF32`` (on by default), so convolutions and matrix products
  keep full FP32 mantissas and the 1e-4 parity gate holds on Ampere/Hopper. FP16 on 10.x uses the weak-typing
  flags (``BuilderFlag.FP16`` + ``OBEY_PRECISION_CONSTRAINTS``) and pins every GridSample and the coordinate
  arithmetic feeding its grid to FP32 (``ILayer.precision`` / ``set_output_type``). 11.x removed all of those:
  every network is strongly typed and its precision is the ONNX graph's own dtypes, so an FP16 engine on 11.x
  needs a mixed-precision FP16 ONNX graph (``avatar export --precision fp16`` writes one with
  ``export.fp16_graph``); an FP32 graph builds FP32. An FP16 graph builds strongly typed on 10.x too.
* **5-D GridSample.** The ONNX parser reads a rank-5 ``GridSample`` from 11.2 on; before that the graph must
  use the decomposed form (:func:`default_grid_sample`, ``avatar export --grid-sample auto``).
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

MIN_TENSORRT = (10, 0)
NATIVE_GRID_SAMPLE_5D = (11, 2)  # first TensorRT whose ONNX parser accepts a rank-5 GridSample
STRONGLY_TYPED_ONLY = 11  # the major that removed weak typing (BuilderFlag.FP16, ILayer.precision, ...)


@dataclass(frozen=True)
class TensorRTVersion:
    """The installed TensorRT's version and what follows from it for our builds."""

    major: int
    minor: int
    text: str

    @classmethod
    def parse(cls, text: str) -> "TensorRTVersion":
        parts = str(text).split(".")
        try:
            major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
        except ValueError as exc:
            raise EngineError(f"cannot read the TensorRT version {text!r}") from exc
        return cls(major, minor, str(text))

    @classmethod
    def of(cls, trt) -> "TensorRTVersion":
        return cls.parse(trt.__version__)

    def check_supported(self) -> None:
        if (self.major, self.minor) < MIN_TENSORRT:
            raise EngineError(f"TensorRT {self.text} is too old: the build needs 10.x or 11.x (pip install 'tensorrt>=10')")

    @property
    def strongly_typed_only(self) -> bool:
        return self.major >= STRONGLY_TYPED_ONLY

    @property
    def native_grid_sample_5d(self) -> bool:
        return (self.major, self.minor) >= NATIVE_GRID_SAMPLE_5D

    @property
    def grid_sample_mode(self) -> str:
        """The 5-D grid-sample form this TensorRT parses: ``native`` from 11.2, ``decomposed`` before."""
        return "native" if self.native_grid_sample_5d else "decomposed"


def default_grid_sample(backend: str) -> str:
    """``--grid-sample auto``: ``native`` for ONNX-only exports, the installed TensorRT's form for engine builds."""
    if backend != "tensorrt":
        return "native"
    return TensorRTVersion.of(import_tensorrt()).grid_sample_mode


def graph_has_fp16(path: Path) -> bool:
    """Whether the ONNX graph at ``path`` holds FP16 tensors (a mixed-precision export, e.g. ModelOpt AutoCast)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    fp16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == fp16 for t in model.graph.initializer):
        return True
    values = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    if any(v.type.tensor_type.elem_type == fp16 for v in values):
        return True
    return any(n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute) for n in model.graph.node)


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
        "tf32": False, "profiles": {k: [list(p.min), list(p.opt), list(p.max)] for k, p in sorted(profiles.items())},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-").lower()


def _checked(obj, what: str):
    """TensorRT's Python API returns None where the C++ call failed: fail there, with a message, not later."""
    if obj is None:
        raise EngineError(f"TensorRT could not create {what}; see the TensorRT log above")
    return obj


def network_flags(trt, version: TensorRTVersion, fp16: bool, graph_fp16: bool = False) -> int:
    """``create_network`` flags. Explicit batch is the only mode since 10.0. Strongly typed wherever the graph's
    dtypes decide the precision: always on 11.x, FP32 builds and FP16 graphs (``graph_fp16``) on 10.x."""
    if version.strongly_typed_only or not fp16 or graph_fp16:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0  # 10.x FP16 from an FP32 graph: weakly typed, precision from the builder flags of configure_precision


def configure_precision(trt, version: TensorRTVersion, config, network, fp16: bool, graph_fp16: bool = False) -> int:
    """TF32 off (FP32 tensors keep FP32 math); on 10.x FP16 from an FP32 graph the weak-typing flags and the FP32
    pins of the grid coordinates. Returns the number of layers pinned to FP32 (0 where the graph's dtypes decide)."""
    config.clear_flag(trt.BuilderFlag.TF32)
    if not fp16 or version.strongly_typed_only or graph_fp16:
        return 0
    config.set_flag(trt.BuilderFlag.FP16)
    pinned = keep_grid_coordinates_fp32(trt, network)
    if pinned:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return pinned


def check_fp16_graph(version: TensorRTVersion, graph_path: Path, fp16: bool) -> bool:
    """Whether the graph at ``graph_path`` is an FP16 graph; refuses an FP16 build TensorRT ``version`` cannot do
    (11.x from an FP32 graph: strongly typed networks take their precision from the graph only)."""
    graph_fp16 = graph_has_fp16(graph_path)
    if fp16 and version.strongly_typed_only and not graph_fp16:
        raise EngineError(
            f"TensorRT {version.text} builds strongly typed networks only: an FP16 engine needs an FP16 ONNX graph "
            f"({graph_path.name} is FP32): export with 'avatar export --precision fp16' (writes <stage>.fp16.onnx), "
            "or build FP32")
    return graph_fp16


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
    version = TensorRTVersion.of(trt)
    version.check_supported()
    graph_fp16 = check_fp16_graph(version, graph.path, fp16)
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
    builder = _checked(trt.Builder(logger), "a builder (no CUDA GPU or driver?)")
    network = _checked(builder.create_network(network_flags(trt, version, fp16, graph_fp16)), "a network definition")
    parser = _checked(trt.OnnxParser(network, logger), "an ONNX parser")
    if not parser.parse_from_file(str(graph.path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        hint = "" if version.native_grid_sample_5d else (
            f" (TensorRT {version.text} has no 5-D GridSample, it arrives in 11.2: export with --grid-sample decomposed)")
        raise EngineError(f"TensorRT {version.text} cannot parse {graph.path.name}: {errors}{hint}")

    config = _checked(builder.create_builder_config(), "a builder config")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    configure_precision(trt, version, config, network, fp16, graph_fp16)

    profile = _checked(builder.create_optimization_profile(), "an optimisation profile")
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name in profiles:
            p = profiles[tensor.name]
            profile.set_shape(tensor.name, p.min, p.opt, p.max)
        elif any(d < 0 for d in tensor.shape):
            raise EngineError(f"input {tensor.name} of {name} has dynamic shape {tuple(tensor.shape)} but no profile")
    if not profile:  # IOptimizationProfile.__bool__ is its isValid()
        raise EngineError(f"the optimisation profile of {name} is invalid (min <= opt <= max for every input?)")
    if config.add_optimization_profile(profile) < 0:
        raise EngineError(f"TensorRT rejected the optimisation profile of {name}")

    timing_path = cache_dir / f"timing-{_slug(gpu)}-trt{trt.__version__}.cache"
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.exists() else b"")
    if timing is None:  # an unreadable cache file: start afresh
        timing = _checked(config.create_timing_cache(b""), "a timing cache")
    if not config.set_timing_cache(timing, ignore_mismatch=False):
        raise EngineError(f"TensorRT refused the timing cache {timing_path} (another GPU or TensorRT version?)")

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {name}; see the TensorRT log above")
    tmp = engine_path.with_suffix(".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    updated = config.get_timing_cache()
    if updated is not None:
        timing_path.write_bytes(bytes(updated.serialize()))
    build_s = time.perf_counter() - t0
    engine_path.with_suffix(".json").write_text(json.dumps({
        "stage": name, "key": key, "gpu": gpu, "tensorrt": trt.__version__, "onnx_sha256": graph.sha256, "fp16": fp16,
        "tf32": False, "strongly_typed": bool(network_flags(trt, version, fp16, graph_fp16)), "fp16_graph": graph_fp16,
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
    """Pin GridSample layers and the coordinate arithmetic feeding their grids (and blend weights) to FP32.

    TensorRT 10.x only (weakly typed FP16 builds): 11.x has no ``ILayer.precision`` / ``set_output_type``.
    """
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
