"""The engine pump: one ``EngineStream`` on its own worker thread, fed by the session clock.

Every clock tick ``n`` hands the pump 640 samples (40 ms at 16 kHz). The pump feeds the engine
everything taken since its last call in one ``feed`` (a lagging engine catches up in batches),
maps the engine's frame indices back to tick indices, and files each frame with
``on_frame(tick, frame)``. Audio an engine has not seen within ``max_backlog_frames`` (25 frames,
1 s) is dropped, oldest first, so a slow engine never makes memory grow.

The engine's calls (open, feed, interrupt, set_controls, close) all run on one single-thread
executor, so the stream is only ever used by one thread (the engine contract) and the event
loop never blocks on it.

Interrupt (``interrupt(rerender_from)``), run by the pump's task between two feeds:

* the engine drops the audio it was fed but has not rendered (its lookahead) and numbers the next
  audio fed from its last returned frame + 1 (the contract); the pump drops those ticks from its
  index map and feeds them again as silence, so every later frame is still filed at the tick whose
  audio it shows (without this, every frame after an interrupt was filed ``lookahead`` ticks early);
* a ``ClosedMouthRerender`` stream renders its frames of ticks >= ``rerender_from`` (rendered, not
  yet sent) again with the mouth closing; they are filed with ``on_rerendered``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from avatarstream.engines.base import (RERENDER_KEEP_FRAMES, SAMPLES_PER_FRAME, AvatarEngine, AvatarFrame, ClosedMouthRerender,
                                       EngineStream, Portrait)

MAX_ENGINE_BACKLOG_FRAMES = 25


@dataclass
class PumpStats:
    frames_rendered: int = 0
    engine_ms: float = 0.0  # total time in EngineStream.feed
    engine_dropped_frames: int = 0  # audio frames the engine never saw (it fell > 1 s behind)
    frames_rerendered: int = 0  # frames rendered again with the mouth closed after an interrupt


class EnginePump:
    def __init__(self, engine: AvatarEngine, portrait: Portrait, *, size: int,
                 controls: Mapping[str, Any] | None, on_frame: Callable[[int, AvatarFrame], None],
                 name: str = "engine", max_backlog_frames: int = MAX_ENGINE_BACKLOG_FRAMES,
                 executor: Executor | None = None,
                 on_rerendered: Callable[[int, AvatarFrame], None] | None = None) -> None:
        self._engine = engine
        self._portrait = portrait
        self._size = size
        self._controls = controls
        self._on_frame = on_frame
        self._on_rerendered = on_rerendered or on_frame
        self._max_backlog = max_backlog_frames
        # one worker for every engine call (a test passes one that runs on its own clock); shut down by close()
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._stream: EngineStream | None = None
        self._pending: deque[tuple[int, np.ndarray]] = deque()  # (tick, audio) not yet fed
        self._fed_ticks: deque[int] = deque()  # tick of engine frame _fed_base + i
        self._fed_base = 0
        self._returned: deque[tuple[int, int]] = deque(maxlen=RERENDER_KEEP_FRAMES)  # (engine index, tick)
        self._interrupt_from: int | None = None  # an interrupt waits for the task: re-render ticks >= this
        self._wakeup = asyncio.Event()
        self.stats = PumpStats()
        self.lookahead_frames = 0

    @property
    def running(self) -> bool:
        return self._stream is not None

    async def open(self) -> int:
        """Open the engine stream (face analysis etc., on the worker); returns its lookahead in frames."""
        loop = asyncio.get_running_loop()
        self._stream = await loop.run_in_executor(
            self._executor, lambda: self._engine.open_stream(self._portrait, size=self._size, controls=self._controls))
        self.lookahead_frames = int(self._stream.lookahead_frames)
        return self.lookahead_frames

    def submit(self, tick: int, audio: np.ndarray) -> None:
        """Queue the audio of clock tick ``tick`` for the engine (call ``wake()`` after a batch)."""
        self._pending.append((tick, audio))
        if len(self._pending) > self._max_backlog:
            self._pending.popleft()
            self.stats.engine_dropped_frames += 1

    def wake(self) -> None:
        self._wakeup.set()

    def silence_from(self, tick: int) -> None:
        """Audio of ticks >= ``tick`` not yet fed is replaced by silence (rendered as idle motion)."""
        for i, (t, samples) in enumerate(self._pending):
            if t >= tick:
                self._pending[i] = (t, np.zeros_like(samples))

    def interrupt(self, rerender_from: int) -> None:
        """Ask the engine to drop its pending motion, and to render its frames of ticks >=
        ``rerender_from`` again with the mouth closed (done by ``run`` between two feeds)."""
        if self._stream is None:
            return
        prior = self._interrupt_from
        self._interrupt_from = rerender_from if prior is None else min(prior, rerender_from)
        self._wakeup.set()

    async def _run_interrupt(self, stream: EngineStream, rerender_from: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, stream.interrupt)
        # the engine dropped the audio it had not rendered: feed those ticks again (silent), first
        dropped = list(self._fed_ticks)
        self._fed_ticks.clear()
        self._pending.extendleft((tick, np.zeros(SAMPLES_PER_FRAME, np.float32)) for tick in reversed(dropped))
        if not isinstance(stream, ClosedMouthRerender):
            return
        ticks = dict(self._returned)
        since = next((i for i, tick in self._returned if tick >= rerender_from), None)
        if since is None:
            return
        frames = await loop.run_in_executor(self._executor, stream.rerender_closed, since)
        for f in frames:
            if f.index in ticks:
                self._on_rerendered(ticks[f.index], f)
        self.stats.frames_rerendered += len(frames)

    async def set_controls(self, controls: Mapping[str, Any]) -> dict[str, str]:
        """Apply live controls between two frames; returns {name: reason} for the rejected ones."""
        if self._stream is None:
            return {k: "session is not running" for k in controls}
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._stream.set_controls, dict(controls))

    def set_controls_blocking(self, controls: Mapping[str, Any]) -> dict[str, str]:
        """As ``set_controls`` for threads other than the loop's; blocks at most one render."""
        if self._stream is None:
            return {k: "session is not running" for k in controls}
        return self._executor.submit(self._stream.set_controls, dict(controls)).result()

    async def run(self) -> None:
        """The pump's task: wait for ticks, feed, file the frames. Ends when the stream is closed."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            stream = self._stream
            if stream is None:
                return
            if self._interrupt_from is not None:
                rerender_from, self._interrupt_from = self._interrupt_from, None
                await self._run_interrupt(stream, rerender_from)
            if not self._pending:
                continue
            batch = list(self._pending)
            self._pending.clear()
            self._fed_ticks.extend(tick for tick, _ in batch)
            t = time.perf_counter()
            frames = await loop.run_in_executor(self._executor, stream.feed, np.concatenate([a for _, a in batch]))
            self.stats.engine_ms += (time.perf_counter() - t) * 1000
            for f in frames:
                tick = self._fed_ticks[f.index - self._fed_base]
                self._returned.append((f.index, tick))
                self._on_frame(tick, f)
            if frames:
                while self._fed_base <= frames[-1].index:
                    self._fed_ticks.popleft()
                    self._fed_base += 1
            self.stats.frames_rendered += len(frames)

    async def close(self) -> None:
        """Close the stream on its worker and stop the worker (the ``run`` task must be cancelled first)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(Exception):
                await loop.run_in_executor(self._executor, stream.close)
        self._executor.shutdown(wait=False, cancel_futures=True)
