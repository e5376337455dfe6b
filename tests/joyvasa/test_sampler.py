"""Cosine schedule values, the DDPM posterior step and classifier-free guidance (pure math)."""

from __future__ import annotations

import math

import pytest
import torch

from avatarstream.engines.joyvasa.sampler import classifier_free_guidance, posterior_coefficients, sample
from avatarstream.engines.joyvasa.schedule import cosine_schedule


def test_cosine_schedule_matches_reference_values():
    s = cosine_schedule(50)
    assert s.num_steps == 50 and s.betas.shape == (51,) and s.betas[0] == 0
    assert s.betas[1:4].tolist() == pytest.approx([0.0017475, 0.0036890, 0.0056338], abs=2e-7)
    assert float(s.betas[50]) == pytest.approx(0.999)
    assert float(s.alpha_bars[50]) == pytest.approx(9.71e-7, rel=2e-3)
    assert float(s.sigmas_inflex[1]) == 0.0
    t = 20
    expected = math.sqrt((1 - s.alpha_bars[t - 1]) / (1 - s.alpha_bars[t]) * s.betas[t])
    assert float(s.sigmas_inflex[t]) == pytest.approx(expected, rel=1e-5)


def test_sampler_applies_cfg_formula_and_posterior_step():
    sched = cosine_schedule(3)
    w = 2.0
    rng = torch.Generator().manual_seed(0)
    x_T = torch.randn(1, 5, 7, generator=rng)
    uncond_of = {t: torch.randn(1, 5, 7, generator=rng) for t in (1, 2, 3)}
    cond_of = {t: torch.randn(1, 5, 7, generator=rng) for t in (1, 2, 3)}
    seen = []

    def model(x, t):
        seen.append((x.shape[0], torch.equal(x[0], x[1])))
        return torch.cat([uncond_of[t], cond_of[t]], 0)

    gen = torch.Generator().manual_seed(5)
    out = sample(model, x_T, sched, cfg_scale=w, generator=gen)
    assert seen == [(2, True)] * 3  # one batched pass per step, same x_t in both halves

    gen = torch.Generator().manual_seed(5)
    x = x_T
    for t in (3, 2, 1):
        x0 = uncond_of[t] + w * (cond_of[t] - uncond_of[t])
        abar, abar_prev, alpha = sched.alpha_bars[t], sched.alpha_bars[t - 1], sched.alphas[t]
        x = ((1 - abar_prev) * alpha.sqrt() / (1 - abar)) * x + ((1 - alpha) * abar_prev.sqrt() / (1 - abar)) * x0
        if t > 1:
            x = x + sched.sigmas_inflex[t] * torch.randn(x_T.shape, generator=gen)
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-6)
    # the last step (sigma_1 = 0, alpha_bar_0 = 1) returns the guided x0 itself
    torch.testing.assert_close(out, uncond_of[1] + w * (cond_of[1] - uncond_of[1]), rtol=1e-5, atol=1e-6)
    assert posterior_coefficients(sched, 1)[0] == pytest.approx(0.0, abs=1e-7)


def test_guidance_formula_and_scale_one_is_conditional():
    u, c = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(classifier_free_guidance(u, c, 2.0), 2 * c - u)
    torch.testing.assert_close(classifier_free_guidance(u, c, 1.0), c)


def test_network_guidance_batches_null_and_real_audio(small_model):
    m = small_model
    d, p = m.cfg.feature_dim, m.cfg.n_prev_motions
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(1, 100, d, generator=g)
    prev_m, prev_a = torch.randn(1, p, 70, generator=g), torch.randn(1, p, d, generator=g)
    x = torch.randn(1, 100, 70, generator=g)
    with torch.no_grad():
        both = m.guided_denoiser(audio, prev_m, prev_a)(torch.cat([x, x]), 3)
        step = torch.tensor([3])
        u = m.denoising_net.reference_forward(x, m.null_audio_feat.expand(1, 100, d), prev_m, prev_a, step)
        c = m.denoising_net.reference_forward(x, audio, prev_m, prev_a, step)
    torch.testing.assert_close(both[:1], u, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1:], c, rtol=1e-4, atol=1e-5)
