"""A Pipecat video service backed by an avatarstream session: ``pip install 'avatarstream[pipecat]'``.

Put it right after the TTS service; it consumes the TTS audio and pushes the avatar back::

    avatar = AvatarStreamVideoService()                          # in-process lite server, quick start
    avatar = AvatarStreamVideoService(server_url="https://avatars.example", api_key="...")
    pipeline = Pipeline([..., tts, avatar, transport.output()])

* **Session.** ``start`` (on ``StartFrame``) creates a session with ``AvatarClient`` (sessions API
  + agent WebSocket) on ``server_url``; without a URL it first starts a private lite server in this
  process (``LocalAvatarServer``: ``create_app`` + ``ServerConfig`` on 127.0.0.1, a free port).
* **Speech in.** Each TTS response (``TTSStartedFrame`` ... ``TTSStoppedFrame``) is one utterance:
  its ``TTSAudioRawFrame`` audio is resampled to a rate the agent socket accepts (16/24/48 kHz)
  and streamed as it comes; ``TTSStoppedFrame`` sends ``end_of_utterance``.
* **Avatar out.** ``OutputImageRawFrame`` (RGB) for every video frame at 25 fps, on the session
  clock, and the speech back as ``TTSAudioRawFrame`` at the pipeline's output rate, delayed
  exactly as much as the lips, so mouth and voice leave together. Frames carry ``pts`` on the
  session's timeline (ns). Two media paths, one small class each behind ``AvatarOutput``:

  - ``InProcessOutput`` (no ``server_url``: a session of ``InProcessAvatar``, the in-process runner
    the LiveKit plugin shares): the session's output is read directly through the transport
    contract (``SessionReader``), no video encoding at all; the speech is cut back out of the
    avatar's audio per utterance (``SpeechCutter``): the samples out equal the samples in,
    silence between replies is not sent;
  - ``WebRTCOutput`` (``server_url``): the service joins as a WHEP viewer; the avatar's continuous
    audio (speech and the silence between) comes as ``SpeechOutputAudioRawFrame``, as Pipecat's
    other WebRTC avatar services do.

* **Interruptions.** ``InterruptionFrame``: the reply in flight is dropped locally at once (no more
  of its speech is pushed), the server gets ``{"type": "interrupt"}`` (queued audio and motion
  dropped, the face back to idle), the next reply plays normally.
* **Errors.** A server that cannot be reached, a refused API key, a refused session: an
  ``ErrorFrame`` upstream (category connectivity / authentication / invalid request / server);
  the service then passes the TTS audio through unchanged, so the voice still works.
* **End.** ``EndFrame`` lets the replies already sent play out (``drain_timeout_s`` at most),
  then deletes the session (and stops the in-process server); ``CancelFrame`` deletes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import av
import numpy as np
from yarl import URL

from avatarstream.integrations.inprocess import InProcessAvatar
from avatarstream.integrations.local_server import LocalAvatarServer
from avatarstream.integrations.session_reader import SessionClosed, SessionReader
from avatarstream.integrations.speech_cutter import SpeechCutter
from avatarstream.integrations.whep_reader import AUDIO_RATE as WEBRTC_AUDIO_RATE
from avatarstream.integrations.whep_reader import ReceivedAudio, ReceivedVideo, WhepReader
from avatarstream.realtime.client import AvatarClient, ClientError, SessionInfo
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.session.session import AvatarSession
from avatarstream.realtime.transports.agent.protocol import ACCEPTED_RATES

try:
    from loguru import logger
    from pipecat.frames.frames import (
        CancelFrame,
        EndFrame,
        Frame,
        InterruptionFrame,
        OutputImageRawFrame,
        SpeechOutputAudioRawFrame,
        StartFrame,
        TTSAudioRawFrame,
        TTSStartedFrame,
        TTSStoppedFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.services.ai_service import AIService
    from pipecat.services.settings import ServiceSettings
    from pipecat.utils.errors import ErrorCategory
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"avatarstream.integrations.pipecat needs pipecat-ai ({exc.name} is missing): "
        "pip install 'avatarstream[pipecat]'") from exc

NS_PER_S = 1_000_000_000
FRAME_NS = NS_PER_S // 25
MIN_UTTERANCE_SECONDS = 0.01  # shorter TTS responses are inaudible: not sent (the server would not number them)


def wire_rate(rate: int) -> int:
    """The agent-socket rate (16/24/48 kHz) to send audio of ``rate`` at: the lowest not below it."""
    return next((r for r in ACCEPTED_RATES if r >= rate), ACCEPTED_RATES[-1])


class _PcmConverter:
    """Streaming int16 mono resampling between two rates (identity when they match)."""

    def __init__(self, src: int, dst: int) -> None:
        self.src, self.dst = src, dst
        self._resampler = None if src == dst else av.AudioResampler(format="s16", layout="mono", rate=dst)
        self._pts = 0

    def convert(self, pcm: np.ndarray) -> np.ndarray:
        if self._resampler is None or pcm.size == 0:
            return pcm
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, np.int16).reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate, frame.pts = self.src, self._pts
        self._pts += pcm.size
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        return np.zeros(0, np.int16) if self._resampler is None else self._collect(self._resampler.resample(None))

    @staticmethod
    def _collect(frames: list) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.int16)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16, copy=False)


def _mono_int16(frame: TTSAudioRawFrame) -> np.ndarray:
    pcm = np.frombuffer(frame.audio, dtype="<i2")
    if frame.num_channels > 1:
        pcm = pcm[: pcm.size - pcm.size % frame.num_channels].reshape(-1, frame.num_channels).mean(axis=1)
    return pcm.astype(np.int16)


def error_category(exc: BaseException) -> ErrorCategory:
    """Pipecat's category of a failure talking to the avatar server."""
    if isinstance(exc, ClientError):
        if exc.status in (401, 403):
            return ErrorCategory.AUTHENTICATION
        if exc.status == 429 or exc.status == 503:
            return ErrorCategory.RATE_LIMIT
        if 400 <= exc.status < 500:
            return ErrorCategory.INVALID_REQUEST
        if exc.status >= 500:
            return ErrorCategory.SERVER
        return ErrorCategory.CONNECTIVITY
    if isinstance(exc, (aiohttp.ClientConnectionError, OSError, asyncio.TimeoutError, ConnectionError)):
        return ErrorCategory.CONNECTIVITY
    return ErrorCategory.UNKNOWN


class _Utterance:
    """The TTS response being sent: its number on the server and its length at the output rate."""

    def __init__(self, number: int, src_rate: int, dst_rate: int, out_rate: int) -> None:
        self.number = number
        self.to_wire = _PcmConverter(src_rate, dst_rate)
        self.src_rate, self.out_rate = src_rate, out_rate
        self.held: list[np.ndarray] = []  # audio before MIN_UTTERANCE_SECONDS: not sent yet
        self.src_samples = 0
        self.sent = False

    def out_samples(self) -> int:
        return round(self.src_samples * self.out_rate / self.src_rate)


class AvatarStreamVideoService(AIService):
    """An avatarstream avatar in a Pipecat pipeline (see the module docstring)."""

    def __init__(
        self,
        *,
        server_url: str | None = None,
        api_key: str | None = None,
        image: str | Path | bytes = "astronaut",
        engine: str = "lite",
        size: int = 512,
        controls: Mapping[str, Any] | None = None,
        local_server_config: ServerConfig | None = None,
        local_server: LocalAvatarServer | None = None,
        connect_timeout_s: float = 30.0,
        drain_timeout_s: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(settings=ServiceSettings(model=None), **kwargs)
        if server_url is not None and local_server is not None:
            raise ValueError("give server_url (a remote server) or local_server (one in this process), not both")
        self.server_url = server_url
        self.api_key = api_key
        self.image = image
        self.engine = engine
        self.size = size
        self.controls = dict(controls or {})
        self.local_server_config = local_server_config
        self.connect_timeout_s = connect_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.local_server = local_server  # started by the caller (shared), else InProcessAvatar starts its own
        self.inprocess: InProcessAvatar | None = None  # the in-process runner, while it runs
        self.output: AvatarOutput | None = None  # the media path, while connected
        self.client: AvatarClient | None = None
        self.session_id: str | None = None
        self.out_rate = 24000
        self.frames_out = 0
        self.speech_samples_out = 0
        self.interruptions = 0
        self._wire_rate = 24000
        self._utterance: _Utterance | None = None
        self._numbered = 0  # utterances the server numbered (1, 2, ...)
        self._media_task: asyncio.Task | None = None
        self._closing = asyncio.Lock()
        self.first_speech_out: dict[int, float] = {}  # utterance number -> time.perf_counter() of its first audio out
        self.first_speech_in: dict[int, float] = {}  # utterance number -> time of its first audio in

    def can_generate_metrics(self) -> bool:
        return False

    @property
    def connected(self) -> bool:
        return self.client is not None and self.session_id is not None

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        self.out_rate = self.processor_setup.audio_out_sample_rate
        self._wire_rate = wire_rate(self.out_rate)
        try:
            await asyncio.wait_for(self._connect(), self.connect_timeout_s)
        except Exception as exc:  # every failure becomes one clear error frame; the voice goes on
            await self._disconnect(delete=True)
            where = self.server_url or "the in-process avatarstream server"
            reason = f"timed out after {self.connect_timeout_s:g} s" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            await self.push_error(f"avatarstream: could not start an avatar session on {where}: {reason}",
                                  exception=exc, category=error_category(exc))

    async def _connect(self) -> None:
        if self.server_url is None:
            self.inprocess = InProcessAvatar(image=self.image, engine=self.engine, size=self.size,
                                             controls=self.controls, server=self.local_server,
                                             config=self.local_server_config)
            session = await self.inprocess.open()
            assert self.inprocess.client is not None and self.inprocess.server is not None
            self.client, url = self.inprocess.client, self.inprocess.server.url
            output: AvatarOutput = InProcessOutput(self, session)
        else:
            url = self.server_url
            self.client = AvatarClient(url, api_key=self.api_key)
            info = await self.client.create_session(image=self.image, engine=self.engine, size=self.size,
                                                    controls=self.controls or None)
            output = WebRTCOutput(self, self.client, info)
        assert self.client.session is not None
        self.session_id = self.client.session.id
        self.client.on("error", self._on_server_error)
        await self.client.connect(sample_rate=self._wire_rate)
        await output.open()
        self.output = output
        self._media_task = self.create_task(output.run(), name="avatarstream-media")
        logger.info(f"{self}: avatar session {self.session_id} on {url} ({type(output).__name__}, "
                    f"{self.out_rate} Hz out)")

    async def _on_server_error(self, event: dict) -> None:
        """The agent socket refused a message (``buffer_full``, ``frame_too_large`` ...): an error frame."""
        code = str(event.get("code", "error"))
        category = ErrorCategory.RATE_LIMIT if code == "buffer_full" else ErrorCategory.INVALID_REQUEST
        await self.push_error(f"avatarstream: the server refused a message ({code}): {event.get('message', '')}",
                              category=category)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._drain()
        await self._disconnect(delete=True)

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._disconnect(delete=True)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._disconnect(delete=True)

    async def _drain(self) -> None:
        """Let the replies already sent play out (bounded by ``drain_timeout_s``)."""
        if not self.connected or self.client is None:
            return
        await self._end_utterance()
        last = self._numbered
        deadline = time.monotonic() + self.drain_timeout_s
        client = self.client

        def finished(ev: dict) -> bool:
            return ev.get("utterance") == last

        try:
            if last:
                await client.wait_for("playback_finished", predicate=finished, timeout=self.drain_timeout_s)
            while self.output is not None and self.output.pending() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        except ClientError as exc:
            logger.warning(f"{self}: replies did not finish playing before the end: {exc}")

    async def _disconnect(self, delete: bool) -> None:
        async with self._closing:
            if self._media_task is not None:
                await self.cancel_task(self._media_task)
                self._media_task = None
            if self.output is not None:
                output, self.output = self.output, None
                with contextlib.suppress(Exception):
                    await output.close()
            client, self.client = self.client, None
            if self.inprocess is not None:  # deletes its session, stops a server it started
                inprocess, self.inprocess = self.inprocess, None
                await inprocess.close()
            elif client is not None:
                with contextlib.suppress(Exception):
                    await client.close(delete_session=delete and self.session_id is not None)
            self.session_id = None

    # -- frames in -------------------------------------------------------------------------
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame) and self.connected:
            try:
                await self._send_audio(frame)
            except (ClientError, aiohttp.ClientError, ConnectionError) as exc:
                await self.push_error(f"avatarstream: sending speech failed: {exc}", exception=exc,
                                      category=error_category(exc))
            return
        if isinstance(frame, TTSStoppedFrame) and self.connected:
            await self._end_utterance()
        elif isinstance(frame, TTSStartedFrame) and self.connected:
            await self._end_utterance()  # a response left open (no stop frame) ends here
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt()
        await self.push_frame(frame, direction)

    async def _send_audio(self, frame: TTSAudioRawFrame) -> None:
        assert self.client is not None
        u = self._utterance
        if u is None or u.src_rate != frame.sample_rate:
            await self._end_utterance()
            u = self._utterance = _Utterance(self._numbered + 1, frame.sample_rate, self._wire_rate, self.out_rate)
        pcm = _mono_int16(frame)
        u.src_samples += pcm.size
        if not u.sent:
            u.held.append(pcm)
            if u.src_samples < MIN_UTTERANCE_SECONDS * u.src_rate:
                return
            pcm, u.held = np.concatenate(u.held), []
            u.sent = True
            self._numbered = u.number
            self.first_speech_in[u.number] = time.perf_counter()
        if self.output is not None:
            self.output.expect(u.number, u.out_samples())
        await self.client.push_audio(u.to_wire.convert(pcm))

    async def _end_utterance(self) -> None:
        u, self._utterance = self._utterance, None
        if u is None or not u.sent or self.client is None:
            return
        tail = u.to_wire.flush()
        if tail.size:
            await self.client.push_audio(tail)
        if self.output is not None:
            self.output.expect(u.number, u.out_samples(), final=True)
        await self.client.end_utterance()

    async def _interrupt(self) -> None:
        """Barge-in: nothing more of the replies sent so far leaves; the server drops them too."""
        self._utterance = None
        if not self.connected or self.client is None:
            return
        self.interruptions += 1
        if self.output is not None:
            self.output.interrupt_through(self._numbered)
        try:
            await self.client.interrupt()
        except (ClientError, aiohttp.ClientError, ConnectionError) as exc:
            await self.push_error(f"avatarstream: interrupt failed: {exc}", exception=exc,
                                  category=error_category(exc))



class AvatarOutput(Protocol):
    """One media path from the session back into the pipeline (``run`` is the service's media task)."""

    async def open(self) -> None: ...

    async def run(self) -> None: ...

    def expect(self, utterance: int, samples: int, final: bool = False) -> None:
        """``samples`` (at the output rate) of ``utterance`` were sent so far; ``final``: all of it."""

    def interrupt_through(self, utterance: int) -> None:
        """The agent interrupted: nothing more of the replies up to ``utterance`` goes out."""

    def pending(self) -> int:
        """Replies sent whose speech has not all gone out yet."""

    async def close(self) -> None: ...


class InProcessOutput:
    """A co-located session read directly (``SessionReader``); the speech cut back out (``SpeechCutter``)."""

    def __init__(self, service: AvatarStreamVideoService, session: AvatarSession) -> None:
        self.service = service
        self.reader = SessionReader(session)
        self.cutter = SpeechCutter(service.out_rate)
        self.first_index: int | None = None

    async def open(self) -> None:
        await self.reader.open()

    def expect(self, utterance: int, samples: int, final: bool = False) -> None:
        self.cutter.expect(utterance, samples, final=final)

    def interrupt_through(self, utterance: int) -> None:
        self.cutter.interrupt_through(utterance)

    def pending(self) -> int:
        return self.cutter.pending()

    async def close(self) -> None:
        await self.reader.close()

    async def run(self) -> None:
        svc, cutter = self.service, self.cutter
        try:
            while True:
                tick = await self.reader.next()
                if self.first_index is None:
                    self.first_index = tick.index
                for ev in tick.events:
                    cutter.on_event(ev)
                if tick.image is not None:
                    image = OutputImageRawFrame(image=tick.image.tobytes(),
                                                size=(tick.image.shape[1], tick.image.shape[0]), format="RGB")
                    image.pts = (tick.index - self.first_index) * FRAME_NS
                    await svc.push_frame(image)
                    svc.frames_out += 1
                for piece in cutter.feed(tick.index, tick.audio16k):
                    audio = TTSAudioRawFrame(audio=piece.audio.tobytes(), sample_rate=svc.out_rate, num_channels=1)
                    audio.pts = (piece.position - self.first_index * cutter.frame_samples) * NS_PER_S // svc.out_rate
                    svc.first_speech_out.setdefault(piece.utterance, time.perf_counter())
                    await svc.push_frame(audio)
                    svc.speech_samples_out += piece.audio.size
        except SessionClosed as exc:
            if not svc._closing.locked():
                await svc.push_error(f"avatarstream: the avatar session ended: {exc}", exception=exc,
                                     category=ErrorCategory.SERVER)
        except Exception as exc:  # a bug must surface as an error frame, not a silent dead task
            await svc.push_error(f"avatarstream: reading the avatar failed: {exc!r}", exception=exc,
                                 category=ErrorCategory.UNKNOWN)


class WebRTCOutput:
    """A WHEP viewer of the session: video and the avatar's continuous audio, as received."""

    def __init__(self, service: AvatarStreamVideoService, client: AvatarClient, info: SessionInfo) -> None:
        self.service, self.client, self.info = service, client, info
        self.reader = WhepReader()
        self.audio = _PcmConverter(WEBRTC_AUDIO_RATE, service.out_rate)
        self.audio_pts0: int | None = None
        self.video_pts0: int | None = None

    async def open(self) -> None:
        whep_url = self.client.base_url.join(URL(URL(self.info.whep_url).path_qs))  # the server may sit behind a proxy
        await self.reader.join(self.client.http, str(whep_url), self.info.token)

    def expect(self, utterance: int, samples: int, final: bool = False) -> None:
        return None  # the avatar's audio comes back whole: nothing to cut

    def interrupt_through(self, utterance: int) -> None:
        return None  # the server silences what it has not sent

    def pending(self) -> int:
        return 0

    async def close(self) -> None:
        await self.reader.close()

    async def run(self) -> None:
        svc = self.service
        while True:
            item = await self.reader.next()
            if item is None:
                if not svc._closing.locked():
                    await svc.push_error("avatarstream: the avatar's WebRTC stream ended",
                                         category=ErrorCategory.CONNECTIVITY)
                return
            if isinstance(item, ReceivedVideo):
                if self.video_pts0 is None:
                    self.video_pts0 = item.pts
                image = OutputImageRawFrame(image=item.image.tobytes(), size=(item.image.shape[1], item.image.shape[0]),
                                            format="RGB")
                image.pts = (item.pts - self.video_pts0) * NS_PER_S // 90_000
                await svc.push_frame(image)
                svc.frames_out += 1
            elif isinstance(item, ReceivedAudio):
                if self.audio_pts0 is None:
                    self.audio_pts0 = item.pts
                pcm = self.audio.convert(item.samples)
                if pcm.size:
                    audio = SpeechOutputAudioRawFrame(audio=pcm.tobytes(), sample_rate=svc.out_rate, num_channels=1)
                    audio.pts = (item.pts - self.audio_pts0) * NS_PER_S // WEBRTC_AUDIO_RATE
                    await svc.push_frame(audio)


__all__ = ["AvatarOutput", "AvatarStreamVideoService", "InProcessOutput", "WebRTCOutput", "error_category", "wire_rate"]
