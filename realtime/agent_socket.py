"""The agent WebSocket ``/v1/sessions/{id}/agent``: speech audio in, playback events out.

One agent connection per session at a time (a second gets 409). Binary frames carry PCM s16le
mono at the declared rate; they are resampled to 16 kHz and pushed into the session's playback
buffer as fast as they come — the session plays them at real time. Session events are forwarded
as JSON text messages. Malformed messages get an ``error`` message and are dropped; the socket
stays open. When the socket closes with an utterance still open (audio sent, no
``end_of_utterance``), that partial utterance is interrupted so nothing is left half-spoken.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import WSMsgType, web

from avatarstream.engines.base import EngineError
from avatarstream.realtime.playback import BufferFull
from avatarstream.realtime.agent_protocol import (
    MAX_FRAME_SECONDS,
    ControlMessage,
    PcmResampler,
    ProtocolError,
    check_sample_rate,
    decode_pcm16,
    error_message,
    event_message,
    max_frame_bytes,
    parse_control,
)

log = logging.getLogger(__name__)

# Frames larger than this are cut off by aiohttp itself (close code 1009); frames between the
# protocol limit and this get a clear "frame_too_large" error and the socket stays open.
SOCKET_MAX_MSG_BYTES = 4 * max_frame_bytes(48_000)


def session_event_message(event: Any) -> str:
    """A SessionEvent as the agent sees it: ``{"type", **data, "frame", "wall_time"}``."""
    return event_message(event.type, **event.data, frame=event.frame, wall_time=event.wall_time)


class AgentConnection:
    """State of one agent socket: declared rate, resampler, whether an utterance is open."""

    def __init__(self, session: Any, ws: web.WebSocketResponse) -> None:
        self.session = session
        self.ws = ws
        self.resampler: PcmResampler | None = None
        self.utterance_open = False
        self.unfinished: set[int] = set()  # utterances pushed here whose playback_finished is not yet seen

    async def send(self, text: str) -> None:
        if not self.ws.closed:
            await self.ws.send_str(text)

    async def error(self, exc: ProtocolError | EngineError) -> None:
        code = getattr(exc, "code", None) or ("buffer_full" if isinstance(exc, BufferFull) else "rejected")
        await self.send(error_message(code, str(exc)))

    async def ready(self) -> None:
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

    def push(self, audio) -> None:
        if audio.size:
            self.unfinished.add(self.session.push_audio(audio))

    async def on_control(self, msg: ControlMessage) -> None:
        session = self.session
        if msg.type == "start":
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
                await self.send(event_message("playback_finished", utterance=None, playback_position=0.0,
                                              interrupted=True))
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


async def forward_events(queue: asyncio.Queue, conn: AgentConnection) -> None:
    while True:
        event = await queue.get()
        if event is None:  # the session ended (DELETE, idle timeout, server shutdown)
            await conn.ws.close(code=4000, message=b"session ended")
            return
        if event.type == "playback_finished":
            conn.unfinished.discard(event.data.get("utterance"))
        await conn.send(session_event_message(event))


async def handle(api: Any, request: web.Request) -> web.StreamResponse:
    from avatarstream.realtime.sessions_api import json_error

    session = api.authorize(request)
    links = api.links_of(session)
    if links.agent is not None and not links.agent.closed:
        raise json_error(web.HTTPConflict, "an agent is already connected to this session (one at a time)")
    rate = None
    if "sample_rate" in request.query:
        try:
            rate = check_sample_rate(request.query["sample_rate"])
        except ProtocolError as exc:
            raise json_error(web.HTTPBadRequest, str(exc)) from None

    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=SOCKET_MAX_MSG_BYTES)
    await ws.prepare(request)
    links.agent = ws
    conn = AgentConnection(session, ws)
    queue = session.subscribe_events()
    forwarder = asyncio.create_task(forward_events(queue, conn), name=f"agent-events-{session.id}")
    try:
        if rate is not None:
            conn.set_rate(rate)
            await conn.ready()
        async for msg in ws:
            session.last_activity = time.monotonic()
            try:
                if msg.type == WSMsgType.BINARY:
                    await conn.on_audio(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    await conn.on_control(parse_control(msg.data))
                elif msg.type == WSMsgType.ERROR:
                    log.info("agent socket of session %s failed: %s", session.id, ws.exception())
                    break
            except EngineError as exc:  # ProtocolError, BufferFull, bad controls ...
                await conn.error(exc)
        if ws.close_code == 1009:
            log.info("agent socket of session %s sent a message over %d bytes", session.id, SOCKET_MAX_MSG_BYTES)
    finally:
        forwarder.cancel()
        await asyncio.gather(forwarder, return_exceptions=True)
        session.unsubscribe_events(queue)
        conn.abandon()
        if links.agent is ws:
            links.agent = None
    return ws
