"""Creates, finds and closes sessions; enforces ``--max-sessions`` and the idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from avatarstream.engines.base import AvatarEngine, EngineError, Portrait
from avatarstream.realtime.session import AvatarSession, SessionOptions

log = logging.getLogger(__name__)


class SessionLimitError(EngineError):
    """All session slots are taken; retry later (HTTP 503 + Retry-After)."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class RegistryConfig:
    engine: str = "lite"
    weights: str | None = None
    max_sessions: int = 4
    idle_timeout: float = 300.0  # seconds without viewers or input before a session is closed
    options: SessionOptions = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.options is None:
            self.options = SessionOptions()


class SessionRegistry:
    def __init__(self, config: RegistryConfig, default_portrait: Portrait,
                 engine_loader: Callable[..., AvatarEngine] | None = None) -> None:
        from avatarstream.engines.registry import load_engine

        self.config = config
        self.default_portrait = default_portrait
        self._load_engine = engine_loader or load_engine
        self._engines: dict[str, AvatarEngine] = {}
        self._engine_lock = asyncio.Lock()
        self._sessions: dict[str, AvatarSession] = {}
        self._reserved = 0
        self._reaper: asyncio.Task | None = None

    # -- engines -------------------------------------------------------------------------
    async def engine(self, name: str | None = None) -> AvatarEngine:
        name = name or self.config.engine
        async with self._engine_lock:
            if name not in self._engines:
                loop = asyncio.get_running_loop()
                self._engines[name] = await loop.run_in_executor(
                    None, lambda: self._load_engine(name, weights=self.config.weights))
            return self._engines[name]

    async def warm_up(self) -> None:
        """Load the default engine and prepare the default portrait once (engines cache the
        face analysis), so the first call does not wait for it. Raises NoFaceError."""
        engine = await self.engine()
        loop = asyncio.get_running_loop()

        def open_and_close() -> None:
            engine.open_stream(self.default_portrait, size=self.config.options.size).close()

        await loop.run_in_executor(None, open_and_close)

    # -- sessions ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):
        return iter(list(self._sessions.values()))

    def get(self, session_id: str) -> AvatarSession | None:
        return self._sessions.get(session_id)

    async def create(self, portrait: Portrait | None = None, *, engine: str | None = None, size: int | None = None,
                     controls: Mapping[str, Any] | None = None) -> AvatarSession:
        """Start a session; raises SessionLimitError, NoFaceError, EngineError."""
        if len(self._sessions) + self._reserved >= self.config.max_sessions:
            raise SessionLimitError(
                f"server is at its limit of {self.config.max_sessions} concurrent session(s); retry later",
                retry_after=5)
        self._reserved += 1
        try:
            eng = await self.engine(engine)
            opts = replace(self.config.options, **({"size": size} if size else {}),
                           **({"controls": controls} if controls else {}))
            session = AvatarSession(eng, portrait or self.default_portrait,
                                    engine_name=engine or self.config.engine, options=opts)
            try:
                await session.start()
            except BaseException:
                await session.close()
                raise
            self._sessions[session.id] = session
            session.on_close(lambda s: self._sessions.pop(s.id, None))
            log.info("session %s started (%d active)", session.id, len(self._sessions))
            return session
        finally:
            self._reserved -= 1

    async def close(self, session_or_id: AvatarSession | str) -> None:
        s = session_or_id if isinstance(session_or_id, AvatarSession) else self._sessions.get(session_or_id)
        if s is not None:
            self._sessions.pop(s.id, None)
            await s.close()
            log.info("session %s closed (%d active)", s.id, len(self._sessions))

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(s) for s in list(self._sessions.values())), return_exceptions=True)

    # -- idle timeout --------------------------------------------------------------------
    def start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="session-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        await self.close_all()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.config.idle_timeout / 2))
            now = time.monotonic()
            for s in list(self._sessions.values()):
                if s.viewer_count == 0 and now - s.last_activity > self.config.idle_timeout:
                    log.info("session %s idle for %.0f s: closing", s.id, now - s.last_activity)
                    await self.close(s)
