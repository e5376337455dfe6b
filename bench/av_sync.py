"""Measuring lip sync: cross-correlation of a mouth-opening signal with a speech envelope.

Both signals are given as (time, value) samples on one clock (seconds); they are resampled
onto a 10 ms grid over their overlap, the envelope is box-averaged over one video frame
(40 ms), and Pearson's r is computed for every lag in ``[-max_lag, max_lag]``. A positive lag
means the speech envelope happens *later* than the mouth movement (audio lags video).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRID_STEP = 0.01


@dataclass(frozen=True)
class LagResult:
    lag_s: float  # best lag (envelope time - mouth time)
    r: float  # Pearson r at the best lag
    lags_s: np.ndarray
    rs: np.ndarray

    def r_at(self, lag_s: float) -> float:
        return float(self.rs[int(np.argmin(np.abs(self.lags_s - lag_s)))])


def rms_envelope(audio: np.ndarray, sample_rate: int, hop_s: float = 0.01, window_s: float = 0.04
                 ) -> tuple[np.ndarray, np.ndarray]:
    """RMS over ``window_s`` windows every ``hop_s``; returns (window centre times, rms)."""
    hop, win = int(hop_s * sample_rate), int(window_s * sample_rate)
    x = np.asarray(audio, np.float64)
    starts = np.arange(0, max(1, x.size - win + 1), hop)
    rms = np.array([np.sqrt(np.mean(x[s:s + win] ** 2)) for s in starts])
    return (starts + win / 2) / sample_rate, rms


def box_smooth(values: np.ndarray, window_s: float, step: float = GRID_STEP) -> np.ndarray:
    k = max(1, int(round(window_s / step)))
    k += 1 - k % 2  # odd length: centred, no half-sample shift
    return np.convolve(values, np.ones(k) / k, "same")


def cross_correlate(t_mouth: np.ndarray, mouth: np.ndarray, t_env: np.ndarray, env: np.ndarray, *,
                    max_lag: float = 0.2, envelope_window: float = 0.04, margin: float | None = None) -> LagResult:
    """Best lag and r between a mouth signal and a speech envelope (see module doc)."""
    t_mouth, mouth = np.asarray(t_mouth, float), np.asarray(mouth, float)
    t_env, env = np.asarray(t_env, float), np.asarray(env, float)
    margin = max_lag if margin is None else margin
    lo = max(t_mouth[0], t_env[0]) + margin
    hi = min(t_mouth[-1], t_env[-1]) - margin
    if hi - lo < 1.0:
        raise ValueError(f"signals overlap for only {hi - lo + 2 * margin:.2f} s; need at least {1 + 2 * margin:.1f} s")
    grid = np.arange(lo, hi, GRID_STEP)
    m = np.interp(grid, t_mouth, mouth)
    lags = np.round(np.arange(-max_lag, max_lag + 1e-9, GRID_STEP), 3)
    rs = np.array([_pearson(m, box_smooth(np.interp(grid + lag, t_env, env), envelope_window)) for lag in lags])
    best = int(np.nanargmax(rs))
    return LagResult(float(lags[best]), float(rs[best]), lags, rs)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def coarse_offset(t_a: np.ndarray, a: np.ndarray, t_b: np.ndarray, b: np.ndarray) -> float:
    """Offset ``d`` (seconds) such that ``b(t + d)`` best matches ``a(t)``, by full cross-correlation
    of the two (z-normalised) signals on a 10 ms grid; for signals on unrelated clocks."""
    ga = np.arange(t_a[0], t_a[-1], GRID_STEP)
    gb = np.arange(t_b[0], t_b[-1], GRID_STEP)
    xa = np.interp(ga, t_a, a)
    xb = np.interp(gb, t_b, b)
    xa = (xa - xa.mean()) / (xa.std() + 1e-12)
    xb = (xb - xb.mean()) / (xb.std() + 1e-12)
    c = np.correlate(xb, xa, "full")  # index k <-> shift (k - (len(xa) - 1)) grid steps
    shifts = (np.arange(c.size) - (xa.size - 1)) * GRID_STEP + (gb[0] - ga[0])
    return float(shifts[int(np.argmax(c))])


def segment_correlation(t_ref: np.ndarray, ref: np.ndarray, t_x: np.ndarray, x: np.ndarray, *,
                        segment_s: float = 2.0, max_lag: float = 0.3, min_activity: float = 0.2) -> float:
    """Median over ``segment_s`` windows of the best-lag Pearson r between ``ref`` and ``x``.

    For a signal that passed through a live path (``x``: received audio vs ``ref``: the speech
    sent) small hiccups shift later parts a little; each window finds its own lag within
    ``max_lag``. Windows where ``ref`` is nearly silent (peak below ``min_activity`` of the
    overall peak) are skipped.
    """
    t_ref, ref, t_x, x = (np.asarray(v, float) for v in (t_ref, ref, t_x, x))
    lo, hi = max(t_ref[0], t_x[0]) + max_lag, min(t_ref[-1], t_x[-1]) - max_lag
    peak = ref.max()
    rs = []
    for start in np.arange(lo, hi - segment_s / 2, segment_s):
        grid = np.arange(start, min(start + segment_s, hi), GRID_STEP)
        r_seg = np.interp(grid, t_ref, ref)
        if r_seg.max() < min_activity * peak or r_seg.std() == 0:
            continue
        best = max((_pearson(r_seg, np.interp(grid + lag, t_x, x)) for lag in np.arange(-max_lag, max_lag + 1e-9, GRID_STEP)),
                   key=lambda r: -1 if np.isnan(r) else r)
        rs.append(best)
    if not rs:
        raise ValueError("no segment with activity in the reference signal")
    return float(np.median(rs))
