"""Offline vs streaming motion generation on the miniature model (same algorithm, fewer parameters)."""

from __future__ import annotations

import numpy as np
import pytest

from avatarstream.engines.base import EngineError
from avatarstream.engines.joyvasa.generator import MotionGenerator
from avatarstream.engines.joyvasa.motion import EMA_ALPHA, POSE_TERMS, MotionTemplate
from avatarstream.engines.joyvasa.offline import generate_offline
from avatarstream.engines.joyvasa.streaming import StreamingConfig, StreamingMotionGenerator


def stream(gen: StreamingMotionGenerator, audio: np.ndarray, piece: int = 320):
    frames = []
    for i in range(0, audio.size, piece):
        gen.push_audio(audio[i:i + piece])
        frames += gen.pull_motion()
    return frames + gen.flush()


def vectors(frames):
    return np.stack([f.vector() for f in frames])


@pytest.fixture(scope="module")
def clip(speech_audio) -> np.ndarray:
    return speech_audio[: int(16000 * 4.5)]  # two windows with the 1280 + 640 silence


def test_streaming_with_chunk_equal_window_is_offline_exactly(small_model, clip):
    offline = generate_offline(small_model, clip, seed=11)
    assert offline.normalized.shape == ((clip.size + 1920) // 640, 70)
    cfg = StreamingConfig(chunk_frames=100, lookahead_ms=0, audio_context_ms=0, seed=11)
    gen = StreamingMotionGenerator(small_model, config=cfg)
    assert isinstance(gen, MotionGenerator)
    frames = stream(gen, clip)
    expected = offline.frames()
    assert [f.index for f in frames] == [f.index for f in expected] == list(range(len(expected)))
    np.testing.assert_array_equal(vectors(frames), vectors(expected))
    np.testing.assert_array_equal(gen.reference_frame.vector(), offline.frames(include_preroll=True)[0].vector())


def test_seed_determinism(small_model, clip):
    a = generate_offline(small_model, clip[:16000], seed=3).motion
    b = generate_offline(small_model, clip[:16000], seed=3).motion
    c = generate_offline(small_model, clip[:16000], seed=4).motion
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4
    cfg = StreamingConfig(chunk_frames=8, lookahead_ms=80, seed=3)
    s1 = vectors(stream(StreamingMotionGenerator(small_model, config=cfg), clip[:16000]))
    s2 = vectors(stream(StreamingMotionGenerator(small_model, config=cfg), clip[:16000], piece=1234))
    np.testing.assert_array_equal(s1, s2)  # piece size does not matter


def test_small_chunks_cover_the_same_frames_with_bounded_lookahead(small_model, clip):
    audio = clip[:32000]
    cfg = StreamingConfig(chunk_frames=5, lookahead_ms=120)
    gen = StreamingMotionGenerator(small_model, config=cfg)
    assert gen.lookahead_frames == 5 - 1 + 3
    emitted, pushed = [], 0
    for i in range(0, audio.size, 320):
        gen.push_audio(audio[i:i + 320])
        pushed += 320
        for f in gen.pull_motion():
            # frame n needs 120 ms (3 frames) of audio after it, and waits for at most lookahead_frames
            assert (f.index + 1 + 3) * 640 <= pushed <= (f.index + 1 + gen.lookahead_frames) * 640
            emitted.append(f)
    emitted += gen.flush()
    assert audio.size % 640 == 0  # whole frames: offline keeps one more (the reference's 640-sample tail)
    assert len(generate_offline(small_model, audio).frames()) == audio.size // 640 + 1
    assert [f.index for f in emitted] == list(range(audio.size // 640))  # the stream: one frame per 640 samples


@pytest.mark.parametrize("extra", [0, 17, 639])
def test_flush_returns_one_frame_per_started_640_samples(small_model, clip, extra):
    cfg = StreamingConfig(chunk_frames=3, lookahead_ms=40)
    gen = StreamingMotionGenerator(small_model, config=cfg)
    audio = clip[8000:8000 + 4 * 640 + extra]
    frames = stream(gen, audio)
    assert [f.index for f in frames] == list(range(-(-audio.size // 640)))
    # after an interrupt the next utterance is counted the same way
    gen.interrupt()
    more = stream(gen, audio[:2 * 640 + extra])
    start = frames[-1].index + 1
    assert [f.index for f in more] == list(range(start, start + -(-(2 * 640 + extra) // 640)))


def test_each_chunk_starts_from_the_noise_offline_gives_its_frames(small_model, clip, monkeypatch):
    import avatarstream.engines.joyvasa.streaming as streaming

    seen = []
    real = streaming.sample_window

    def spy(model, audio_feat, prev_motion, prev_audio, x_T, **kw):
        seen.append(x_T.clone())
        return real(model, audio_feat, prev_motion, prev_audio, x_T, **kw)

    monkeypatch.setattr(streaming, "sample_window", spy)
    cfg = StreamingConfig(chunk_frames=10, lookahead_ms=80, seed=5)
    gen = StreamingMotionGenerator(small_model, config=cfg)
    stream(gen, clip[:16000 * 3])
    x_T = gen._x_T  # drawn once per stream, as offline
    window = small_model.cfg.n_motions
    assert len(seen) > 3
    for chunk, noise in enumerate(seen):
        start = -2 + 10 * chunk  # generated frame k = stream index k - 2
        positions = [(start + 2 + j) % window for j in range(noise.shape[1])]
        np.testing.assert_array_equal(noise[0].numpy(), x_T[0, positions].numpy())
    assert not np.array_equal(seen[0].numpy(), seen[1].numpy())


def test_offline_window_layout_pads_every_length(small_model):
    from avatarstream.engines.joyvasa.offline import PREROLL_SAMPLES, TAIL_SAMPLES, fit_length, window_layout

    rng = np.random.default_rng(0)
    window = 100 * 640
    lengths = list(range(1, 3000, 7)) + list(rng.integers(1, 5 * window, 400)) + [62380, 2 * window - 1920 + 5]
    lengths += [k * window - 1920 + r for k in (1, 2, 3) for r in (1, 300, 639, 640, 641)]
    for n in lengths:
        padded = int(n) + PREROLL_SAMPLES + TAIL_SAMPLES
        n_frames, n_windows = window_layout(padded, 100)
        assert n_frames == padded // 640 and n_windows * 100 >= n_frames > (n_windows - 1) * 100 - (n_windows == 1) * 100
        fitted = fit_length(np.ones(padded, np.float32), n_windows * window)
        assert fitted.size == n_windows * window
        assert fitted[:n_frames * 640].all()  # no kept frame loses audio
    # the length that crashed np.concatenate with a negative pad: (L + 1920) mod 64000 in [1, 639]
    seq = generate_offline(small_model, np.zeros(62380, np.float32), seed=0)
    assert seq.normalized.shape == ((62380 + 1920) // 640, 70)


def test_silence_gives_bounded_smooth_motion(small_model):
    template = MotionTemplate.synthetic()
    gen = StreamingMotionGenerator(small_model, template, StreamingConfig(chunk_frames=10))
    frames = stream(gen, np.zeros(16000 * 3, np.float32))
    v = vectors(frames)
    assert len(frames) == 75 and np.isfinite(v).all()  # 3 s = 75 frames of 40 ms
    norm = template.normalize(v)
    assert np.abs(norm).max() < 20  # within a few template ranges
    pose = v[:, list(POSE_TERMS)]
    span = (template.max - template.min)[list(POSE_TERMS)]
    step = np.abs(np.diff(pose, axis=0)) / span
    assert step.max() < EMA_ALPHA * 25  # EMA-smoothed pose moves at most alpha x (bounded deviation) per frame
    assert abs(frames[0].pitch) < 90 and abs(frames[0].yaw) < 90


def test_bad_audio_gives_clear_errors(small_model):
    gen = StreamingMotionGenerator(small_model)
    with pytest.raises(EngineError, match="16000 Hz"):
        gen.push_audio(np.zeros(320, np.float32), sample_rate=48000)
    with pytest.raises(EngineError, match="mono"):
        gen.push_audio(np.zeros((320, 2), np.float32))
    with pytest.raises(EngineError, match="16000 Hz"):
        generate_offline(small_model, np.zeros(16000, np.float32), sample_rate=22050)
    with pytest.raises(EngineError, match="mono"):
        generate_offline(small_model, np.zeros((2, 16000), np.float32))
    with pytest.raises(EngineError, match="empty"):
        generate_offline(small_model, np.zeros(0, np.float32))
    with pytest.raises(EngineError, match="NaN"):
        gen.push_audio(np.full(320, np.nan, np.float32))
    assert gen.flush() == []  # nothing pushed: nothing to emit
    with pytest.raises(EngineError, match="must fit in one 100-frame window"):
        StreamingMotionGenerator(small_model, config=StreamingConfig(chunk_frames=99, lookahead_ms=120))


def test_interrupt_drops_pending_and_keeps_counting(small_model, clip):
    gen = StreamingMotionGenerator(small_model, config=StreamingConfig(chunk_frames=10, lookahead_ms=40))
    gen.push_audio(clip[:16000])
    first = gen.pull_motion()
    gen.push_audio(clip[16000:24000])  # frames generated but not pulled ...
    gen.interrupt()  # ... are dropped
    assert gen.pull_motion() == []
    gen.push_audio(np.zeros(640 * 20, np.float32))
    after = gen.pull_motion() + gen.flush()
    assert after[0].index == first[-1].index + 1
    assert [f.index for f in after] == list(range(after[0].index, after[0].index + len(after)))
    gen.reset()
    assert gen.reference_frame is None
    gen.push_audio(np.zeros(640 * 20, np.float32))
    assert gen.pull_motion()[0].index == 0
