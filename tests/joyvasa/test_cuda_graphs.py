"""CUDA-graph replay of the denoiser equals the eager network (runs where a CUDA GPU exists)."""

from __future__ import annotations

import pytest
import torch

from avatarstream.engines.joyvasa.sampler import sample

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)", allow_module_level=True)


def test_graphed_window_matches_eager():
    from avatarstream.engines.joyvasa.checkpoint import random_motion_generator
    from avatarstream.engines.joyvasa.cuda_graphs import GraphedDenoiser

    model = random_motion_generator(0).cuda()
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(1, 100, 256, generator=g)
    prev_m, prev_a = model.start_motion_feat.detach().float(), model.start_audio_feat.detach().float()
    x_T = torch.randn(1, 100, 70, generator=g).cuda()
    eager = sample(model.guided_denoiser(audio, prev_m, prev_a), x_T, model.schedule(),
                   generator=torch.Generator().manual_seed(1))
    graphed = GraphedDenoiser(model)
    replay = sample(graphed.guided_denoiser(audio, prev_m, prev_a), x_T, model.schedule(),
                    generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(replay, eager, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("fill", ["truncate", "null"])
def test_streaming_with_cuda_graphs_matches_eager(fill):
    import numpy as np

    from avatarstream.engines.joyvasa.checkpoint import random_motion_generator
    from avatarstream.engines.joyvasa.streaming import StreamingConfig, StreamingMotionGenerator

    model = random_motion_generator(0).cuda()
    audio = (np.random.default_rng(0).standard_normal(16000 * 2) * 0.1).astype(np.float32)
    out = []
    for graphs in (False, True):
        gen = StreamingMotionGenerator(model, config=StreamingConfig(chunk_frames=10, future_fill=fill, cuda_graphs=graphs))
        gen.push_audio(audio)
        out.append(np.stack([f.vector() for f in gen.pull_motion() + gen.flush()]))
    np.testing.assert_allclose(out[1], out[0], rtol=1e-3, atol=1e-3)
