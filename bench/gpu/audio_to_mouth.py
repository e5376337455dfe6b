"""Item 3, audio in to mouth out: from pushing a speech onset into a served session to the first frame sent
whose content is that onset's audio.

Each of N served sessions (``served``) repeats: silence, then ``push_audio`` of a 0.6 s speech burst that
starts at its onset (``inputs.speech_burst``), at a random phase of the 40 ms tick; its sink reports the first
fresh frame flagged ``speaking`` sent after the push. The engine flags a frame as speech from that frame's own
audio, and renders it from motion conditioned on that audio: it is the frame whose mouth follows the onset
(with trained weights; the random weights here make no readable mouth, so the mouth pixels are not read).
Every session probes at once, so the figure at N is measured under the load of N sessions.

The designed part of it is the session's lip-sync delay ``delay_ms`` (``delay_frames`` x 40 - the take phase:
the engine's lookahead, chunk - 1 + lookahead frames, plus the render margin the latency preset measures; the
median over the pushes) plus the wait for the next take (0-40 ms, 20 on average);
``over_design_ms`` is what the measured p50 adds to that (compute and queueing that made frames late).
"""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np

from avatarstream.bench.gpu.inputs import speech_burst
from avatarstream.bench.gpu.product import Product, run_async
from avatarstream.bench.gpu.served import close_sessions, open_sessions, percentile

BURST_S = 0.6


def lip_sync_delay_ms(session) -> float:
    """The session's delay from taking a slot's audio to sending it: ``delay_ms`` (D x 40 - phase) where the
    session has a latency preset, else D x 40."""
    delay = getattr(session, "delay_ms", None)
    return float(delay) if delay is not None else session.delay_frames * 40.0


async def _probe(served, burst: np.ndarray, onsets: int, rng: random.Random, wait_s: float, delays: list) -> int:
    """``onsets`` bursts into one session; returns how many onsets were never seen (timed out). ``delays`` gets the
    session's lip-sync delay in ms at each push (the latency preset adapts it to the measured render time)."""
    session, sink = served.session, served.sink
    lost = 0
    for k in range(onsets):
        if k:  # quiet until the previous burst has been sent (its first frame was: the rest follows in BURST_S)
            await asyncio.sleep(BURST_S + 0.3 + rng.uniform(0.0, 0.2))
            while session.queued_seconds > 0:
                await asyncio.sleep(0.02)
        await asyncio.sleep(rng.uniform(0.0, 0.04))  # a random phase of the 40 ms tick
        sink.watch_onset(time.monotonic())
        session.push_audio(burst)
        session.end_utterance()
        delays.append(lip_sync_delay_ms(session))
        try:
            await asyncio.wait_for(sink.onset_seen.wait(), session.delay_frames * 0.04 + wait_s)
        except asyncio.TimeoutError:
            lost += 1
    return lost


async def measure(product: Product, n: int, onsets: int, settle_s: float, wait_s: float) -> dict:
    burst = speech_burst(product.speech, BURST_S)
    served = await open_sessions(product, n)
    delays: list[int] = []
    try:
        await asyncio.sleep(settle_s)
        lost = await asyncio.gather(*(_probe(s, burst, onsets, random.Random(17 + k), wait_s, delays)
                                      for k, s in enumerate(served)))
        latencies = [x for s in served for x in s.sink.onset_latencies_ms]
    finally:
        await close_sessions(served)
    delay = float(np.median(delays)) if delays else lip_sync_delay_ms(served[0].session)
    designed = round(delay + 20.0, 1)  # the lip-sync delay plus the mean wait for the next tick
    p50 = percentile(latencies, 50)
    row = {"sessions": n, "onsets": len(latencies), "onsets_lost": int(sum(lost)),
           "p50_ms": p50, "p99_ms": percentile(latencies, 99),
           "min_ms": round(min(latencies), 1) if latencies else None,
           "delay_ms": round(delay, 1), "delay_ms_range": [min(delays), max(delays)] if delays else None,
           "delay_frames": served[0].session.delay_frames,
           "designed_ms": designed, "over_design_ms": round(p50 - designed, 1) if p50 is not None else None}
    print(f"gpu check: audio to mouth at {n} sessions: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms "
          f"({row['onsets']} onsets, designed {designed:.0f} ms = lip-sync delay {delay:.0f} + 20)", flush=True)
    return row


def audio_to_mouth(product: Product, counts: list[int], onsets_total: int, onsets_min: int = 2,
                   settle_s: float = 1.0, wait_s: float = 3.0, time_left=lambda: float("inf")) -> dict:
    """At each N of ``counts``: about ``onsets_total`` onsets spread over the N sessions (at least ``onsets_min``
    each); an onset not seen ``wait_s`` after the designed delay counts as lost. An N whose estimate (2 s per
    onset round + 3 s) exceeds ``time_left()`` is skipped."""
    rows, skipped = [], []
    for n in counts:
        per_session = max(onsets_min, -(-onsets_total // n))
        if time_left() < 2.0 * per_session + 3.0 + settle_s:
            skipped.append({"sessions": n, "why": f"time budget: {time_left():.0f} s left"})
            continue
        rows.append(run_async(measure(product, n, per_session, settle_s, wait_s)))
    return {"path": "served sessions in-process (AvatarSession + the engine's shared workers, speech pushed with "
                    "push_audio, frames read by a transport-contract sink); no HTTP layer: realtime.http and the "
                    "session registry import aiortc/PyAV, absent on the GPU machine",
            "burst_s": BURST_S, "rows": rows, "skipped": skipped}
