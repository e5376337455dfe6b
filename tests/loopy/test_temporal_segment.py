import numpy as np
import pytest
import torch

from avatarstream.engines.loopy.config import TemporalSegmentConfig
from avatarstream.engines.loopy.temporal_segment import gather_motion_latents, sample_indices, segment_groups


def paper_segments(clip_start: int, s: int, r: int, k_max: int) -> list[tuple[int, int]]:
    """[first, last] frame of segment k = 1..k_max; segment k spans s * r**(k-1) frames."""
    out, end = [], clip_start
    for k in range(1, k_max + 1):
        length = s * r ** (k - 1)
        out.append((end - length, end - 1))
        end -= length
    return out


def test_defaults_cover_124_frames_with_20_latents():
    cfg = TemporalSegmentConfig()
    assert (cfg.stride, cfg.expand_ratio, cfg.num_segments) == (4, 2, 5)
    assert cfg.total_frames == 4 + 8 + 16 + 32 + 64 == 124
    assert cfg.num_latents == 20
    groups = segment_groups(500, cfg)
    assert len(groups) == 20
    frames = [f for g in groups for f in g.frames]
    assert frames == list(range(500 - 124, 500))  # contiguous, disjoint, ordered, ends right before the clip


@pytest.mark.parametrize("s,r,k", [(4, 2, 5), (3, 3, 3), (2, 1, 4), (5, 2, 2)])
def test_segments_match_paper_arithmetic(s, r, k):
    cfg = TemporalSegmentConfig(stride=s, expand_ratio=r, num_segments=k)
    start = 1000
    groups = segment_groups(start, cfg)
    for seg, (first, last) in enumerate(paper_segments(start, s, r, k), start=1):
        mine = [g for g in groups if g.segment == seg]
        assert len(mine) == s  # s latents per segment
        assert all(len(g.frames) == r ** (seg - 1) for g in mine)
        assert mine[0].frames[0] == first and mine[-1].frames[-1] == last
    # uniform sampling: every r**(k-1)-th frame of segment k, ending at its newest frame
    picks = sample_indices(groups, "uniform")
    expected = []
    for seg, (first, last) in reversed(list(enumerate(paper_segments(start, s, r, k), start=1))):
        expected += [[f] for f in range(first + r ** (seg - 1) - 1, last + 1, r ** (seg - 1))]
    assert picks == expected


def test_masking_before_video_start_and_gather():
    cfg = TemporalSegmentConfig()
    history = [torch.full((1, 2, 2), float(i)) for i in range(12)]  # latent value = frame number
    lat, mask = gather_motion_latents(history, 12, cfg)
    assert lat.shape == (20, 1, 2, 2)
    # segment 1: frames 8..11, segment 2 ([0, 8), step 2): 1, 3, 5, 7; older segments lie before frame 0
    assert mask.tolist() == [False] * 12 + [True] * 8
    assert lat[12:, 0, 0, 0].tolist() == [1, 3, 5, 7, 8, 9, 10, 11]
    assert (lat[:12] == 0).all()
    lat, mask = gather_motion_latents(history, 12, cfg, mode="average")
    assert lat[12:16, 0, 0, 0].tolist() == [0.5, 2.5, 4.5, 6.5]
    lat, mask = gather_motion_latents([], 0, cfg, latent_shape=(1, 2, 2))
    assert not mask.any() and (lat == 0).all()


def test_random_sampling_stays_inside_groups():
    cfg = TemporalSegmentConfig(sampling="random")
    groups = segment_groups(300, cfg)
    picks = sample_indices(groups, "random", np.random.default_rng(0))
    assert all(len(p) == 1 and p[0] in g.frames for p, g in zip(picks, groups))
    with pytest.raises(ValueError):
        sample_indices(groups, "nearest")
    with pytest.raises(ValueError):
        gather_motion_latents([torch.zeros(1)] * 3, 5, cfg)
