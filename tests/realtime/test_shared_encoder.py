"""The shared video encoder under viewer churn: a viewer that leaves while its frame is being
encoded must not let the next encode run on the same codec context at the same time (libvpx is not
thread-safe: that overlap crashed an hour-long soak with SIGSEGV), and the frame it left behind is
kept, so the next frame's reference chain stays true."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np

from avatarstream.engines.base import AvatarFrame
from avatarstream.realtime.transports.webrtc.shared_video import SharedVideoEncoder
from avatarstream.realtime.transports.webrtc.video_encoder import FrameEncoder
from avatarstream.realtime.video_settings import VideoEncoding


class SlowWatchedEncoder(FrameEncoder):
    """A real VP8 encoder that takes 0.2 s per frame and records how many encodes overlap."""

    active = 0
    most = 0
    guard = threading.Lock()

    def _encode(self, image, pts, keyframe):
        cls = SlowWatchedEncoder
        with cls.guard:
            cls.active += 1
            cls.most = max(cls.most, cls.active)
        try:
            time.sleep(0.2)
            return super()._encode(image, pts, keyframe)
        finally:
            with cls.guard:
                cls.active -= 1

    def encode(self, image, pts, keyframe=False):  # without the encoder's own lock: the shared encoder must serialise
        return self._encode(image, pts, keyframe)


def session() -> SimpleNamespace:
    image = np.full((64, 64, 3), 120, np.uint8)
    return SimpleNamespace(size=64, delay_frames=0, video_for=lambda c: AvatarFrame(c, image))


async def test_a_viewer_leaving_mid_encode_never_overlaps_encodes(monkeypatch):
    monkeypatch.setattr("avatarstream.realtime.transports.webrtc.shared_video.FrameEncoder", SlowWatchedEncoder)
    SlowWatchedEncoder.most = 0
    encoder = SharedVideoEncoder(session(), "vp8", VideoEncoding())
    leaving = asyncio.ensure_future(encoder.frame_at(1))
    await asyncio.sleep(0.05)  # its encode is running in a thread now
    leaving.cancel()
    staying = await encoder.frame_at(2)  # another viewer wants the next tick
    assert SlowWatchedEncoder.most == 1  # the second encode waited for the first
    assert staying.previous == 1  # tick 1 was kept: the decoder chain names the frame the codec used
    assert await encoder.frame_at(1) is not None and staying.keyframe is False


def test_frame_encoder_serialises_callers():
    encoder = FrameEncoder("vp8", 64, VideoEncoding())
    image = np.full((64, 64, 3), 80, np.uint8)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(20):
                encoder.encode(image, (k * 100 + i) * 3600, keyframe=(i == 0))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and encoder.frames == 80
