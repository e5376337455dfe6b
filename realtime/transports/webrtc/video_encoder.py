"""One real-time video encoder (PyAV: libvpx VP8 or libx264 H.264) with ``VideoEncoding`` settings.

``FrameEncoder.encode(image, pts, keyframe)`` turns an RGB frame into one ``av.Packet`` (the whole
access unit: what aiortc's ``Encoder.pack`` packetises into RTP payloads). No frame lag: every
call returns the packet of that frame (VP8 ``lag-in-frames=0``, x264 ``tune=zerolatency``).
Used by the shared per-session encoder (``shared_video.py``) and by the encoder benchmark.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np

from avatarstream.realtime.clock import VIDEO_TIME_BASE
from avatarstream.realtime.video_settings import VideoEncoding

FPS_TIME_BASE = Fraction(1, 25)


class FrameEncoder:
    """Encodes ``size x size`` RGB frames of one stream. Calls are serialised by a lock: a libvpx or
    x264 context used by two threads at once corrupts memory (it crashed a soak with SIGSEGV)."""

    def __init__(self, codec: str, size: int, settings: VideoEncoding) -> None:
        self.codec_name = codec
        self.size = size
        self.settings = settings
        self.frames = 0
        self.keyframes = 0
        self.encode_seconds = 0.0  # wall time spent in encode() (colour conversion included)
        self.bytes_out = 0
        self._ctx = self._open(codec, size, settings)
        self._busy = threading.Lock()

    @staticmethod
    def _open(codec: str, size: int, s: VideoEncoding) -> av.video.codeccontext.VideoCodecContext:
        bitrate = s.bitrate_kbps * 1000
        gop = max(1, round(s.keyframe_interval_s * 25))
        if codec == "vp8":
            ctx = av.CodecContext.create("libvpx", "w")
            ctx.options = {
                "deadline": "realtime",
                "cpu-used": str(s.vp8_speed),
                "lag-in-frames": "0",
                "error-resilient": "1",  # a lost packet damages one frame, not the rest of the GOP
                "static-thresh": "1",
                "undershoot-pct": "100",
                "overshoot-pct": "15",
                "maxrate": str(bitrate * 3 // 2),
                "bufsize": str(bitrate),
                "partitions": "0",
            }
            ctx.qmin, ctx.qmax = 4, 56
        elif codec == "h264":
            ctx = av.CodecContext.create("libx264", "w")
            ctx.options = {
                "preset": s.h264_preset,
                "tune": "zerolatency",
                "maxrate": str(bitrate * 3 // 2),
                "bufsize": str(bitrate),
                "repeat-headers": "1",  # SPS/PPS with every keyframe: a viewer can join at any keyframe
                "forced-idr": "1",
            }
            ctx.profile = "Constrained Baseline"
        else:
            raise ValueError(f"no encoder for video codec {codec!r}")
        ctx.width = ctx.height = size
        ctx.pix_fmt = "yuv420p"
        ctx.bit_rate = bitrate
        ctx.gop_size = gop
        ctx.framerate = Fraction(25, 1)
        ctx.time_base = FPS_TIME_BASE
        ctx.thread_count = s.threads
        ctx.open()
        return ctx

    def encode(self, image: np.ndarray, pts: int, keyframe: bool = False) -> tuple[av.Packet, bool]:
        """(packet, is_keyframe) for ``image`` (uint8 RGB, size x size); ``pts`` at 90 kHz."""
        with self._busy:
            return self._encode(image, pts, keyframe)

    def _encode(self, image: np.ndarray, pts: int, keyframe: bool) -> tuple[av.Packet, bool]:
        t0 = time.perf_counter()
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = self.frames
        frame.time_base = FPS_TIME_BASE
        frame.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
        data = b"".join(bytes(p) for p in self._ctx.encode(frame))
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = VIDEO_TIME_BASE
        self.frames += 1
        is_key = self._is_keyframe(data)
        self.keyframes += is_key
        self.bytes_out += len(data)
        self.encode_seconds += time.perf_counter() - t0
        return packet, is_key

    def _is_keyframe(self, data: bytes) -> bool:
        if not data:
            return False
        if self.codec_name == "vp8":
            return data[0] & 1 == 0  # VP8 frame tag: bit 0 clear = key frame
        return any(data[i + 3] & 0x1F == 5 for i in _start_codes(data))  # an IDR slice

    @property
    def ms_per_frame(self) -> float:
        return 1000 * self.encode_seconds / max(1, self.frames)


def _start_codes(data: bytes) -> Iterator[int]:
    i = data.find(b"\x00\x00\x01")
    while 0 <= i < len(data) - 3:
        yield i
        i = data.find(b"\x00\x00\x01", i + 3)
