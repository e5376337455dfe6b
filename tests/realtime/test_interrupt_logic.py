"""An interrupt as plain logic: a session on the lite engine driven on a manual clock (``tests/manual_clock.py``).

The session sends each slot ``D`` ticks after taking it, and the engine renders it in between: at an interrupt
some slots are rendered but not sent. They are rendered again with the mouth closed (``ClosedMouthRerender``),
so what the viewer receives closes the mouth within 2 frames, head and eyes as rendered; and the engine's
dropped lookahead is fed again, so every frame after the interrupt still shows its own slot's audio."""

from __future__ import annotations

import numpy as np
import pytest
from manual_clock import ManualClock, VirtualWorker
from watcher import Watcher

from avatarstream.engines.base import ClosedMouthRerender
from avatarstream.engines.portraits import load_portrait
from avatarstream.engines.registry import load_engine
from avatarstream.realtime.session.latency import CLASSIC
from avatarstream.realtime.session.session import AvatarSession, SessionOptions

from conftest import read_wav  # type: ignore[import-not-found]

pytestmark = pytest.mark.timeout(60)
T0 = 100.0
TICK = 0.04


@pytest.fixture(scope="module")
def lite():
    return load_engine("lite", seed=3)


async def lite_session(lite, human_portrait, clock: ManualClock) -> AvatarSession:
    s = AvatarSession(lite, load_portrait(human_portrait), options=SessionOptions(size=256, latency=CLASSIC),
                      clock=clock, sleep=clock.sleep, engine_executor=VirtualWorker(clock))
    await s.start()
    s.attach_viewer(Watcher())
    return s


async def tick(clock: ManualClock, n: int) -> None:
    await clock.advance_to(T0 + n * TICK + 0.0005)  # just after tick n


def first_sent_slot(s: AvatarSession) -> int:
    return s._next_event  # the slot the next send tick sends


def speaking_onset(s: AvatarSession, first: int, last: int) -> tuple[int, int]:
    """(first slot with audible audio, first slot whose frame shows speech) in ``first..last``."""
    audible = next(n for n in range(first, last) if np.sqrt(np.mean(s.audio_for(n) ** 2)) > 0.01)
    shown = next(n for n in range(first, last) if s.output_at(n).frame is not None and s.output_at(n).frame.speaking)
    return audible, shown


async def test_frames_rendered_before_an_interrupt_close_the_mouth_and_later_frames_show_their_own_audio(
        lite, human_portrait, speech_wav):
    speech, _ = read_wav(speech_wav)
    clock = ManualClock(T0)
    s = await lite_session(lite, human_portrait, clock)
    try:
        assert isinstance(s._pump._stream, ClosedMouthRerender)
        assert (s.lookahead_frames, s.delay_frames) == (1, 3)  # classic: slot n rendered by tick n + 2, sent at n + 3
        s.push_audio(speech[:int(2.2 * 16000)])
        s.end_utterance()
        n = 0
        while True:  # on until the mouth is wide open in the newest rendered, unsent frames
            n += 1
            await tick(clock, n)
            unsent = range(first_sent_slot(s), n)
            rendered = [c for c in unsent if s.output_at(c).frame is not None]
            if len(rendered) >= 2 and min(s.output_at(c).frame.mouth_open for c in rendered) > 0.3:
                break
            assert n < 50, "the speech never opened the mouth"
        before = {c: s.output_at(c).frame for c in rendered}
        reference = speaking_onset(s, 0, n)
        first = first_sent_slot(s)
        s.interrupt()
        await clock.advance(0.0001)  # the pump's task runs the interrupt between two feeds
        after = {c: s.output_at(c).frame for c in rendered}
        assert s.pipeline_stats()["frames_rerendered"] == len(rendered)
        # the first frame sent after the interrupt is closed, and those after it
        opening = [after[c].mouth_open for c in rendered]
        assert rendered[0] == first and opening == [0.0] * len(rendered), opening
        assert not any(f.speaking for f in after.values())
        for c in rendered:  # only the mouth moved: the upper face (eyes, brows, head) is the frame as rendered
            top = slice(0, int(0.45 * 256))
            diff = np.abs(after[c].image[top].astype(int) - before[c].image[top].astype(int))
            assert after[c].index == before[c].index and diff.mean() < 0.5, (c, diff.mean())
            lower = np.abs(after[c].image.astype(int) - before[c].image.astype(int))
            assert lower.mean() > diff.mean(), c  # and the mouth did change
        await tick(clock, n + 8)
        for c in range(first, n + 5):  # what the viewer receives from the interrupt on: closed
            f = s.output_at(c).frame  # its own (the engine's dropped lookahead was fed again), none repeated
            assert f is not None and f.mouth_open <= 0.05, (c, f.mouth_open)

        # a reply after the interrupt: its frames show their own slot's audio, as the first reply's did
        base = n + 10
        await tick(clock, base)
        s.push_audio(speech[:int(2.2 * 16000)])
        s.end_utterance()
        await tick(clock, base + 30)
        again = speaking_onset(s, base, base + 30)
        assert again[1] - again[0] == reference[1] - reference[0], (reference, again)
    finally:
        await s.close()
