"""Export a set of stages to ``ENGINES_DIR``: ONNX graphs (+ TensorRT engines), ``manifest.json``, with progress."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from tqdm import tqdm

from avatarstream.engines.base import EngineError
from avatarstream.engines.runtimes.manifest import MANIFEST, OnnxGraph
from avatarstream.engines.runtimes.network_source import NetworkSource
from avatarstream.engines.runtimes.stage_registry import get_stage, stage_names
from avatarstream.engines.runtimes.stage_runtime import import_tensorrt
from avatarstream.engines.runtimes.stage_spec import StageSpec
from avatarstream.export.fp16_graph import stage_in_fp16, write_fp16_graph
from avatarstream.export.grid_sample_5d import GRID_SAMPLE_MODES, grid_sample_mode
from avatarstream.export.onnx_export import export_onnx, model_hash
from avatarstream.export.tensorrt_build import build_engine, default_grid_sample, gpu_name


@dataclass
class ExportResult:
    out_dir: Path
    graphs: dict[str, OnnxGraph] = field(default_factory=dict)  # the graph each stage runs (FP16 where converted)
    fp32_graphs: dict[str, OnnxGraph] = field(default_factory=dict)  # with --precision fp16: the FP32 sources
    fp16_reports: dict[str, dict] = field(default_factory=dict)
    engines: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def export_stage(spec: StageSpec, source: NetworkSource, out_dir: Path, *, grid_sample: str = "native",
                 dynamo: bool = False) -> OnnxGraph:
    module = spec.build(source)
    inputs = spec.example_inputs(1, torch.Generator().manual_seed(source.seed))
    metadata = {"stage": spec.name, "weights": "random" if source.weights is None else str(source.weights),
                "seed": str(source.seed)}
    if spec.uses_grid_sample:
        metadata["grid_sample"] = grid_sample
    with grid_sample_mode(grid_sample):
        return export_onnx(module, inputs, out_dir / f"{spec.name}.onnx", input_names=spec.input_names,
                           output_names=spec.output_names, dynamic_axes=spec.dynamic_axes, metadata=metadata,
                           dynamo=dynamo)


def convert_stage_fp16(graph: OnnxGraph) -> tuple[OnnxGraph, dict]:
    """``<stage>.fp16.onnx`` next to the FP32 ``graph`` (see ``export.fp16_graph``); I/O stay FP32."""
    path = graph.path.with_name(graph.path.stem + ".fp16.onnx")
    report = write_fp16_graph(graph.path, path)
    fp16 = OnnxGraph(path=path, input_names=graph.input_names, output_names=graph.output_names,
                     dynamic_axes=graph.dynamic_axes, sha256=model_hash(path), opset=graph.opset,
                     metadata={**graph.metadata, "precision": "fp16"})
    return fp16, report.to_json()


def export_all(
    source: NetworkSource,
    out_dir: Path,
    *,
    stages: Iterable[str] | None = None,
    backend: str = "onnx",
    fp16: bool = False,
    grid_sample: str = "auto",
    dynamo: bool = False,
    progress: bool = True,
) -> ExportResult:
    """ONNX for every stage; with ``backend='tensorrt'`` also one engine per stage.

    ``fp16``: every stage that computes in FP16 (``export.fp16_graph.stage_in_fp16``) also gets a mixed-precision
    ``<stage>.fp16.onnx``, which the manifest records as the stage's graph and TensorRT builds from (strongly
    typed, the only FP16 path on TensorRT 11).

    ``grid_sample='auto'``: the native 5-D GridSample for ONNX exports and for TensorRT >= 11.2, the decomposed
    form for older TensorRT (``export.tensorrt_build.default_grid_sample``).
    """
    if backend not in ("onnx", "tensorrt"):
        raise EngineError(f"unknown export backend {backend!r}; choose onnx or tensorrt")
    if grid_sample == "auto":
        grid_sample = default_grid_sample(backend)
    if grid_sample not in GRID_SAMPLE_MODES:
        raise EngineError(f"unknown --grid-sample {grid_sample!r}; choose {' or '.join(GRID_SAMPLE_MODES)}")
    names = list(stages) if stages is not None else stage_names()
    specs = [get_stage(n) for n in names]
    if backend == "tensorrt":  # fail before the long ONNX exports
        import_tensorrt()
        gpu_name()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ExportResult(out_dir)
    steps = len(specs) * (2 if backend == "tensorrt" else 1)
    with tqdm(total=steps, desc="export", unit="step", disable=not progress) as bar:
        for spec in specs:
            bar.set_postfix_str(f"{spec.name} -> onnx")
            t0 = time.perf_counter()
            graph = export_stage(spec, source, out_dir, grid_sample=grid_sample, dynamo=dynamo)
            if fp16 and stage_in_fp16(spec):
                result.fp32_graphs[spec.name] = graph
                graph, result.fp16_reports[spec.name] = convert_stage_fp16(graph)
            result.graphs[spec.name] = graph
            result.seconds[f"{spec.name}.onnx"] = round(time.perf_counter() - t0, 2)
            bar.update(1)
            if backend == "tensorrt":
                bar.set_postfix_str(f"{spec.name} -> tensorrt")
                built = build_engine(result.graphs[spec.name], out_dir / "tensorrt", name=spec.name,
                                     profiles=spec.profiles(), fp16=spec.name in result.fp32_graphs)
                result.engines[spec.name] = built.path
                result.seconds[f"{spec.name}.engine"] = round(built.build_s, 2)
                bar.update(1)
    write_export_manifest(result, source, grid_sample=grid_sample, fp16=fp16)
    return result


def write_export_manifest(result: ExportResult, source: NetworkSource, *, grid_sample: str, fp16: bool) -> Path:
    path = result.out_dir / MANIFEST
    previous = json.loads(path.read_text()) if path.exists() else {}
    stages = dict(previous.get("stages", {}))
    for name, graph in result.graphs.items():
        entry = graph.to_json()
        entry["precision"] = "fp16" if name in result.fp32_graphs else "fp32"
        if name in result.fp32_graphs:
            entry["fp32_path"] = result.fp32_graphs[name].path.name
            entry["fp16_conversion"] = result.fp16_reports[name]
        if name in result.engines:
            entry["tensorrt"] = str(result.engines[name].relative_to(result.out_dir))
            entry["tensorrt_fp16"] = name in result.fp32_graphs
        stages[name] = entry
    doc = {
        "opset": 20, "grid_sample": grid_sample, "precision": "fp16" if fp16 else "fp32", "torch": torch.__version__,
        "weights": "random" if source.weights is None else str(source.weights), "seed": source.seed,
        "stages": stages,
    }
    path.write_text(json.dumps(doc, indent=2))
    return path
