"""Encode a session's video once per clock tick, for every viewer that negotiated the same codec.

aiortc encodes per ``RTCRtpSender``: each sender creates its own encoder when its track yields
``av.VideoFrame`` objects. A track may instead yield ``av.Packet`` objects, which the sender only
packetises (``Encoder.pack``: RTP payloads, picture id, timestamp). So one ``SharedVideoEncoder``
per (session, codec) encodes each tick once and every viewer's ``EncodedVideoTrack`` hands the
same packet to its own sender: the second viewer costs packetisation and SRTP, not an encode.

What aiortc leaves to us here (see docs/server.md, "Capacity"):

* keyframes: a sender turns PLI/FIR into a flag that only its own encoder reads; the viewer
  track re-routes it to the shared encoder (``request_keyframe``), which rate-limits requests
  (``min_keyframe_gap_s``) so several viewers asking at once cost one keyframe;
* references: inter frames reference the previous *encoded* frame, so a viewer may skip a frame
  only until the next keyframe. Each ``EncodedFrame`` names the tick encoded before it; a viewer
  whose last sent tick is not that one waits for (and asks for) a keyframe instead of sending
  frames its decoder cannot use;
* bitrate: a sender's REMB estimate sets its own encoder's target, which a packet-yielding
  track never uses; a shared stream has one bitrate (``bitrate_kbps``) for all its viewers.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from avatarstream.realtime.clock import SessionClock
from avatarstream.realtime.transports.base import SessionOutput
from avatarstream.realtime.transports.webrtc.video_encoder import FrameEncoder
from avatarstream.realtime.video_settings import VIDEO_DEFAULTS, EncoderMode, VideoEncoding

CACHED_FRAMES = 8  # encoded ticks kept for viewers whose sender runs a little behind


@dataclass(frozen=True)
class EncodedFrame:
    tick: int  # clock tick it is sent at (pts = tick * 3600)
    packet: av.Packet
    keyframe: bool
    previous: int | None  # the tick encoded just before this one: the frame it references


class SharedVideoEncoder:
    """One encoder for one session and codec; each tick is encoded at most once, on first demand."""

    def __init__(self, session: SessionOutput, codec: str, settings: VideoEncoding) -> None:
        self.session = session
        self.codec = codec
        self.settings = settings
        self.users = 0  # viewer tracks using it
        self._encoder: FrameEncoder | None = None
        self._cache: OrderedDict[int, EncodedFrame] = OrderedDict()
        self._last_tick: int | None = None
        self._lock = asyncio.Lock()
        self._keyframe_wanted = True
        self._last_keyframe = -float("inf")
        self._blank: np.ndarray | None = None
        self.keyframe_requests = 0

    def request_keyframe(self) -> None:
        """Make a coming frame a keyframe (at most one per ``min_keyframe_gap_s``)."""
        self.keyframe_requests += 1
        self._keyframe_wanted = True

    async def frame_at(self, tick: int) -> EncodedFrame | None:
        """The encoded frame of ``tick``; None when the stream has moved past it (a late viewer)."""
        cached = self._cache.get(tick)
        if cached is not None:
            return cached
        async with self._lock:  # encodes run one at a time, in tick order
            cached = self._cache.get(tick)
            if cached is not None:
                return cached
            if self._last_tick is not None and tick <= self._last_tick:
                return None
            image = self._image(tick)
            now = time.monotonic()
            force = self._keyframe_wanted and now - self._last_keyframe >= self.settings.min_keyframe_gap_s
            if self._encoder is None:
                self._encoder = FrameEncoder(self.codec, image.shape[0], self.settings)
                force = True
            loop = asyncio.get_running_loop()
            encoding = loop.run_in_executor(None, self._encoder.encode, image, SessionClock.video_pts(tick), force)
            try:
                packet, is_key = await asyncio.shield(encoding)
            except asyncio.CancelledError:
                # the viewer that asked went away, but the encode runs on in its thread and the codec
                # now references this frame: keep the lock until it is done and file it, so the
                # next encode neither overlaps it nor chains to a frame no viewer can get
                await asyncio.wait([encoding])
                if not encoding.cancelled() and encoding.exception() is None:
                    self._file(tick, *encoding.result(), now)
                raise
            return self._file(tick, packet, is_key, now)

    def _file(self, tick: int, packet: av.Packet, is_key: bool, now: float) -> EncodedFrame:
        """Record the encoded frame of ``tick`` (the lock is held)."""
        if is_key:
            self._keyframe_wanted = False
            self._last_keyframe = now
        frame = EncodedFrame(tick, packet, is_key, self._last_tick)
        self._last_tick = tick
        self._cache[tick] = frame
        while len(self._cache) > CACHED_FRAMES:
            self._cache.popitem(last=False)
        return frame

    def _image(self, tick: int) -> np.ndarray:
        s = self.session
        frame = s.video_for(tick - s.delay_frames)
        if frame is not None:
            return frame.image
        if self._blank is None:
            self._blank = np.full((s.size, s.size, 3), 96, np.uint8)
        return self._blank

    def stats(self) -> dict[str, Any]:
        enc = self._encoder
        return {"codec": self.codec, "mode": self.settings.mode.value, "viewers": self.users,
                "frames": enc.frames if enc else 0, "keyframes": enc.keyframes if enc else 0,
                "keyframe_requests": self.keyframe_requests,
                "encode_ms_per_frame": round(enc.ms_per_frame, 2) if enc else None,
                "kbps": round(enc.bytes_out * 8 / 1000 / max(1, enc.frames) * 25, 1) if enc else None}


class SessionEncoders:
    """The shared encoders of the server's sessions, by session and codec; an encoder lives while a
    viewer uses it, with the settings of the viewer that created it (the server hands every viewer the
    same ones). Sessions are held weakly: a closed, dropped session leaves nothing behind."""

    def __init__(self) -> None:
        self._by_session: weakref.WeakKeyDictionary[Any, dict[str, SharedVideoEncoder]] = weakref.WeakKeyDictionary()

    def acquire(self, session: SessionOutput, codec: str, settings: VideoEncoding = VIDEO_DEFAULTS) -> SharedVideoEncoder:
        """The encoder of ``session`` and ``codec`` (created with ``settings`` if none runs; a private one
        in ``per-viewer`` mode)."""
        if settings.mode == EncoderMode.PER_VIEWER:
            encoder = SharedVideoEncoder(session, codec, settings)  # private to one viewer
        else:
            encoders = self._by_session.setdefault(session, {})
            encoder = encoders.get(codec) or encoders.setdefault(codec, SharedVideoEncoder(session, codec, settings))
        encoder.users += 1
        return encoder

    def release(self, encoder: SharedVideoEncoder) -> None:
        encoder.users -= 1
        encoders = self._by_session.get(encoder.session)
        if encoder.users <= 0 and encoders is not None and encoders.get(encoder.codec) is encoder:
            del encoders[encoder.codec]

    def encoders_of(self, session: SessionOutput) -> list[SharedVideoEncoder]:
        return list(self._by_session.get(session, {}).values())


SESSION_ENCODERS = SessionEncoders()  # the process's shared encoders (sessions are process objects)
