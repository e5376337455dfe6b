"""``avatar render``: an image + an audio file -> a talking-portrait MP4 (H.264 25 fps + AAC), offline.

Engine agnostic: an ``engines.base.OfflineRenderer`` (``render_file(portrait, audio16k, out_path, progress)``)
renders itself; any other engine is streamed through ``EngineStream.feed`` in chunks, then ``flush()``
(``engines/media_files.py``: decoding the audio, streaming the frames, writing the MP4).

``--size`` for an offline renderer is passed as ``render_file(..., size=N)``; the engine refuses a size it
cannot write (never ignored).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from avatarstream.engines.base import SAMPLE_RATE, SAMPLES_PER_FRAME, EngineError, OfflineRenderer
from avatarstream.engines.registry import engine_capabilities, engine_names
from avatarstream.cli.backend_options import (add_backend_arguments, backend_options, engine_flag_options,
                                              engine_sizes, resolve_size)

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


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avatarstream.engines.media_files import load_audio_16k, stream_frames, write_mp4
    from avatarstream.engines.portraits import load_portrait
    from avatarstream.engines.registry import load_engine

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
    with tqdm(total=n_frames, unit="frame", desc=f"render {out.name}", disable=args.no_progress) as progress:
        if isinstance(engine, OfflineRenderer):
            engine.render_file(portrait, audio, out, progress, size=args.size)
        elif size is None:  # capabilities say offline_render, yet the engine has no render_file
            raise EngineError(f"the {args.engine} engine declares offline rendering but does not render files")
        else:
            stream = engine.open_stream(portrait, size=size)  # finds the face

            def frames() -> Iterator[np.ndarray]:
                for image in stream_frames(stream, audio):
                    progress.update(1)
                    yield image

            write_mp4(out, frames(), audio, crf=20, preset="veryfast")
    print(f"wrote {out} ({n_frames} frames, {audio.size / SAMPLE_RATE:.2f} s)")
    return 0
