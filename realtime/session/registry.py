"""Creates, finds and closes sessions; enforces the session cap (``max_sessions``, none by
default), admission by measured load (``admission.py``), viewer connect deadlines and the idle
timeout. The load monitor samples once a second. It knows no transport: the transports attach
viewers to its sessions (``realtime/transports/base.py``), and the server hands them their settings.

Admission is checked twice: a new session is created while one more *active* session fits
(``check_capacity``), and an inactive session (no viewer, no speech) starts rendering, when its
first viewer or agent attaches or speech arrives, only while one more fits
(``check_activation``, the sessions' ``activation_check``). Either refusal is 503
``session_limit`` + Retry-After with the measured figures; the already active sessions keep
their frame rate. A draining registry
(``draining = True``: a cluster worker being retired, ``realtime/cluster/``) refuses new sessions
with 503 while its running ones go on to their end.

The reaper runs every ``min(5, idle_timeout / 2, viewer_connect_timeout / 2)`` seconds:

* a viewer of any transport still ``connecting`` after ``viewer_connect_timeout`` is closed (a
  WebRTC offer whose ICE never completes cannot hold a slot);
* a session with no *connected* viewer and no input for ``idle_timeout`` is closed, whatever
  state its other viewers are in.

When ``release_memory`` is on and a session or viewer has been torn down since its last pass,
it also collects the reference cycles left behind (a closed WebRTC peer is one) and hands the C
allocator's free pages back to the system (``realtime/memory.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from avatarstream.engines.base import AvatarEngine, EngineError, Portrait
from avatarstream.engines.registry import engine_options, load_engine
from avatarstream.realtime import memory
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.errors import SessionLimitError
from avatarstream.realtime.session.admission import Clock, LoadMonitor
from avatarstream.realtime.session.calibration import Calibration, CalibrationWork, calibrate
from avatarstream.realtime.session.session import AvatarSession
from avatarstream.realtime.transports.base import ViewerState

log = logging.getLogger(__name__)

LOAD_SAMPLE_INTERVAL = 1.0  # s between load measurements (admission)


class SessionRegistry:
    def __init__(self, config: ServerConfig, default_portrait: Portrait,
                 engine_loader: Callable[..., AvatarEngine] | None = None, *, clock: Clock = time.monotonic) -> None:
        self.config = config
        self._clock = clock  # monotonic seconds: admission's, the reaper's and every session's
        # makes the per-frame work beyond the engine that the calibration runs (warm_up; a transport's)
        self._calibration_work: Callable[[], CalibrationWork] | None = None
        self.default_portrait = default_portrait
        self._load_engine = engine_loader or config.engine_loader or load_engine
        self._engines: dict[str, AvatarEngine] = {}
        self._engine_lock = asyncio.Lock()
        self._sessions: dict[str, AvatarSession] = {}
        # called with each utterance's push-to-playback latency (seconds), from every session (metrics)
        self.playback_latency_observers: list[Callable[[float], None]] = []
        self._reserved = 0
        self._reaper: asyncio.Task | None = None
        self.load = LoadMonitor(config.admission_policy(), lambda: list(self._sessions.values()), clock=clock)
        self._monitor: asyncio.Task | None = None
        self.draining = False  # True: no new sessions (503), running ones go on
        self.sessions_started = 0  # lifetime counters (metrics)
        self.sessions_ended = 0
        self._viewers_left_ended = 0  # viewers_left of the sessions that have ended
        self._trimmed_at = 0  # teardowns() at the last release_memory()

    # -- engines -------------------------------------------------------------------------
    async def engine(self, name: str | None = None) -> AvatarEngine:
        name = name or self.config.engine
        async with self._engine_lock:
            if name not in self._engines:
                options: dict[str, Any] = {}
                if self.config.weights is not None and "weights" in engine_options(name).option_names():
                    options["weights"] = self.config.weights
                if name == self.config.engine:
                    options.update(self.config.engine_options)
                loop = asyncio.get_running_loop()
                self._engines[name] = await loop.run_in_executor(None, lambda: self._load_engine(name, **options))
                if name == self.config.engine and self.load.policy.enabled:
                    await self._calibrate(self._engines[name])
            return self._engines[name]

    async def _calibrate(self, engine: AvatarEngine) -> None:
        """Admission's calibration of the default engine on the default portrait, when it loads
        (``calibration.py``: the cost of an active session until one is measured), with the
        ``CalibrationWork`` the factory given to ``warm_up`` makes, closed after it. A portrait the
        engine refuses leaves it uncalibrated (``warm_up`` raises for it)."""
        portrait, size, make_work = self.default_portrait, self.config.size, self._calibration_work

        def run() -> Calibration:
            work = make_work() if make_work is not None else None
            try:
                return calibrate(engine, portrait, engine_name=self.config.engine, size=size,
                                 work=work.terms() if work is not None else ())
            finally:
                if work is not None:
                    work.close()

        try:
            calibration = await asyncio.get_running_loop().run_in_executor(None, run)
        except (EngineError, OSError) as exc:  # a portrait the engine refuses; a socket or codec the work could not open
            log.warning("admission calibration failed (%s): one active session at a time until one is measured", exc)
            return
        self.load.calibrated(calibration)
        log.info("admission calibration: %s", calibration.describe())

    async def warm_up(self, work: Callable[[], CalibrationWork] | None = None) -> None:
        """Load the default engine (calibrating it for admission, with the per-frame work ``work()`` makes) and
        prepare the default portrait once (engines cache the face analysis), so the first call does
        not wait for it. Raises NoFaceError."""
        if work is not None:
            self._calibration_work = work
        engine = await self.engine()
        if self.load.calibration is not None:
            return  # the calibration opened a stream on the portrait
        portrait, size = self.default_portrait, self.config.size

        def open_and_close() -> None:
            engine.open_stream(portrait, size=size).close()

        await asyncio.get_running_loop().run_in_executor(None, open_and_close)

    # -- sessions ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[AvatarSession]:
        return iter(list(self._sessions.values()))

    def get(self, session_id: str) -> AvatarSession | None:
        return self._sessions.get(session_id)

    @property
    def full(self) -> bool:
        """The explicit cap (``max_sessions``) is reached; never with no cap set."""
        cap = self.config.max_sessions
        return cap is not None and cap > 0 and len(self._sessions) + self._reserved >= cap

    @property
    def active_count(self) -> int:
        """Sessions rendering now (a viewer or agent attached, or speech playing)."""
        return sum(1 for s in self._sessions.values() if s.active and not s.closed)

    def check_capacity(self) -> None:
        """Raise SessionLimitError while draining, if the explicit session cap is reached, or if one
        more active session would push the active ones below the admission frame rate (cheap: call
        before reading a body). A session being created reserves nothing: it is judged again when it
        becomes active, so concurrent creates with room for one more active session all pass."""
        if self.draining:
            raise SessionLimitError("this server is draining (finishing its sessions before it stops); "
                                    "retry on another server", retry_after=self.load.policy.retry_after_s)
        if self.full:
            raise SessionLimitError(
                f"server is at its limit of {self.config.max_sessions} concurrent session(s) (--max-sessions); "
                "retry later", retry_after=5)
        refusal = self.load.refusal(self.active_count)
        if refusal is not None:
            raise SessionLimitError(f"no room for a new session: {refusal}; retry later",
                                    retry_after=self.load.policy.retry_after_s)

    def check_activation(self, session: AvatarSession) -> None:
        """Raise SessionLimitError if the inactive ``session`` may not start rendering now: one more
        active session would push the active ones below the admission frame rate."""
        if session.active:
            return
        refusal = self.load.refusal(self.active_count)
        if refusal is not None:
            raise SessionLimitError(f"this session cannot start rendering now: {refusal}; it stays open "
                                    "(unwatched): retry later", retry_after=self.load.policy.retry_after_s)

    async def create(self, portrait: Portrait | None = None, *, engine: str | None = None, size: int | None = None,
                     controls: Mapping[str, Any] | None = None, origin: str = "api") -> AvatarSession:
        """Start a session; raises SessionLimitError, NoFaceError, EngineError."""
        self.check_capacity()
        self._reserved += 1
        self.load.creation_started()
        try:
            eng = await self.engine(engine)
            opts = self.config.session_options(size=size, controls=controls or None)
            session = AvatarSession(eng, portrait or self.default_portrait,
                                    engine_name=engine or self.config.engine, options=opts, origin=origin,
                                    clock=self._clock)
            session.playback_latency_observers = self.playback_latency_observers
            session.activation_check = self.check_activation
            try:
                await session.start()
            except BaseException:
                await session.close()
                raise
            self._sessions[session.id] = session
            self.sessions_started += 1
            session.on_close(self._forget)
            log.info("session %s started (%d open)", session.id, len(self._sessions))
            return session
        finally:
            self._reserved -= 1
            self.load.creation_ended()

    def _forget(self, session: AvatarSession) -> None:
        self._sessions.pop(session.id, None)
        self.sessions_ended += 1
        self._viewers_left_ended += session.stats.viewers_left

    def teardowns(self) -> int:
        """Sessions ended plus viewers gone: changes whenever one of them is torn down."""
        return self.sessions_ended + self._viewers_left_ended + sum(s.stats.viewers_left for s in self._sessions.values())

    async def close(self, session_or_id: AvatarSession | str) -> None:
        s = session_or_id if isinstance(session_or_id, AvatarSession) else self._sessions.get(session_or_id)
        if s is not None:
            self._sessions.pop(s.id, None)
            await s.close()
            log.info("session %s closed (%d open)", s.id, len(self._sessions))

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(s) for s in list(self._sessions.values())), return_exceptions=True)

    # -- deadlines -----------------------------------------------------------------------
    def start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever(), name="session-reaper")

    def start_load_monitor(self) -> None:
        if self._monitor is None:
            self._monitor = asyncio.get_running_loop().create_task(self._monitor_forever(), name="load-monitor")

    async def _monitor_forever(self) -> None:
        while True:
            self.load.sample()  # in the loop thread: its CPU time is the loop's
            await asyncio.sleep(LOAD_SAMPLE_INTERVAL)

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        await self.close_all()

    @property
    def reap_interval(self) -> float:
        return min(5.0, self.config.idle_timeout / 2, self.config.viewer_connect_timeout / 2)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                await self.reap()
            except Exception:  # one bad session must not stop the reaper
                log.exception("session reaper failed")

    async def reap(self) -> None:
        """One pass: close viewers past their connect deadline, then idle sessions."""
        now = self._clock()
        for s in list(self._sessions.values()):
            for v in s.viewers:
                if v.state == ViewerState.CONNECTING and now - v.state_since > self.config.viewer_connect_timeout:
                    log.info("session %s: %s viewer %s did not connect in %.0f s: dropping",
                             s.id, v.transport, v.id, now - v.state_since)
                    await v.close()
            if s.closed:
                continue
            if s.connected_viewer_count == 0 and now - s.last_activity > self.config.idle_timeout:
                log.info("session %s idle for %.0f s: closing", s.id, now - s.last_activity)
                await self.close(s)
        await self.release_memory()

    async def release_memory(self) -> bool:
        """After a teardown since the last call: collect cycles (here: finalizers may touch the
        loop) where start-up objects are frozen, so the collection is cheap (``avatar serve``; an
        embedding process keeps CPython's own schedule), then return the allocator's free pages
        (off the loop). True if pages were returned."""
        done = self.teardowns()
        if not self.config.release_memory or done == self._trimmed_at:
            return False
        self._trimmed_at = done
        if memory.startup_frozen():
            gc.collect()
        return await asyncio.get_running_loop().run_in_executor(None, memory.release_free_memory)
