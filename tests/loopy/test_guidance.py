import torch

from avatarstream.engines.loopy.guidance import GUIDANCE_PASSES, combine_guidance, pass_masks, split_and_combine


def test_three_pass_formula():
    g = torch.Generator().manual_seed(0)
    e_all, e_ref, e_base = (torch.randn(2, 12, 4, 8, 8, generator=g) for _ in range(3))
    out = combine_guidance(e_all, e_ref, e_base, audio_ratio=5.0, reference_ratio=3.0)
    expected = e_base + 3.0 * (e_ref - e_base) + 5.0 * (e_all - e_ref)
    torch.testing.assert_close(out, expected)
    # scalar check of the same formula: base 1, ref 2, all 4 -> 1 + 3*1 + 5*2 = 14
    one = torch.ones(1)
    assert combine_guidance(4 * one, 2 * one, one).item() == 14.0
    # ratios of 1 reduce to the fully conditioned prediction
    torch.testing.assert_close(combine_guidance(e_all, e_ref, e_base, 1.0, 1.0), e_all)


def test_pass_order_matches_masks():
    assert [p.name for p in GUIDANCE_PASSES] == ["all", "no_audio", "no_audio_no_reference"]
    audio, ref = pass_masks(batch=2)
    assert audio.tolist() == [True, True, False, False, False, False]
    assert ref.tolist() == [True, True, True, True, False, False]
    e = torch.arange(3.0).reshape(3, 1)  # all=0, no_audio=1, base=2
    assert split_and_combine(e, 5.0, 3.0).item() == 2 + 3 * (1 - 2) + 5 * (0 - 1)
