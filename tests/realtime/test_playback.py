"""PlaybackBuffer: always n samples, markers where utterances start/finish/are interrupted."""

from __future__ import annotations

import numpy as np
import pytest

from avatarstream.engines.base import EngineError
from avatarstream.realtime.errors import ServerError
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
    assert issubclass(BufferFull, ServerError) and BufferFull.code == "buffer_full"
    with pytest.raises(EngineError, match="NaN"):
        PlaybackBuffer().push(np.array([np.nan], np.float32))
    int16 = PlaybackBuffer(start_threshold_seconds=0)
    int16.push(np.array([16384, -16384], np.int16))
    assert np.allclose(int16.take(2)[0], [0.5, -0.5])


# -- cost and limits under a hostile agent ------------------------------------------------
def traced_lines(fn) -> int:
    """Python lines executed inside realtime/playback.py while ``fn`` runs: a count of work
    that does not depend on the machine's load (numpy's C loops are not counted, but they
    only ever see one push or one block)."""
    import sys

    from avatarstream.realtime import playback

    target = playback.__file__
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != target:
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def hostile_session(n: int, max_utterances: int = 10**9) -> None:
    """n rounds of a 1-sample push + end_utterance polling queued_samples, faster than the clock
    (one 640-sample block per 1000 rounds), so the queue of utterances keeps growing; then one
    open utterance fed sample by sample, an interrupt, and the clock draining what is left."""
    buf = PlaybackBuffer(start_threshold_seconds=0.06, max_utterances=max_utterances)
    one = np.ones(1, np.float32)
    for i in range(n):
        buf.push(one)
        buf.end_utterance()
        assert buf.queued_samples >= 0
        if i % 1000 == 999:
            buf.take_block(640)
    for _ in range(n // 10):
        buf.push(one)
    buf.interrupt()
    buf.take_block(640)


def test_work_grows_linearly_with_pushes():
    # the old buffer re-summed every queued utterance on each push: 4x the pushes cost ~16x
    # (the cap on utterances is lifted so that it cannot hide a quadratic cost)
    small = traced_lines(lambda: hostile_session(2000))
    large = traced_lines(lambda: hostile_session(8000))
    assert large / small < 4.5, (small, large)

    def feed(n: int) -> None:  # many tiny pushes into one open utterance, drained by the clock
        buf = PlaybackBuffer(start_threshold_seconds=0)
        one = np.ones(1, np.float32)
        for i in range(n):
            buf.push(one)
            if i % 700 == 699:
                buf.take_block(640)
        while buf.queued_samples:
            buf.take_block(640)

    small = traced_lines(lambda: feed(5000))
    large = traced_lines(lambda: feed(20000))
    assert large / small < 4.5, (small, large)


def test_tiny_pushes_are_coalesced():
    buf = PlaybackBuffer(start_threshold_seconds=1.0)  # held back: nothing is taken
    for i in range(20000):
        buf.push(np.full(1, (i % 997 + 1) / 1000, np.float32))
    assert buf.queued_samples == 20000
    assert len(buf._queue[-1].chunks) <= 20000 // 1024 + 1  # not one chunk per push
    buf.push(ramp(5000, 1))  # a large push after the small ones keeps the order
    buf.end_utterance()
    out = np.concatenate([buf.take(640)[0] for _ in range(40)])
    expected = np.concatenate([(np.arange(20000) % 997 + 1) / 1000, ramp(5000, 1)]).astype(np.float32)
    assert np.array_equal(out[:25000], expected) and not out[25000:].any()


def test_utterance_cap():
    buf = PlaybackBuffer(start_threshold_seconds=0, max_utterances=3)
    for u in (1, 2, 3):
        assert buf.push(ramp(10, 1)) == u
        assert buf.end_utterance() == u
    with pytest.raises(BufferFull, match="3 utterances queued, limit 3"):
        buf.push(ramp(10, 1))
    assert buf.end_utterance() is None and buf.queued_utterances == 3 and buf.queued_samples == 30
    buf.take(640)  # all three play out
    assert buf.queued_utterances == 0
    assert buf.push(ramp(10, 1)) == 4  # the rejected push did not use an id
    assert buf.push(ramp(10, 1)) == 4  # the open utterance may still grow at the cap


def test_abuse_alternating_one_sample_utterances():
    """An agent sending 2-byte frames and end_of_utterance alternately, far faster than the
    clock (40 ms = 640 samples per take): the queue stays bounded, every accepted sample plays
    in order, and each accepted utterance gets exactly started then finished (or interrupted)."""
    cap = 256
    buf = PlaybackBuffer(start_threshold_seconds=0.06, max_utterances=cap)
    accepted: dict[int, float] = {}  # utterance -> its one sample value
    rejected = 0
    played: list[np.ndarray] = []
    events: dict[int, list[tuple[str, int]]] = {}
    interrupted_at: set[int] = set()

    def take():
        block = buf.take_block(640)
        assert block.samples.shape == (640,)
        offsets = [m.offset for m in block.markers]
        assert offsets == sorted(offsets) and all(0 <= o <= 640 for o in offsets)
        for m in block.markers:
            events.setdefault(m.utterance, []).append((m.kind, m.position))
        played.append(block.samples)

    for i in range(20000):
        value = (i % 997 + 1) / 1000
        try:
            u = buf.push(np.full(1, value, np.float32))
            accepted[u] = value
        except BufferFull as exc:
            assert "utterances" in str(exc)
            rejected += 1
        buf.end_utterance()
        assert buf.queued_utterances <= cap and buf.queued_samples == buf.queued_utterances
        if i % 400 == 399:
            take()
        if i == 12345:
            interrupted_at = {u.id for u in buf._queue}
            buf.interrupt()
    while buf.queued_samples:
        take()
    take()

    assert rejected > 5000 and len(accepted) + rejected == 20000
    assert list(accepted) == list(range(1, len(accepted) + 1))
    assert interrupted_at and set(events) == set(accepted)
    for u in accepted:
        if u in interrupted_at:
            assert events[u] == [("interrupted", 0)]
        else:
            assert events[u] == [("started", 0), ("finished", 1)]
    out = np.concatenate(played)
    expected = [accepted[u] for u in accepted if u not in interrupted_at]
    assert np.array_equal(out[out != 0], np.array(expected, np.float32))
