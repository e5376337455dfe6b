"""``FrameSlots``: the generator's copy of ``rtc.AVSynchronizer``'s frame schedule, on an injected clock."""

from __future__ import annotations

import pytest

pytest.importorskip("livekit.agents", reason="livekit-agents is not installed: pip install 'avatarstream[livekit]'")

from manual_clock import ManualClock  # noqa: E402

from avatarstream.realtime.transports.livekit.generator import (  # noqa: E402
    PUSH_BLOCKED_S,
    REANCHOR_BEHIND_S,
    SLOT_MARGIN_S,
    FrameSlots,
)


def test_frames_wait_for_the_synchronizer_slot_plus_the_margin():
    clock = ManualClock()
    slots = FrameSlots(25, clock)
    assert slots.wait_s() == pytest.approx(SLOT_MARGIN_S)  # the first anchors (the synchronizer's: now)
    clock.t += SLOT_MARGIN_S
    slots.pushed(0.0)
    clock.t += 0.005  # the next tick's frame is ready early: held to its slot
    assert slots.wait_s() == pytest.approx(0.04 - 0.005)
    clock.t += 0.035
    slots.pushed(0.0)
    clock.t += 0.06  # a late frame goes at once, the schedule keeps its phase
    assert slots.wait_s() == 0.0
    slots.pushed(0.0)
    assert slots.next == pytest.approx(100.0 + SLOT_MARGIN_S + 0.12)


def test_far_behind_re_anchors_before_the_synchronizer_does():
    clock = ManualClock()
    slots = FrameSlots(25, clock)
    slots.wait_s()
    slots.pushed(0.0)
    clock.t += 0.04 + SLOT_MARGIN_S + REANCHOR_BEHIND_S + 0.01  # held up
    assert slots.wait_s() == pytest.approx(SLOT_MARGIN_S)  # re-anchored at now
    assert REANCHOR_BEHIND_S < 0.3  # rtc.AVSynchronizer re-anchors at 300 ms: this side first


def test_a_blocked_hand_over_follows_the_synchronizer_from_then():
    clock = ManualClock()
    slots = FrameSlots(25, clock)
    slots.wait_s()
    slots.pushed(0.0)
    clock.t += 0.5
    slots.pushed(PUSH_BLOCKED_S * 2)  # its queue was full: its schedule is behind ours
    assert slots.next == pytest.approx(clock.t + SLOT_MARGIN_S + 0.04)
