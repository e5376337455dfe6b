"""The output ring: what the session sends for each content frame index, bounded.

Slot ``n`` holds the 40 ms of 16 kHz audio taken at clock tick ``n``, the playback markers that
audio carries, and (once the engine rendered it) the frame for that audio. Viewers of every
transport read slots by index, so there is no per-viewer queue; the oldest slots fall out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from avatarstream.engines.base import AvatarFrame
from avatarstream.realtime.playback import PlaybackMarker


@dataclass
class OutputSlot:
    """Everything the viewers send for one content frame index."""

    index: int
    audio: np.ndarray  # float32[640]: 40 ms at 16 kHz
    markers: list[PlaybackMarker] = field(default_factory=list)
    utterance: int | None = None
    position: int = 0  # samples of ``utterance`` played once this slot is sent
    frame: AvatarFrame | None = None
    taken_at: float = 0.0  # time.monotonic() when its audio was taken (for render times)
    rendered: bool = False  # its audio went to the engine: a frame is expected


class OutputRing:
    """Bounded map content index -> slot; the oldest slots fall out."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._slots: dict[int, OutputSlot] = {}
        self.latest: tuple[int, AvatarFrame] | None = None  # (slot index, frame) of the newest frame

    def put(self, slot: OutputSlot) -> None:
        self._slots[slot.index] = slot
        self._slots.pop(slot.index - self.capacity, None)

    def get(self, index: int) -> OutputSlot | None:
        return self._slots.get(index)

    def set_frame(self, index: int, frame: AvatarFrame) -> None:
        slot = self._slots.get(index)
        if slot is not None:
            slot.frame = frame
        if self.latest is None or index >= self.latest[0]:
            self.latest = (index, frame)

    def frame_at_or_before(self, index: int) -> AvatarFrame | None:
        for i in range(index, index - self.capacity, -1):
            slot = self._slots.get(i)
            if slot is not None and slot.frame is not None:
                return slot.frame
        if self.latest is not None and self.latest[0] <= index:
            return self.latest[1]
        return None

    def silence_from(self, index: int) -> list[OutputSlot]:
        """Silence the audio of every slot >= index; return those slots (their markers are the caller's)."""
        hit = []
        for i, slot in self._slots.items():
            if i >= index:
                hit.append(slot)
                slot.audio = np.zeros_like(slot.audio)
        return hit
