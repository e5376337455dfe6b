"""One ``StageRuntime`` interface for every neural stage, with torch, onnxruntime and TensorRT implementations.

A runtime takes named torch tensors and returns named torch tensors on its device, so stages chain without
host round trips: on CUDA the onnxruntime runtime binds torch memory directly (I/O binding) and the TensorRT
runtime owns preallocated device buffers (sized for the profile's largest shapes) and one execution context plus
one captured CUDA graph per input-shape set.

One engine instance serves every session, each from its own thread, so a runtime is shared: every ``run``
returns tensors that belong to the caller (never views of a buffer the next call overwrites), and the shared
state (I/O binding, TensorRT contexts and buffers) is used under a per-runtime lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
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
    """Runs one exported stage. ``run`` is safe to call from several threads and returns tensors the caller owns."""

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
    """onnxruntime with I/O binding to torch memory (no host copies on CUDA) or, on CPU, plain ``session.run``.

    One instance may serve several threads (one engine serves every session): the I/O binding is shared state,
    so binding, running and reading it happen under one lock, and every call returns freshly allocated outputs.
    """

    backend = "onnxruntime"

    def __init__(self, onnx_path: Path, *, device: str = "cpu", threads: int | None = None,
                 io_binding: bool | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineError("onnxruntime not installed: pip install '.[neural,cpu]' (onnxruntime) or '.[neural,gpu]' "
                              "(onnxruntime-gpu), never both") from exc
        self.device = device
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        on_cuda = device.startswith("cuda")
        if on_cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineError("onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
            self.device_id = torch.device(device).index or 0
            providers = [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        else:
            self.device_id = 0
            providers = ["CPUExecutionProvider"]
        self._ort_device = "cuda" if on_cuda else "cpu"
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self._output_types = {o.name: _ORT_TO_TORCH.get(o.type, torch.float32) for o in self.session.get_outputs()}
        self._output_shapes: dict[tuple, list[tuple[int, ...]]] = {}
        self._binding = self.session.io_binding() if (on_cuda if io_binding is None else io_binding) else None
        self._lock = threading.Lock()  # guards the shared I/O binding and the learned output shapes

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _check_inputs(self.input_names, inputs)
        if self._binding is None:  # session.run is thread-safe and returns new arrays
            feed = {n: np.ascontiguousarray(inputs[n].detach().cpu().numpy()) for n in self.input_names}
            outs = self.session.run(list(self.output_names), feed)
            return {n: torch.from_numpy(o) for n, o in zip(self.output_names, outs)}
        tensors = [inputs[n].detach().to(self.device).contiguous() for n in self.input_names]
        with self._lock:
            return self._run_bound(tensors)

    def _run_bound(self, tensors: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        binding, where = self._binding, self._ort_device
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, t in zip(self.input_names, tensors):
            binding.bind_input(name, where, self.device_id, _numpy_dtype(t.dtype), tuple(t.shape), t.data_ptr())
        key = tuple(tuple(t.shape) for t in tensors)
        if key not in self._output_shapes:  # first call with these shapes: let ORT allocate, learn output shapes
            for name in self.output_names:
                binding.bind_output(name, where, self.device_id)
            self.session.run_with_iobinding(binding)
            self._output_shapes[key] = [tuple(v.shape()) for v in binding.get_outputs()]
            binding.clear_binding_outputs()
        outs = {
            n: torch.empty(s, dtype=self._output_types[n], device=self.device)
            for n, s in zip(self.output_names, self._output_shapes[key])
        }
        for name, t in outs.items():
            binding.bind_output(name, where, self.device_id, _numpy_dtype(t.dtype), tuple(t.shape), t.data_ptr())
        if where == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(binding)
        return outs


def _numpy_dtype(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32,
            torch.bool: np.bool_, torch.float64: np.float64}[dtype]


MAX_CACHED_SHAPE_SETS = 4  # execution contexts (each with its CUDA graph) kept per TensorRT engine


class _ShapeSet:
    """One execution context fixed to one input-shape set, with its CUDA graph once captured."""

    def __init__(self, context, shapes: tuple) -> None:
        self.context = context
        self.shapes = shapes
        self.graph: "torch.cuda.CUDAGraph | None" = None
        self.graph_refused = False


class TensorRTRuntime:
    """A deserialised TensorRT engine with preallocated device buffers and one CUDA graph per input-shape set.

    Each input-shape set gets its own execution context (bounded, least recently used dropped), so a captured
    graph never replays with another shape set's host-side state (JoyVASA renders batches of 8 then 2: both
    graphs stay captured). Everything runs on the runtime's device (``cuda:1`` runs on GPU 1). Calls from
    several threads are serialised by a lock and return copies of the output buffers, never views of them.
    """

    backend = "tensorrt"

    def __init__(self, engine_path: Path, *, device: str = "cuda", use_cuda_graph: bool = True,
                 max_shape_sets: int = MAX_CACHED_SHAPE_SETS) -> None:
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise EngineError("no CUDA GPU: the TensorRT runtime needs one")
        self.trt = trt
        self.device = device if device.startswith("cuda") else "cuda"
        self.torch_device = torch.device(self.device)
        if self.torch_device.index is None:
            self.torch_device = torch.device("cuda", torch.cuda.current_device())
        self.use_cuda_graph = use_cuda_graph
        self.max_shape_sets = max(1, max_shape_sets)
        self._lock = threading.Lock()
        self._shape_sets: "OrderedDict[tuple, _ShapeSet]" = OrderedDict()
        self.captures = 0  # CUDA graphs captured so far (one per shape set)
        with torch.cuda.device(self.torch_device):
            self.logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self.logger)
            if self._runtime is None:
                raise EngineError("TensorRT could not create a runtime (driver / CUDA mismatch?)")
            self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise EngineError(f"cannot load TensorRT engine {engine_path} (built by another TensorRT version or GPU?)")
            self.stream = torch.cuda.Stream(device=self.torch_device)
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
            self.input_names = tuple(n for n in names if is_input[n])
            self.output_names = tuple(n for n in names if not is_input[n])
            # Size every buffer once for the largest shapes of optimisation profile 0 (a probe context).
            probe = self._new_context()
            self.max_shapes: dict[str, tuple[int, ...]] = {}
            for name in self.input_names:
                shape = tuple(self.engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[2])
                self.max_shapes[name] = shape
                if not probe.set_input_shape(name, shape):
                    raise EngineError(f"TensorRT refused the profile maximum {shape} for {name}")
            self.buffers: dict[str, torch.Tensor] = {}
            for name in names:
                shape = tuple(probe.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise EngineError(f"TensorRT cannot size {name} ({shape}) from the profile maximum")
                dtype = trt_to_torch_dtype(trt, self.engine.get_tensor_dtype(name))
                self.buffers[name] = torch.empty(shape, dtype=dtype, device=self.torch_device)
            del probe

    def _new_context(self):
        context = self.engine.create_execution_context()
        if context is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
        return context

    def input_buffer(self, name: str, shape: Sequence[int]) -> torch.Tensor:
        """A view of the preallocated input buffer with ``shape`` (the profile bounds it)."""
        buf = self.buffers[name]
        n = int(np.prod(shape))
        if n > buf.numel():
            raise EngineError(f"{name} shape {tuple(shape)} exceeds the engine profile maximum {tuple(buf.shape)}")
        return buf.view(-1)[:n].view(*shape)

    def _shape_set(self, shapes: tuple) -> _ShapeSet:
        entry = self._shape_sets.get(shapes)
        if entry is not None:
            self._shape_sets.move_to_end(shapes)
            return entry
        for name, shape in zip(self.input_names, shapes):
            self.input_buffer(name, shape)  # bounds check with a clear message
        context = self._new_context()
        for name, shape in zip(self.input_names, shapes):
            if not context.set_input_shape(name, shape):
                raise EngineError(f"shape {shape} of {name} is outside the engine's optimisation profile")
        for name, buf in self.buffers.items():
            if not context.set_tensor_address(name, buf.data_ptr()):
                raise EngineError(f"TensorRT refused the buffer address of {name}")
        entry = _ShapeSet(context, shapes)
        self._shape_sets[shapes] = entry
        while len(self._shape_sets) > self.max_shape_sets:
            self._shape_sets.popitem(last=False)
        return entry

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _check_inputs(self.input_names, inputs)
        shapes = tuple(tuple(int(d) for d in inputs[n].shape) for n in self.input_names)
        with self._lock, torch.cuda.device(self.torch_device):
            entry = self._shape_set(shapes)
            caller = torch.cuda.current_stream(self.torch_device)
            self.stream.wait_stream(caller)
            with torch.cuda.stream(self.stream):
                for name, shape in zip(self.input_names, shapes):
                    self.input_buffer(name, shape).copy_(inputs[name], non_blocking=True)
                self._execute(entry)
                out = {}
                for name in self.output_names:
                    shape = tuple(entry.context.get_tensor_shape(name))
                    out[name] = self.buffers[name].view(-1)[: int(np.prod(shape))].view(*shape).clone()
            caller.wait_stream(self.stream)
            for t in out.values():
                t.record_stream(caller)
            return out

    def _execute(self, entry: _ShapeSet) -> None:
        if entry.graph is not None:
            entry.graph.replay()
            return
        if not entry.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError("TensorRT execution failed (execute_async_v3 returned False; see the TensorRT log)")
        if self.use_cuda_graph and not entry.graph_refused:
            entry.graph = self._capture(entry)
            entry.graph_refused = entry.graph is None

    def _capture(self, entry: _ShapeSet) -> "torch.cuda.CUDAGraph | None":
        """Capture one enqueue of ``entry`` (after its warm-up enqueue); None where TensorRT refuses or fails."""
        graph = torch.cuda.CUDAGraph()
        ok = False
        try:
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                ok = bool(entry.context.execute_async_v3(self.stream.cuda_stream))
        except RuntimeError:
            return None
        if not ok:  # an empty graph would replay nothing and leave stale outputs
            return None
        self.captures += 1
        return graph  # the warm-up enqueue before capture already filled this call's outputs


def trt_to_torch_dtype(trt, dtype) -> torch.dtype:
    """TensorRT ``DataType`` -> torch dtype (``trt.bfloat16``, ``trt.int64``... where the version has them)."""
    table = {}
    for name, td in (("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16),
                     ("int32", torch.int32), ("int64", torch.int64), ("int8", torch.int8), ("uint8", torch.uint8),
                     ("bool", torch.bool)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = td
    if dtype not in table:
        raise EngineError(f"TensorRT tensor type {dtype} has no torch equivalent here")
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
