"""Stable Diffusion 1.5's noise schedule for Loopy: DDPM for training, DDIM for sampling."""

from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler

SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     clip_sample=False, steps_offset=1, prediction_type="epsilon")


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SD15_SCHEDULE)


def sampling_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SD15_SCHEDULE, set_alpha_to_one=False)
