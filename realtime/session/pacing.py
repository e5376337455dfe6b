"""The pacing of one session's clock as plain logic: when it wakes, what a wake-up takes and sends,
whether it came late, and the lip-sync delay it plans. Pure functions of their inputs (times in
seconds on the session clock, margins in ms), so they are tested with exact figures, no sleeping.

With ``F`` = 40 ms, ``t0`` the clock's frame 0, ``phase`` the take offset and ``D`` the delay in frames:

* slot ``n`` is taken at ``t0 + n F + phase``; slot ``c`` is sent (its events fire) at tick
  ``c + D``, i.e. at ``t0 + (c + D) F``; the clock sleeps until the earlier of the next take and
  the next send (``next_wake``);
* a wake-up at ``now`` takes every slot due, ``next_tick .. floor((now - t0 - phase) / F)``, in one
  go (a late wake-up catches up: no slot of audio is skipped) and sends every slot whose tick
  came, ``next_event .. floor((now - t0) / F) - D``;
* it is *late* when it takes a slot more than one frame after the later of that slot's take time
  and the moment the clock went to sleep (a slot made due early by a lower phase is not late);
* the plan (``plan_delay``): the margin is clamped to [1, ``MAX_MARGIN_MS``] ms; ``D`` needs
  ``lookahead + ceil(margin / F)`` frames and grows by one frame per call, only when the caller
  allows it (nothing audible in flight); ``phase = (D - lookahead) F - margin`` (>= 0), so the
  delay ``D F - phase`` is ``lookahead F + margin`` whenever ``D`` is large enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from avatarstream.realtime.clock import FRAME_SECONDS

FRAME_MS = FRAME_SECONDS * 1000
MAX_MARGIN_MS = 400.0  # a measured margin is capped here (10 frames): beyond it the engine is not real time


@dataclass(frozen=True)
class Wake:
    """What one wake-up of the session clock does."""

    take: range  # slots whose audio is taken now (more than one: catching up after a late wake-up)
    send: range  # slots sent now: their events fire
    late: bool  # the take came more than one frame after it was due
    sending: int  # the slot of the current tick, ``floor((now - t0) / F) - D`` (< 0 before slot 0 is sent)


def next_wake(t0: float, next_tick: int, next_event: int, delay_frames: int, phase: float) -> float:
    """When the clock wakes next: the earlier of taking ``next_tick`` and sending ``next_event``."""
    return min(t0 + next_tick * FRAME_SECONDS + phase, t0 + (next_event + delay_frames) * FRAME_SECONDS)


def wake(now: float, slept_at: float, t0: float, next_tick: int, next_event: int, delay_frames: int,
         phase: float) -> Wake:
    """The slots a wake-up at ``now`` takes and sends (the clock went to sleep at ``slept_at``)."""
    due = math.floor((now - t0 - phase) / FRAME_SECONDS)
    take_at = t0 + next_tick * FRAME_SECONDS + phase
    late = due >= next_tick and now - max(take_at, slept_at) > FRAME_SECONDS
    sending = math.floor((now - t0) / FRAME_SECONDS) - delay_frames
    return Wake(range(next_tick, max(next_tick, due + 1)), range(next_event, max(next_event, sending + 1)), late,
                sending)


@dataclass(frozen=True)
class DelayPlan:
    delay_frames: int  # D
    phase: float  # s after frame_time(n) at which slot n is taken

    def delay_ms(self) -> float:
        return self.delay_frames * FRAME_MS - self.phase * 1000


def clamp_margin(margin_ms: float) -> float:
    return min(MAX_MARGIN_MS, max(1.0, margin_ms))


def frames_needed(margin_ms: float, lookahead_frames: int) -> int:
    """``D`` that holds ``lookahead`` frames plus the (clamped) margin."""
    return lookahead_frames + math.ceil(clamp_margin(margin_ms) / FRAME_MS)


def plan_delay(margin_ms: float, lookahead_frames: int, delay_frames: int, may_grow: bool) -> DelayPlan:
    """The delay for a render margin of ``margin_ms``: ``D`` one frame larger if it needs more and
    ``may_grow``, and the phase that makes the delay ``lookahead + margin`` (as close as ``D`` allows)."""
    margin = clamp_margin(margin_ms)
    if frames_needed(margin, lookahead_frames) > delay_frames and may_grow:
        delay_frames += 1  # one frame per call: each growth repeats one (quiet) sent slot
    return DelayPlan(delay_frames, max(0.0, (delay_frames - lookahead_frames) * FRAME_MS - margin) / 1000)
