"""How much delay a session adds, and from what it is sized: the latency presets.

A session delays the speech it returns by ``lookahead + margin`` (the lip-sync delay, audio and
video of one slot together) and holds a starting live stream back until it will not run dry.
Each of these is either fixed or sized from measurements of the running session:

* **render margin**: the time between taking the last audio a frame needs and sending that frame.
  Fixed (``margin_ms``) or measured: the ``margin_quantile`` of the session's own render times
  (audio taken -> frame filed, last ``window`` frames) plus ``margin_guard_ms``, so it follows the
  engine and the machine's load (``render_margin.py``);
* **start threshold**: fixed (``start_threshold_ms`` of audio queued) or sized from the input's
  arrival jitter: a starting stream is taken as soon as what is queued, plus what is due before
  the next take, covers the ``jitter_quantile`` of its measured lateness plus ``jitter_guard_ms``
  (``input_arrival.py``);
* **microphone receive buffer**: packets aiortc's receiver holds before decoding
  (``mic_receive_packets``; its own default is 4 = 80 ms). Each Opus packet is a whole frame, and
  the start threshold above already absorbs the jitter, so the measured presets hold none.

Presets (``avatar serve --latency``):

* ``classic``: the fixed settings before the delays were measured: margin 80 ms (2 frames),
  start threshold 60 ms, 4 packets held by the receiver;
* ``adaptive`` (default): margin p99 + 5 ms, start threshold from the p99 jitter + 2 ms;
* ``low``: margin p90 + 0 ms, start threshold from the p90 jitter, no guard: about one frame in
  ten may be rendered late under a steady load (the viewer repeats the previous frame for it,
  audio is never late), and a live stream whose jitter exceeds its p90 rebuffers (a short gap in
  the returned speech) more often.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LatencySettings:
    name: str = "adaptive"
    margin_ms: float | None = None  # fixed render margin; None: measured
    margin_quantile: float = 99.0  # measured margin: this quantile of the render times (ms) ...
    margin_guard_ms: float = 5.0  # ... plus this
    margin_start_ms: float = 80.0  # margin until ``min_samples`` render times are measured
    min_samples: int = 25  # measurements (1 s of frames) a measured margin or jitter waits for
    window: int = 250  # render times (and input arrivals) a measured setting looks at: 10 s of frames
    start_threshold_ms: float | None = None  # fixed start threshold; None: from the input's jitter
    jitter_quantile: float = 99.0
    jitter_guard_ms: float = 2.0
    jitter_start_ms: float = 20.0  # jitter assumed until ``min_samples`` arrivals are measured
    mic_receive_packets: int = 0  # packets aiortc's receiver holds before decoding a microphone

    def __post_init__(self) -> None:
        for name in ("margin_ms", "start_threshold_ms"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1000:
                raise ValueError(f"{name} must be between 0 and 1000 ms, got {value}")
        for name in ("margin_quantile", "jitter_quantile"):
            if not 50 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} must be between 50 and 100, got {getattr(self, name)}")
        if not 0 <= self.mic_receive_packets <= 8:
            raise ValueError(f"mic_receive_packets must be between 0 and 8, got {self.mic_receive_packets}")
        if self.window < self.min_samples or self.min_samples < 1:
            raise ValueError("window must hold at least min_samples (>= 1) measurements")

    @property
    def measured_margin(self) -> bool:
        return self.margin_ms is None


CLASSIC = LatencySettings(name="classic", margin_ms=80.0, start_threshold_ms=60.0, mic_receive_packets=4)
ADAPTIVE = LatencySettings()
LOW = LatencySettings(name="low", margin_quantile=90.0, margin_guard_ms=0.0, jitter_quantile=90.0,
                      jitter_guard_ms=0.0)
PRESETS: dict[str, LatencySettings] = {p.name: p for p in (CLASSIC, ADAPTIVE, LOW)}


def latency_preset(name: str) -> LatencySettings:
    """The preset called ``name``; ValueError naming the presets for anything else."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown latency preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
