"""An agent socket's message limit on an injected clock (realtime/transports/agent/socket.FloodGuard): the
burst, the sustained rate, and when a flood is cut off, exactly, whatever this machine's speed (the soak and
test_abuse only check that a real flood gets the same verdicts)."""

from __future__ import annotations

from manual_clock import ManualClock

from avatarstream.realtime.transports.agent.socket import (
    FLOOD_CLOSE_MESSAGES,
    FLOOD_GAP_S,
    MAX_MESSAGES_PER_SECOND,
    MESSAGE_BURST,
    FloodGuard,
    Verdict,
)


def test_a_burst_passes_and_the_next_message_waits_for_the_sustained_rate():
    clock = ManualClock(1000.0)
    guard = FloodGuard(clock)
    assert [guard.check() for _ in range(MESSAGE_BURST)] == [Verdict.ALLOW] * MESSAGE_BURST  # all at one instant
    assert guard.check() == Verdict.REFUSE
    clock.t += 1.0 / MAX_MESSAGES_PER_SECOND  # one message's worth of tokens
    assert guard.check() == Verdict.ALLOW and guard.check() == Verdict.REFUSE


def test_an_agent_at_its_frame_rate_is_never_refused():
    clock = ManualClock(1000.0)
    guard = FloodGuard(clock)
    for _ in range(30_000):  # 10 minutes of 20 ms frames, each with a control message beside it
        clock.t += 0.02
        assert guard.check() == Verdict.ALLOW and guard.check() == Verdict.ALLOW
    assert guard.refused == 0


def test_a_flood_is_closed_at_its_refusal_cap_with_the_counts_in_the_reason():
    clock = ManualClock(1000.0)
    guard = FloodGuard(clock)
    verdicts = []
    while not verdicts or verdicts[-1] != Verdict.CLOSE:  # 2000 messages a second, 2.5 x the sustained rate
        verdicts.append(guard.check())
        clock.t += 0.0005
    allowed = verdicts.count(Verdict.ALLOW)
    assert verdicts.count(Verdict.REFUSE) == FLOOD_CLOSE_MESSAGES - 1 and guard.refused_in_a_row == FLOOD_CLOSE_MESSAGES
    # the burst, then the sustained rate's tokens over the flood's duration (to one message of float rounding)
    elapsed = (len(verdicts) - 1) * 0.0005
    assert abs(allowed - (MESSAGE_BURST + elapsed * MAX_MESSAGES_PER_SECOND)) <= 1, (allowed, elapsed)
    assert guard.received == len(verdicts) == allowed + FLOOD_CLOSE_MESSAGES
    reason = guard.close_reason()
    assert reason == (f"message rate limit exceeded: {guard.received} received, {FLOOD_CLOSE_MESSAGES} refused, "
                      f"{FLOOD_CLOSE_MESSAGES} in a row")
    assert len(reason.encode()) <= 123  # a WebSocket close reason's limit


def test_refusals_a_pause_apart_are_bursts_not_a_flood():
    clock = ManualClock(1000.0)
    guard = FloodGuard(clock, burst=10, close_after=5)
    for _ in range(10):
        assert guard.check() == Verdict.ALLOW
    for _ in range(4):  # four refusals in a row, one short of the cap
        assert guard.check() == Verdict.REFUSE
    clock.t += FLOOD_GAP_S - 0.01  # under the gap: the next refusal continues the row
    for _ in range(10):  # the bucket refilled to its burst meanwhile
        assert guard.check() == Verdict.ALLOW
    assert guard.check() == Verdict.CLOSE and guard.refused_in_a_row == 5
    guard = FloodGuard(clock, burst=10, close_after=5)
    for _ in range(10):
        guard.check()
    for _ in range(4):
        assert guard.check() == Verdict.REFUSE
    clock.t += FLOOD_GAP_S  # a pause of the whole gap: the row starts again
    for _ in range(10):  # the bucket refilled to its burst
        assert guard.check() == Verdict.ALLOW
    assert [guard.check() for _ in range(5)] == [Verdict.REFUSE] * 4 + [Verdict.CLOSE]
    assert guard.refused == 9 and guard.refused_in_a_row == 5
