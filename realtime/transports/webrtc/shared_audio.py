"""Encode a session's audio once, as one continuous Opus stream that every viewer's sender sends.

aiortc encodes audio per ``RTCRtpSender`` (its ``OpusEncoder``: stereo, 96 kbps, a resampler of its
own) whenever the track yields ``av.AudioFrame``; a track that yields ``av.Packet`` is only
packetised (``OpusEncoder.pack``: the packet's bytes are the RTP payload, its timestamp is the
packet's pts in the 48 kHz RTP clock). So one ``SharedAudioEncoder`` per session upsamples each
16 kHz slot to 48 kHz once and encodes each 20 ms audio tick once (mono Opus), and every viewer's
``EncodedAudioTrack`` hands the same packet to its own sender.

Opus is stateful (each packet is predicted from the ones before it), so the encoder encodes every
tick in order, silence included (audio never pauses): every viewer gets packets of one and the
same continuous stream. A viewer that joins, or falls behind, skips ahead by whole packets, which
its decoder takes as a short gap (packet loss concealment) before it follows the stream again;
ticks no viewer asked for in between are still encoded (up to ``CACHED_PACKETS``), so the stream
itself stays continuous.

aiortc fills the RTP audio-level header extension (RFC 6464; browsers report it, e.g.
``getSynchronizationSources``) only for raw frames; here each tick's level is computed once
(``EncodedAudio.level``) and the viewer hands it to its sender (``peer.py``).
"""

from __future__ import annotations

import math
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from avatarstream.realtime.clock import (AUDIO_CLOCK_RATE, AUDIO_FRAMES_PER_VIDEO_FRAME, AUDIO_SAMPLES_PER_FRAME,
                                         AUDIO_TIME_BASE, SessionClock)
from avatarstream.realtime.transports.base import SessionOutput
from avatarstream.realtime.transports.webrtc.audio_convert import Upsampler16kTo48k

OPUS_BITRATE = 48_000  # bit/s of the mono speech stream (aiortc's own encoder: 96 kbps stereo)
CACHED_PACKETS = 32  # encoded ticks kept for senders running behind (an audio sender lags <= 10)


@dataclass(frozen=True)
class EncodedAudio:
    tick: int  # audio clock tick (20 ms) it is sent at: pts = tick * 960 at 48 kHz
    packet: av.Packet
    level: int  # audio level in -dBov (RFC 6464: 0 loudest .. 127 silence), as aiortc computes it


def audio_level_dbov(pcm: np.ndarray) -> int:
    """RFC 6465 Appendix A level of int16 samples, in dBov (-127 .. 0): aiortc's formula, vectorised."""
    rms = math.sqrt(float(np.mean(np.square(pcm, dtype=np.float64)))) / 32767 if pcm.size else 0.0
    return round(min(max(20 * math.log10(rms), -127.0), 0.0)) if rms > 0 else -127


class SharedAudioEncoder:
    """One Opus encoder for one session; each audio tick is encoded once, in tick order."""

    def __init__(self, session: SessionOutput, shared: bool = True) -> None:
        self.session = session
        self.shared = shared  # False: private to one viewer (the per-viewer mode)
        self.users = 0  # viewer tracks using it
        self._codec: av.AudioCodecContext | None = None
        self._upsampler = Upsampler16kTo48k()
        self._converted: tuple[int, np.ndarray | None] = (-1, None)  # (content index, int16[1920])
        self._silence = np.zeros(AUDIO_SAMPLES_PER_FRAME, np.int16)
        self._cache: OrderedDict[int, EncodedAudio] = OrderedDict()
        self._last_tick: int | None = None
        self.first_tick: int | None = None  # the first audio tick encoded
        self.packets = 0  # packets encoded: one per audio tick from first_tick to the last, whoever took it
        self.bytes_out = 0
        self.encode_seconds = 0.0

    def packet_at(self, tick: int) -> EncodedAudio | None:
        """The packet of audio tick ``tick``; None when the stream has moved past it (a late viewer).

        Encodes synchronously (a 20 ms mono Opus frame costs ~0.1 ms, less than a hop to a thread)."""
        cached = self._cache.get(tick)
        if cached is not None:
            return cached
        if self._last_tick is not None and tick <= self._last_tick:
            return None
        first = tick if self._last_tick is None else max(self._last_tick + 1, tick - CACHED_PACKETS + 1)
        for t in range(first, tick + 1):  # ticks no viewer took in between keep the stream continuous
            self._encode(t)
        return self._cache[tick]

    def _pcm(self, tick: int) -> np.ndarray:
        """int16[960]: the 48 kHz samples of audio tick ``tick`` (silence when nothing plays)."""
        video_tick, half = divmod(tick, AUDIO_FRAMES_PER_VIDEO_FRAME)
        index = video_tick - self.session.delay_frames
        if self._converted[0] != index:  # each 16 kHz slot is upsampled once, for both of its halves
            audio = self.session.audio_for(index)
            if audio is None:
                self._upsampler.reset()
            self._converted = (index, None if audio is None else self._upsampler(audio))
        pcm48k = self._converted[1]
        if pcm48k is None:
            return self._silence
        return pcm48k[half * AUDIO_SAMPLES_PER_FRAME:(half + 1) * AUDIO_SAMPLES_PER_FRAME]

    def _encode(self, tick: int) -> None:
        t0 = time.perf_counter()
        if self._codec is None:
            self._codec = opus_encoder()
        pcm = np.ascontiguousarray(self._pcm(tick), dtype=np.int16)
        packet = encode_tick(self._codec, pcm, tick)
        self.encode_seconds += time.perf_counter() - t0
        self.packets += 1
        self.bytes_out += packet.size
        self._last_tick = tick
        if self.first_tick is None:
            self.first_tick = tick
        self._cache[tick] = EncodedAudio(tick, packet, audio_level_dbov(pcm))
        while len(self._cache) > CACHED_PACKETS:
            self._cache.popitem(last=False)

    @property
    def ticks_spanned(self) -> int:
        """Audio ticks from the first encoded to the last (each is encoded once, taken by any number of viewers)."""
        return 0 if self.first_tick is None or self._last_tick is None else self._last_tick - self.first_tick + 1

    def stats(self) -> dict[str, Any]:
        n = max(1, self.packets)
        return {"codec": "opus", "shared": self.shared, "viewers": self.users, "packets": self.packets,
                "encode_ms_per_packet": round(1000 * self.encode_seconds / n, 3),
                "kbps": round(self.bytes_out * 8 / 1000 / n * 50, 1)}


def encode_tick(codec: av.AudioCodecContext, pcm: np.ndarray, tick: int) -> av.Packet:
    """The Opus packet of audio tick ``tick`` (``pcm``: its 960 int16 samples at 48 kHz, contiguous), sent at
    pts ``tick * 960``; ticks must reach ``codec`` in order (Opus is stateful)."""
    frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES_PER_FRAME)
    frame.planes[0].update(pcm.tobytes())
    frame.sample_rate = AUDIO_CLOCK_RATE
    frame.pts = SessionClock.audio_pts(tick)
    frame.time_base = AUDIO_TIME_BASE
    packets = codec.encode(frame)
    if len(packets) != 1:  # libopus returns each 960-sample frame's packet at once
        raise RuntimeError(f"Opus encoder returned {len(packets)} packets for one 20 ms frame")
    packet = packets[0]
    # libopus stamps packets 312 samples (its look-ahead) early; the RTP timestamp is the tick's
    packet.pts = SessionClock.audio_pts(tick)
    packet.time_base = AUDIO_TIME_BASE
    return packet


def opus_encoder() -> av.AudioCodecContext:
    """The session's Opus encoder: mono 48 kHz, ``OPUS_BITRATE``, 20 ms frames (VoIP)."""
    codec = av.CodecContext.create("libopus", "w")
    assert isinstance(codec, av.AudioCodecContext)
    codec.bit_rate = OPUS_BITRATE
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = AUDIO_CLOCK_RATE
    codec.time_base = AUDIO_TIME_BASE
    codec.options = {"application": "voip", "frame_duration": "20"}
    return codec


class SessionAudioEncoders:
    """The shared audio encoders of the server's sessions, one per session while a viewer uses it.
    Sessions are held weakly: a closed, dropped session leaves nothing behind."""

    def __init__(self) -> None:
        self._by_session: weakref.WeakKeyDictionary[Any, SharedAudioEncoder] = weakref.WeakKeyDictionary()

    def acquire(self, session: SessionOutput, shared: bool = True) -> SharedAudioEncoder:
        """The session's shared encoder, or (``shared=False``) a private one for one viewer."""
        if shared:
            encoder = self._by_session.get(session)
            if encoder is None:
                encoder = self._by_session[session] = SharedAudioEncoder(session)
        else:
            encoder = SharedAudioEncoder(session, shared=False)
        encoder.users += 1
        return encoder

    def release(self, encoder: SharedAudioEncoder) -> None:
        encoder.users -= 1
        if encoder.users <= 0 and self._by_session.get(encoder.session) is encoder:
            del self._by_session[encoder.session]

    def encoder_of(self, session: SessionOutput) -> SharedAudioEncoder | None:
        return self._by_session.get(session)


SESSION_AUDIO_ENCODERS = SessionAudioEncoders()  # the process's shared audio encoders
