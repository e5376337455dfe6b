"""The framework-free parts of the integrations: the speech cutter against a real session's playback
(``AvatarSession`` with the lite engine, read through ``SessionReader``), and importing the package
without pipecat."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest
from scipy.signal import resample_poly

from avatarstream.engines.portraits import load_portrait
from avatarstream.engines.registry import load_engine
from avatarstream.integrations.session_reader import SessionClosed, SessionReader
from avatarstream.integrations.speech_cutter import SpeechCutter
from avatarstream.realtime.session.session import AvatarSession, SessionOptions, ViewerLimitError

pytestmark = pytest.mark.timeout(60)
RATE = 24_000


@pytest.fixture(scope="module")
def lite():
    return load_engine("lite"), load_portrait(None)


async def new_session(lite) -> AvatarSession:
    engine, portrait = lite
    session = AvatarSession(engine, portrait, options=SessionOptions(size=256))
    await session.start()
    return session


def chirp(seconds: float, rate: int, f0: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * (f0 + 200 * t) * t)).astype(np.float32)


def to_16k(x: np.ndarray) -> np.ndarray:
    return resample_poly(x, 2, 3).astype(np.float32)


async def read_until(reader: SessionReader, cutter: SpeechCutter, done, max_frames: int = 400) -> dict[int, list]:
    pieces: dict[int, list] = {}
    for _ in range(max_frames):
        tick = await reader.next()
        for ev in tick.events:
            cutter.on_event(ev)
        for p in cutter.feed(tick.index, tick.audio16k):
            pieces.setdefault(p.utterance, []).append(p)
        if done(pieces):
            break
    return pieces


async def test_back_to_back_utterances_come_out_sample_exact_and_in_place(lite):
    session = await new_session(lite)
    reader = SessionReader(session)
    await reader.open()
    await reader.next()  # reading, on the clock: what is sent from now on is read
    cutter = SpeechCutter(RATE)
    clips = [chirp(0.5, RATE, 300), chirp(0.37, RATE, 500)]  # 0.37 s: not a whole number of frames
    try:
        for number, clip in enumerate(clips, start=1):  # both queued at once: the second follows without a gap
            cutter.expect(number, clip.size, final=True)
            session.push_audio(to_16k(clip))
            session.end_utterance()
        pieces = await read_until(reader, cutter, lambda p: len(p) == 2 and p[2][-1].last)
    finally:
        await reader.close()
        await session.close()
    for number, clip in enumerate(clips, start=1):
        out = np.concatenate([p.audio for p in pieces[number]]).astype(np.float32) / 32767
        assert out.size == clip.size
        assert float(np.corrcoef(out, clip)[0, 1]) > 0.99  # the same waveform, not shifted
    first_end = pieces[1][-1].position + pieces[1][-1].audio.size
    assert pieces[2][0].position == first_end  # contiguous, as the session played them


async def test_interrupting_ends_the_cut_where_it_stands_and_later_utterances_play(lite):
    session = await new_session(lite)
    reader = SessionReader(session)
    await reader.open()
    await reader.next()
    cutter = SpeechCutter(RATE)
    long_clip, next_clip = chirp(3.0, RATE, 300), chirp(0.4, RATE, 600)
    try:
        cutter.expect(1, long_clip.size, final=True)
        session.push_audio(to_16k(long_clip))
        session.end_utterance()
        pieces = await read_until(reader, cutter, lambda p: sum(x.audio.size for x in p.get(1, [])) > RATE // 2)
        cut_at_interrupt = sum(x.audio.size for x in pieces[1])
        cutter.interrupt_through(1)  # the agent's own barge-in ...
        session.interrupt()  # ... and the server's
        more = await read_until(reader, cutter, lambda p: False, max_frames=10)
        assert 1 not in more  # nothing more of the interrupted utterance
        assert cut_at_interrupt < long_clip.size
        cutter.expect(2, next_clip.size, final=True)
        session.push_audio(to_16k(next_clip))
        session.end_utterance()
        after = await read_until(reader, cutter, lambda p: 2 in p and p[2][-1].last)
        assert sum(p.audio.size for p in after[2]) == next_clip.size and cutter.pending() == 0
    finally:
        await reader.close()
        await session.close()
    with pytest.raises(SessionClosed):
        await reader.next()


def test_importing_avatarstream_needs_no_pipecat():
    code = (
        "import sys; sys.modules['pipecat'] = None\n"  # as if pipecat-ai were not installed
        "import avatarstream, avatarstream.integrations.local_server, avatarstream.integrations.session_reader\n"
        "import avatarstream.integrations.speech_cutter, avatarstream.integrations.whep_reader\n"
        "try:\n    import avatarstream.integrations.pipecat\nexcept ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pip install 'avatarstream[pipecat]'" in result.stdout


def test_cutter_refuses_a_rate_that_is_not_whole_samples_per_frame():
    with pytest.raises(ValueError):
        SpeechCutter(11_111)
    assert SpeechCutter(22_050).frame_samples == 882


async def test_reader_refuses_a_closed_session(lite):
    session = await new_session(lite)
    await session.close()
    reader = SessionReader(session)
    with pytest.raises(ViewerLimitError, match="ended"):  # the session refuses new viewers once closed
        await asyncio.wait_for(reader.open(), 5)
