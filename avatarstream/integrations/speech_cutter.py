"""Cut the avatar's returned audio back into the speech of each utterance, at the agent's rate.

An avatar session plays every utterance it is sent and returns one continuous 16 kHz audio
stream (silence between utterances), one 40 ms block per content frame. A voice-agent framework
wants back *its* speech: the samples of each utterance, delayed to match the lips, and nothing
else. ``SpeechCutter`` does that from the session's playback events alone (the transport
contract, ``realtime/transports/base.py``):

* the stream is resampled once, continuously, to the output rate ``rate`` (``F = rate / 25``
  samples per content frame), so content frame ``c`` covers output positions ``[c F, (c+1) F)``;
* ``playback_started {utterance, frame: c}``: an utterance that starts after silence starts at
  offset 0 of its frame (the session takes whole 40 ms blocks), so at position ``c F``; one that
  starts in the frame where the previous one finished follows it without a gap;
* the utterance then lasts exactly the number of samples it was sent with (``expect``), counted
  at ``rate``: the samples out equal the samples in;
* ``playback_finished {interrupted: true, frame: c}``: the session silenced every frame from
  ``c`` on, so the utterance ends at ``c F`` at the latest; ``interrupt_through(u)`` ends every
  utterance up to ``u`` at what was already cut (the agent's own barge-in, before the server
  answers).

Utterance ids are the session's: 1, 2, ... in the order their first audio reached it (the
``PlaybackBuffer`` numbering); the caller counts the utterances it sends the same way.

Limit: an utterance is assumed to play without a pause. If its audio reaches the server slower
than real time, the server rebuffers in the middle of it; the cut then keeps the pause and drops
as much of the end.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import av
import numpy as np

from avatarstream.engines.base import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

KEEP_SECONDS = 2.0  # resampled audio kept for utterances whose start event comes late


@dataclass
class _Utterance:
    id: int
    samples: int = 0  # length at the output rate sent so far
    final: bool = False  # the agent sent all of it
    start: int | None = None  # output position of its first sample, once it started
    stop: int | None = None  # output position where an interruption ended it
    cut: int = 0  # samples handed out so far
    finished_frame: int | None = None

    @property
    def end(self) -> int | None:
        if self.start is None:
            return self.stop
        end = self.start + self.samples
        return end if self.stop is None else min(end, self.stop)

    @property
    def interrupted(self) -> bool:
        return self.stop is not None

    @property
    def done(self) -> bool:
        end = self.end
        if end is None or self.start is None or not (self.final or self.interrupted):
            return False
        return self.start + self.cut >= end


@dataclass(frozen=True)
class SpeechPiece:
    """Samples of one utterance: ``audio`` (int16 mono at the cutter's rate) starts at ``position``."""

    utterance: int
    position: int  # output-rate sample position on the session's content timeline (frame c at c * F)
    audio: np.ndarray
    last: bool  # the utterance's last piece (it ended or was interrupted)
    interrupted: bool = False  # it ended by an interruption (``last`` then says no more of it comes)


class SpeechCutter:
    """Feed the session's audio block by block (content frame order) with its playback events."""

    def __init__(self, rate: int) -> None:
        if rate % FPS:
            raise ValueError(f"output rate {rate} Hz is not a whole number of samples per {1000 // FPS} ms frame")
        self.rate = rate
        self.frame_samples = rate // FPS
        self._utterances: OrderedDict[int, _Utterance] = OrderedDict()
        self._dead_through = 0  # utterances up to this id were interrupted by the agent
        self._last_started: _Utterance | None = None
        self._resampler: av.AudioResampler | None = None
        self._next_index: int | None = None  # next content frame expected by ``feed``
        self._in_pts = 0
        self._buf = np.zeros(0, np.int16)
        self._buf_start = 0  # output position of ``_buf[0]``

    # -- what the agent sent -------------------------------------------------------------
    def expect(self, utterance: int, samples: int, final: bool = False) -> None:
        """``samples`` samples (at the output rate) of utterance ``utterance`` were sent so far;
        ``final``: that is all of it."""
        if utterance <= self._dead_through:
            return
        u = self._utterances.get(utterance)
        if u is None:
            self._utterances[utterance] = u = _Utterance(utterance)
        u.samples, u.final = samples, final

    def interrupt_through(self, utterance: int) -> None:
        """The agent interrupted: utterances up to ``utterance`` end where their cut stands now."""
        self._dead_through = max(self._dead_through, utterance)
        for u in self._utterances.values():
            if u.id <= utterance:
                if u.start is None:
                    u.start = 0
                u.stop = u.start + u.cut
        self._forget_done()

    # -- what the session reports --------------------------------------------------------
    def on_event(self, event: dict) -> None:
        kind, uid, frame = event.get("type"), event.get("utterance"), event.get("frame")
        if not isinstance(uid, int) or not isinstance(frame, int) or uid <= self._dead_through:
            return
        if kind == "playback_started":
            u = self._utterances.get(uid)
            if u is None:  # started before the agent's own bookkeeping caught up: length follows
                self._utterances[uid] = u = _Utterance(uid)
            prev = self._last_started
            follows = prev is not None and prev.finished_frame == frame and not prev.interrupted
            u.start = prev.end if follows and prev.end is not None else frame * self.frame_samples
            self._last_started = u
        elif kind == "playback_finished":
            u = self._utterances.get(uid)
            if u is None:
                return
            u.finished_frame = frame
            if event.get("interrupted"):
                if u.start is None:  # dropped before it started
                    u.start = u.stop = 0
                else:  # frames from ``frame`` on were silenced; what was cut already is out
                    u.stop = max(u.start + u.cut, frame * self.frame_samples)

    # -- the session's audio -------------------------------------------------------------
    def feed(self, index: int, audio16k: np.ndarray | None) -> list[SpeechPiece]:
        """The 40 ms of 16 kHz audio of content frame ``index`` (None: lost, treated as silence);
        returns the speech pieces that became available."""
        if self._next_index is None:
            self._next_index = index
            self._buf_start = index * self.frame_samples
        if index < self._next_index:
            return []
        blocks = [np.zeros(SAMPLES_PER_FRAME, np.float32)] * (index - self._next_index)  # frames missed
        blocks.append(np.zeros(SAMPLES_PER_FRAME, np.float32) if audio16k is None else audio16k)
        self._next_index = index + 1
        self._append(self._resample(np.concatenate(blocks)))
        return self._cut()

    def pending(self) -> int:
        """Utterances expected or playing whose speech is not all cut yet."""
        return sum(1 for u in self._utterances.values() if not u.done)

    def _resample(self, audio: np.ndarray) -> np.ndarray:
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
        if self.rate == SAMPLE_RATE:
            return pcm
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._in_pts
        self._in_pts += pcm.size
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.int16, copy=False) if out else np.zeros(0, np.int16)

    def _append(self, samples: np.ndarray) -> None:
        self._buf = np.concatenate([self._buf, samples])
        keep = int(KEEP_SECONDS * self.rate)
        if self._buf.size > keep:
            drop = self._buf.size - keep
            self._buf = self._buf[drop:]
            self._buf_start += drop

    def _cut(self) -> list[SpeechPiece]:
        pieces = []
        buf_end = self._buf_start + self._buf.size
        for u in self._utterances.values():
            end = u.end
            if u.start is None or end is None or u.done:
                continue
            a = max(u.start + u.cut, self._buf_start)
            b = min(end, buf_end)
            if b <= a:
                continue
            audio = self._buf[a - self._buf_start:b - self._buf_start].copy()
            u.cut = b - u.start
            pieces.append(SpeechPiece(u.id, a, audio, last=u.done, interrupted=u.interrupted))
        self._forget_done()
        return pieces

    def _forget_done(self) -> None:
        for uid in [u.id for u in self._utterances.values() if u.done]:
            if self._utterances[uid] is not self._last_started:
                del self._utterances[uid]
