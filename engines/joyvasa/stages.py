"""JoyVASA's exportable stages: the audio encoder (a streaming chunk) and one DiT denoising call with the
unconditional and conditional halves batched.

Each stage wraps part of ``engines.joyvasa.network.DitTalkingHead`` in a module with a tensor-only ``forward``
whose positional inputs and tuple outputs match ``input_names``/``output_names``.
"""

from __future__ import annotations

import torch
from torch import nn

from avatarstream.engines.base import SAMPLES_PER_FRAME
from avatarstream.engines.joyvasa.audio_encoder import encode_audio
from avatarstream.engines.runtimes.stage_spec import ProfileShapes, StageSpec

MAX_DIT_WINDOWS = 8  # guided windows per denoising call (2 rows each)
AUDIO_CHUNK_FRAMES = 100  # JoyVASA encodes 4 s windows; streaming chunks may be shorter (dynamic length)


class AudioEncoderStage(nn.Module):
    """A streaming chunk of 16 kHz audio (B, L), L a multiple of 640 -> (B, L/640, 256) mapped 25 fps features:
    HuBERT (transformers), the reference 50 -> 25 fps interpolation and ``audio_feature_map``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder, self.feature_map = model.audio_encoder, model.audio_feature_map

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.feature_map(encode_audio(self.encoder, audio))


class DenoiseStage(nn.Module):
    """One DiT denoising call; the batch holds the unconditional and conditional halves (2N rows) -> x0."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model.denoising_net

    def forward(self, x_t: torch.Tensor, audio: torch.Tensor, prev_motion: torch.Tensor, prev_audio: torch.Tensor,
                step: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, audio, prev_motion, prev_audio, step)


def _denoise_inputs(batch: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``batch`` guided windows -> 2*batch rows: [unconditional..., conditional...] as ``guided_denoiser`` builds."""
    x_t = torch.randn(batch, 100, 70, generator=g)
    audio = torch.randn(batch, 100, 256, generator=g)
    null = 0.1 * torch.randn(1, 1, 256, generator=g).expand(batch, 100, 256)
    prev_motion = torch.randn(batch, 25, 70, generator=g)
    prev_audio = torch.randn(batch, 25, 256, generator=g)
    step = torch.randint(1, 51, (1,), generator=g).expand(2 * batch).contiguous()
    return (torch.cat([x_t, x_t]), torch.cat([null, audio]), torch.cat([prev_motion, prev_motion]),
            torch.cat([prev_audio, prev_audio]), step)


JOYVASA_STAGES: dict[str, StageSpec] = {
    "audio_encoder": StageSpec(
        name="audio_encoder", input_names=("audio",), output_names=("features",),
        dynamic_axes={"audio": {0: "batch", 1: "samples"}, "features": {0: "batch", 1: "frames"}},
        build=lambda src: AudioEncoderStage(src.joyvasa()),
        example_inputs=lambda b, g: (0.1 * torch.randn(b, AUDIO_CHUNK_FRAMES * SAMPLES_PER_FRAME, generator=g),),
        profiles=lambda: {"audio": ProfileShapes((1, 8 * SAMPLES_PER_FRAME), (1, AUDIO_CHUNK_FRAMES * SAMPLES_PER_FRAME),
                                                 (2, 2 * AUDIO_CHUNK_FRAMES * SAMPLES_PER_FRAME))},
        fp32_only=True, bench_batches=(1,), family="joyvasa",
    ),
    "dit_denoise": StageSpec(
        name="dit_denoise", input_names=("x_t", "audio", "prev_motion", "prev_audio", "step"), output_names=("x0",),
        dynamic_axes={n: {0: "batch2"} for n in ("x_t", "audio", "prev_motion", "prev_audio", "step", "x0")},
        build=lambda src: DenoiseStage(src.joyvasa()), example_inputs=_denoise_inputs,
        profiles=lambda: {
            "x_t": ProfileShapes((2, 100, 70), (2, 100, 70), (2 * MAX_DIT_WINDOWS, 100, 70)),
            "audio": ProfileShapes((2, 100, 256), (2, 100, 256), (2 * MAX_DIT_WINDOWS, 100, 256)),
            "prev_motion": ProfileShapes((2, 25, 70), (2, 25, 70), (2 * MAX_DIT_WINDOWS, 25, 70)),
            "prev_audio": ProfileShapes((2, 25, 256), (2, 25, 256), (2 * MAX_DIT_WINDOWS, 25, 256)),
            "step": ProfileShapes((2,), (2,), (2 * MAX_DIT_WINDOWS,)),
        },
        bench_batches=(1, 2, 4), family="joyvasa",
    ),
}
