"""The lite engine's stream behaviour beyond the shared contract (tests/test_engine_contract.py): determinism,
lookahead, idle after interrupt, control effects, motion and renderer, on real espeak-ng speech."""

from __future__ import annotations

import numpy as np

from avatarstream.engines.base import FPS, SAMPLES_PER_FRAME
from avatarstream.engines.face import detect_face, mouth_opening



def run_stream(stream, audio: np.ndarray, chunk: int) -> list:
    frames = []
    for i in range(0, audio.size, chunk):
        frames += stream.feed(audio[i:i + chunk])
    return frames + stream.flush()


def test_stream_is_deterministic(lite_engine, human, speech_audio):
    audio = speech_audio
    audio = audio[:int(2.5 * 16000) + 123]  # not a whole number of frames
    a = lite_engine.open_stream(human, size=256)
    assert a.lookahead_frames <= 2
    frames_a = run_stream(a, audio, 320)
    # any chunking and a fresh stream with the same seed give the same video
    frames_b = run_stream(lite_engine.open_stream(human, size=256), audio, 7777)
    assert len(frames_b) == len(frames_a) > 0
    assert all(np.array_equal(x.image, y.image) for x, y in zip(frames_a, frames_b))
    assert any(f.speaking for f in frames_a) and not frames_a[0].speaking  # fixture starts with 0.5 s silence


def test_feed_needs_lookahead_then_flush_completes(lite_engine, human):
    s = lite_engine.open_stream(human, size=128)
    assert s.feed(np.zeros(SAMPLES_PER_FRAME, np.float32)) == []  # frame 0 waits for frame 1's audio
    out = s.feed(np.zeros(SAMPLES_PER_FRAME, np.float32))
    assert [f.index for f in out] == [0]
    assert [f.index for f in s.flush()] == [1]


def test_interrupt_keeps_the_clock_and_returns_to_idle(lite_engine, human, speech_audio):
    audio = speech_audio
    s = lite_engine.open_stream(human, size=128)
    frames = s.feed(audio[8000:8000 + 20 * SAMPLES_PER_FRAME])  # mid-sentence
    assert frames and max(f.mouth_open for f in frames) > 0.3
    s.interrupt()
    after = s.feed(np.zeros(15 * SAMPLES_PER_FRAME, np.float32))
    assert after[-1].mouth_open < 0.05 and not after[-1].speaking


def test_controls(lite_engine, human, speech_audio):
    audio = speech_audio
    chunk = audio[8000:8000 + 30 * SAMPLES_PER_FRAME]
    loud = lite_engine.open_stream(human, size=128)
    quiet = lite_engine.open_stream(human, size=128, controls={"expression_intensity": 0.3})
    m_loud = np.array([f.mouth_open for f in loud.feed(chunk)])
    m_quiet = np.array([f.mouth_open for f in quiet.feed(chunk)])
    assert m_quiet.max() < 0.5 * m_loud.max()


def test_blinks_every_few_seconds_and_head_moves_gently():
    from avatarstream.engines.lite.audio_features import FrameFeatures
    from avatarstream.engines.lite.motion import MotionGenerator

    silence = FrameFeatures(-80.0, 0.0, 0.0, 0.0, False)
    gen = MotionGenerator(seed=3)
    poses = [gen.step(n, silence, silence) for n in range(60 * FPS)]
    blink = np.array([p.blink for p in poses])
    starts = np.nonzero((blink > 0) & (np.roll(blink, 1) == 0))[0]
    gaps = np.diff(starts) / FPS
    assert 9 <= len(starts) <= 31 and gaps.min() >= 2.0 and gaps.max() <= 6.5
    roll = np.array([p.roll for p in poses])
    assert 0 < np.abs(roll).max() < np.radians(3) and np.std(roll) > 1e-3
    assert max(p.jaw for p in poses) == 0.0
    other = MotionGenerator(seed=4)
    assert [other.step(n, silence, silence).blink for n in range(600)] != list(blink[:600])


def test_mouth_follows_speech_on_rendered_frames(lite_engine, human, speech_audio, signals):
    """Landmarks re-detected on the engine's own frames (no codec): opening tracks the envelope."""
    audio = speech_audio
    audio = audio[:int(4.5 * 16000)]
    frames = run_stream(lite_engine.open_stream(human, size=256), audio, 640)
    mouth = np.array([mouth_opening(detect_face(f.image, "human").points) for f in frames])
    env = signals.envelope(audio, len(frames))
    r, lag = signals.lagged_r(mouth, env)
    assert r >= 0.5, (r, lag)
    engine_r, _ = signals.lagged_r(np.array([f.mouth_open for f in frames]), env)
    assert engine_r >= 0.7


def test_background_outside_the_face_is_untouched(lite_engine, human, speech_audio):
    audio = speech_audio
    s = lite_engine.open_stream(human, size=256)
    frames = run_stream(s, audio[:3 * 16000], 1600)
    x0, y0, x1, y1 = lite_engine.prepare(human, 256)[1].roi
    face = s.face
    bx, by, bw, bh = face.box
    assert x0 <= bx and y0 <= by and x1 >= bx + bw and y1 >= by + bh
    # the face region stays within twice the face box
    cx = bx + bw / 2
    assert x1 - x0 <= 2.3 * bw and y1 - y0 <= 2.3 * bh and abs((x0 + x1) / 2 - cx) < 0.3 * bw
    outside = np.ones((256, 256), bool)
    outside[y0:y1, x0:x1] = False
    ref = frames[0].image
    changed_inside = 0
    for f in frames[1:]:
        assert np.array_equal(f.image[outside], ref[outside])
        changed_inside += int(not np.array_equal(f.image[y0:y1, x0:x1], ref[y0:y1, x0:x1]))
    assert changed_inside > len(frames) // 2
