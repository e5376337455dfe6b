"""A LiveKit Agents ``VideoGenerator`` over an avatarstream session: agent speech in, lip-synced frames out.

``SessionVideoGenerator`` is what ``livekit.agents.voice.avatar.AvatarRunner`` drives, in the agent's
process (``avatarstream.integrations.livekit``, a session of an in-process server) and on the server
(``realtime/transports/livekit/viewer.py``, the session the agent asked for). It talks to the
session only through the transport contract (``realtime/transports/base.py``): ``SessionInput`` for
speech in, a ``SessionReader`` (a ``Viewer``, so it counts in admission and ``/metrics``) for output.

* **In** (``push_audio``): the agent's ``rtc.AudioFrame`` s of one segment are one utterance,
  resampled to 16 kHz mono with ``rtc.AudioResampler`` and pushed as they come; ``AudioSegmentEnd``
  ends it. The utterance id is the session's (``push_audio``'s return value).
* **Out** (``__aiter__``): one ``rtc.VideoFrame`` (RGB24) per session tick, 25 fps on the session's
  clock, idle frames included (the session renders idle motion while silent); after each video frame
  the agent's own speech of that content frame, cut back out of the session's audio at the agent's
  ``sample_rate`` (``SpeechCutter``: the samples out are the samples in), so audio and video of one
  frame leave together; ``AudioSegmentEnd`` right after the last audible frame of a segment. Nothing
  but speech is sent as audio: ``AvatarRunner`` counts every audio frame it pushes into the
  ``playback_position`` it reports.
* **Pacing.** ``AvatarRunner`` hands each video frame to ``rtc.AVSynchronizer``, which captures it on
  its own frame schedule (the first capture anchors it, then one frame per 1/fps, re-anchored when
  more than 300 ms behind) while audio plays as soon as it is captured. So each frame and its speech
  are yielded at the synchronizer's next slot (``FrameSlots`` keeps the same schedule): the frame is
  captured at once, its audio starts with it. After the runner's lazy track publication (on the first
  frame) the reader skips the frames it fell behind by, so speech is not held back by that wait.
* **Lead.** The frames come at the session's ticks, so ``rtc.AudioSource`` would run dry whenever a
  tick wakes late. When speech starts after silence, ``AUDIO_LEAD_MS`` of silence goes first: later
  ticks may wake that much late without a gap in the published audio. So that the audio does not
  trail its video by the lead, each frame's audio is handed over the lead *before* its video frame's
  slot (the frame's audio starts playing when its frame is captured; handing it over after the frame,
  as before, published every reply's audio 20 ms behind its video: measured +20 ms on each reply).
  The position ``AvatarRunner`` reports counts the lead (< 40 ms).
* **Interruption** (``clear_buffer``, ``lk.clear_buffer`` remotely): the session drops what it has
  not sent (``SessionInput.interrupt``: the face returns to idle) and no more of the interrupted speech
  is cut out, so the next frame carries none; what ``rtc.AudioSource`` already holds (at most the lead
  and one frame) plays out, and so ``AvatarRunner``'s position (audio pushed) is the audio published.

Time model: session tick ``m`` sends content frame ``c = m - D`` (``SessionReader``); its speech sits
at ``[c F, (c + 1) F)`` with ``F = sample_rate / 25``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

import numpy as np
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd, VideoGenerator

from avatarstream.engines.base import FPS, SAMPLE_RATE
from avatarstream.integrations.session_reader import SessionClosed, SessionReader
from avatarstream.integrations.speech_cutter import SpeechCutter, SpeechPiece
from avatarstream.realtime.transports.base import ServedSession, ViewerState

AUDIO_LEAD_MS = 20  # silence sent before speech that follows silence (see the module docstring)
SYNC_MAX_BEHIND_S = 0.3  # rtc.AVSynchronizer re-anchors its frame schedule this far behind (its default)
SLOT_MARGIN_S = 0.02  # our slots trail the synchronizer's by this much, so its capture task never waits for one
REANCHOR_BEHIND_S = 0.2  # re-anchor this side first (before the synchronizer's 300 ms), so it re-anchors after
PUSH_BLOCKED_S = 0.01  # a video frame handed over this slowly waited for room in the synchronizer's queue
KEEP_STARTS = 64  # utterance starts kept for diagnostics (``speech_starts``)

LiveKitMedia = rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd


def _mono_float(frame: rtc.AudioFrame) -> np.ndarray:
    pcm = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels > 1:
        pcm = pcm[: pcm.size - pcm.size % frame.num_channels].reshape(-1, frame.num_channels).mean(axis=1)
    return pcm.astype(np.float32) / 32768.0


class _Utterance:
    """The segment being received: its rate, its 16 kHz converter, its length at the output rate."""

    def __init__(self, rate: int, out_rate: int) -> None:
        self.rate, self.out_rate = rate, out_rate
        self.to16k = None if rate == SAMPLE_RATE else rtc.AudioResampler(rate, SAMPLE_RATE, num_channels=1)
        self.id: int | None = None  # the session's utterance id, once its first audio was pushed
        self.samples = 0  # at ``rate``

    def out_samples(self) -> int:
        return round(self.samples * self.out_rate / self.rate)

    def convert(self, mono: np.ndarray) -> np.ndarray:
        if self.to16k is None:
            return mono
        pcm = (np.clip(mono, -1.0, 1.0) * 32767).astype(np.int16)
        frames = self.to16k.push(rtc.AudioFrame(pcm.tobytes(), self.rate, 1, pcm.size))
        return _joined(frames)

    def flush(self) -> np.ndarray:
        return np.zeros(0, np.float32) if self.to16k is None else _joined(self.to16k.flush())


def _joined(frames: list[rtc.AudioFrame]) -> np.ndarray:
    if not frames:
        return np.zeros(0, np.float32)
    return np.concatenate([np.frombuffer(f.data, np.int16) for f in frames]).astype(np.float32) / 32768.0


class SpeechStart(NamedTuple):
    """Where a reply's speech starts in the output (diagnostics, and what the tests measure against)."""

    utterance: int
    frame: int  # the video frame that carries its first sample: how many frames were yielded before it
    offset: int  # that sample's position in the frame (samples at the output rate)
    handed_at: float  # when that frame was handed to the runner (``FrameSlots.clock``: time.perf_counter)


class FrameSlots:
    """The frame schedule of ``rtc.AVSynchronizer`` (its ``_FPSController``), kept on this side: the first
    frame is captured when pushed and anchors it, each later one at anchor + n / fps, and a frame more than
    ``SYNC_MAX_BEHIND_S`` late re-anchors it. ``clock``: ``time.perf_counter``, the synchronizer's."""

    def __init__(self, fps: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.interval = 1.0 / fps
        self.clock = clock
        self.next: float | None = None

    def wait_s(self) -> float:
        """How long to hold the next frame so that it is captured the moment it is pushed: until its slot,
        ``SLOT_MARGIN_S`` after the synchronizer's (which anchors a little after this side, when its capture
        task runs; a frame that waits in the synchronizer would leave its audio ahead of it)."""
        now = self.clock()
        if self.next is None or now - self.next > REANCHOR_BEHIND_S:
            self.next = now + SLOT_MARGIN_S
        return max(0.0, self.next - now)

    def pushed(self, blocked_s: float) -> None:
        """The frame was handed over, after ``blocked_s``: more than ``PUSH_BLOCKED_S`` means the
        synchronizer's schedule is behind this one (it re-anchored later): follow it from now."""
        assert self.next is not None
        if blocked_s > PUSH_BLOCKED_S:
            self.next = self.clock() + SLOT_MARGIN_S
        self.next += self.interval


class SessionVideoGenerator(VideoGenerator):
    """``VideoGenerator`` over one avatarstream session (see the module docstring).

    ``reader``: the viewer that reads the session (default: a ``SessionReader`` of transport
    ``inprocess``); it is opened on the first iteration unless it is open already, and closed by
    ``aclose`` (or by the session when it ends)."""

    def __init__(self, session: ServedSession, *, sample_rate: int, reader: SessionReader | None = None,
                 audio_lead_ms: int = AUDIO_LEAD_MS) -> None:
        if sample_rate % FPS:
            raise ValueError(f"sample_rate {sample_rate} Hz is not a whole number of samples per 40 ms frame")
        self.session = session
        self.sample_rate = sample_rate
        self.reader = reader or SessionReader(session)
        self.audio_lead_ms = audio_lead_ms
        self._cutter = SpeechCutter(sample_rate)
        self._utterance: _Utterance | None = None
        self._newest_id = 0  # the newest utterance id the session gave
        self._audio_flowing = False  # the last frame carried speech (rtc.AudioSource is not dry)
        self._last_image: np.ndarray | None = None
        self.frames_out = 0
        self.speech_samples_out = 0
        self.interruptions = 0
        self.speech_starts: deque[SpeechStart] = deque(maxlen=KEEP_STARTS)
        self._handed_at = 0.0  # ``slots.clock()`` when the last video frame was handed over
        self._last_speaking: int | None = None
        self.slots = FrameSlots(FPS)

    # -- in -------------------------------------------------------------------------------
    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if isinstance(frame, AudioSegmentEnd):
            self._end_segment()
            return
        u = self._utterance
        if u is None or u.rate != frame.sample_rate:
            self._end_segment()
            u = self._utterance = _Utterance(frame.sample_rate, self.sample_rate)
        u.samples += frame.samples_per_channel
        pcm = u.convert(_mono_float(frame))
        if u.id is None and pcm.size == 0:
            return  # the resampler holds the first samples back: nothing to number yet
        uid = self.session.push_audio(pcm)
        if u.id is None:
            u.id = uid
            self._newest_id = max(self._newest_id, uid)
        self._cutter.expect(uid, u.out_samples())

    def _end_segment(self) -> None:
        u, self._utterance = self._utterance, None
        if u is None or u.id is None:
            return
        tail = u.flush()
        if tail.size:
            self.session.push_audio(tail)
        self._cutter.expect(u.id, u.out_samples(), final=True)
        self.session.end_utterance()

    def clear_buffer(self) -> None:
        """Stop the speech at the next frame: the session drops what it has not sent, nothing more
        of it is cut out (``AvatarRunner`` then reports the position it pushed)."""
        u, self._utterance = self._utterance, None
        newest = max(self._newest_id, u.id if u is not None and u.id is not None else 0)
        self.session.interrupt()
        if newest:
            self._cutter.interrupt_through(newest)
        self.interruptions += 1

    # -- out ------------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[LiveKitMedia]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[LiveKitMedia]:
        reader = self.reader
        if reader.state != ViewerState.CONNECTED:
            await reader.open()
        while True:
            try:
                tick = await reader.next()
            except SessionClosed:
                return
            for event in tick.events:
                self._cutter.on_event(event)
            image = tick.image if tick.image is not None else self._last_image
            pieces = self._cutter.feed(tick.index, tick.audio16k)
            audio: list[LiveKitMedia] = []
            starts: list[tuple[int, int]] = []  # (utterance, offset) of the replies starting in this frame
            for piece in pieces:
                if piece.utterance != self._last_speaking:  # a reply starts
                    self._last_speaking = piece.utterance
                    starts.append((piece.utterance, piece.position - tick.index * self._cutter.frame_samples))
                    if not self._audio_flowing and self.audio_lead_ms > 0:
                        lead = self.sample_rate * self.audio_lead_ms // 1000
                        audio.append(rtc.AudioFrame(bytes(2 * lead), self.sample_rate, 1, lead))
                audio.append(from_piece(piece, self.sample_rate))
                if piece.last and not piece.interrupted:
                    audio.append(AudioSegmentEnd())
            self._audio_flowing = bool(pieces)
            if image is None:
                for item in audio:
                    yield item
                continue
            self._last_image = image
            h, w = image.shape[:2]
            first = self.frames_out == 0
            wait = self.slots.wait_s()
            # the frame's audio goes the lead ahead of its capture (see the module docstring: "Lead")
            interruptions = self.interruptions
            if audio and wait > self.audio_lead_ms / 1000:
                await asyncio.sleep(wait - self.audio_lead_ms / 1000)
            if self.interruptions != interruptions:  # clear_buffer while waiting: none of it is sent
                audio, starts, self._audio_flowing = [], [], False
            for item in audio:
                if isinstance(item, rtc.AudioFrame):
                    self.speech_samples_out += item.samples_per_channel
                yield item
            wait = 0.0 if self.slots.next is None else self.slots.next - self.slots.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            handed = self._handed_at = self.slots.clock()
            yield rtc.VideoFrame(w, h, rtc.VideoBufferType.RGB24, np.ascontiguousarray(image).tobytes())
            blocked = self.slots.clock() - handed
            if first:  # resumed after the runner published its tracks: anchor here, skip the wait
                self.slots.next = None
                self.slots.wait_s()
                reader.skip_to_now()
                blocked = 0.0
            self.slots.pushed(blocked)
            self.frames_out += 1
            for utterance, offset in starts:
                self.speech_starts.append(SpeechStart(utterance, self.frames_out - 1, offset, handed))

    async def aclose(self) -> None:
        await self.reader.close()


def from_piece(piece: SpeechPiece, rate: int) -> rtc.AudioFrame:
    """A cut speech piece as an ``rtc.AudioFrame`` (int16 mono)."""
    audio = np.ascontiguousarray(piece.audio, np.int16)
    return rtc.AudioFrame(audio.tobytes(), rate, 1, audio.size)
