"""A Pipecat TTS service that runs espeak-ng locally: speech with no model download and no cloud key.

``espeak-ng --stdout`` writes a WAV (22.05 kHz mono); the service resamples it to the pipeline's
output rate and yields it as ``TTSAudioRawFrame`` chunks of ``chunk_seconds``. The base
``TTSService`` adds the ``TTSStartedFrame`` / ``TTSStoppedFrame`` around each response. Used by the
examples and tests of ``avatarstream.integrations.pipecat``; needs the ``espeak-ng`` program
(``apt-get install espeak-ng``).
"""

from __future__ import annotations

import asyncio
import shutil
import wave
from collections.abc import AsyncGenerator
from io import BytesIO
from typing import Any

import av
import numpy as np

try:
    from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame
    from pipecat.services.settings import TTSSettings
    from pipecat.services.tts_service import TTSService
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"avatarstream.integrations.espeak_tts needs pipecat-ai ({exc.name} is missing): "
        "pip install 'avatarstream[pipecat]'") from exc

ESPEAK = "espeak-ng"


def resample_pcm(pcm: np.ndarray, src: int, dst: int) -> np.ndarray:
    """int16 mono ``src`` Hz -> int16 mono ``dst`` Hz (one whole clip, filter tail included)."""
    if src == dst or pcm.size == 0:
        return pcm
    resampler = av.AudioResampler(format="s16", layout="mono", rate=dst)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, np.int16).reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate, frame.pts = src, 0
    out = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in out]).astype(np.int16) if out else np.zeros(0, np.int16)


class EspeakTTSService(TTSService):
    """``EspeakTTSService(voice="en", words_per_minute=160)``."""

    def __init__(self, *, voice: str = "en", words_per_minute: int = 160, chunk_seconds: float = 0.1,
                 **kwargs: Any) -> None:
        super().__init__(push_start_frame=True, push_stop_frames=True,
                         settings=TTSSettings(model=None, voice=voice, language=None), **kwargs)
        if shutil.which(ESPEAK) is None:
            raise RuntimeError(f"{ESPEAK} is not installed (apt-get install espeak-ng)")
        if not 0 < chunk_seconds <= 1:
            raise ValueError(f"chunk_seconds must be in (0, 1], got {chunk_seconds}")
        self.voice = voice
        self.words_per_minute = int(words_per_minute)
        self.chunk_seconds = chunk_seconds

    def can_generate_metrics(self) -> bool:
        return True

    async def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        """(int16 mono samples, rate) of ``text``; the text goes in on stdin (never parsed as options)."""
        proc = await asyncio.create_subprocess_exec(
            ESPEAK, "-v", self.voice, "-s", str(self.words_per_minute), "--stdout",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        wav, err = await proc.communicate(text.encode())
        if proc.returncode:
            raise RuntimeError(f"{ESPEAK} failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
        with wave.open(BytesIO(wav)) as w:
            return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        try:
            await self.start_tts_usage_metrics(text)
            pcm, rate = await self.synthesize(text)
            await self.stop_ttfb_metrics()
            pcm = resample_pcm(pcm, rate, self.sample_rate)
            step = max(1, int(self.sample_rate * self.chunk_seconds))
            for i in range(0, pcm.size, step):
                yield TTSAudioRawFrame(audio=pcm[i:i + step].tobytes(), sample_rate=self.sample_rate,
                                       num_channels=1, context_id=context_id)
        except (OSError, RuntimeError, wave.Error) as exc:
            yield ErrorFrame(error=f"espeak-ng TTS failed: {exc}")
