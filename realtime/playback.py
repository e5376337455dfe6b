"""The session's input-audio queue on the engine clock.

Audio to be spoken (agent utterances, or the live microphone as one open-ended utterance)
is pushed at any pace; the session clock takes exactly ``n`` samples per video frame. When
nothing is queued the buffer yields silence, so the engine (and the returned audio) never
pause. Markers travel with the taken samples and say where an utterance started, finished
or was interrupted, so events can be emitted when that audio is actually sent.

Jitter: a (re)starting utterance is held back until ``start_threshold_seconds`` of it are
queued (or it has ended), so a live stream arriving in 20 ms packets does not turn every
small arrival jitter into a gap. The session may size that hold per take from the input's
measured arrival (``take_block(n, start_samples)``, ``session/input_arrival.py``).

Cost: every operation is O(1) amortised, whatever an agent sends. Totals are kept running
(never re-summed), audio lives in per-utterance deques of chunks, pushes smaller than
``_SMALL_PUSH`` samples are copied into the utterance's tail chunk instead of adding a chunk
each, and a session may hold at most ``max_utterances`` queued utterances besides the
``max_seconds`` of audio (both raise ``BufferFull``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from avatarstream.engines.base import SAMPLE_RATE, check_audio
from avatarstream.realtime.errors import ServerError


class BufferFull(ServerError):
    """More audio (``max_seconds``) or utterances (``max_utterances``) than the buffer may hold."""

    status = 429
    code = "buffer_full"


# Pushes below this many samples are copied into the utterance's tail chunk (a buffer of
# ``_TAIL_CAPACITY`` samples) rather than stored as chunks of their own, so 1-sample pushes
# cost no per-chunk overhead; a chunk therefore holds >= _SMALL_PUSH samples or is the one
# that was the tail when a larger push arrived (at most one such per larger push).
_SMALL_PUSH = 1024
_TAIL_CAPACITY = 4096


@dataclass(frozen=True)
class PlaybackMarker:
    """Something that happened to an utterance inside one taken block."""

    kind: str  # "started" | "finished" | "interrupted"
    utterance: int  # utterance id (1, 2, ...)
    offset: int  # sample offset inside the block returned by take()
    position: int  # samples of this utterance taken (played) up to the marker


@dataclass
class PlaybackBlock:
    """What ``take_block`` returns: the samples plus where the playing utterance stands."""

    samples: np.ndarray  # float32[n]
    markers: list[PlaybackMarker]
    utterance: int | None  # utterance whose audio ends this block (None when idle)
    position: int  # samples of ``utterance`` taken up to the end of this block


class _Chunk:
    """``arr[start:end]`` is queued audio; ``arr[end:]`` is room for coalesced small pushes."""

    __slots__ = ("arr", "end", "start")

    def __init__(self, arr: np.ndarray, end: int) -> None:
        self.arr = arr
        self.start = 0
        self.end = end

    def compact(self) -> None:
        """Give back the unused room (the chunk will not be appended to any more)."""
        if self.arr.size > self.end:
            self.arr = self.arr[self.start:self.end].copy()
            self.end -= self.start
            self.start = 0


@dataclass
class _Utterance:
    id: int
    chunks: deque = field(default_factory=deque)  # _Chunk, oldest first
    queued: int = 0  # samples in ``chunks``
    taken: int = 0  # samples already taken
    ended: bool = False  # end_utterance() was called: no more audio will come
    started: bool = False  # its first sample has been taken

    def append(self, audio: np.ndarray) -> None:
        """Copy ``audio`` (non-empty) in: into the tail chunk's room if it fits, else a new chunk."""
        size = audio.size
        chunks = self.chunks
        if chunks:
            tail = chunks[-1]
            if tail.arr.size - tail.end >= size:
                tail.arr[tail.end:tail.end + size] = audio
                tail.end += size
                self.queued += size
                return
            tail.compact()
        if size < _SMALL_PUSH:
            arr = np.empty(_TAIL_CAPACITY, np.float32)
            arr[:size] = audio
        else:
            arr = audio.copy()
        chunks.append(_Chunk(arr, size))
        self.queued += size


class PlaybackBuffer:
    """Bounded FIFO of utterances; ``take(n)`` always returns ``n`` samples."""

    def __init__(self, max_seconds: float = 120.0, start_threshold_seconds: float = 0.06,
                 sample_rate: int = SAMPLE_RATE, max_utterances: int = 256) -> None:
        self.sample_rate = sample_rate
        self.max_samples = int(max_seconds * sample_rate)
        self.start_threshold = int(start_threshold_seconds * sample_rate)
        self.max_utterances = int(max_utterances)
        self._queue: deque[_Utterance] = deque()
        self._queued = 0  # sum of ``queued`` over ``_queue``, kept running
        self._next_id = 1
        self._playing = False  # the head utterance is flowing (not waiting for the threshold)
        self._pending: list[PlaybackMarker] = []  # markers to hand out with the next take

    # -- producer side -------------------------------------------------------------------
    @property
    def queued_samples(self) -> int:
        return self._queued

    @property
    def queued_utterances(self) -> int:
        """Utterances playing or waiting (open one included)."""
        return len(self._queue)

    @property
    def waiting_utterance(self) -> int | None:
        """Id of the head utterance while it is held back (starting, or rebuffering), else None."""
        if self._queue and not self._playing:
            return self._queue[0].id
        return None

    @property
    def open_utterance(self) -> int | None:
        """Id of the utterance that further ``push`` calls extend, if any."""
        if self._queue and not self._queue[-1].ended:
            return self._queue[-1].id
        return None

    def push(self, pcm: np.ndarray) -> int:
        """Queue float32 mono 16 kHz audio; returns the id of the utterance it belongs to."""
        audio = check_audio(pcm)
        if self._queued + audio.size > self.max_samples:
            raise BufferFull(
                f"playback buffer is full: {self._queued / self.sample_rate:.1f} s queued, "
                f"limit {self.max_samples / self.sample_rate:.0f} s; wait for playback or interrupt"
            )
        if not self._queue or self._queue[-1].ended:
            if len(self._queue) >= self.max_utterances:
                raise BufferFull(
                    f"playback buffer is full: {len(self._queue)} utterances queued, "
                    f"limit {self.max_utterances}; wait for playback or interrupt"
                )
            self._queue.append(_Utterance(self._next_id))
            self._next_id += 1
        utt = self._queue[-1]
        if audio.size:
            utt.append(audio)
            self._queued += audio.size
        return utt.id

    def end_utterance(self) -> int | None:
        """Close the open utterance: it finishes after its queued audio. Returns its id."""
        if self._queue and not self._queue[-1].ended:
            utt = self._queue[-1]
            utt.ended = True
            if utt.chunks:
                utt.chunks[-1].compact()
            return utt.id
        return None

    def interrupt(self) -> int:
        """Drop all queued audio; returns the number of dropped samples.

        Every utterance that was playing or waiting gets an ``interrupted`` marker at offset 0
        of the next take (``take(0)`` fetches it at once).
        """
        dropped = self._queued
        for utt in self._queue:
            self._pending.append(PlaybackMarker("interrupted", utt.id, 0, utt.taken))
        self._queue.clear()
        self._queued = 0
        self._playing = False
        return dropped

    # -- consumer side (the session clock) ----------------------------------------------
    def take(self, n: int) -> tuple[np.ndarray, list[PlaybackMarker]]:
        block = self.take_block(n)
        return block.samples, block.markers

    def take_block(self, n: int, start_samples: int | None = None) -> PlaybackBlock:
        """Take ``n`` samples; a held-back utterance starts once ``start_samples`` of it are queued
        (default: the buffer's ``start_threshold``) or it has ended."""
        threshold = self.start_threshold if start_samples is None else start_samples
        out = np.zeros(n, np.float32)
        markers, self._pending = self._pending, []
        pos = 0
        last_utt: _Utterance | None = None
        while pos < n and self._queue:
            utt = self._queue[0]
            if not self._playing:
                if utt.queued >= threshold or utt.ended:
                    self._playing = True
                else:
                    break  # wait for more audio (jitter threshold)
            if not utt.started and utt.queued:
                utt.started = True
                markers.append(PlaybackMarker("started", utt.id, pos, 0))
            chunks = utt.chunks
            while pos < n and chunks:
                chunk = chunks[0]
                k = min(n - pos, chunk.end - chunk.start)
                out[pos:pos + k] = chunk.arr[chunk.start:chunk.start + k]
                chunk.start += k
                if chunk.start == chunk.end:
                    chunks.popleft()
                utt.queued -= k
                utt.taken += k
                pos += k
            last_utt = utt
            if utt.queued == 0:
                if utt.ended:
                    self._queue.popleft()
                    if utt.started:
                        markers.append(PlaybackMarker("finished", utt.id, pos, utt.taken))
                    continue  # the next utterance (already queued) may start right here
                self._playing = False  # underrun inside an open utterance: rebuffer
                break
        self._queued -= pos  # every sample written to ``out`` came off the queue
        if last_utt is None and self._queue and self._queue[0].started:
            last_utt = self._queue[0]
        return PlaybackBlock(out, markers, last_utt.id if last_utt else None, last_utt.taken if last_utt else 0)
