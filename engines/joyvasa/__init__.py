"""JoyVASA: audio -> LivePortrait motion with a diffusion transformer (Cao et al., 2024).

Modules, kept apart in the diffusers way:

* ``motion``         motion-vector layout, template (de)normalisation, smoothing, ``MotionFrame``,
                     driving-keypoint math (numpy only, no torch).
* ``generator``      the ``MotionGenerator`` interface the server uses for any motion engine (no torch).
* ``audio_encoder``  HuBERT / wav2vec2 front end (transformers) -> 25 fps features.
* ``network``        ``DitTalkingHead``: audio encoder + ``audio_feature_map`` + denoising transformer.
* ``schedule``       cosine schedule; ``sampler``: x0-prediction DDPM posterior sampling with CFG.
* ``checkpoint``     the official ``{'args','model','iter'}`` file: strict loading, random writer.
* ``offline``        whole audio -> motion, window by window (the reference algorithm).
* ``streaming``      20 ms audio pieces -> motion chunks with bounded lookahead.
* ``cuda_graphs``    one denoising step replayed as a CUDA graph (GPU).
* ``bench``          ``avatar bench --engine joyvasa``.

See ``docs/joyvasa.md``.
"""
