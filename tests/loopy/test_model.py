"""The dual U-Net wiring on the tiny config: each condition reaches the noise prediction."""

import torch

from avatarstream.engines.loopy.audio_to_latents import QUERY_SOURCES


def _inputs(seed=0, b=1, f=3, m=4, d=None):
    g = torch.Generator().manual_seed(seed)
    return dict(
        noisy=torch.randn(b, f, 4, 8, 8, generator=g), t=torch.full((b,), 400),
        ref=torch.randn(b, 4, 8, 8, generator=g), motion=torch.randn(b, m, 4, 8, 8, generator=g),
        audio=torch.randn(b, f, 5, d, generator=g),
    )


def _perturb_zero_inits(model):
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if name.endswith(("proj_out.weight", "proj_out.bias")):
            p.data = torch.randn(p.shape, generator=g) * 0.05


@torch.no_grad()
def test_new_layers_start_as_identity_then_every_condition_matters(tiny_weights):
    model = tiny_weights.model.eval()
    x = _inputs(d=model.audio_feature_dim)
    def run(**kw):
        return model(x["noisy"], x["t"], kw.pop("ref", x["ref"]), kw.pop("motion", x["motion"]), **kw)

    base = run(audio_windows=x["audio"], temporal=True)
    assert base.shape == x["noisy"].shape
    # temporal layers and audio-to-latents are zero-initialised: identity at the start
    torch.testing.assert_close(base, run(audio_windows=x["audio"], temporal=False))
    _perturb_zero_inits(model)
    eps = run(audio_windows=x["audio"], temporal=True)
    assert not torch.allclose(eps, run(audio_windows=x["audio"], temporal=False), atol=1e-5)
    # motion frames reach the output only through the inter-clip temporal layers
    assert not torch.allclose(eps, run(motion=torch.zeros_like(x["motion"]), audio_windows=x["audio"]), atol=1e-5)
    # reference keys/values reach the spatial self-attention
    assert not torch.allclose(eps, run(ref=torch.zeros_like(x["ref"]), audio_windows=x["audio"]), atol=1e-5)
    # audio: dropping it by mask equals giving none; different audio changes the output
    no_audio = run(audio_windows=None)
    torch.testing.assert_close(run(audio_windows=x["audio"], audio_keep=torch.zeros(1)), no_audio)
    assert not torch.allclose(eps, no_audio, atol=1e-5)
    # frames of a clip interact (intra-clip attention): changing frame 0's noise changes frame 2
    noisy2 = x["noisy"].clone()
    noisy2[:, 0] += 1.0
    eps2 = model(noisy2, x["t"], x["ref"], x["motion"], audio_windows=x["audio"])
    assert not torch.allclose(eps[:, 2], eps2[:, 2], atol=1e-6)


@torch.no_grad()
def test_audio_to_latents_query_sources(tiny_weights):
    a2l = tiny_weights.model.audio_to_latents
    torch.nn.init.normal_(a2l.proj_out.weight, std=0.1)
    assert a2l.embeddings.shape[0] == 128  # paper: 128 learnable embeddings as keys/values
    d = tiny_weights.model.audio_feature_dim
    out = a2l(torch.randn(6, 5, d))
    assert out.shape == (6, tiny_weights.config.time_embed_dim)
    v = torch.tensor([0.1, 2.0])
    heads = a2l(variance=v, source=QUERY_SOURCES[1])
    expr = a2l(variance=v, source=QUERY_SOURCES[2])
    assert heads.shape == expr.shape == (2, tiny_weights.config.time_embed_dim)
    assert not torch.allclose(heads, expr)
