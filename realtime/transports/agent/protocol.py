"""Wire format of the agent WebSocket ``/v1/sessions/{id}/agent``.

Client -> server
  * text ``{"type": "start", "sample_rate": 16000 | 24000 | 48000}`` declares the PCM rate
    (or pass ``?sample_rate=`` on the URL). It may be sent again between utterances.
  * binary frames: PCM signed 16-bit little-endian mono samples at the declared rate, at most
    ``MAX_FRAME_SECONDS`` of audio per frame. Consecutive frames form one utterance.
  * text ``{"type": "end_of_utterance"}`` ends the current utterance (the avatar plays what is
    queued, then emits ``playback_finished``).
  * text ``{"type": "interrupt"}`` drops every queued sample and motion frame.
  * text ``{"type": "set_controls", "controls": {...}}`` changes live engine controls.
  * text ``{"type": "keepalive"}`` counts as activity for the idle timeout.

Server -> client: JSON text messages ``{"type": ..., ...}``; see ``docs/agent.md``.

This module is pure parsing and audio conversion; the socket handler lives in
``realtime/transports/agent/socket.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

from avatarstream.engines.base import SAMPLE_RATE
from avatarstream.realtime.errors import ProtocolError, echo

ACCEPTED_RATES: tuple[int, ...] = (16_000, 24_000, 48_000)
MAX_FRAME_SECONDS = 1.0  # a binary frame may carry at most this much audio
MAX_TEXT_BYTES = 64 * 1024
MAX_CONTROLS = 32  # names in one set_controls message
CONTROL_TYPES = ("start", "end_of_utterance", "interrupt", "set_controls", "keepalive")


@dataclass(frozen=True)
class ControlMessage:
    """One parsed text frame from the agent."""

    type: str
    sample_rate: int | None = None  # "start"
    controls: dict[str, Any] = field(default_factory=dict)  # "set_controls"


def check_sample_rate(value: Any) -> int:
    """Return ``value`` as an accepted PCM rate or raise ``ProtocolError('bad_sample_rate')``."""
    rate: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        rate = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value) < 16:
        rate = int(value.strip())
    if rate not in ACCEPTED_RATES:
        raise ProtocolError(
            "bad_sample_rate",
            f"sample_rate {echo(value)} is not supported; send PCM s16le mono at one of "
            f"{', '.join(str(r) for r in ACCEPTED_RATES)} Hz",
        )
    return rate


def parse_control(text: str) -> ControlMessage:
    """Parse a text frame; every way it can be wrong gets its own clear ``ProtocolError``."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise ProtocolError("text_too_large", f"text message of {size} bytes exceeds {MAX_TEXT_BYTES} bytes")
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError("bad_json", f"text message is not JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:
        raise ProtocolError("bad_json", "text message is nested too deeply") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", 'text message must be a JSON object with a string "type"')
    kind = msg["type"]
    if kind not in CONTROL_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {echo(kind)}; expected one of: {', '.join(CONTROL_TYPES)}")
    if kind == "start":
        if "sample_rate" not in msg:
            raise ProtocolError("bad_sample_rate", '"start" needs "sample_rate" (16000, 24000 or 48000)')
        return ControlMessage(kind, sample_rate=check_sample_rate(msg["sample_rate"]))
    if kind == "set_controls":
        controls = msg.get("controls")
        if not isinstance(controls, dict) or not controls or len(controls) > MAX_CONTROLS:
            raise ProtocolError("bad_controls", '"set_controls" needs a non-empty object "controls", e.g. {"expression_scale": 1.2}')
        return ControlMessage(kind, controls=dict(controls))
    return ControlMessage(kind)


def max_frame_bytes(sample_rate: int) -> int:
    return int(sample_rate * MAX_FRAME_SECONDS) * 2


def decode_pcm16(data: bytes, sample_rate: int) -> np.ndarray:
    """Binary frame -> int16 samples, refusing odd byte counts and frames over ``MAX_FRAME_SECONDS``."""
    if len(data) % 2:
        raise ProtocolError(
            "odd_length", f"binary frame has {len(data)} bytes; PCM s16le needs 2 bytes per sample (an even count)"
        )
    limit = max_frame_bytes(sample_rate)
    if len(data) > limit:
        raise ProtocolError(
            "frame_too_large",
            f"binary frame holds {len(data) // 2 / sample_rate:.3f} s of audio ({len(data)} bytes); "
            f"the limit is {MAX_FRAME_SECONDS:g} s ({limit} bytes at {sample_rate} Hz): split it into smaller frames",
        )
    return np.frombuffer(data, dtype="<i2")


class PcmResampler:
    """Streaming PCM s16 mono at 16/24/48 kHz -> float32 mono at the engine rate (16 kHz).

    Keeps filter state across frames (no clicks at frame edges); ``flush()`` at the end of an
    utterance returns the filter tail and readies the resampler for the next utterance.
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = check_sample_rate(sample_rate)
        self._resampler: av.AudioResampler | None = None
        self._pts = 0

    def _engine(self) -> av.AudioResampler:
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            self._pts = 0
        return self._resampler

    def convert(self, pcm: np.ndarray) -> np.ndarray:
        """int16 samples at ``sample_rate`` -> float32 samples at 16 kHz (may lag by a few samples)."""
        pcm = np.ascontiguousarray(pcm, dtype=np.int16)
        if self.sample_rate == SAMPLE_RATE:
            return pcm.astype(np.float32) / 32768.0
        if pcm.size == 0:
            return np.zeros(0, np.float32)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += pcm.size
        return self._collect(self._engine().resample(frame))

    def flush(self) -> np.ndarray:
        """Return the samples still inside the filter; the next ``convert`` starts a fresh stream."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        out = self._collect(self._resampler.resample(None))
        self._resampler = None
        return out

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32, copy=False)


def event_message(kind: str, **data: Any) -> str:
    """A server -> agent JSON text message."""
    return json.dumps({"type": kind, **data}, default=_jsonable)


def error_message(code: str, message: str) -> str:
    return event_message("error", code=code, message=message)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
