"""Media files around the engines, with PyAV: any audio file -> 16 kHz mono float32
(``load_audio_16k``), RGB frames + 16 kHz audio -> an H.264/AAC MP4 (``write_mp4``), and a
streaming engine's frames for a whole file (``stream_frames``). Shared by ``avatar render``, the
offline renderers (Loopy, JoyVASA's ``render_file``) and data preparation.

PyAV is imported by the functions that use it, so the engines that import this module still load where it is
not installed (the GPU check machine: its streaming path never writes or reads a media file)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from avatarstream.engines.base import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, EngineError, EngineStream

STREAM_CHUNK_FRAMES = 10  # audio fed per EngineStream.feed call when rendering a file (0.4 s)


def load_audio_16k(path: str | Path) -> np.ndarray:
    """Decode any audio file FFmpeg can read into float32 mono at 16 kHz, in [-1, 1]."""
    import av

    path = Path(path)
    if not path.is_file():
        raise EngineError(f"audio file not found: {path}")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise EngineError(f"could not read audio file {path}: not a decodable audio format ({exc})") from exc
    chunks = []
    try:
        if not container.streams.audio:
            raise EngineError(f"{path} has no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        try:
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            raise EngineError(f"could not decode audio file {path}: {exc}") from exc
    finally:
        container.close()
    if not chunks:
        raise EngineError(f"audio file {path} contains no samples")
    return np.clip(np.concatenate(chunks).astype(np.float32), -1.0, 1.0)


def stream_frames(stream: EngineStream, audio: np.ndarray, chunk_frames: int = STREAM_CHUNK_FRAMES
                  ) -> Iterator[np.ndarray]:
    """Every frame image a streaming engine renders for ``audio`` (fed in chunks, then flushed:
    ceil(samples / 640) frames); the stream is closed at the end."""
    try:
        step = chunk_frames * SAMPLES_PER_FRAME
        for start in range(0, audio.size, step):
            for frame in stream.feed(audio[start:start + step]):
                yield frame.image
        for frame in stream.flush():
            yield frame.image
    finally:
        stream.close()


def write_mp4(path: Path, frames: Iterable[np.ndarray], audio: np.ndarray, fps: int = FPS,
              sample_rate: int = SAMPLE_RATE, crf: int = 18, preset: str = "medium") -> int:
    """Write ``frames`` (H x W x 3 uint8 RGB, even sizes) and ``audio`` (float32 mono); returns frames written.

    Written to ``<name>.partial.mp4`` first and renamed when complete: an interrupted render leaves no
    truncated file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    n = 0
    try:
        n = _mux(tmp, frames, audio, fps, sample_rate, crf, preset)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return n


def _mux(tmp: Path, frames: Iterable[np.ndarray], audio: np.ndarray, fps: int, sample_rate: int, crf: int,
         preset: str) -> int:
    import av

    n = 0
    with av.open(str(tmp), mode="w", format="mp4") as container:
        video = None
        a_stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        for frame in frames:
            if video is None:
                h, w = frame.shape[:2]
                video = container.add_stream("libx264", rate=Fraction(fps, 1))
                video.width, video.height, video.pix_fmt = w, h, "yuv420p"
                video.options = {"crf": str(crf), "preset": preset}
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
    return n
