"""The C allocator settings of a long-running server (realtime/memory.py): freed memory held in
malloc arenas goes back to the system with ``release_free_memory``, and the session registry
does that after a session or a viewer has been torn down, and only then."""

from __future__ import annotations

import asyncio
import gc
import platform
import threading
import weakref

import numpy as np
import psutil
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from avatarstream.cli import build_parser
from avatarstream.engines.base import Portrait
from avatarstream.realtime import memory
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.session.registry import SessionRegistry
from avatarstream.realtime.transports.base import ViewerState, ViewerStats

pytestmark = pytest.mark.timeout(60)
glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim and mallopt are glibc's")


@glibc
def test_release_free_memory_returns_the_holes_a_thread_left_in_its_arena():
    """What a churned session leaves: a thread allocates frame-sized buffers in its own arena and
    frees every other one. The freed holes sit between live blocks, so free() cannot return them;
    RSS keeps them until malloc_trim hands their pages back."""
    assert memory.available()
    kept: list[np.ndarray] = []

    def churn() -> None:
        blocks = [np.ones(100_000 // 8) for _ in range(400)]  # 100 KB: below the mmap threshold
        kept.extend(blocks[1::2])  # 200 holes of 100 KB between live blocks
        blocks.clear()

    t = threading.Thread(target=churn)
    t.start()
    t.join()
    me = psutil.Process()
    before = me.memory_info().rss
    memory.release_free_memory()
    after = me.memory_info().rss
    assert before - after > 10 * 2**20, (before, after)  # most of the 20 MB of holes went back
    assert sum(b.nbytes for b in kept) >= 19 * 10**6  # the live blocks stayed


@glibc
def test_arena_limit_is_set_and_validated():
    assert memory.limit_arenas(64)  # high enough to change nothing in this test process
    with pytest.raises(ValueError):
        memory.limit_arenas(0)


async def test_registry_releases_memory_after_a_teardown_and_only_then(bar_engine, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)
    registry = SessionRegistry(ServerConfig(), Portrait(np.full((128, 128, 3), 128, np.uint8)),
                               engine_loader=lambda name, **_: bar_engine)
    try:
        session = await registry.create(size=64)
        await registry.reap()
        assert calls == []  # nothing was torn down
        viewer = _Viewer()
        session.attach_viewer(viewer)
        session.detach_viewer(viewer)
        await registry.reap()
        assert calls == [1]  # a viewer left
        await registry.reap()
        assert calls == [1]  # nothing new
        await registry.close(session)
        await registry.reap()
        assert calls == [1, 1]  # a session ended
    finally:
        await registry.stop()


async def test_a_closed_peer_is_freed_by_the_reaper_pass_after_a_viewer_leaves(bar_engine):
    """A closed aiortc peer connection is held by reference cycles: without the reaper's
    collection it waited for CPython's own full collection (in the soak, ~20 peers, ~70 MB)."""
    registry = SessionRegistry(ServerConfig(), Portrait(np.full((128, 128, 3), 128, np.uint8)),
                               engine_loader=lambda name, **_: bar_engine)
    gc.disable()  # no automatic collection may free it behind the test's back
    gc.freeze()  # as avatar serve does after start-up: the reaper collects only where that is cheap
    try:
        session = await registry.create(size=64)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        await pc.close()
        peer = weakref.ref(pc)
        del pc
        await asyncio.sleep(0.1)
        assert peer() is not None  # cycles: reference counting alone does not free it
        viewer = _Viewer()
        session.attach_viewer(viewer)
        session.detach_viewer(viewer)
        await registry.reap()
        assert peer() is None
    finally:
        gc.unfreeze()
        gc.enable()
        await registry.stop()


async def test_an_embedded_registry_leaves_collection_to_cpython(bar_engine, monkeypatch):
    """Without frozen start-up objects a full collection scans the host process's every object
    (~130 ms with torch loaded): the reaper must not hold the event loop for it, only trim."""
    collections: list[int] = []
    trims: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(1) or 0)
    monkeypatch.setattr(memory, "release_free_memory", lambda: trims.append(1) or True)
    for frozen, expected in ((False, []), (True, [1])):
        collections.clear()
        monkeypatch.setattr(memory, "startup_frozen", lambda frozen=frozen: frozen)
        registry = SessionRegistry(ServerConfig(), Portrait(np.full((128, 128, 3), 128, np.uint8)),
                                   engine_loader=lambda name, **_: bar_engine)
        try:
            session = await registry.create(size=64)
            await registry.close(session)
            await registry.reap()
        finally:
            await registry.stop()
        assert collections == expected, frozen
    assert trims == [1, 1]


async def test_no_release_when_turned_off(bar_engine, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)
    registry = SessionRegistry(ServerConfig(release_memory=False), Portrait(np.full((128, 128, 3), 128, np.uint8)),
                               engine_loader=lambda name, **_: bar_engine)
    session = await registry.create(size=64)
    await registry.close(session)
    assert not await registry.release_memory()
    await registry.stop()
    assert calls == []


def test_serve_flags_and_config():
    args = build_parser().parse_args(["serve"])
    defaults = ServerConfig()
    assert (args.malloc_arena_max, args.release_memory, args.gc_freeze) == \
        (defaults.malloc_arena_max, defaults.release_memory, defaults.gc_freeze)
    args = build_parser().parse_args(["serve", "--malloc-arena-max", "2", "--no-release-memory", "--no-gc-freeze"])
    assert (args.malloc_arena_max, args.release_memory, args.gc_freeze) == (2, False, False)
    with pytest.raises(ValueError, match="malloc_arena_max"):
        ServerConfig(malloc_arena_max=-1)


class _Viewer:
    """The least a registered viewer is (the session only keeps and counts it)."""

    id = "v"
    transport = "test"
    state = ViewerState.CONNECTED
    state_since = 0.0

    def stats(self) -> ViewerStats:
        return ViewerStats()

    async def close(self) -> None:
        return None
