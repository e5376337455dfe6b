"""Our TensorRT API use, checked against the real ``tensorrt`` Python bindings of 10.x and 11.x (no GPU needed).

The ``tensorrt`` package cannot be installed from PyPI alone: its libraries (``tensorrt-cu12-libs``) are a stub
that downloads from NVIDIA's own index. The bindings wheel (``tensorrt-cu12-bindings``, 1.3 MB, on PyPI) holds
the real Python module; it links to ``libnvinfer``/``libnvonnxparser``/``libnvinfer_plugin`` through ten C entry
points only (``createInferBuilder_INTERNAL``...). With those ten replaced by functions that return NULL (built
here with the C compiler), the real module imports: every class, method and enum the bindings define is there,
and creating a ``Builder`` fails as it would without a GPU. ``.ci/setup`` downloads the wheels of 10.16, 11.1
and 11.4 into ``.venv/tensorrt-bindings`` (or set ``AVATAR_TRT_BINDINGS``).

For each version, in its own process (``import tensorrt`` is that version's bindings, as the ``tensorrt``
metapackage makes it): every ``trt.X.Y`` our build and runtime code names, and every method they call on
TensorRT objects, exists; the version switch picks the grid-sample form and the typing mode the version
supports; the weak-typing names the 10.x FP16 path uses are really gone from 11.x; and an FP16 build of a real
graph pair (a stage exported FP32 and converted by ``export.fp16_graph``) takes the path its version allows:
``build_engine`` on 11.x refuses the FP32 graph and goes on with the FP16 graph, strongly typed and without
builder flags, until the real ``trt.Builder`` finds no library (the only step that needs a GPU).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WHEEL_DIR = Path(os.environ.get("AVATAR_TRT_BINDINGS", REPO / ".venv" / "tensorrt-bindings"))
SOURCES = ("export/tensorrt_build.py", "engines/runtimes/stage_runtime.py")
# Variables in SOURCES that hold TensorRT objects -> their class in the bindings.
OBJECT_CLASSES = {
    "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser", "config": "IBuilderConfig",
    "profile": "IOptimizationProfile", "timing": "ITimingCache", "updated": "ITimingCache", "layer": "ILayer",
    "consumer": "ILayer", "tensor": "ITensor", "other": "ITensor", "engine": "ICudaEngine",
    "context": "IExecutionContext", "probe": "IExecutionContext", "_runtime": "Runtime", "logger": "Logger",
}
WEAK_TYPING = {"BuilderFlag.FP16", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS", "ILayer.precision", "ILayer.set_output_type"}

STUB_C = r"""
#include <stddef.h>
void* createInferBuilder_INTERNAL(void* logger, int version) { return NULL; }
void* createInferRefitter_INTERNAL(void* engine, void* logger, int version) { return NULL; }
void* createInferRuntime_INTERNAL(void* logger, int version) { return NULL; }
void* getBuilderPluginRegistry(int capability) { return NULL; }
void* getPluginRegistry(void) { return NULL; }
int initLibNvInferPlugins(void* logger, const char* ns) { return 0; }
void* createNvOnnxParser_INTERNAL(void* network, void* logger, int version) { return NULL; }
void* createNvOnnxParserRefitter_INTERNAL(void* refitter, void* logger, int version) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
"""


def api_uses() -> tuple[set[str], set[tuple[str, str]]]:
    """``trt.A.B`` chains (as ``A.B``) and (class, attribute) pairs of method/attribute uses on TensorRT objects."""
    chains: set[str] = set()
    members: set[tuple[str, str]] = set()
    for rel in SOURCES:
        tree = ast.parse((REPO / rel).read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            parts, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                parts.append(base.attr)
                base = base.value
            parts.reverse()
            if isinstance(base, ast.Name) and base.id == "trt" or (
                    isinstance(base, ast.Name) and base.id == "self" and parts[0] == "trt"):
                chain = parts[1:] if parts[0] == "trt" else parts
                chains.add(".".join(chain[:2]))
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else owner.id if isinstance(owner, ast.Name) else None
            if name in OBJECT_CLASSES:
                members.add((OBJECT_CLASSES[name], node.attr))
    chains.discard("")
    return chains, members


PROBE = r"""
import json, sys
import tensorrt_bindings as trt
sys.modules["tensorrt"] = trt  # what the tensorrt metapackage does: from tensorrt_bindings import *
from avatarstream.export import tensorrt_build as tb
from avatarstream.engines.runtimes.stage_runtime import trt_to_torch_dtype

chains, members = json.loads(sys.argv[1])
graphs = json.loads(sys.argv[2])
def resolves(chain):
    obj = trt
    for part in chain.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True

version = tb.TensorRTVersion.of(trt)
calls = []
class Recorder:
    def set_flag(self, flag): calls.append(["set_flag", str(flag)])
    def clear_flag(self, flag): calls.append(["clear_flag", str(flag)])
class NoLayers:
    num_layers = 0
precision = {}
for fp16 in (False, True):
    calls.clear()
    try:
        tb.configure_precision(trt, version, Recorder(), NoLayers(), fp16)
        precision[str(fp16)] = {"calls": list(calls), "flags": tb.network_flags(trt, version, fp16)}
    except AttributeError as exc:
        precision[str(fp16)] = {"error": str(exc)}
try:
    trt.Builder(trt.Logger(trt.Logger.WARNING))
    builder = "created"
except TypeError as exc:
    builder = str(exc)

from pathlib import Path
from avatarstream.engines.base import EngineError
from avatarstream.engines.runtimes.manifest import OnnxGraph
tb.gpu_name = lambda: "probe GPU"  # build_engine asks torch for the GPU first; everything after runs for real
fp16_build = {}
for label, path in graphs.items():
    entry = {}
    try:
        graph_fp16 = tb.check_fp16_graph(version, Path(path), True)
        calls.clear()
        tb.configure_precision(trt, version, Recorder(), NoLayers(), True, graph_fp16)
        entry.update(graph_fp16=graph_fp16, flags=tb.network_flags(trt, version, True, graph_fp16), calls=list(calls))
    except EngineError as exc:
        entry["refused"] = str(exc)
    graph = OnnxGraph(path=Path(path), input_names=("x",), output_names=("delta",), dynamic_axes={}, sha256="0" * 64,
                      opset=20)
    try:
        tb.build_engine(graph, Path(path).parent / ("cache-" + label), name="stitching_eye", profiles={}, fp16=True)
        entry["build"] = "built"
    except EngineError as exc:
        entry["build"] = "EngineError: " + str(exc)
    except TypeError as exc:
        entry["build"] = "TypeError: " + str(exc)
    fp16_build[label] = entry
print(json.dumps({
    "version": trt.__version__, "grid_sample": tb.default_grid_sample("tensorrt"),
    "strongly_typed_only": version.strongly_typed_only,
    "missing_chains": sorted(c for c in chains if not resolves(c)),
    "missing_members": sorted(f"{c}.{m}" for c, m in members if not hasattr(getattr(trt, c), m)),
    "precision": precision, "strongly_typed_bit": 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED),
    "tf32": str(trt.BuilderFlag.TF32), "bfloat16": str(trt_to_torch_dtype(trt, trt.bfloat16)),
    "builder": builder, "fp16_build": fp16_build,
}))
"""


def _wheels() -> dict[str, Path]:
    found = {p.name.split("-")[1]: p for p in sorted(WHEEL_DIR.glob("tensorrt_cu12_bindings-*.whl"))}
    return found


def _graph_pair(tmp: Path) -> dict[str, str]:
    """A real stage exported FP32 and its FP16 conversion (the small stitching MLP; the converter is tested on
    the warping and DiT graphs in test_fp16_graph.py)."""
    pytest.importorskip("torch", reason="torch not installed (pip install -e .[neural])")
    import onnx
    import torch

    from avatarstream.engines.runtimes.network_source import NetworkSource
    from avatarstream.engines.runtimes.stage_registry import get_stage
    from avatarstream.export.fp16_graph import convert_to_fp16
    from avatarstream.export.onnx_export import export_onnx

    spec = get_stage("stitching_eye")
    fp32 = export_onnx(spec.build(NetworkSource(seed=0)), spec.example_inputs(1, torch.Generator().manual_seed(0)),
                       tmp / "stitching_eye.onnx", input_names=spec.input_names, output_names=spec.output_names,
                       dynamic_axes=spec.dynamic_axes)
    converted, _ = convert_to_fp16(onnx.load(str(fp32.path)))
    onnx.save(converted, str(tmp / "stitching_eye.fp16.onnx"))
    return {"fp32_graph": str(fp32.path), "fp16_graph": str(tmp / "stitching_eye.fp16.onnx")}


def _bindings_or_skip(version: str, tmp: Path) -> dict:
    wheels = _wheels()
    if version not in wheels:
        pytest.skip(f"tensorrt not installed: no tensorrt-cu12-bindings {version} wheel in {WHEEL_DIR} (bash .ci/setup)")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build the library entry points the tensorrt bindings link to")
    site = tmp / "site"
    with zipfile.ZipFile(wheels[version]) as z:
        z.extractall(site)
    libs = tmp / "libs"
    libs.mkdir()
    (libs / "entry.c").write_text(STUB_C)
    major = version.split(".")[0]
    for lib in ("libnvinfer", "libnvinfer_plugin", "libnvonnxparser"):
        soname = f"{lib}.so.{major}"
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(libs / soname), f"-Wl,-soname,{soname}", str(libs / "entry.c")],
                       check=True)
    chains, members = api_uses()
    env = {**os.environ, "LD_LIBRARY_PATH": str(libs), "PYTHONPATH": str(site), "CUDA_VISIBLE_DEVICES": ""}
    graphs = _graph_pair(tmp)
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps([sorted(chains), sorted(members)]), json.dumps(graphs)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_source_scan_finds_the_api_we_use():
    chains, members = api_uses()
    assert {"BuilderFlag.TF32", "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "BuilderFlag.FP16",
            "TensorIOMode.INPUT", "MemoryPoolType.WORKSPACE"} <= chains
    assert {("IExecutionContext", "execute_async_v3"), ("IBuilderConfig", "set_timing_cache"),
            ("IBuilderConfig", "clear_flag"), ("ICudaEngine", "get_tensor_profile_shape"),
            ("ILayer", "set_output_type")} <= members


@pytest.mark.parametrize("version", ["10.16.1.11", "11.1.0.106", "11.4.0.106"])
def test_real_bindings(version, tmp_path):
    r = _bindings_or_skip(version, tmp_path)
    assert r["version"] == version
    major, minor = (int(x) for x in version.split(".")[:2])
    weak = WEAK_TYPING
    missing = set(r["missing_chains"]) | set(r["missing_members"])
    if major == 10:
        assert not missing, f"names our code uses that TensorRT {version} lacks: {sorted(missing)}"
        assert r["strongly_typed_only"] is False
        # FP32: strongly typed from the graph, TF32 cleared; FP16: weakly typed with the FP16 flag.
        assert r["precision"]["False"] == {"calls": [["clear_flag", r["tf32"]]], "flags": r["strongly_typed_bit"]}
        assert r["precision"]["True"]["flags"] == 0
        assert ["set_flag", "BuilderFlag.FP16"] in r["precision"]["True"]["calls"]
    else:
        # Everything resolves except the 10.x-only weak-typing names, which 11.x really removed.
        assert missing == weak, f"unexpected: {sorted(missing ^ weak)}"
        assert r["strongly_typed_only"] is True
        for fp16 in ("False", "True"):
            assert r["precision"][fp16] == {"calls": [["clear_flag", r["tf32"]]], "flags": r["strongly_typed_bit"]}
    assert r["grid_sample"] == ("native" if (major, minor) >= (11, 2) else "decomposed")
    assert r["bfloat16"] == "torch.bfloat16"
    assert "nullptr" in r["builder"]  # the real binding ran and got no builder (no libnvinfer, no GPU)
    # FP16 from the converted graph: strongly typed, TF32 cleared, no weak-typing flag, on every version; the build
    # gets past every precision check to the real Builder, which finds no library.
    built = r["fp16_build"]
    assert built["fp16_graph"]["graph_fp16"] is True
    assert built["fp16_graph"]["flags"] == r["strongly_typed_bit"]
    assert built["fp16_graph"]["calls"] == [["clear_flag", r["tf32"]]]
    assert built["fp16_graph"]["build"].startswith("TypeError") and "nullptr" in built["fp16_graph"]["build"]
    if major >= 11:  # FP16 from the FP32 graph: refused before any TensorRT object is made
        assert "--precision fp16" in built["fp32_graph"]["refused"]
        assert built["fp32_graph"]["build"].startswith("EngineError") and "strongly typed" in built["fp32_graph"]["build"]
    else:  # 10.x: weak typing with the FP16 flag, up to the same Builder
        assert built["fp32_graph"]["graph_fp16"] is False and built["fp32_graph"]["flags"] == 0
        assert ["set_flag", "BuilderFlag.FP16"] in built["fp32_graph"]["calls"]
        assert "nullptr" in built["fp32_graph"]["build"]
