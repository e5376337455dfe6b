"""``ENGINES_DIR/manifest.json``: the ONNX graphs and TensorRT engines that ``avatar export`` wrote, per stage.

The build side (``avatarstream.export``) writes it; runtimes read it. Each stage entry is an ``OnnxGraph`` as
JSON, plus ``tensorrt`` (the engine file, relative to ``ENGINES_DIR``) where one was built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from avatarstream.engines.base import EngineError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class OnnxGraph:
    """One exported graph on disk, with what a runtime needs to feed it."""

    path: Path
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: Mapping[str, Mapping[int, str]]
    sha256: str
    opset: int
    metadata: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "path": self.path.name,
            "inputs": list(self.input_names),
            "outputs": list(self.output_names),
            "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in self.dynamic_axes.items()},
            "sha256": self.sha256,
            "opset": self.opset,
            "metadata": dict(self.metadata),
        }


def read_manifest(path: Path) -> dict[str, OnnxGraph]:
    """The graphs recorded in the manifest file ``path``; graph paths resolve next to it."""
    doc = json.loads(Path(path).read_text())
    out = {}
    for name, g in doc["stages"].items():
        out[name] = OnnxGraph(
            path=Path(path).parent / g["path"], input_names=tuple(g["inputs"]), output_names=tuple(g["outputs"]),
            dynamic_axes={k: {int(a): n for a, n in v.items()} for k, v in g["dynamic_axes"].items()},
            sha256=g["sha256"], opset=g["opset"], metadata=g.get("metadata", {}),
        )
    return out


def load_export(out_dir: Path) -> tuple[dict[str, OnnxGraph], dict[str, Path]]:
    """Graphs and TensorRT engines recorded in ``out_dir/manifest.json``."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise EngineError(f"{out_dir} has no {MANIFEST}; run 'avatar export --out {out_dir}' first")
    graphs = read_manifest(path)
    doc = json.loads(path.read_text())
    engines = {n: Path(out_dir) / e["tensorrt"] for n, e in doc["stages"].items() if "tensorrt" in e}
    return graphs, engines
