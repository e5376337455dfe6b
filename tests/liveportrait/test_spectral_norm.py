"""The stored spectral-norm parameters reproduce torch.nn.utils.spectral_norm in eval mode."""

from __future__ import annotations

import torch
from torch import nn

from avatarstream.engines.liveportrait.networks.spectral_norm import SpectralNormConv2d


def test_matches_torch_spectral_norm_eval():
    torch.manual_seed(0)
    ref = nn.utils.spectral_norm(nn.Conv2d(16, 8, 3, padding=1))
    ref.train()
    for _ in range(3):  # a few power iterations so u, v are not the initial ones
        ref(torch.randn(1, 16, 8, 8))
    ref.eval()
    ours = SpectralNormConv2d(16, 8, 3, padding=1)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert set(ref.state_dict()) == {"bias", "weight_orig", "weight_u", "weight_v"}
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


def test_no_power_iteration_at_inference():
    conv = SpectralNormConv2d(4, 4, 1, bias=False)
    u0 = conv.weight_u.clone()
    conv(torch.randn(1, 4, 2, 2))
    assert torch.equal(conv.weight_u, u0)
