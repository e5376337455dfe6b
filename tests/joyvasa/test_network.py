"""Denoising transformer (both positional encodings) and the audio front end."""

from __future__ import annotations

import pytest
import torch

from avatarstream.engines.joyvasa.audio_encoder import audio_encoder_config, encode_audio, pad_audio
from avatarstream.engines.joyvasa.network import DenoisingNetwork, DitConfig, alignment_mask


@pytest.mark.parametrize("pe_mode", ["constant", "per_position"])
def test_cached_cross_attention_equals_reference_decoder(pe_mode):
    torch.manual_seed(0)
    net = DenoisingNetwork(DitConfig(pe_mode=pe_mode, n_layers=2)).eval()
    x, a = torch.randn(2, 100, 70), torch.randn(2, 100, 256)
    pm, pa, step = torch.randn(2, 25, 70), torch.randn(2, 25, 256), torch.tensor([50, 7])
    with torch.no_grad():
        ref = net.reference_forward(x, a, pm, pa, step)
        fast = net(x, a, pm, pa, step)
        short = net(x[:, :12], a[:, :12], pm, pa, step)  # truncated windows (streaming) run too
    assert ref.shape == (2, 100, 70) and short.shape == (2, 12, 70)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_positional_encoding_variants():
    const = DenoisingNetwork(DitConfig(pe_mode="constant", n_layers=1))
    per = DenoisingNetwork(DitConfig(pe_mode="per_position", n_layers=1))
    pe = const.PE.pe
    assert torch.equal(const.positional(125), pe[:, 125:126])  # one vector for every token
    assert torch.equal(const.positional(40), pe[:, 125:126])
    assert torch.equal(per.positional(125), pe[:, :125])
    assert pe[0, 3, 0] == pytest.approx(torch.sin(torch.tensor(3.0)).item())
    assert pe[0, 3, 1] == pytest.approx(torch.cos(torch.tensor(3.0)).item())
    with pytest.raises(ValueError, match="pe_mode"):
        DitConfig(pe_mode="learned")


def test_alignment_mask_is_diagonal():
    m = alignment_mask(125)
    assert m.dtype == torch.bool and not m.diagonal().any() and m.sum() == 125 * 124


def test_audio_front_end_padding_and_pair_averaging(small_model):
    assert pad_audio(torch.zeros(1, 64000)).shape == (1, 64080)
    x = torch.arange(10, dtype=torch.float32).repeat(1, 64)  # 640 samples
    padded = pad_audio(x)
    assert padded.shape == (1, 720)
    # two reflect pads of 20: the first 40 samples mirror around sample 0 twice
    once = torch.nn.functional.pad(x.unsqueeze(1), (20, 20), mode="reflect")
    torch.testing.assert_close(padded, torch.nn.functional.pad(once, (20, 20), mode="reflect").squeeze(1))

    audio = torch.randn(1, 6400) * 0.1
    enc = small_model.audio_encoder
    with torch.no_grad():
        feats = encode_audio(enc, audio)
        hidden = enc(pad_audio(audio)).last_hidden_state
    assert hidden.shape[1] == 20 and feats.shape == (1, 10, enc.config.hidden_size)
    torch.testing.assert_close(feats, 0.5 * (hidden[:, 0::2] + hidden[:, 1::2]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 640"):
        encode_audio(enc, torch.zeros(1, 1000))


def test_base_encoder_configs_need_no_network():
    for model, family in (("hubert_zh", "HubertConfig"), ("wav2vec2", "Wav2Vec2Config")):
        cfg = audio_encoder_config(model)
        assert type(cfg).__name__ == family
        assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (768, 12, 12, 3072)
        assert cfg.conv_kernel == (10, 3, 3, 3, 3, 2, 2) and cfg.conv_stride == (5, 2, 2, 2, 2, 2, 2)


def test_schedule_buffers_stay_float32_under_half(small_model):
    import copy

    m = copy.deepcopy(small_model).half()
    assert m.diffusion_sched.alpha_bars.dtype == torch.float32
    assert m.audio_feature_map.weight.dtype == torch.float16
    torch.testing.assert_close(m.schedule().alpha_bars, small_model.schedule().alpha_bars, rtol=0, atol=0)
