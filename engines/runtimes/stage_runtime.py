"""One ``StageRuntime`` interface for every neural stage, with torch, onnxruntime and TensorRT implementations.

A runtime takes named torch tensors and returns named torch tensors on its device, so stages chain without
host round trips: on CUDA the onnxruntime runtime binds torch memory directly (I/O binding) and the TensorRT
runtime owns preallocated device buffers (sized for the profile's largest shapes) whose addresses are set once;
a caller can write the next stage's inputs straight into :meth:`TensorRTRuntime.input_buffer`. The TensorRT
runtime captures the current input-shape set into a CUDA graph and replays it until the shapes change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from avatarstream.engines.base import EngineError

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def import_tensorrt():
    """The ``tensorrt`` module, imported on first use (it needs an NVIDIA GPU and driver)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineError("tensorrt not installed (pip install tensorrt; needs an NVIDIA GPU and driver)") from exc
    return trt


@runtime_checkable
class StageRuntime(Protocol):
    """Runs one exported stage. ``run`` returns tensors owned by the runtime until its next call."""

    backend: str
    device: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ...


def _check_inputs(names: Sequence[str], inputs: Mapping[str, torch.Tensor]) -> None:
    missing = [n for n in names if n not in inputs]
    if missing:
        raise EngineError(f"missing stage inputs {missing}; expected {list(names)}")


class TorchRuntime:
    """Eager PyTorch: ``module(*inputs)`` under ``no_grad``; the module returns a tensor or a tuple in output order."""

    backend = "torch"

    def __init__(self, module: torch.nn.Module, input_names: Sequence[str], output_names: Sequence[str], *,
                 device: str = "cpu", fp16: bool = False) -> None:
        self.device = device
        self.input_names, self.output_names = tuple(input_names), tuple(output_names)
        self.fp16 = fp16
        self.module = module.eval().to(device)

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _check_inputs(self.input_names, inputs)
        args = [inputs[n].to(self.device) for n in self.input_names]
        with torch.inference_mode(), torch.autocast(
            device_type=torch.device(self.device).type, dtype=torch.float16, enabled=self.fp16
        ):
            out = self.module(*args)
        outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        return {n: o.float() if self.fp16 else o for n, o in zip(self.output_names, outs)}


_ORT_TO_TORCH = {
    "tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(int64)": torch.int64,
    "tensor(int32)": torch.int32, "tensor(bool)": torch.bool, "tensor(double)": torch.float64,
}


class OnnxRuntime:
    """onnxruntime on CPU, or on CUDA with I/O binding to torch CUDA memory (no host copies)."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: Path, *, device: str = "cpu", threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineError("onnxruntime not installed (pip install onnxruntime, or onnxruntime-gpu)") from exc
        self.device = device
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineError("onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
            self.device_id = torch.device(device).index or 0
            providers = [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self._output_types = {o.name: _ORT_TO_TORCH.get(o.type, torch.float32) for o in self.session.get_outputs()}
        self._output_shapes: dict[tuple, list[tuple[int, ...]]] = {}
        self._binding = self.session.io_binding() if device.startswith("cuda") else None

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _check_inputs(self.input_names, inputs)
        if self._binding is None:
            feed = {n: np.ascontiguousarray(inputs[n].detach().cpu().numpy()) for n in self.input_names}
            outs = self.session.run(list(self.output_names), feed)
            return {n: torch.from_numpy(o) for n, o in zip(self.output_names, outs)}
        return self._run_bound(inputs)

    def _run_bound(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        tensors = [inputs[n].to(self.device).contiguous() for n in self.input_names]
        for name, t in zip(self.input_names, tensors):
            binding.bind_input(name, "cuda", self.device_id, _numpy_dtype(t.dtype), tuple(t.shape), t.data_ptr())
        key = tuple(tuple(t.shape) for t in tensors)
        if key not in self._output_shapes:  # first call with these shapes: let ORT allocate, learn output shapes
            for name in self.output_names:
                binding.bind_output(name, "cuda", self.device_id)
            self.session.run_with_iobinding(binding)
            self._output_shapes[key] = [tuple(v.shape()) for v in binding.get_outputs()]
            binding.clear_binding_outputs()
        outs = {
            n: torch.empty(s, dtype=self._output_types[n], device=self.device)
            for n, s in zip(self.output_names, self._output_shapes[key])
        }
        for name, t in outs.items():
            binding.bind_output(name, "cuda", self.device_id, _numpy_dtype(t.dtype), tuple(t.shape), t.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(binding)
        return outs


def _numpy_dtype(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32,
            torch.bool: np.bool_, torch.float64: np.float64}[dtype]


class TensorRTRuntime:
    """A deserialised TensorRT engine with preallocated device buffers and CUDA-graph replay per shape set."""

    backend = "tensorrt"

    def __init__(self, engine_path: Path, *, device: str = "cuda", use_cuda_graph: bool = True) -> None:
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise EngineError("no CUDA GPU: the TensorRT runtime needs one")
        self.trt = trt
        self.device = device if device.startswith("cuda") else "cuda"
        self.torch_device = torch.device(self.device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise EngineError(f"cannot load TensorRT engine {engine_path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.torch_device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = tuple(n for n in names if is_input[n])
        self.output_names = tuple(n for n in names if not is_input[n])
        self.use_cuda_graph = use_cuda_graph
        self._graphs: dict[tuple, torch.cuda.CUDAGraph | None] = {}
        self._current: tuple | None = None

        # Size every buffer once for the largest shapes of optimisation profile 0.
        for name in self.input_names:
            shape = tuple(self.engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[2])
            self.context.set_input_shape(name, shape)
        self.buffers: dict[str, torch.Tensor] = {}
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = _trt_to_torch(trt, self.engine.get_tensor_dtype(name))
            self.buffers[name] = torch.empty(shape, dtype=dtype, device=self.torch_device)
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())

    def input_buffer(self, name: str, shape: Sequence[int]) -> torch.Tensor:
        """A view of the preallocated input buffer with ``shape``; writing into it avoids the input copy."""
        buf = self.buffers[name]
        n = int(np.prod(shape))
        if n > buf.numel():
            raise EngineError(f"{name} shape {tuple(shape)} exceeds the engine profile maximum {tuple(buf.shape)}")
        return buf.view(-1)[:n].view(*shape)

    def _set_shapes(self, shapes: tuple) -> None:
        if shapes == self._current:
            return
        for name, shape in zip(self.input_names, shapes):
            if not self.context.set_input_shape(name, shape):
                raise EngineError(f"shape {shape} of {name} is outside the engine's optimisation profile")
        self._current = shapes
        # A captured graph may hold host-staged shape data of the context; keep graphs of the current shapes only.
        self._graphs.clear()

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _check_inputs(self.input_names, inputs)
        shapes = tuple(tuple(inputs[n].shape) for n in self.input_names)
        self._set_shapes(shapes)
        caller = torch.cuda.current_stream(self.torch_device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            for name, shape in zip(self.input_names, shapes):
                view = self.input_buffer(name, shape)
                src = inputs[name]
                if src.data_ptr() != view.data_ptr():
                    view.copy_(src, non_blocking=True)
            self._execute(shapes)
        caller.wait_stream(self.stream)
        out = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out[name] = self.buffers[name].view(-1)[: int(np.prod(shape))].view(*shape)
        return out

    def _execute(self, shapes: tuple) -> None:
        graph = self._graphs.get(shapes)
        if graph is not None:
            graph.replay()
            return
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError("TensorRT execution failed")
        if self.use_cuda_graph and shapes not in self._graphs:
            self._graphs[shapes] = self._capture()

    def _capture(self) -> torch.cuda.CUDAGraph | None:
        """Capture one enqueue (after a warm-up enqueue with the same shapes); None where TensorRT refuses."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                self.context.execute_async_v3(self.stream.cuda_stream)
        except RuntimeError:
            return None
        return graph  # the warm-up enqueue before capture already filled this call's outputs


def _trt_to_torch(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
             trt.bool: torch.bool}
    for name, td in (("int64", torch.int64), ("bf16", torch.bfloat16), ("uint8", torch.uint8)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = td
    return table[dtype]


def open_runtime(
    backend: str,
    *,
    device: str = "cpu",
    module_factory: Callable[[], torch.nn.Module] | None = None,
    input_names: Sequence[str] = (),
    output_names: Sequence[str] = (),
    onnx_path: Path | None = None,
    engine_path: Path | None = None,
    fp16: bool = False,
    threads: int | None = None,
) -> StageRuntime:
    """The runtime for one stage on ``backend`` (``torch``, ``onnxruntime`` or ``tensorrt``)."""
    if backend == "torch":
        if module_factory is None:
            raise EngineError("the torch backend needs the stage's network")
        return TorchRuntime(module_factory(), input_names, output_names, device=device, fp16=fp16)
    if backend == "onnxruntime":
        if onnx_path is None or not Path(onnx_path).exists():
            raise EngineError(f"no ONNX graph at {onnx_path}; run 'avatar export' first")
        return OnnxRuntime(onnx_path, device=device, threads=threads)
    if backend == "tensorrt":
        if engine_path is None or not Path(engine_path).exists():
            raise EngineError(f"no TensorRT engine at {engine_path}; run 'avatar export --backend tensorrt' first")
        return TensorRTRuntime(engine_path, device=device)
    raise EngineError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
