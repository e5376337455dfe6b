"""How many packets aiortc's receiver holds before decoding a microphone: the receive jitter buffer.

aiortc gives every remote audio track a jitter buffer that hands a packet to the decoder only once
4 newer packets have arrived (``JitterBuffer(capacity=16, prefetch=4)``: 80 ms of 20 ms Opus
packets). Each Opus packet is a whole frame, and the session's playback buffer already holds a
starting stream back by what its measured arrival jitter needs (``session/input_arrival.py``), so
a second, fixed hold only adds delay. ``set_receive_buffer(receiver, packets)`` replaces it:

* ``packets >= 1``: aiortc's buffer with that prefetch (4 = aiortc's own, ``packets * 20 ms``);
* ``packets == 0``: ``InOrderAudioBuffer``, which hands each packet on as it arrives, in sequence
  order; a packet older than one already handed on is dropped (a late packet cannot be played in
  its place any more; the decoder conceals the gap as it would a lost one).

aiortc keeps the buffer in a private attribute (``RTCRtpReceiver.__jitter_buffer``), read once per
packet; it is replaced before any packet arrives (in the ``track`` event), through ``aiortc_compat.py``.
"""

from __future__ import annotations

from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

from avatarstream.realtime.transports.webrtc.aiortc_compat import packet_frame_data, replace_jitter_buffer

AIORTC_AUDIO_CAPACITY = 16  # aiortc's audio jitter buffer size (packets)


class InOrderAudioBuffer(JitterBuffer):
    """A jitter buffer that holds nothing: each audio packet (one whole frame) goes on at once."""

    def __init__(self) -> None:
        super().__init__(capacity=AIORTC_AUDIO_CAPACITY)
        self._last: int | None = None  # sequence number of the last packet handed on
        self.dropped_late = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        if self._last is not None:
            ahead = uint16_add(packet.sequence_number, -self._last)
            if ahead == 0 or ahead >= 0x8000:  # a duplicate, or older than what was handed on
                self.dropped_late += 1
                return False, None
        self._last = packet.sequence_number
        return False, JitterFrame(data=packet_frame_data(packet), timestamp=packet.timestamp)


def set_receive_buffer(receiver: Any, packets: int) -> None:
    """Make ``receiver`` (an audio ``RTCRtpReceiver``) hold ``packets`` packets before decoding."""
    buffer = InOrderAudioBuffer() if packets == 0 else JitterBuffer(capacity=AIORTC_AUDIO_CAPACITY, prefetch=packets)
    replace_jitter_buffer(receiver, buffer)
