"""aiortc tracks that send one session's avatar to one viewer, paced by the session clock.

Each viewer gets its own pair of tracks reading the session's shared output ring by clock
index, so there is no per-viewer queue at all: a viewer whose sender falls more than a frame
behind (slow encoder or network) skips to the current tick, i.e. drops frames, and memory
never grows.

* ``AvatarVideoTrack``: at tick ``m`` sends the frame of content index ``m - D`` (the last
  rendered one if that frame is late), pts ``m * 3600`` at 90 kHz, as a raw frame that aiortc's
  sender encodes (one encoder per viewer: the ``aiortc`` encoder mode).
* ``EncodedVideoTrack``: the same frames, already encoded once per session by a
  ``SharedVideoEncoder`` (``shared_video.py``): it yields ``av.Packet`` objects, which the sender
  only packetises. It skips only to a keyframe (an inter frame needs the one before it).
* ``AvatarAudioTrack``: at audio tick ``k`` sends the 20 ms half ``k % 2`` of content index
  ``k // 2 - D``, upsampled 16 -> 48 kHz by this track; silence when nothing is playing, so
  audio never pauses. pts ``k * 960`` at 48 kHz. aiortc's sender encodes it (the ``aiortc`` and
  ``shared-video`` encoder modes).
* ``EncodedAudioTrack``: the same ticks as Opus packets of a ``SharedAudioEncoder``
  (``shared_audio.py``: one per session, or one per viewer), which the sender only packetises.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from typing import Generic, TypeVar

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatarstream.realtime.clock import (AUDIO_CLOCK_RATE, AUDIO_FRAMES_PER_VIDEO_FRAME, AUDIO_SAMPLES_PER_FRAME,
                                         AUDIO_TIME_BASE, VIDEO_TIME_BASE, SessionClock)
from avatarstream.realtime.transports.base import SessionOutput
from avatarstream.realtime.transports.pacing import TickPacer
from avatarstream.realtime.transports.webrtc.audio_convert import Upsampler16kTo48k
from avatarstream.realtime.transports.webrtc.shared_audio import SharedAudioEncoder
from avatarstream.realtime.transports.webrtc.shared_video import CACHED_FRAMES, SharedVideoEncoder

EncoderT = TypeVar("EncoderT", SharedVideoEncoder, SharedAudioEncoder)

MAX_VIDEO_LAG_FRAMES = 1  # a video sender may run up to one frame late (it catches up) before skipping
MAX_AUDIO_LAG_FRAMES = 10  # an audio sender more than 200 ms behind the clock skips ahead;
# less than that it catches up by sending back to back (a gap is worse than a short burst)
MAX_ENCODED_LAG_FRAMES = CACHED_FRAMES // 2  # sending a cached packet is cheap: catch up further,
# since skipping an encoded frame costs a keyframe


async def _running_clock(session: SessionOutput) -> SessionClock:
    await session.started.wait()
    clock = session.clock
    if clock is None or session.closed:
        raise MediaStreamError
    return clock


class AvatarVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, session: SessionOutput) -> None:
        super().__init__()
        self._session = session
        self._pacer = TickPacer(MAX_VIDEO_LAG_FRAMES)
        self.frames_sent = 0
        self._blank: np.ndarray | None = None

    @property
    def frames_skipped(self) -> int:
        """Ticks skipped because this viewer's sender was late."""
        return self._pacer.skipped

    async def recv(self) -> av.VideoFrame:
        s = self._session
        clock = await _running_clock(s)
        if self.readyState != "live":
            raise MediaStreamError
        tick = self._pacer.next(clock.current_frame())  # more than a frame behind: drop, don't queue
        await clock.sleep_until(clock.frame_time(tick))
        if self.readyState != "live" or s.closed:
            raise MediaStreamError
        frame = s.video_for(tick - s.delay_frames)
        if frame is not None:
            image = frame.image
        else:
            if self._blank is None:
                self._blank = np.full((s.size, s.size, 3), 96, np.uint8)
            image = self._blank
        out = av.VideoFrame.from_ndarray(image, format="rgb24")
        out.pts = clock.video_pts(tick)
        out.time_base = VIDEO_TIME_BASE
        self.frames_sent += 1
        return out


class AvatarAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, session: SessionOutput) -> None:
        super().__init__()
        self._session = session
        self._pacer = TickPacer(MAX_AUDIO_LAG_FRAMES)
        self.frames_sent = 0
        self._silence = np.zeros(AUDIO_SAMPLES_PER_FRAME, np.int16)
        self._upsampler = Upsampler16kTo48k()
        self._converted: tuple[int, np.ndarray | None] = (-1, None)  # (content index, int16[1920])

    def _pcm48k(self, content_index: int) -> np.ndarray | None:
        """int16[1920] (two 20 ms frames) of a content index, converted once per index."""
        if self._converted[0] != content_index:
            audio = self._session.audio_for(content_index)
            if audio is None:
                self._upsampler.reset()
            self._converted = (content_index, None if audio is None else self._upsampler(audio))
        return self._converted[1]

    @property
    def frames_skipped(self) -> int:
        """Ticks skipped because this viewer's sender was late."""
        return self._pacer.skipped

    async def recv(self) -> av.AudioFrame:
        s = self._session
        clock = await _running_clock(s)
        if self.readyState != "live":
            raise MediaStreamError
        tick = self._pacer.next(clock.current_audio_frame())
        await clock.sleep_until(clock.audio_frame_time(tick))
        if self.readyState != "live" or s.closed:
            raise MediaStreamError
        video_tick, half = divmod(tick, AUDIO_FRAMES_PER_VIDEO_FRAME)
        pcm48k = self._pcm48k(video_tick - s.delay_frames)
        pcm = self._silence if pcm48k is None else pcm48k[half * AUDIO_SAMPLES_PER_FRAME:(half + 1) * AUDIO_SAMPLES_PER_FRAME]
        out = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES_PER_FRAME)
        out.planes[0].update(np.ascontiguousarray(pcm, dtype=np.int16).tobytes())
        out.sample_rate = AUDIO_CLOCK_RATE
        out.pts = clock.audio_pts(tick)
        out.time_base = AUDIO_TIME_BASE
        self.frames_sent += 1
        return out


class _EncodedTrack(MediaStreamTrack, Generic[EncoderT]):
    """A viewer's track that hands its sender packets of a session-wide encoder (``bind`` it once the
    codec is negotiated): aiortc packetises them without encoding again. Each recv paces to the next
    clock tick (``TickPacer``) and asks ``_packet_for`` for that tick's packet, or None to skip it."""

    def __init__(self, session: SessionOutput, max_lag: int) -> None:
        super().__init__()
        self._session = session
        self._encoder: EncoderT | None = None
        self._bound = asyncio.Event()
        self._pacer = TickPacer(max_lag)
        self.frames_sent = 0
        self._late = 0  # ticks the shared stream had already left behind, or not sendable yet

    def bind(self, encoder: EncoderT) -> None:
        self._encoder = encoder
        self._bound.set()

    @property
    def encoder(self) -> EncoderT | None:
        return self._encoder

    @property
    def frames_skipped(self) -> int:
        """Ticks skipped because this viewer's sender was late."""
        return self._pacer.skipped + self._late

    # each kind paces on its own ticks (video 40 ms, audio 20 ms) and says what it sends for one
    @staticmethod
    @abstractmethod
    def _current_tick(clock: SessionClock) -> int: ...

    @staticmethod
    @abstractmethod
    def _tick_start(clock: SessionClock, tick: int) -> float: ...

    @abstractmethod
    async def _packet_for(self, encoder: EncoderT, tick: int) -> av.Packet | None:
        """The packet to send at ``tick``, or None to skip the tick."""

    async def recv(self) -> av.Packet:
        s = self._session
        clock = await _running_clock(s)
        await self._bound.wait()
        encoder = self._encoder
        assert encoder is not None
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            tick = self._pacer.next(self._current_tick(clock))
            await clock.sleep_until(self._tick_start(clock, tick))
            if self.readyState != "live" or s.closed:
                raise MediaStreamError
            packet = await self._packet_for(encoder, tick)
            if packet is None:
                continue
            self.frames_sent += 1
            return packet


class EncodedVideoTrack(_EncodedTrack[SharedVideoEncoder]):
    """A viewer's video as packets of the session's shared video encoder.

    A frame is sent only when this viewer's decoder has its reference: after a skip, the viewer asks
    for a keyframe and waits for it."""

    kind = "video"

    def __init__(self, session: SessionOutput) -> None:
        super().__init__(session, MAX_ENCODED_LAG_FRAMES)
        self._last_sent: int | None = None  # tick of the last packet this viewer's decoder got
        self.keyframe_waits = 0  # frames not sent while waiting for a keyframe (join, or after a skip)

    def request_keyframe(self) -> None:
        """This viewer's decoder needs a keyframe (its sender got a PLI/FIR)."""
        if self._encoder is not None:
            self._encoder.request_keyframe()

    @staticmethod
    def _current_tick(clock: SessionClock) -> int:
        return clock.current_frame()

    @staticmethod
    def _tick_start(clock: SessionClock, tick: int) -> float:
        return clock.frame_time(tick)

    async def _packet_for(self, encoder: SharedVideoEncoder, tick: int) -> av.Packet | None:
        frame = await encoder.frame_at(tick)
        if frame is None:  # the shared stream is past this tick: this sender is late
            self._late += 1
            return None
        if not frame.keyframe and (self._last_sent is None or frame.previous != self._last_sent):
            encoder.request_keyframe()  # the decoder lacks this frame's reference
            self.keyframe_waits += 1
            return None
        self._last_sent = tick
        return frame.packet


class EncodedAudioTrack(_EncodedTrack[SharedAudioEncoder]):
    """A viewer's audio as packets of the session's Opus encoder.

    Paced like ``AvatarAudioTrack``; a sender more than ``MAX_AUDIO_LAG_FRAMES`` behind, or one
    asking for a tick the encoder has already left behind, skips ahead by whole packets."""

    kind = "audio"

    def __init__(self, session: SessionOutput) -> None:
        super().__init__(session, MAX_AUDIO_LAG_FRAMES)
        self.level: int | None = None  # audio level (dBov) of the packet recv() returned last

    @staticmethod
    def _current_tick(clock: SessionClock) -> int:
        return clock.current_audio_frame()

    @staticmethod
    def _tick_start(clock: SessionClock, tick: int) -> float:
        return clock.audio_frame_time(tick)

    async def _packet_for(self, encoder: SharedAudioEncoder, tick: int) -> av.Packet | None:
        encoded = encoder.packet_at(tick)
        if encoded is None:  # the stream is past this tick (beyond the cache): skip ahead
            self._late += 1
            return None
        self.level = encoded.level
        return encoded.packet
