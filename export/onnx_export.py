"""torch -> ONNX for one graph: opset 20, named inputs/outputs, dynamic axes, ``onnx.checker`` and a model hash."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import onnx
import torch

from avatarstream.engines.runtimes.manifest import OnnxGraph

OPSET = 20


def model_hash(path: Path) -> str:
    """SHA-256 of the serialized model (the protobuf file; graphs here stay below the 2 GB single-file limit)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_onnx(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    metadata: Mapping[str, str] | None = None,
    opset: int = OPSET,
    dynamo: bool = False,
) -> OnnxGraph:
    """Export ``module`` (already in eval mode, on CPU, FP32) and check the result.

    ``dynamo=False`` uses the TorchScript tracer, which is several times faster on these convolution-heavy graphs;
    ``dynamo=True`` uses ``torch.export`` (dynamic axes become ``dynamic_shapes``). Both write standard opset-20
    nodes, so a 5-D grid sample becomes a native ``GridSample``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = {k: dict(v) for k, v in (dynamic_axes or {}).items()}
    if len(example_inputs) != len(input_names):
        raise ValueError(f"{len(example_inputs)} example inputs for {len(input_names)} input names")
    module = module.eval()
    # The nn.MultiheadAttention inference fast path is a fused op without an ONNX translation.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _export(module, example_inputs, path, input_names, output_names, dynamic_axes, opset, dynamo)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    model = onnx.load(str(path))
    meta = dict(metadata or {})
    if meta:
        onnx.helper.set_model_props(model, meta)
        onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    got_inputs = tuple(i.name for i in model.graph.input)
    if got_inputs != tuple(input_names):
        raise RuntimeError(f"exported graph has inputs {got_inputs}, expected {tuple(input_names)} (an input unused?)")
    return OnnxGraph(
        path=path, input_names=tuple(input_names), output_names=tuple(output_names), dynamic_axes=dynamic_axes,
        sha256=model_hash(path), opset=opset, metadata=meta,
    )


def _export(module, example_inputs, path, input_names, output_names, dynamic_axes, opset, dynamo) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = tuple(
                {axis: torch.export.Dim.DYNAMIC for axis in dynamic_axes.get(name, {})} or None for name in input_names
            )
            torch.onnx.export(
                module, tuple(example_inputs), str(path), opset_version=opset, dynamo=True,
                input_names=list(input_names), output_names=list(output_names), dynamic_shapes=shapes,
                external_data=False, optimize=True, verbose=False,
            )
        else:
            torch.onnx.export(
                module, tuple(example_inputs), str(path), opset_version=opset, dynamo=False,
                input_names=list(input_names), output_names=list(output_names), dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
