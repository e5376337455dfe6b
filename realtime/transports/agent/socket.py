"""The agent WebSocket transport: speech audio in, playback events out (``/v1/sessions/{id}/agent``).

One agent connection per session at a time (the HTTP layer answers 409 to a second). Binary
frames carry PCM s16le mono at the declared rate; they are resampled to 16 kHz and pushed into
the session's playback buffer as fast as they come — the session plays them at real time.
Session events are forwarded as JSON text messages. Malformed messages get an ``error`` message
and are dropped; the socket stays open. When the socket closes with an utterance still open
(audio sent, no ``end_of_utterance``), that partial utterance is interrupted so nothing is left
half-spoken. The socket is a ``Viewer`` of transport ``agent``: connected while it is open.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from typing import Any, Callable

import numpy as np
from aiohttp import WSMsgType, web

from avatarstream.engines.base import EngineError
from avatarstream.realtime.errors import ServerError
from avatarstream.realtime.session.events import EventType, SessionEvent
from avatarstream.realtime.transports.agent.protocol import (
    MAX_FRAME_SECONDS,
    ControlMessage,
    PcmResampler,
    ProtocolError,
    check_sample_rate,
    decode_pcm16,
    event_message,
    max_frame_bytes,
    parse_control,
)
from avatarstream.realtime.transports.base import ServedSession, ViewerState, ViewerStats

log = logging.getLogger(__name__)

TRANSPORT = "agent"
# Frames larger than this are cut off by aiohttp itself (close code 1009); frames between the
# protocol limit and this get a clear "frame_too_large" error and the socket stays open.
SOCKET_MAX_MSG_BYTES = 4 * max_frame_bytes(48_000)
SESSION_ENDED_CLOSE_CODE = 4000
MAX_MESSAGES_PER_SECOND = 400.0  # sustained; 20 ms audio frames are 50/s
MESSAGE_BURST = 2000
FLOOD_CLOSE_MESSAGES = 2 * MESSAGE_BURST  # this many refused, none FLOOD_GAP_S apart: the socket is closed (1008)
FLOOD_GAP_S = 1.0
POLICY_VIOLATION_CLOSE_CODE = 1008
ERROR_REPEAT_SECONDS = 0.5  # the same error code is sent at most once per this (no amplification)


class MessageRateLimiter:
    """Token bucket on ``clock`` (monotonic seconds): ``rate`` messages per second sustained, ``burst`` at once."""

    def __init__(self, rate: float = MAX_MESSAGES_PER_SECOND, burst: int = MESSAGE_BURST, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst = rate, float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._t = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Verdict(enum.Enum):
    ALLOW = "allow"
    REFUSE = "refuse"  # over the rate limit: dropped with a (throttled) rate_limited error
    CLOSE = "close"  # a flood: the socket is closed with POLICY_VIOLATION_CLOSE_CODE


class FloodGuard:
    """One agent socket's message limit on ``clock``: the rate limiter's verdict per message, and a flood
    (``close_after`` refusals in a row, none ``FLOOD_GAP_S`` apart) closes the socket; counts what it saw."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, rate: float = MAX_MESSAGES_PER_SECOND,
                 burst: int = MESSAGE_BURST, close_after: int = FLOOD_CLOSE_MESSAGES) -> None:
        self._clock = clock
        self._limiter = MessageRateLimiter(rate, burst, clock=clock)
        self.close_after = close_after
        self.received = 0  # messages checked
        self.refused = 0  # over the rate limit, in all
        self.refused_in_a_row = 0  # refusals with less than FLOOD_GAP_S between each and the next
        self._last_refusal = -float("inf")

    def check(self) -> Verdict:
        """The verdict on one more message received now."""
        self.received += 1
        if self._limiter.allow():
            return Verdict.ALLOW
        now = self._clock()
        self.refused += 1
        self.refused_in_a_row = self.refused_in_a_row + 1 if now - self._last_refusal < FLOOD_GAP_S else 1
        self._last_refusal = now
        return Verdict.CLOSE if self.refused_in_a_row >= self.close_after else Verdict.REFUSE

    def close_reason(self) -> str:
        """The close frame's reason (under the protocol's 123 bytes), with the server's own counts."""
        return (f"message rate limit exceeded: {self.received} received, {self.refused} refused, "
                f"{self.refused_in_a_row} in a row")


def session_event_message(event: SessionEvent) -> str:
    """A SessionEvent as the agent sees it: ``{"type", **data, "frame", "wall_time"}``."""
    return event_message(event.type, **event.data, frame=event.frame, wall_time=event.wall_time)


class AgentConnection:
    """One agent socket: declared rate, resampler, whether an utterance is open (a ``Viewer``)."""

    transport = TRANSPORT

    def __init__(self, session: ServedSession, ws: web.WebSocketResponse) -> None:
        self.id = secrets.token_hex(6)
        self.session = session
        self.ws = ws
        self.resampler: PcmResampler | None = None
        self.utterance_open = False
        self.unfinished: set[int] = set()  # utterances pushed here whose playback_finished is not yet seen
        self._since = session.now()
        self.messages = 0
        self.dropped_messages = 0  # over the rate limit
        self._last_error: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    @property
    def state(self) -> ViewerState:
        return ViewerState.CLOSED if self.ws.closed else ViewerState.CONNECTED

    @property
    def state_since(self) -> float:
        return self._since

    def stats(self) -> ViewerStats:
        """No video: speech in, events out."""
        return ViewerStats(details={"messages": self.messages, "dropped_messages": self.dropped_messages,
                                    "utterance_open": self.utterance_open,
                                    "sample_rate": None if self.resampler is None else self.resampler.sample_rate})

    async def close(self) -> None:
        if not self.ws.closed:
            await self.ws.close(code=SESSION_ENDED_CLOSE_CODE, message=b"session ended")

    async def send(self, text: str) -> None:
        if not self.ws.closed:
            await self.ws.send_str(text)

    async def error(self, exc: ServerError | EngineError) -> None:
        """Send an ``error`` message; repeats of one code within ERROR_REPEAT_SECONDS are counted,
        not sent, and reported as ``suppressed`` with the next one."""
        code = getattr(exc, "code", None) or "rejected"
        now = time.monotonic()
        if now - self._last_error.get(code, -1e9) < ERROR_REPEAT_SECONDS:
            self._suppressed[code] = self._suppressed.get(code, 0) + 1
            return
        self._last_error[code] = now
        suppressed = self._suppressed.pop(code, 0)
        extra = {"suppressed": suppressed} if suppressed else {}
        await self.send(event_message("error", code=code, message=str(exc)[:500], **extra))

    async def ready(self) -> None:
        assert self.resampler is not None
        rate = self.resampler.sample_rate
        await self.send(event_message(
            "ready", session=self.session.id, sample_rate=rate, engine_sample_rate=16000,
            max_frame_bytes=max_frame_bytes(rate), max_frame_seconds=MAX_FRAME_SECONDS,
            fps=self.session.fps, size=self.session.size,
        ))

    def set_rate(self, rate: int) -> None:
        if self.resampler is not None and self.utterance_open:
            self.push(self.resampler.flush())
        self.resampler = PcmResampler(rate)

    async def on_audio(self, data: bytes) -> None:
        if self.resampler is None:
            raise ProtocolError(
                "no_sample_rate",
                'audio before the sample rate is known: send {"type": "start", "sample_rate": 16000|24000|48000} '
                "first (or connect with ?sample_rate=)",
            )
        pcm = decode_pcm16(data, self.resampler.sample_rate)
        self.push(self.resampler.convert(pcm))
        self.utterance_open = True

    def push(self, audio: np.ndarray) -> None:
        if audio.size:
            self.unfinished.add(self.session.push_audio(audio))

    async def on_control(self, msg: ControlMessage) -> None:
        session = self.session
        if msg.type == "start":
            assert msg.sample_rate is not None
            self.set_rate(msg.sample_rate)
            await self.ready()
        elif msg.type == "end_of_utterance":
            if self.resampler is not None:
                self.push(self.resampler.flush())
            session.end_utterance()
            self.utterance_open = False
        elif msg.type == "interrupt":
            if self.resampler is not None:
                self.resampler.flush()  # drop the filter tail with the rest
            session.interrupt()
            self.utterance_open = False
            if not self.unfinished:  # nothing was playing or queued: acknowledge at once
                await self.send(event_message(EventType.PLAYBACK_FINISHED.value, utterance=None,
                                              playback_position=0.0, interrupted=True))
        elif msg.type == "set_controls":
            unsupported = await session.set_controls_async(msg.controls)
            applied = {k: v for k, v in msg.controls.items() if k not in unsupported}
            await self.send(event_message("controls", applied=applied, unsupported=unsupported))
        elif msg.type == "keepalive":
            await self.send(event_message("keepalive"))

    def abandon(self) -> None:
        """The socket is gone: an utterance left open is interrupted, never left hanging."""
        if self.utterance_open:
            self.session.interrupt()
            self.utterance_open = False


def connected_agent(session: ServedSession) -> Any:
    """The session's open agent connection, if any (one at a time)."""
    return next((v for v in session.viewers if v.transport == TRANSPORT and v.state != ViewerState.CLOSED), None)


async def forward_events(queue: asyncio.Queue[SessionEvent | None], conn: AgentConnection) -> None:
    while True:
        event = await queue.get()
        if event is None:  # the session ended (DELETE, idle timeout, server shutdown)
            await conn.ws.close(code=SESSION_ENDED_CLOSE_CODE, message=b"session ended")
            return
        if event.type == EventType.PLAYBACK_FINISHED.value:
            conn.unfinished.discard(event.data.get("utterance"))
        await conn.send(session_event_message(event))


async def serve_agent_socket(request: web.Request, session: ServedSession, sample_rate: int | None = None
                             ) -> web.WebSocketResponse:
    """Run one agent connection on ``request`` (already authorised) until it closes."""
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=SOCKET_MAX_MSG_BYTES)
    conn = AgentConnection(session, ws)
    session.attach_viewer(conn)  # may refuse (viewer limit) before the upgrade
    try:
        await ws.prepare(request)
    except BaseException:
        session.detach_viewer(conn)
        raise
    queue = session.subscribe_events()
    forwarder = asyncio.create_task(forward_events(queue, conn), name=f"agent-events-{session.id}")
    try:
        if sample_rate is not None:
            conn.set_rate(sample_rate)
            await conn.ready()
        guard = FloodGuard(session.now)
        async for msg in ws:
            session.touch()
            conn.messages += 1
            try:
                verdict = guard.check()
                if verdict != Verdict.ALLOW:
                    conn.dropped_messages += 1
                    if verdict == Verdict.CLOSE:  # a flood, not a burst: stop paying for it
                        log.info("agent socket of session %s flooded past the rate limit: closing (%s)", session.id,
                                 guard.close_reason())
                        await ws.close(code=POLICY_VIOLATION_CLOSE_CODE, message=guard.close_reason().encode())
                        break
                    raise ProtocolError("rate_limited", f"more than {MAX_MESSAGES_PER_SECOND:g} messages per second: "
                                        "message dropped (send audio in frames of 20 ms or more)")
                if msg.type == WSMsgType.BINARY:
                    await conn.on_audio(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    await conn.on_control(parse_control(msg.data))
                elif msg.type == WSMsgType.ERROR:
                    log.info("agent socket of session %s failed: %s", session.id, ws.exception())
                    break
            except (ServerError, EngineError) as exc:  # ProtocolError, BufferFull, bad controls ...
                await conn.error(exc)
        if ws.close_code == 1009:
            log.info("agent socket of session %s sent a message over %d bytes", session.id, SOCKET_MAX_MSG_BYTES)
    finally:
        forwarder.cancel()
        await asyncio.gather(forwarder, return_exceptions=True)
        session.unsubscribe_events(queue)
        conn.abandon()
        session.detach_viewer(conn)
    return ws


__all__ = ["AgentConnection", "FloodGuard", "Verdict", "check_sample_rate", "connected_agent", "serve_agent_socket"]
