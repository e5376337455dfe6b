"""Count the host <-> device traffic a torch code path would cause on a GPU, while it runs on the CPU.

On a CPU every tensor is a host tensor, so nothing syncs; what the code *asks for* is the same on both. This shim
follows the tensors that would live on the accelerator and counts, by call site, what would cross:

* **device tensors**: the parameters and buffers of the modules given to ``HostTransfers(modules)``, the results of
  factories called with ``device=`` (``torch.zeros(..., device=dev)``), of ``x.to(dev)`` / ``x.cuda()``, and of
  every op that takes a device tensor (tags propagate through a ``TorchFunctionMode``);
* **syncs** (device -> host, the host waits for the device): ``.cpu()``, ``.numpy()``, ``.item()``, ``.tolist()``,
  ``float()`` / ``int()`` / ``bool()`` of a device tensor, ``nonzero``, and ``torch.cuda.synchronize``,
  ``Event.synchronize`` / ``elapsed_time`` / ``Stream.synchronize`` (patched: they count, and never run here);
* **uploads** (host -> device): ``torch.tensor`` / ``torch.as_tensor`` / ``torch.asarray`` with ``device=``,
  ``x.to(dev)`` / ``x.cuda()`` of a host tensor, ``dst.copy_(src)`` of a host ``src`` into a device ``dst``;
  ``non_blocking=True`` ones are counted apart (``uploads_async``: from pinned memory they do not stall the host).

Blind spots, stated: ``x.to("cpu")`` of a device tensor reads as device -> device here (the product code uses
``.cpu()`` for downloads; ``test_host_syncs`` greps for the other spelling); a wait inside an aten op is not seen
(an output size that depends on the data: boolean-mask indexing, ``repeat_interleave`` with a tensor of repeats,
``unique``: the hot path uses none of them, and ``nonzero`` is counted); a tensor's size/shape is host metadata (no
traffic), as on CUDA. Torch function modes are per thread: ``enter_in`` wraps a worker thread's
entry point so the shared render and motion workers are counted too.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
from typing import Any, Callable, Iterable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

SYNC_METHODS = {"cpu", "numpy", "item", "tolist", "__float__", "__int__", "__bool__", "__index__", "nonzero"}
UPLOAD_FACTORIES = {"tensor", "as_tensor", "asarray"}
SITE_ROOTS = ("/engines/", "/bench/", "/realtime/")  # call sites are named by the first frame in the product


class HostTransfers:
    def __init__(self, modules: Iterable[torch.nn.Module] = ()) -> None:
        self._device = WeakTensorKeyDictionary()
        self._lock = threading.Lock()
        self.counting = False
        self.syncs: collections.Counter[str] = collections.Counter()
        self.uploads: collections.Counter[str] = collections.Counter()
        self.uploads_async: collections.Counter[str] = collections.Counter()
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                self.mark(t)

    # -- tags ------------------------------------------------------------------------------------

    def mark(self, t: Any) -> None:
        if isinstance(t, torch.Tensor):
            with self._lock:
                self._device[t] = True

    def on_device(self, t: Any) -> bool:
        if not isinstance(t, torch.Tensor):
            return False
        with self._lock:
            return t in self._device

    # -- counts ----------------------------------------------------------------------------------

    @staticmethod
    def _site() -> str:
        f = sys._getframe(2)
        while f is not None:
            name = f.f_code.co_filename
            if any(root in name for root in SITE_ROOTS) and not name.endswith(("host_transfers.py", "device_work.py")):
                return f"{name.rsplit('/', 2)[-2]}/{name.rsplit('/', 1)[-1]}:{f.f_code.co_name}"
            f = f.f_back
        return "?"

    def count(self, kind: str, non_blocking: bool = False) -> None:
        if not self.counting:
            return
        site = self._site()
        with self._lock:
            if kind == "sync":
                self.syncs[site] += 1
            elif non_blocking:
                self.uploads_async[site] += 1
            else:
                self.uploads[site] += 1

    def reset(self) -> None:
        self.syncs.clear()
        self.uploads.clear()
        self.uploads_async.clear()

    def totals(self) -> dict[str, int]:
        return {"syncs": sum(self.syncs.values()), "uploads": sum(self.uploads.values()),
                "uploads_async": sum(self.uploads_async.values())}

    def report(self) -> dict[str, dict[str, int]]:
        return {"syncs": dict(self.syncs), "uploads": dict(self.uploads), "uploads_async": dict(self.uploads_async)}

    # -- installing --------------------------------------------------------------------------------

    def mode(self) -> "_Mode":
        return _Mode(self)

    def enter_in(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` run under this counter's mode (for another thread's entry point)."""
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self.mode():
                return fn(*args, **kwargs)
        return wrapped

    @contextlib.contextmanager
    def installed(self):
        """The mode in this thread, and torch.cuda's explicit waits patched to count (they never run on a CPU)."""
        def counted(*_a: Any, **_k: Any) -> None:
            self.count("sync")

        def elapsed(*_a: Any, **_k: Any) -> float:
            self.count("sync")
            return 0.0

        patches = [(torch.cuda, "synchronize", counted), (torch.cuda.Event, "synchronize", counted),
                   (torch.cuda.Event, "elapsed_time", elapsed), (torch.cuda.Stream, "synchronize", counted)]
        saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
        for obj, name, fn in patches:
            setattr(obj, name, fn)
        try:
            with self.mode():
                yield self
        finally:
            for obj, name, fn in saved:
                setattr(obj, name, fn)


def _device_arg(args: tuple, kwargs: dict) -> bool:
    """Does a ``.to(...)`` call name a device (not only a dtype)?"""
    if "device" in kwargs and kwargs["device"] is not None:
        return True
    for a in args[1:]:
        if isinstance(a, (torch.device, str)):
            return True
        if isinstance(a, torch.Tensor):  # x.to(other): other's device
            return True
    return False


class _Mode(TorchFunctionMode):
    def __init__(self, counter: HostTransfers) -> None:
        super().__init__()
        self.c = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        c = self.c
        name = getattr(func, "__name__", "")
        flat, _ = tree_flatten((args, kwargs))
        from_device = any(c.on_device(t) for t in flat)
        out = func(*args, **kwargs)
        if name in SYNC_METHODS and args and c.on_device(args[0]):
            c.count("sync")
            # a host value; on a CPU ``.cpu()`` returns the tensor itself, on a GPU a new host tensor: so here too
            return out.clone() if out is args[0] else out
        non_blocking = bool(kwargs.get("non_blocking", False))
        if name in ("to", "cuda") and args and isinstance(args[0], torch.Tensor):
            if name == "cuda" or _device_arg(args, kwargs):
                if not c.on_device(args[0]):
                    c.count("upload", non_blocking)
                    if out is args[0]:  # on a GPU the upload is a new tensor; the host one stays a host tensor
                        out = out.clone()
                c.mark(out)
            elif from_device:
                c.mark(out)
            return out
        if name in UPLOAD_FACTORIES and kwargs.get("device") is not None:
            c.count("upload", non_blocking)
            c.mark(out)
            return out
        if name == "copy_" and len(args) >= 2 and c.on_device(args[0]) and not c.on_device(args[1]):
            c.count("upload", non_blocking or (len(args) > 2 and bool(args[2])))
            return out
        # a factory with device= allocates there, unless it draws from a (host) generator: step noise, x_T
        if from_device or (kwargs.get("device") is not None and kwargs.get("generator") is None):
            for t in tree_flatten(out)[0]:
                c.mark(t)
        return out
