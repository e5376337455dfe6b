"""A viewer's microphone (a remote WebRTC audio track) as live speech input to a session.

Live input keeps its latency bounded: a network stall followed by a burst leaves a standing
backlog (and a sender clock faster than ours builds one slowly). While the queue has stayed above
the session's ``live_backlog_target_s`` (its measured arrival jitter + one 20 ms packet; 100 ms
with fixed settings) for a whole window of ``LIVE_BACKLOG_WINDOW`` input frames (1 s of 20 ms
frames), quiet input frames are dropped (speech is kept); above ``LIVE_BACKLOG_MAX_S``, any are.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import cast

import numpy as np
from av import AudioFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatarstream.engines.base import EngineError
from avatarstream.realtime.errors import ServerError
from avatarstream.realtime.transports.base import SessionInput
from avatarstream.realtime.transports.webrtc.audio_convert import MicResampler

log = logging.getLogger(__name__)

LIVE_BACKLOG_MAX_S = 1.0
LIVE_BACKLOG_WINDOW = 50
QUIET_RMS = 0.01  # -40 dBFS


class MicrophoneInput:
    """Pumps one remote audio track into a session's playback buffer as one open utterance."""

    def __init__(self, session: SessionInput, session_id: str = "") -> None:
        self._session = session
        self._session_id = session_id
        self.dropped_samples = 0  # live input dropped to keep its latency bounded

    async def pump(self, track: MediaStreamTrack) -> None:
        resample = MicResampler()
        levels: deque[float] = deque(maxlen=LIVE_BACKLOG_WINDOW)
        try:
            while True:
                frame = cast(AudioFrame, await track.recv())  # an audio track yields audio frames
                pcm = resample(frame)
                queued = self._session.queued_seconds
                levels.append(queued)
                standing = min(levels) if len(levels) == levels.maxlen else 0.0
                standing = min(standing, queued)  # count what we just dropped
                quiet = pcm.size == 0 or float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) < QUIET_RMS
                if (standing > self._session.live_backlog_target_s and quiet) or standing > LIVE_BACKLOG_MAX_S:
                    self.dropped_samples += pcm.size
                    self._session.input_dropped(pcm.size)
                    continue
                if pcm.size:
                    try:
                        self._session.push_audio(pcm)
                    except (ServerError, EngineError) as exc:  # BufferFull: drop rather than grow
                        self.dropped_samples += pcm.size
                        log.warning("session %s: dropping microphone audio: %s", self._session_id, exc)
        except MediaStreamError:
            pass
        finally:
            self._session.end_utterance()


