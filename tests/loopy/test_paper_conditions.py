"""Conditioning checks against the Loopy paper's method section (tiny config, random weights with
the zero-initialised output layers perturbed so that every new layer acts)."""

import numpy as np
import pytest
import torch

from avatarstream.engines.loopy import denoising_unet
from avatarstream.engines.loopy.audio_conditioning import AudioFeatureExtractor, ChunkedAudioFeatures, audio_windows
from avatarstream.engines.loopy.dataset import motion_variances
from avatarstream.engines.loopy.denoising_unet import LoopyTransformer
from avatarstream.engines.loopy.guidance import GUIDANCE_PASSES
from avatarstream.engines.loopy.pipeline import LoopyPipeline


def _perturb_zero_inits(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(("proj_out.weight", "proj_out.bias")):
            p.data = torch.randn(p.shape, generator=g) * 0.05


def _latents(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_audio_attention_enters_after_the_inter_clip_layer(tiny_weights):
    model = tiny_weights.model.eval()
    _perturb_zero_inits(model)
    transformers = [m for m in model.denoising_unet.modules() if isinstance(m, LoopyTransformer)]
    assert transformers
    for t in transformers:  # SD's text cross-attention is gone from the spatial blocks
        assert all(b.attn2 is None for b in t.spatial.transformer_blocks)
    events = []
    t = transformers[0]
    for name in ("spatial", "inter_clip", "audio_attention", "intra_clip"):
        getattr(t, name).register_forward_hook(
            lambda m, args, out, name=name: events.append((name, args[0], out[0] if isinstance(out, tuple) else out)))
    d = model.audio_feature_dim
    model(_latents(0, 1, 3, 4, 8, 8), torch.tensor([400]), _latents(1, 1, 4, 8, 8), _latents(2, 1, 4, 4, 8, 8),
          audio_windows=_latents(3, 1, 3, 5, d))
    assert [e[0] for e in events] == ["spatial", "inter_clip", "audio_attention", "intra_clip"]
    (_, _, spatial_out), (_, inter_in, inter_out), (_, audio_in, audio_out), (_, intra_in, _) = events
    assert torch.equal(inter_in, spatial_out)
    assert torch.equal(audio_in, inter_out)  # the audio feature is added to the inter-clip layer's output
    assert torch.equal(intra_in, audio_out)
    assert not torch.allclose(audio_out, audio_in)


@torch.no_grad()
def test_previous_clips_change_the_next_clip(tiny_weights):
    pipe = LoopyPipeline(tiny_weights, "cpu")
    _perturb_zero_inits(pipe.model)
    cfg = tiny_weights.config
    m = cfg.tsm.num_latents
    ref = _latents(0, 4, 8, 8)
    windows = _latents(1, cfg.clip_frames, 5, pipe.model.audio_feature_dim)
    def clip(motion, valid):
        return pipe.generate_clip(ref, motion, windows, torch.Generator().manual_seed(0), 2, valid)

    valid = torch.ones(m, dtype=torch.bool)
    zero, moving = torch.zeros(m, 4, 8, 8), _latents(2, m, 4, 8, 8)
    assert (clip(zero, valid) - clip(moving, valid)).abs().max() > 1e-3
    # motion latents before the start of the video are not concatenated: their content is irrelevant
    start = torch.zeros(m, dtype=torch.bool)
    torch.testing.assert_close(clip(zero, start), clip(moving, start), rtol=0, atol=1e-6)


@torch.no_grad()
def test_each_guidance_pass_gets_the_papers_conditions(tiny_weights, monkeypatch):
    pipe = LoopyPipeline(tiny_weights, "cpu")
    model = pipe.model
    _perturb_zero_inits(model)
    cfg = tiny_weights.config
    m, f = cfg.tsm.num_latents, cfg.clip_frames
    valid = torch.arange(m) >= 8  # the oldest 8 motion latents lie before the video start
    windows = _latents(1, f, 5, model.audio_feature_dim)
    seen, contexts = [], []
    denoise = model.denoise

    def spy(noisy, t, reference, audio_windows=None, audio_keep=None, **kw):
        seen.append((reference, audio_keep))
        return denoise(noisy, t, reference, audio_windows, audio_keep, **kw)

    attention = denoising_unet.self_attention

    def spy_attention(attn, hidden, context=None, attention_mask=None):
        contexts.append((hidden.shape[0], hidden.shape[1], hidden.shape[1] if context is None else context.shape[1]))
        return attention(attn, hidden, context, attention_mask)

    monkeypatch.setattr(model, "denoise", spy)
    monkeypatch.setattr(denoising_unet, "self_attention", spy_attention)
    pipe.generate_clip(_latents(0, 4, 8, 8), _latents(2, m, 4, 8, 8), windows, torch.Generator().manual_seed(0), 1, valid)
    (reference, audio_keep), = seen
    ref_keep, motion_keep = reference.keep_masks()
    assert [p.name for p in GUIDANCE_PASSES] == ["all", "no_audio", "no_audio_no_reference"]
    assert audio_keep.tolist() == [1.0, 0.0, 0.0]  # audio only in the first pass
    assert ref_keep.tolist() == [True, True, False]  # reference (and motion frames) in the first two
    assert torch.equal(motion_keep[0], valid) and torch.equal(motion_keep[1], valid)
    assert not motion_keep[2].any()
    # spatial self-attention: passes 1-2 (2 * F frames) see their own + reference tokens, pass 3 (F frames)
    # has no reference keys/values at all
    spatial = [c for c in contexts if c[0] in (f, 2 * f)]
    assert spatial and all((n == 2 * f and kv > q) or (n == f and kv == q) for n, q, kv in spatial)
    assert {n for n, _, _ in spatial} == {f, 2 * f}

    monkeypatch.undo()
    # the no-reference pass does not depend on the reference image or the motion frames at all
    t = torch.tensor([500])
    noisy = _latents(5, 1, f, 4, 8, 8)

    def passes(ref, motion):
        cond = model.encode_reference(ref[None], motion[None], motion_keep=valid[None]).select([0, 0, 0], [True, True, False])
        return model.denoise(noisy.expand(3, -1, -1, -1, -1), t.expand(3), cond, windows[None].expand(3, -1, -1, -1),
                             torch.tensor([1.0, 0.0, 0.0]))

    a = passes(_latents(0, 4, 8, 8), _latents(2, m, 4, 8, 8))
    b = passes(torch.zeros(4, 8, 8), torch.zeros(m, 4, 8, 8))
    torch.testing.assert_close(a[2], b[2], rtol=0, atol=1e-6)
    assert (a[1] - b[1]).abs().max() > 1e-3 and (a[0] - b[0]).abs().max() > 1e-3


@torch.no_grad()
def test_training_reference_dropout_concatenates_nothing(tiny_weights):
    model = tiny_weights.model.eval()
    _perturb_zero_inits(model)
    noisy, t = _latents(0, 2, 3, 4, 8, 8), torch.tensor([300, 300])
    audio = _latents(3, 2, 3, 5, model.audio_feature_dim)
    keep = torch.tensor([True, False])
    def run(ref, mot):
        return model(noisy, t, ref, mot, keep, audio_windows=audio)

    a = run(_latents(1, 2, 4, 8, 8), _latents(2, 2, 4, 4, 8, 8))
    b = run(torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 4, 8, 8))
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-6)  # dropped item: reference content irrelevant
    assert (a[0] - b[0]).abs().max() > 1e-3  # kept item uses it


def _track(frames=24):
    """A synthetic 68-point track (dlib layout): head sway, brow raise and mouth opening at different rates."""
    from avatarstream.engines.face.layout import HUMAN, face_frame_points

    t = np.arange(frames)
    base = face_frame_points(HUMAN) * 100 + 256
    track = np.repeat(base[None], frames, axis=0)
    return t, track


def test_variance_features_follow_the_papers_definitions():
    t, still = _track()
    size = 512.0
    upper = list(range(17, 27)) + [27, 28, 29, 30] + list(range(36, 48))  # brows, nose bridge, eyes

    def paper(lm):
        lm = lm / size
        nose = lm[:, 30]
        head = nose[:, 0].var() + nose[:, 1].var()
        rel = lm[:, upper] - nose[:, None]
        expr = np.mean([rel[:, k, 0].var() + rel[:, k, 1].var() for k in range(len(upper))])
        return np.log1p(1e4 * head), np.log1p(1e4 * expr)

    sway = still + np.stack([8 * np.sin(t / 3), 3 * np.cos(t / 5)], 1)[:, None]  # rigid head motion
    brows = still.copy()
    brows[:, 17:27, 1] -= 6 * np.abs(np.sin(t / 2))[:, None]
    mouth = still.copy()
    mouth[:, 57:68, 1] += 10 * np.abs(np.sin(t / 2))[:, None]  # jaw drop: not an upper-face keypoint
    nose_only = still.copy()
    nose_only[:, 30] += np.stack([5 * np.sin(t), np.zeros_like(t)], 1)
    for lm in (still, sway, brows, mouth, nose_only, sway + brows - still):
        np.testing.assert_allclose(motion_variances(lm, size), paper(lm), rtol=1e-9, atol=1e-12)
    assert max(motion_variances(still, size)) < 1e-9
    h, e = motion_variances(sway, size)
    assert h > 0.1 and e < 1e-9  # head motion is the nose tip's absolute position
    h, e = motion_variances(brows, size)
    assert h < 1e-9 and e > 0.01  # expression: upper face relative to the nose tip
    assert max(motion_variances(mouth, size)) < 1e-9  # the mouth is in neither
    h, e = motion_variances(nose_only, size)
    assert h > 0.1 and e > 0.1  # the nose tip moving alone changes both
    with pytest.raises(ValueError, match="68"):
        motion_variances(still[:, :30], size)


@torch.no_grad()
def test_audio_to_latents_uses_one_query_token_from_the_whole_window(tiny_weights):
    a2l = tiny_weights.model.audio_to_latents
    torch.nn.init.normal_(a2l.proj_out.weight, std=0.1)
    queries = []
    a2l.attn.register_forward_pre_hook(lambda m, args, kwargs: queries.append(args[0].shape), with_kwargs=True)
    w = _latents(0, 6, 5, tiny_weights.model.audio_feature_dim)
    out = a2l(w)
    assert queries == [(6, 1, a2l.embeddings.shape[1])]  # the paper's token count: 1
    # the window's frames enter one query in order (not as 5 tokens averaged, which ignores order)
    assert (out - a2l(w.flip(1))).abs().max() > 1e-4
    a2l(variance=torch.tensor([0.5, 1.0]), source="head_motion_variance")
    assert queries[-1][1] == 1


def test_audio_features_match_between_training_and_inference(tiny_weights):
    extractor = AudioFeatureExtractor(tiny_weights.wav2vec2, chunk_frames=20, context_frames=5)
    rng = np.random.default_rng(0)
    n = 50
    audio = rng.standard_normal(n * 640).astype(np.float32) * 0.1
    train = audio_windows(extractor(audio, n), 5)  # what the trainer feeds for a clip of these frames
    chunked = ChunkedAudioFeatures(extractor, audio, n)
    for start in (0, 12, 16, 36):
        length = min(12, n - start)
        torch.testing.assert_close(chunked.windows(start, length), train[start: start + length], rtol=0, atol=1e-5)
    # the last clip runs past the audio: the padded frames see the audio's last frame, like a training clip's end
    tail = chunked.windows(48, 12)
    torch.testing.assert_close(tail[:2], train[48:50], rtol=0, atol=1e-5)
