"""PlaybackBuffer: always n samples, markers where utterances start/finish/are interrupted."""

from __future__ import annotations

import numpy as np
import pytest

from avatarstream.engines.base import EngineError
from avatarstream.realtime.playback import BufferFull, PlaybackBuffer


def ramp(n: int, start: float = 0.0) -> np.ndarray:
    return (start + np.arange(n, dtype=np.float32)) / 1e5


def test_silence_when_empty():
    buf = PlaybackBuffer()
    samples, markers = buf.take(640)
    assert samples.shape == (640,) and samples.dtype == np.float32 and not samples.any() and markers == []


def test_utterance_start_and_finish_markers():
    buf = PlaybackBuffer(start_threshold_seconds=0.06)
    audio = ramp(1000, 1)
    assert buf.push(audio) == 1
    s, m = buf.take(640)
    assert np.array_equal(s, audio[:640])
    assert [(x.kind, x.utterance, x.offset) for x in m] == [("started", 1, 0)]
    buf.end_utterance()
    s, m = buf.take(640)
    assert np.array_equal(s[:360], audio[640:]) and not s[360:].any()
    assert [(x.kind, x.offset, x.position) for x in m] == [("finished", 360, 1000)]
    assert buf.take(640)[1] == []


def test_jitter_threshold_holds_back_a_starting_stream():
    buf = PlaybackBuffer(start_threshold_seconds=0.06)  # 960 samples
    buf.push(ramp(320, 1))
    s, m = buf.take(640)
    assert not s.any() and m == []
    buf.push(ramp(700, 321))
    s, m = buf.take(640)
    assert np.array_equal(s, ramp(640, 1)) and m[0].kind == "started"


def test_short_ended_utterance_plays_at_once():
    buf = PlaybackBuffer(start_threshold_seconds=0.5)
    buf.push(ramp(100, 1))
    buf.end_utterance()
    s, m = buf.take(640)
    assert np.array_equal(s[:100], ramp(100, 1))
    assert [x.kind for x in m] == ["started", "finished"]


def test_back_to_back_utterances_in_one_block():
    buf = PlaybackBuffer(start_threshold_seconds=0)
    buf.push(ramp(200, 1))
    buf.end_utterance()
    assert buf.push(ramp(300, 1000)) == 2
    buf.end_utterance()
    s, m = buf.take(640)
    assert np.array_equal(s[:500], np.concatenate([ramp(200, 1), ramp(300, 1000)]))
    assert [(x.kind, x.utterance, x.offset) for x in m] == [
        ("started", 1, 0), ("finished", 1, 200), ("started", 2, 200), ("finished", 2, 500)]


def test_underrun_rebuffers_without_finishing():
    buf = PlaybackBuffer(start_threshold_seconds=0.01)  # 160 samples
    buf.push(ramp(700, 1))
    buf.take(640)
    s, m = buf.take(640)  # 60 left, then underrun: rebuffer, no finished marker
    assert np.array_equal(s[:60], ramp(60, 641)) and m == []
    buf.push(ramp(100, 701))
    s, m = buf.take(640)  # below threshold: held back
    assert not s.any()
    buf.push(ramp(100, 801))
    s, m = buf.take(640)
    assert np.array_equal(s[:200], ramp(200, 701)) and m == []  # same utterance, no second start


def test_interrupt_drops_queue_and_reports_position():
    buf = PlaybackBuffer(start_threshold_seconds=0)
    buf.push(ramp(16000, 1))
    buf.take(640)
    dropped = buf.interrupt()
    assert dropped == 16000 - 640
    s, m = buf.take(0)
    assert s.size == 0 and [(x.kind, x.utterance, x.position) for x in m] == [("interrupted", 1, 640)]
    assert not buf.take(640)[0].any()
    assert buf.push(ramp(10)) == 2  # a fresh utterance


def test_limits_and_bad_audio():
    buf = PlaybackBuffer(max_seconds=1.0)
    buf.push(np.zeros(16000, np.float32))
    with pytest.raises(BufferFull, match="full"):
        buf.push(np.zeros(1, np.float32))
    assert issubclass(BufferFull, EngineError)
    with pytest.raises(EngineError, match="NaN"):
        PlaybackBuffer().push(np.array([np.nan], np.float32))
    int16 = PlaybackBuffer(start_threshold_seconds=0)
    int16.push(np.array([16384, -16384], np.int16))
    assert np.allclose(int16.take(2)[0], [0.5, -0.5])
