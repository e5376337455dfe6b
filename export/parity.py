"""Parity of an exported stage against eager torch on the same inputs: max abs error, relative to the output range.

The relative error of an output is ``max|got - ref| / max|ref|``; a stage's error is the worst over its outputs.
FP32 graphs and engines must stay within ``FP32_RELATIVE_BOUND``, FP16 ones (``avatar export --precision fp16``)
within ``FP16_RELATIVE_BOUND``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import torch

from avatarstream.engines.runtimes.stage_registry import get_stage
from avatarstream.engines.runtimes.stage_runtime import OnnxRuntime, StageRuntime, TensorRTRuntime

FP32_RELATIVE_BOUND = 1e-4
FP16_RELATIVE_BOUND = 1e-2


@dataclass(frozen=True)
class OutputError:
    name: str
    max_abs: float
    ref_max_abs: float

    @property
    def relative(self) -> float:
        return self.max_abs / max(self.ref_max_abs, 1e-12)


@dataclass
class ParityResult:
    stage: str
    backend: str
    batch: int
    precision: str  # "fp32" or "fp16"
    outputs: list[OutputError] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        return max(o.max_abs for o in self.outputs)

    @property
    def relative(self) -> float:
        return max(o.relative for o in self.outputs)

    @property
    def bound(self) -> float:
        return FP32_RELATIVE_BOUND if self.precision == "fp32" else FP16_RELATIVE_BOUND

    @property
    def within_bound(self) -> bool:
        return self.relative <= self.bound

    def to_json(self) -> dict:
        return {
            "stage": self.stage, "backend": self.backend, "batch": self.batch, "precision": self.precision,
            "max_abs": self.max_abs, "relative": self.relative, "bound": self.bound, "within_bound": self.within_bound,
            "outputs": [{**asdict(o), "relative": o.relative} for o in self.outputs],
        }

    def summary(self) -> str:
        return (f"{self.stage:<30} {self.backend:<12} {self.precision} batch {self.batch}: "
                f"max abs {self.max_abs:.3e}, relative {self.relative:.3e}")


def compare_outputs(reference: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor],
                    names: Sequence[str]) -> list[OutputError]:
    errors = []
    for name in names:
        ref, out = reference[name].detach().float().cpu(), got[name].detach().float().cpu()
        if ref.shape != out.shape:
            raise AssertionError(f"output {name}: shape {tuple(out.shape)} differs from torch {tuple(ref.shape)}")
        errors.append(OutputError(name, float((out - ref).abs().max()), float(ref.abs().max())))
    return errors


def run_eager(module: torch.nn.Module, inputs: Sequence[torch.Tensor], output_names: Sequence[str]) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        out = module(*inputs)
    outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    return dict(zip(output_names, outs))


def measure_parity(
    stage: str,
    reference: Mapping[str, torch.Tensor],
    runtime: StageRuntime,
    inputs: Mapping[str, torch.Tensor],
    *,
    precision: str = "fp32",
) -> ParityResult:
    """Run ``runtime`` on ``inputs`` and compare with the eager ``reference`` outputs of the same inputs."""
    got = runtime.run(inputs)
    batch = int(next(iter(inputs.values())).shape[0])
    return ParityResult(stage, runtime.backend, batch, precision,
                        compare_outputs(reference, got, runtime.output_names))


def check_export(source, result, *, batch: int = 1, progress: bool = True) -> list[ParityResult]:
    """Every graph of an ``export.exporter.ExportResult`` (onnxruntime CPU) and engine (TensorRT) vs eager torch.

    The eager reference runs on CPU in FP32 with the plain ``torch.nn.functional.grid_sample``; stages exported
    FP16 (``result.fp32_graphs``) are gated at ``FP16_RELATIVE_BOUND``, on onnxruntime and TensorRT.
    """
    from tqdm import tqdm

    reports = []
    for name, graph in tqdm(result.graphs.items(), desc="parity", unit="stage", disable=not progress):
        spec = get_stage(name)
        inputs = spec.example_inputs(batch, torch.Generator().manual_seed(source.seed + 1))
        reference = run_eager(spec.build(source), inputs, spec.output_names)
        feeds = dict(zip(spec.input_names, inputs))
        precision = "fp16" if name in result.fp32_graphs else "fp32"
        reports.append(measure_parity(name, reference, OnnxRuntime(graph.path), feeds, precision=precision))
        if name in result.engines:
            runtime = TensorRTRuntime(result.engines[name])
            cuda_feeds = {k: v.cuda() for k, v in feeds.items()}
            reports.append(measure_parity(name, reference, runtime, cuda_feeds, precision=precision))
    return reports
