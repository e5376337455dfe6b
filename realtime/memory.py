"""The memory of a long-running server: the C allocator (glibc only; a no-op on other C
libraries) and Python's cyclic garbage collector.

glibc's malloc gives each thread that allocates an arena of its own (up to 8 per core), and keeps
memory freed inside an arena for reuse instead of returning it to the system, so RSS holds the
high-water mark of every arena. Two glibc interfaces, called through ctypes:

* ``limit_arenas(n)``: ``mallopt(M_ARENA_MAX, n)``, before the server starts its threads, so that
  all threads share ``n`` arenas;
* ``release_free_memory()``: ``malloc_trim(0)``, which hands the free pages of every arena back to
  the system (``madvise``).

A closed WebRTC peer (aiortc) is a web of reference cycles: only a full (generation 2) collection
frees it, and CPython's own schedule ran one only after ~20 closed peers (~3.5 MB each) had piled
up, each scanning the server's ~300k objects (~150 ms on 2 cores, the event loop held). So:

* ``freeze_startup_objects()``, once after start-up, moves the start-up objects (modules,
  functions, the engine) out of the collector's sight (``gc.freeze``): a full collection then
  scans only what was made since (~15-20k objects);
* after a session or viewer has ended, the session registry runs one full collection (on the
  event loop thread: finalizers may touch the loop) and then ``release_free_memory`` (in a
  worker thread).
Measurements: docs/server.md, "Soak".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import platform

M_ARENA_MAX = -8  # glibc malloc.h


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """glibc's handle, or None on another C library (musl, macOS, Windows)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def available() -> bool:
    """True where these settings take effect (glibc)."""
    return _glibc() is not None


def limit_arenas(n: int) -> bool:
    """Let all threads share at most ``n`` (>= 1) malloc arenas; True if set. Call it before
    threads start: arenas already created stay."""
    if n < 1:
        raise ValueError(f"the arena limit must be at least 1, got {n}")
    libc = _glibc()
    return libc is not None and libc.mallopt(M_ARENA_MAX, n) == 1


def release_free_memory() -> bool:
    """Return the free pages of every malloc arena to the system; True if any was returned."""
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1


def startup_frozen() -> bool:
    """True once start-up objects are frozen out of the cyclic collector's sight (``avatar serve``):
    a full collection then scans only what came after and is cheap enough to run on the event loop.
    In a process that embeds the server (tests, an in-process Pipecat pipeline) nothing is frozen,
    and a full collection scans the host's every object (~130 ms with torch loaded)."""
    return gc.get_freeze_count() > 0


def freeze_startup_objects() -> int:
    """Collect, then move every object alive now out of the cyclic collector's sight (for good),
    and reset its long-lived count so full collections size themselves to what came after.
    Call it once, after start-up; returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    gc.collect()  # scans nothing frozen; the long-lived count starts again from the survivors
    return gc.get_freeze_count()
