"""Mux RGB frames and 16 kHz mono audio into an H.264/AAC MP4 with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np

from avatarstream.engines.base import FPS, SAMPLE_RATE


def write_mp4(path: Path, frames: Iterable[np.ndarray], audio: np.ndarray, fps: int = FPS,
              sample_rate: int = SAMPLE_RATE, crf: int = 18) -> int:
    """Write ``frames`` (H x W x 3 uint8 RGB, even sizes) and ``audio`` (float32 mono); returns frames written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    n = 0
    with av.open(str(tmp), mode="w", format="mp4") as container:
        video = None
        a_stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        for frame in frames:
            if video is None:
                h, w = frame.shape[:2]
                video = container.add_stream("libx264", rate=Fraction(fps, 1))
                video.width, video.height, video.pix_fmt = w, h, "yuv420p"
                video.options = {"crf": str(crf), "preset": "medium"}
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = n
            for packet in video.encode(vf):
                container.mux(packet)
            n += 1
        if video is None:
            raise ValueError("no frames to write")
        for packet in video.encode():
            container.mux(packet)
        pcm = (np.clip(np.asarray(audio, np.float32), -1, 1) * 32767).astype(np.int16)
        block = 1024 * 16
        for i in range(0, pcm.size, block):
            af = av.AudioFrame.from_ndarray(pcm[None, i: i + block], format="s16", layout="mono")
            af.sample_rate = sample_rate
            af.pts = i
            af.time_base = Fraction(1, sample_rate)
            for packet in a_stream.encode(af):
                container.mux(packet)
        for packet in a_stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return n
