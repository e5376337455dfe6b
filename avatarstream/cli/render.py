"""``avatar render``: an image + an audio file -> a talking-portrait MP4 (H.264 25 fps + AAC), offline.

Engine agnostic: an ``engines.base.OfflineRenderer`` (``render_file(portrait, audio16k, out_path, progress)``)
renders itself; any other engine is streamed through ``EngineStream.feed`` in chunks, then ``flush()``.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from avatarstream.engines.base import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, EngineError, EngineStream, OfflineRenderer
from avatarstream.engines.registry import engine_capabilities, engine_names
from avatarstream.cli.backend_options import (add_backend_arguments, backend_options, engine_flag_options,
                                              engine_sizes, resolve_size)

CHUNK_FRAMES = 10  # audio fed per engine call (0.4 s)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, help="portrait image (JPEG/PNG/...) or a demo name: human, cat")
    p.add_argument("--audio", required=True, help="speech audio (any format FFmpeg/PyAV can decode)")
    p.add_argument("-o", "--output", required=True, type=Path, help="output MP4 path")
    p.add_argument("--engine", default="lite", help=f"engine: {', '.join(engine_names())} (default: lite)")
    p.add_argument("--size", type=int, default=None,
                   help=f"output frame size in pixels (square; default: the engine's default size; {engine_sizes()})")
    p.add_argument("--kind", default="auto", choices=["auto", "human", "animal"], help="what the portrait shows")
    p.add_argument("--weights", default=None, help="checkpoint directory for neural engines")
    p.add_argument("--device", default=None, help="cpu or cuda for neural engines")
    add_backend_arguments(p)
    p.add_argument("--seed", type=int, default=None, help="random seed (motion variation)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def load_audio_16k(path: str | Path) -> np.ndarray:
    """Decode any audio file with PyAV into float32 mono at 16 kHz."""
    import av

    path = Path(path)
    if not path.is_file():
        raise EngineError(f"audio file not found: {path}")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise EngineError(f"could not read audio file {path}: not a decodable audio format ({exc})") from exc
    try:
        if not container.streams.audio:
            raise EngineError(f"{path} has no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = []
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
    audio = np.concatenate(chunks).astype(np.float32)
    return np.clip(audio, -1.0, 1.0)


class Mp4Writer:
    """H.264 (yuv420p) video at 25 fps + AAC audio, muxed with PyAV."""

    def __init__(self, path: Path, size: int, audio: np.ndarray) -> None:
        import av

        self._av = av
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        self.video = self.container.add_stream("libx264", rate=FPS)
        self.video.width = self.video.height = size
        self.video.pix_fmt = "yuv420p"
        self.video.options = {"crf": "20", "preset": "veryfast"}
        self.audio_stream = self.container.add_stream("aac", rate=SAMPLE_RATE)
        self.audio_stream.layout = "mono"
        self.audio = audio
        self.frames = 0

    def write_frame(self, image_rgb: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image_rgb), format="rgb24")
        frame.pts = self.frames
        frame.time_base = Fraction(1, FPS)
        for packet in self.video.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self.video.encode(None):
            self.container.mux(packet)
        samples = self.audio[: self.frames * SAMPLES_PER_FRAME]
        step = 1024
        for start in range(0, samples.size, step):
            block = samples[start:start + step]
            frame = self._av.AudioFrame.from_ndarray(block.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = start
            frame.time_base = Fraction(1, SAMPLE_RATE)
            for packet in self.audio_stream.encode(frame):
                self.container.mux(packet)
        for packet in self.audio_stream.encode(None):
            self.container.mux(packet)
        self.container.close()


def render_streaming(stream: EngineStream, audio: np.ndarray, writer: Mp4Writer, progress: Any) -> int:
    try:
        step = CHUNK_FRAMES * SAMPLES_PER_FRAME
        for start in range(0, audio.size, step):
            for frame in stream.feed(audio[start:start + step]):
                writer.write_frame(frame.image)
                progress.update(1)
        for frame in stream.flush():
            writer.write_frame(frame.image)
            progress.update(1)
    finally:
        stream.close()
    return writer.frames


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avatarstream.engines.registry import load_engine
    from avatarstream.engines.portraits import load_portrait

    caps = engine_capabilities(args.engine)  # unknown engine -> EngineError listing the known ones
    size = None
    if not caps.offline_render:
        size = resolve_size(caps, args.size)
    elif args.size is not None and args.size not in caps.sizes:
        raise EngineError(f"--size: the {args.engine} engine renders {caps.describe_sizes()}; leave out --size")
    options = engine_flag_options(args.engine, weights=args.weights, device=args.device, seed=args.seed)
    options.update(backend_options(args))
    portrait = load_portrait(args.image, kind=args.kind)
    audio = load_audio_16k(args.audio)
    engine = load_engine(args.engine, **options)
    n_frames = -(-audio.size // SAMPLES_PER_FRAME)
    out = Path(args.output)
    tmp = out.with_name(out.stem + ".part" + out.suffix)
    renderer = engine if isinstance(engine, OfflineRenderer) else None
    if renderer is None and size is None:  # capabilities say offline_render, yet the engine has no render_file
        raise EngineError(f"the {args.engine} engine declares offline rendering but does not render files")
    stream = None
    if renderer is None and size is not None:
        stream = engine.open_stream(portrait, size=size)  # finds the face
    try:
        with tqdm(total=n_frames, unit="frame", desc=f"render {out.name}", disable=args.no_progress) as progress:
            if renderer is not None:
                renderer.render_file(portrait, audio, tmp, progress)
            else:
                assert stream is not None and size is not None  # opened above for every streaming engine
                writer = Mp4Writer(tmp, size, audio)
                try:
                    render_streaming(stream, audio, writer, progress)
                finally:
                    writer.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    print(f"wrote {out} ({n_frames} frames, {audio.size / SAMPLE_RATE:.2f} s)")
    return 0
