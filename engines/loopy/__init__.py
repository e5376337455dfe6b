"""Loopy: offline, high-quality audio-driven portrait video diffusion (Jiang et al., 2024).

Networks (``reference_net``, ``denoising_unet``, ``temporal_layers``, ``audio_to_latents``,
``audio_conditioning``, ``loopy_model``), samplers and index math (``temporal_segment``,
``guidance``) and composition (``pipeline``, ``train``, ``avatar_engine``) are kept apart.
See ``docs/loopy.md``.
"""
