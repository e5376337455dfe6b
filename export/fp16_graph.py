"""FP32 ONNX graph -> mixed-precision FP16 graph for strongly typed TensorRT (11.x) and onnxruntime.

TensorRT 11 takes precision from the graph's dtypes only, so an FP16 engine needs a graph whose tensors are
FP16 where FP16 is safe and FP32 where it is not. This pass rewrites an exported FP32 graph with the ``onnx``
package alone (no converter library): every node gets a precision, Casts are inserted where a tensor crosses
from one precision to the other, and float initializers are stored in the precision of their consumers.

Which nodes stay FP32 (the rest computes in FP16):

* ``GridSample`` and the coordinate path feeding its grid: walking back from the grid input (and, for the
  decomposed 5-D form, from the depth-blend weights next to the samples) through light ops (elementwise,
  shape, reductions, softmax...) up to the first heavy op (convolution, matrix product, normalisation). In the
  warping module this keeps the sparse motions, the softmax of the mask and the deformation in FP32 (the same
  walk as the 10.x layer pins in ``export.tensorrt_build``).
* ``Softmax``/``LogSoftmax``, and the ops in ``ALWAYS_FP32``.
* Keypoint math and computed constants: light ops whose float inputs all come from FP32 graph inputs
  (keypoints), from nodes without float inputs (``Cast`` of an integer such as a diffusion step, ``Range``,
  ``ConstantOfShape``) or from other such ops stay FP32 until they reach a heavy op (FP16 would move a sampling
  point by up to a quarter pixel, and turn a sinusoidal step embedding of step 1000 into noise).

Graph inputs and outputs keep their FP32 types (a Cast inside the graph), so runtimes feed and read FP32 as
before. The result passes ``onnx.checker`` with full type checking.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)

# Ops that always compute in FP32 (inputs cast up): the samplers and the normalised exponentials.
ALWAYS_FP32 = frozenset({"GridSample", "Softmax", "LogSoftmax"})
# Ops that only move, combine or compare values (no learned weights, cheap): they take the precision of the path
# they are on. Anything else (Conv, MatMul, Gemm, normalisations, ...) is heavy and computes in FP16.
LIGHT_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Exp", "Log", "Sqrt", "Pow", "Reciprocal", "Floor", "Ceil", "Round",
    "Sin", "Cos", "Sign", "Mod", "Erf", "Tanh", "Sigmoid", "Relu", "LeakyRelu", "Clip", "Min", "Max", "Sum", "Mean",
    "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Expand", "Slice", "Split", "Concat", "Gather",
    "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Tile", "Pad", "Identity", "Cast", "CastLike",
    "Where", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "ReduceSum",
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL2", "Softmax", "LogSoftmax",
    "Constant", "ConstantOfShape", "Range", "Shape", "Size", "Trilu", "ArgMax", "ArgMin", "TopK", "GridSample",
    "IsNaN", "IsInf", "Atan", "Asin", "Acos",
})
# Float inputs whose type is not the op's main type variable: left as they are.
_KEEP_INPUT_TYPE = {"Resize": {1, 2}, "Upsample": {1}}
# Stages that are keypoint math from end to end (MLPs from keypoints to keypoint deltas): FP32 in FP16 exports,
# like the stages marked ``fp32_only`` (audio encoder; motion extractor, whose angle bins need FP32).
KEYPOINT_STAGES = frozenset({"stitching", "stitching_lip", "stitching_eye"})


def stage_in_fp16(spec) -> bool:
    """Whether an FP16 export converts the stage (a ``StageSpec``) to a mixed-precision graph."""
    return not spec.fp32_only and spec.name not in KEYPOINT_STAGES


@dataclass(frozen=True)
class Fp16Report:
    """What the conversion did: node counts per precision and the Casts it inserted."""

    fp16_nodes: int
    fp32_nodes: int
    casts_inserted: int
    fp32_ops: dict[str, int]

    def to_json(self) -> dict:
        return {"fp16_nodes": self.fp16_nodes, "fp32_nodes": self.fp32_nodes, "casts_inserted": self.casts_inserted,
                "fp32_ops": dict(sorted(self.fp32_ops.items()))}


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """``Constant`` nodes holding a tensor become initializers (one place for constant dtypes)."""
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _fold_initializer_identities(graph: onnx.GraphProto) -> None:
    """``Identity`` of an initializer (the tracer's shared weights) is replaced by the initializer itself, so the
    weight takes its consumer's precision instead of forming an FP32 island with a Cast per use."""
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    for node in keep:
        for j, x in enumerate(node.input):
            if x in alias:
                node.input[j] = alias[x]
    del graph.node[:]
    graph.node.extend(keep)


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    g = inferred.graph
    out = {v.name for v in list(g.input) + list(g.output) + list(g.value_info)
           if v.type.tensor_type.elem_type == FLOAT}
    out |= {t.name for t in g.initializer if t.data_type == FLOAT}
    return out


def _assign_fp32(graph: onnx.GraphProto, floats: set[str], fp32_inputs: set[str]) -> set[int]:
    """Indices of the nodes that stay FP32 (see the module docstring)."""
    nodes = list(graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            consumers.setdefault(name, []).append(i)
    fp32: set[int] = {i for i, n in enumerate(nodes) if n.op_type in ALWAYS_FP32}

    def walk_back(tensor: str) -> None:
        stack = [tensor]
        while stack:
            i = producer.get(stack.pop())
            if i is None or nodes[i].op_type not in LIGHT_OPS:
                continue
            if i in fp32 and nodes[i].op_type not in ALWAYS_FP32:
                continue
            fp32.add(i)
            stack.extend(x for x in nodes[i].input if x in floats)

    for n in nodes:
        if n.op_type != "GridSample":
            continue
        walk_back(n.input[1])
        for c in consumers.get(n.output[0], []):  # decomposed form: the blend weights of the two samples
            if nodes[c].op_type in ("Mul", "Add", "Sub"):
                for other in nodes[c].input:
                    if other != n.output[0] and other in floats:
                        walk_back(other)

    # Forward: light ops fed only by FP32 sources stay FP32 (nodes are in topological order).
    initializers = {t.name for t in graph.initializer}
    fp32_tensors = set(fp32_inputs)
    for i, n in enumerate(nodes):
        float_inputs = [x for x in n.input if x in floats and x not in initializers]
        if i not in fp32 and n.op_type in LIGHT_OPS and all(x in fp32_tensors for x in float_inputs):
            fp32.add(i)  # also nodes with no float input at all: computed constants, Cast of integers
        if i in fp32:
            fp32_tensors.update(o for o in n.output if o in floats)
    return fp32


def convert_to_fp16(model: onnx.ModelProto, *, fp32_inputs: set[str] | None = None) -> tuple[onnx.ModelProto, Fp16Report]:
    """The mixed-precision FP16 version of the FP32 ``model`` (a new model; ``model`` is left unchanged).

    ``fp32_inputs``: graph inputs whose consumers count as FP32 sources (keypoints); default all float inputs.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    _constants_to_initializers(graph)
    _fold_initializer_identities(graph)
    floats = _float_tensors(model)
    graph_inputs = {i.name for i in graph.input}
    if fp32_inputs is None:
        fp32_inputs = {name for name in graph_inputs if name in floats}
    fp32 = _assign_fp32(graph, floats, fp32_inputs)
    nodes = list(graph.node)

    # The dtype each float tensor will have: FP16 where a FP16 node produces it.
    dtype: dict[str, int] = {name: FLOAT for name in floats}
    for i, n in enumerate(nodes):
        if i not in fp32:
            for o in n.output:
                if o in floats:
                    dtype[o] = FLOAT16

    # Initializers: stored FP16 if every converting consumer is FP16, else FP32 (plus a FP16 copy if needed).
    inits = {t.name: t for t in graph.initializer if t.data_type == FLOAT}
    wants: dict[str, set[int]] = {}
    for i, n in enumerate(nodes):
        keep = _KEEP_INPUT_TYPE.get(n.op_type, set())
        for j, x in enumerate(n.input):
            if x in inits and j not in keep:
                wants.setdefault(x, set()).add(FLOAT if i in fp32 else FLOAT16)
    fp16_copies: dict[str, str] = {}
    for name, targets in wants.items():
        if FLOAT16 in targets:
            array = numpy_helper.to_array(inits[name])
            array16 = np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16)
            if targets == {FLOAT16}:
                inits[name].CopyFrom(numpy_helper.from_array(array16, name))
                dtype[name] = FLOAT16
            else:
                copy = numpy_helper.from_array(array16, f"{name}__fp16")
                graph.initializer.append(copy)
                fp16_copies[name] = copy.name

    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def cast(tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in casts:
            out = f"{tensor}__to_{'fp16' if to == FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [tensor], [out], to=to, name=f"{out}__cast"))
            casts[key] = out
        return casts[key]

    fp32_ops: dict[str, int] = {}
    for i, n in enumerate(nodes):
        want = FLOAT if i in fp32 else FLOAT16
        if i in fp32:
            fp32_ops[n.op_type] = fp32_ops.get(n.op_type, 0) + 1
        keep = _KEEP_INPUT_TYPE.get(n.op_type, set())
        for j, x in enumerate(n.input):
            if x not in floats or j in keep or x not in dtype:
                continue
            if want == FLOAT16 and x in fp16_copies:
                n.input[j] = fp16_copies[x]
            elif dtype[x] != want:
                n.input[j] = cast(x, want)
        if want == FLOAT16:
            for a in n.attribute:
                if n.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                    a.i = FLOAT16
        new_nodes.append(n)

    # Graph outputs keep FP32: the FP16 producer writes a renamed tensor, a Cast restores the name.
    for out in graph.output:
        if dtype.get(out.name) == FLOAT16:
            inner = f"{out.name}__fp16"
            for n in new_nodes:
                for k, o in enumerate(n.output):
                    if o == out.name:
                        n.output[k] = inner
                for k, x in enumerate(n.input):
                    if x == out.name:
                        n.input[k] = inner
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT, name=f"{out.name}__cast_out"))
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(inferred, full_check=True)
    report = Fp16Report(fp16_nodes=len(nodes) - len(fp32), fp32_nodes=len(fp32),
                        casts_inserted=len(casts) + sum(dtype.get(o.name) == FLOAT16 for o in graph.output),
                        fp32_ops=fp32_ops)
    return inferred, report


def write_fp16_graph(src: Path, dst: Path, *, fp32_inputs: set[str] | None = None) -> Fp16Report:
    """Convert the FP32 graph file ``src`` and write the FP16 graph to ``dst`` (metadata kept, ``precision=fp16``)."""
    model = onnx.load(str(src))
    converted, report = convert_to_fp16(model, fp32_inputs=fp32_inputs)
    props = {p.key: p.value for p in model.metadata_props}
    props["precision"] = "fp16"
    helper.set_model_props(converted, props)
    onnx.save(converted, str(dst))
    return report
