"""``LoopyEngine``: the offline high-quality engine behind ``avatar render --engine loopy``.

Loopy is a video diffusion model (25 DDIM steps x 3 guidance passes per 12-frame clip), far
from real time, so it renders files only (``engines.base.OfflineRenderer``; its capabilities say
``streams=False``); ``open_stream`` explains that. Options: ``LoopyOptions`` (engines/loopy/options.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from avatarstream.engines.base import EngineError, MissingWeightsError, Portrait, check_audio
from avatarstream.engines.loopy.checkpoint import load_weights_dir
from avatarstream.engines.loopy.face_crop import crop_square, face_square
from avatarstream.engines.loopy.options import CAPABILITIES, LoopyOptions
from avatarstream.engines.loopy.pipeline import LoopyPipeline, RenderResult
from avatarstream.engines.torch_device import resolve_device


class LoopyEngine:
    name = "loopy"
    capabilities = CAPABILITIES

    def __init__(self, options: LoopyOptions | None = None, /, **overrides: Any) -> None:
        self.options = o = LoopyOptions.build(options, overrides)
        if o.weights is None:
            raise MissingWeightsError(
                "the loopy engine needs --weights DIR: a Loopy weights directory (loopy.json, loopy.safetensors, "
                "vae/, wav2vec2/) written by 'avatar train loopy'; see docs/loopy.md")
        self.device = resolve_device(o.device)
        self.steps = o.steps
        self.seed = o.seed
        self.work_dir = o.work_dir
        self.pipeline = LoopyPipeline(load_weights_dir(o.weights), self.device)
        self.last_result: RenderResult | None = None

    @property
    def output_size(self) -> int:
        """The square frame size ``render_file`` writes: the weights' resolution."""
        return int(self.pipeline.cfg.resolution)

    def open_stream(self, portrait: Portrait, *, size: int = 512, controls: Mapping[str, Any] | None = None):
        raise EngineError(
            "the loopy engine is offline-only (video diffusion, far slower than real time) and cannot stream; "
            "render a file with: avatar render --engine loopy --weights DIR --image IMAGE --audio AUDIO -o OUT.mp4, "
            "or stream with --engine joyvasa or lite")

    def render_file(self, portrait: Portrait | np.ndarray, audio16k: np.ndarray, out_path: str | Path,
                    progress: Callable[[int, int], None] | bool | object | None = True, *,
                    size: int | None = None) -> Path:
        """Render ``audio16k`` (mono float32 16 kHz) spoken by ``portrait`` into the MP4 ``out_path``.

        ``progress``: True/None shows a tqdm bar, False shows nothing, an object with
        ``update(n)`` (the caller's tqdm, as ``avatar render`` passes) is advanced by the frames
        made, a callable receives (frames done, frames total). The portrait is cropped to a
        face-centred square (centre square if no face is found); the output is the model's
        resolution (512x512 for the full model). Re-running after an interruption resumes finished clips.
        """
        if size is not None and size != self.output_size:
            raise EngineError(f"the loopy engine writes {self.output_size} px frames (its weights' resolution), "
                              f"not {size}")
        if not isinstance(portrait, Portrait):
            portrait = Portrait(np.asarray(portrait))
        audio = check_audio(audio16k)
        if audio.size == 0:
            raise EngineError("audio is empty")
        square = face_square(portrait.image, kind=portrait.kind)
        image = crop_square(portrait.image, square, self.pipeline.cfg.resolution)
        self.last_result = self.pipeline.render(
            image, audio, Path(out_path), work_dir=self.work_dir, seed=self.seed, num_steps=self.steps,
            progress=progress)
        return Path(out_path)
