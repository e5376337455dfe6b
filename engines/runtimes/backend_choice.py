"""Per-stage backend choice: ``--backend`` text -> {stage: backend} -> opened ``StageRuntime``s.

Accepted forms (stage names as in ``engines.runtimes.stage_registry``)::

    torch                                      every stage on torch
    tensorrt                                   every stage on TensorRT
    warping_spade=tensorrt,audio_encoder=onnxruntime      named stages; the rest on torch
    default=onnxruntime,dit_denoise=torch      named stages; the rest on onnxruntime
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from avatarstream.engines.base import EngineError
from avatarstream.engines.runtimes.manifest import load_export
from avatarstream.engines.runtimes.network_source import NetworkSource
from avatarstream.engines.runtimes.stage_registry import get_stage, stage_names
from avatarstream.engines.runtimes.stage_runtime import BACKENDS, StageRuntime, open_runtime


def parse_backend_choice(text: str, stages: Iterable[str] | None = None) -> dict[str, str]:
    names = list(stages) if stages is not None else stage_names()
    default = "torch"
    explicit: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        stage, sep, backend = part.partition("=")
        if not sep:
            stage, backend = "default", stage
        stage, backend = stage.strip(), backend.strip()
        if backend not in BACKENDS:
            raise EngineError(f"unknown backend {backend!r} in --backend {text!r}; choose from {', '.join(BACKENDS)}")
        if stage == "default":
            default = backend
        elif stage in names:
            explicit[stage] = backend
        else:
            raise EngineError(f"unknown stage {stage!r} in --backend {text!r}; stages: {', '.join(names)}")
    return {name: explicit.get(name, default) for name in names}


def open_stage_runtimes(
    choice: Mapping[str, str],
    *,
    source: NetworkSource,
    engines_dir: Path | None = None,
    device: str = "cpu",
    fp16: bool = False,
) -> dict[str, StageRuntime]:
    """One runtime per stage; ONNX graphs and engines come from ``engines_dir`` (written by ``avatar export``)."""
    graphs: dict = {}
    engines: dict = {}
    if any(b != "torch" for b in choice.values()):
        if engines_dir is None:
            raise EngineError("onnxruntime / tensorrt stages need the ENGINES_DIR written by 'avatar export'")
        graphs, engines = load_export(Path(engines_dir))
    runtimes: dict[str, StageRuntime] = {}
    for name, backend in choice.items():
        spec = get_stage(name)
        if backend == "onnxruntime" and name not in graphs:
            raise EngineError(f"{engines_dir} has no ONNX graph for {name}; run 'avatar export --stages {name}'")
        if backend == "tensorrt" and name not in engines:
            raise EngineError(f"{engines_dir} has no TensorRT engine for {name}; run 'avatar export --backend tensorrt'")
        runtimes[name] = open_runtime(
            backend, device=device, module_factory=lambda spec=spec: spec.build(source),
            input_names=spec.input_names, output_names=spec.output_names,
            onnx_path=graphs[name].path if name in graphs else None, engine_path=engines.get(name),
            fp16=fp16 and backend == "torch" and not spec.fp32_only,
        )
    return runtimes
