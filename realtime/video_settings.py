"""How viewers' video is encoded: one typed record, validated once, no codec imports.

It sits below the transports (beside ``realtime/config.py``), so the server's configuration names its
settings without importing a transport: ``ServerConfig`` (``realtime/config.py``) derives its
``video_*`` fields from ``VIDEO_DEFAULTS``, ``avatar serve`` its flags from those fields, and the WebRTC
transport (``realtime/transports/webrtc/``) encodes with the record it is handed when a viewer connects.
Every encoder default is defined here once. The defaults were chosen with ``avatar bench --suite
capacity`` (quality vs cost of each setting, side by side; see docs/server.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class EncoderMode(str, Enum):
    """How a session's media is encoded for its WebRTC viewers (video and audio follow one switch)."""

    SHARED = "shared"  # video once per session and codec, Opus audio once per session (shared_audio.py)
    SHARED_VIDEO = "shared-video"  # video shared; audio encoded by each viewer's sender (aiortc's Opus)
    PER_VIEWER = "per-viewer"  # one video encoder (these settings) and one Opus encoder per viewer
    AIORTC = "aiortc"  # aiortc's own per-viewer encoders with their built-in settings (the old path)

    @property
    def shares_video(self) -> bool:
        return self in (EncoderMode.SHARED, EncoderMode.SHARED_VIDEO)

    @property
    def encodes_audio(self) -> bool:
        """Audio goes out as packets of our Opus encoder (shared or per viewer), not as raw frames."""
        return self in (EncoderMode.SHARED, EncoderMode.PER_VIEWER)


VIDEO_CODECS = ("vp8", "h264")
H264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium")


@dataclass(frozen=True)
class VideoEncoding:
    mode: EncoderMode = EncoderMode.SHARED
    codec: str = "vp8"  # preferred codec when the viewer offers several (browsers offer both)
    bitrate_kbps: int = 800  # target bitrate (VBR with a ceiling at 1.5x)
    keyframe_interval_s: float = 2.0  # a keyframe at least this often (and on request, see max_keyframe_rate)
    vp8_speed: int = 10  # libvpx cpu-used in realtime mode: 0 (best) .. 16 (fastest)
    h264_preset: str = "ultrafast"  # libx264 preset (always tune=zerolatency, constrained baseline)
    threads: int = 1  # encoder threads per encoder; more only pays at sizes above 640x480
    min_keyframe_gap_s: float = 0.5  # keyframe requests (new viewer, PLI/FIR) closer than this share one

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", EncoderMode(self.mode))  # ValueError names the bad mode
        if self.codec not in VIDEO_CODECS:
            raise ValueError(f"video codec must be one of {', '.join(VIDEO_CODECS)}, got {self.codec!r}")
        if not 100 <= self.bitrate_kbps <= 20_000:
            raise ValueError(f"video bitrate must be 100..20000 kbps, got {self.bitrate_kbps}")
        if not 0.2 <= self.keyframe_interval_s <= 60:
            raise ValueError(f"keyframe interval must be 0.2..60 s, got {self.keyframe_interval_s}")
        if not 0 <= self.vp8_speed <= 16:
            raise ValueError(f"VP8 speed (cpu-used) must be 0..16, got {self.vp8_speed}")
        if self.h264_preset not in H264_PRESETS:
            raise ValueError(f"H.264 preset must be one of {', '.join(H264_PRESETS)}, got {self.h264_preset!r}")
        if not 1 <= self.threads <= 16:
            raise ValueError(f"encoder threads must be 1..16, got {self.threads}")
        if not 0 <= self.min_keyframe_gap_s <= self.keyframe_interval_s:
            raise ValueError("min_keyframe_gap_s must be between 0 and the keyframe interval")


VIDEO_DEFAULTS = VideoEncoding()
