"""The FP16-build rule that keeps grid coordinates FP32, on a stand-in for the TensorRT network API.

The real builder path runs in test_tensorrt.py where TensorRT exists; this checks the graph walk everywhere:
GridSample layers and the coordinate arithmetic feeding their grids (and blend weights) are pinned,
convolutions and everything behind them are not, and integer shape arithmetic gets no precision.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="torch not installed (pip install -e .[neural])")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e .[neural,cpu])")

import enum
from types import SimpleNamespace

from avatarstream.export.tensorrt_build import keep_grid_coordinates_fp32

LayerType = enum.Enum("LayerType", "CONVOLUTION ELEMENTWISE SHUFFLE SOFTMAX REDUCE CONSTANT GRID_SAMPLE SHAPE CONCATENATION")
FAKE_TRT = SimpleNamespace(LayerType=LayerType, float32="float32", float16="float16", int64="int64")


class Tensor:
    def __init__(self, name: str, dtype: str = "float32") -> None:
        self.name, self.dtype = name, dtype


class Layer:
    def __init__(self, name: str, kind: str, inputs: list, outputs: list) -> None:
        self.name, self.type = name, LayerType[kind]
        self._inputs, self._outputs = inputs, outputs
        self.precision = None
        self.output_types: dict[int, str] = {}

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, i):
        return self._inputs[i]

    def get_output(self, i):
        return self._outputs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class Network:
    def __init__(self, layers) -> None:
        self.layers = layers

    num_layers = property(lambda self: len(self.layers))

    def get_layer(self, i):
        return self.layers[i]


def test_pins_coordinate_path_only():
    t = {n: Tensor(n) for n in ["img", "feat", "logits", "mask", "kp", "ident", "motion", "weighted", "grid", "volume",
                                "sampled", "shape", "wz", "blended"]}
    t["shape"].dtype = "int64"
    layers = [
        Layer("conv_feat", "CONVOLUTION", [t["img"]], [t["feat"]]),
        Layer("conv_mask", "CONVOLUTION", [t["feat"]], [t["logits"]]),
        Layer("softmax", "SOFTMAX", [t["logits"]], [t["mask"]]),
        Layer("identity_grid", "CONSTANT", [], [t["ident"]]),
        Layer("shift", "ELEMENTWISE", [t["ident"], t["kp"]], [t["motion"]]),
        Layer("mix", "ELEMENTWISE", [t["motion"], t["mask"]], [t["weighted"]]),
        Layer("sum", "REDUCE", [t["weighted"]], [t["grid"]]),
        Layer("shape_of", "SHAPE", [t["feat"]], [t["shape"]]),
        Layer("to_volume", "SHUFFLE", [t["feat"], t["shape"]], [t["volume"]]),
        Layer("sample", "GRID_SAMPLE", [t["volume"], t["grid"]], [t["sampled"]]),
        Layer("depth_weight", "ELEMENTWISE", [t["motion"], t["ident"]], [t["wz"]]),
        Layer("blend", "ELEMENTWISE", [t["sampled"], t["wz"]], [t["blended"]]),
    ]
    count = keep_grid_coordinates_fp32(FAKE_TRT, Network(layers))
    pinned = {layer.name for layer in layers if layer.precision == "float32"}
    assert pinned == {"sample", "softmax", "identity_grid", "shift", "mix", "sum", "depth_weight"}
    assert all(layer.output_types == {0: "float32"} for layer in layers if layer.name in pinned)
    assert {"conv_feat", "conv_mask", "to_volume", "shape_of", "blend"}.isdisjoint(pinned)
    assert count == len(pinned)


def test_no_grid_sample_pins_nothing():
    a, b = Tensor("a"), Tensor("b")
    layers = [Layer("conv", "CONVOLUTION", [a], [b])]
    assert keep_grid_coordinates_fp32(FAKE_TRT, Network(layers)) == 0
    assert layers[0].precision is None
