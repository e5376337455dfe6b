"""One JoyVASA denoising step captured as a CUDA graph (static shapes: a window of fixed length).

A window runs the same network 50 times on the same shapes, so replaying a captured graph removes
the per-kernel launch overhead that dominates a 125-token, 256-wide transformer on a GPU. Capture and replay
run on the model's own device (``cuda:1`` runs on GPU 1). Only the
noisy motion and the step index change between steps; the audio, context and the (query
independent) cross-attention terms are copied into static buffers once per window.
"""

from __future__ import annotations

import torch

from avatarstream.engines.base import EngineError
from avatarstream.engines.joyvasa.network import DitTalkingHead


class GraphedDenoiser:
    def __init__(self, model: DitTalkingHead, window_len: int | None = None, warmup: int = 3) -> None:
        if model.device.type != "cuda":
            raise EngineError("CUDA graphs need the model on a CUDA device")
        if model.cfg.align_mask_width != 1:
            raise EngineError("CUDA graph capture supports the released alignment mask (width 1) only")
        self.model = model
        net = model.denoising_net
        cfg, dev, dtype = model.cfg, model.device, model.audio_feature_map.weight.dtype
        self.window_len = window_len or cfg.n_motions
        m, p, d = self.window_len, cfg.n_prev_motions, cfg.feature_dim
        self.x = torch.zeros(2, m, cfg.motion_feat_dim, device=dev, dtype=dtype)
        self.step = torch.ones(2, dtype=torch.long, device=dev)
        self.audio = torch.zeros(2, m, d, device=dev, dtype=dtype)
        self.prev_motion = torch.zeros(2, p, cfg.motion_feat_dim, device=dev, dtype=dtype)
        self.prev_audio = torch.zeros(2, p, d, device=dev, dtype=dtype)
        self.cross = [torch.zeros(2, p + m, d, device=dev, dtype=dtype) for _ in net.transformer.layers]

        def run():
            return net(self.x, self.audio, self.prev_motion, self.prev_audio, self.step, self.cross)

        # Everything on the model's device: with the model on cuda:1, the side stream, the capture and every
        # replay belong to GPU 1 whatever the current device of the calling thread is.
        with torch.no_grad(), torch.cuda.device(dev):
            side = torch.cuda.Stream(device=dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    run()
            torch.cuda.current_stream(dev).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = run()

    @torch.no_grad()
    def guided_denoiser(self, audio: torch.Tensor, prev_motion: torch.Tensor, prev_audio: torch.Tensor):
        """Same contract as ``DitTalkingHead.guided_denoiser`` for windows of ``window_len`` frames."""
        if audio.shape[1] != self.window_len:
            raise EngineError(f"this graph was captured for {self.window_len}-frame windows, got {audio.shape[1]}")
        model, net = self.model, self.model.denoising_net
        dtype = self.x.dtype
        audio = audio.to(model.device, dtype)
        self.audio.copy_(torch.cat([model.null_audio_feat.expand(1, audio.shape[1], -1).to(dtype), audio], 0))
        self.prev_motion.copy_(torch.cat([prev_motion, prev_motion], 0).to(model.device, dtype))
        self.prev_audio.copy_(torch.cat([prev_audio, prev_audio], 0).to(model.device, dtype))
        for buf, term in zip(self.cross, net.cross_attention_terms(torch.cat([self.prev_audio, self.audio], 1))):
            buf.copy_(term)

        def denoise(x_t: torch.Tensor, t: int) -> torch.Tensor:
            with torch.cuda.device(model.device):
                self.x.copy_(x_t)
                self.step.fill_(t)
                self.graph.replay()
                return self.out.float().clone()

        return denoise
