"""End-to-end learning check (engines/loopy/learning_check.py): the tiny Loopy config trained on a
synthetic talking-portrait set (the lite engine animating the bundled portrait to espeak-ng
speech, cropped around the face) lowers its validation loss; the rendered clip's mouth, read
out in latent space, is measured with the clip's true audio, shuffled audio and silence
(reported; at this training length the mouth does not follow the audio, see docs/loopy.md)."""

import shutil

import numpy as np
import pytest


@pytest.mark.slow
def test_tiny_loopy_learns_from_a_synthetic_talking_portrait_set(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from avatarstream.engines.loopy.learning_check import LearningCheckOptions, run_learning_check, summary

    r = run_learning_check(LearningCheckOptions(seed=0, stage1_steps=200, stage2_steps=300), tmp_path)
    print("\n", summary(r))
    # the measure: the latent readout recovers lite's mouth opening, and a mouth driven by the
    # wrong audio scores far lower against the true audio's jaw
    assert r.readout_ceiling > 0.9, r.readout_ceiling
    assert r.readout_shuffled_lite < r.readout_ceiling - 0.4, (r.readout_shuffled_lite, r.readout_ceiling)
    # the latents are scaled to unit variance (SD's 0.18215 would leave them at ~0.06 std)
    assert 1.0 < r.scaling_factor < 20.0, r.scaling_factor
    assert all(np.isfinite(v).all() for v in r.train_losses.values())
    (before1, after1), (before2, after2) = r.validation_loss["1"], r.validation_loss["2"]
    assert after1 < 0.9 * before1, r.validation_loss
    assert after2 < before2, r.validation_loss
    for name in ("real", "shuffled", "silence"):
        assert np.isfinite(r.signals[name]).all() and len(r.signals[name]) == len(r.signals["lite"])
