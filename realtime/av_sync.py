"""Audio/video synchronisation measured at a viewer: pure math on received signals.

The A/V offset is the lag that best aligns the received audio's loudness with the mouth
opening re-measured on the received video frames:

    r(lag) = pearson( mouth[i], envelope(t_video[i] + FRAME/2 + lag) )

Frame ``i`` shows the face for the 40 ms of audio that start at its own time (see
``engines.base``), hence the half-frame centring. A positive offset means the sound reaches
the viewer after the matching lip movement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.base import FPS

FRAME_SECONDS = 1.0 / FPS


@dataclass(frozen=True)
class SyncEstimate:
    offset_s: float  # best lag (audio later than video when positive)
    r: float  # Pearson correlation at that lag
    lags_s: np.ndarray
    rs: np.ndarray


def rms_envelope(samples: np.ndarray, times: np.ndarray, at: np.ndarray, window_s: float = FRAME_SECONDS) -> np.ndarray:
    """RMS of ``samples`` (taken at ``times``, uniformly spaced) in windows centred at ``at``."""
    if samples.size < 2:
        return np.zeros(len(at))
    rate = 1.0 / float(times[1] - times[0])
    energy = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    half = window_s / 2
    lo = np.clip(np.round((np.asarray(at) - half - times[0]) * rate).astype(int), 0, samples.size)
    hi = np.clip(np.round((np.asarray(at) + half - times[0]) * rate).astype(int), 0, samples.size)
    n = np.maximum(hi - lo, 1)
    return np.sqrt((energy[hi] - energy[lo]) / n)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def estimate_offset(
    mouth: np.ndarray,
    video_times: np.ndarray,
    samples: np.ndarray,
    sample_times: np.ndarray,
    max_lag_s: float = 0.3,
    step_s: float = 0.005,
) -> SyncEstimate:
    """Lag maximising the correlation of mouth opening and audio loudness (see module doc)."""
    mouth = np.asarray(mouth, np.float64)
    ok = np.isfinite(mouth)
    lags = np.arange(-max_lag_s, max_lag_s + step_s / 2, step_s)
    centres = np.asarray(video_times)[ok] + FRAME_SECONDS / 2
    rs = np.array([pearson(mouth[ok], rms_envelope(samples, sample_times, centres + lag)) for lag in lags])
    best = int(np.argmax(rs))
    return SyncEstimate(float(lags[best]), float(rs[best]), lags, rs)


def onset_time(values: np.ndarray, times: np.ndarray, threshold: float, after: float = -np.inf) -> float | None:
    """First time at or after ``after`` where ``values`` exceeds ``threshold`` (None if never)."""
    values, times = np.asarray(values), np.asarray(times)
    idx = np.nonzero((times >= after) & (values > threshold))[0]
    return float(times[idx[0]]) if idx.size else None


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float | None]:
    if not values:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": round(float(np.percentile(values, q)), 4) for q in qs}
