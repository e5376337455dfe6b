"""The soak's figures from its samples (no server): the warm-up ends by its stated rule, growth is
reported from the fixed 20 s mark and from the warm-up end, with a least-squares slope, and
the time series is kept so every figure can be re-derived."""

from __future__ import annotations

import json

import pytest

from avatarstream.bench.soak import (CHURN_KINDS, SERIES_COLUMNS, WARM_UP_EACH, SoakOptions, rss_growth,
                                              summarise, warm_up_end)


def _samples(rss: list[float], churn_at: dict[float, str]) -> list[dict]:
    done = {k: 0 for k in CHURN_KINDS}
    rows = []
    for i, mb in enumerate(rss):
        t = 5.0 * (i + 1)
        for at, kind in churn_at.items():
            if t - 5.0 < at <= t:
                done[kind] += 1
        rows.append({"t": t, "rss_mb": mb, "fds": 17, "threads": 16, "cpu_s": 0.5 * t, "sessions": 3,
                     "churn": dict(done), "fps": [25.0, 25.0, 25.0]})
    return rows


def test_warm_up_ends_when_every_churn_kind_has_run_enough_times():
    # kinds in turn, one every 15 s: the last kind completes its WARM_UP_EACH-th run at 45 * EACH s
    churn_at = {15.0 * (i + 1): CHURN_KINDS[i % 3] for i in range(3 * WARM_UP_EACH + 6)}
    samples = _samples([500.0] * 100, churn_at)
    assert warm_up_end(samples) == 45.0 * WARM_UP_EACH
    only_two = {t: k for t, k in churn_at.items() if k != "session"}
    assert warm_up_end(_samples([500.0] * 100, only_two)) is None  # one kind never ran: never warm


def test_growth_is_a_slope_that_single_steps_do_not_move_much():
    flat = [500.0] * 360  # half an hour of 5 s samples
    flat[-1] = 520.0  # one step up at the very end: +4 % first-to-last ...
    g = rss_growth(_samples(flat, {}))
    assert g["growth_pct"] == pytest.approx(4.0)
    assert abs(g["slope_pct_per_h"]) < 0.1 * 4.0  # ... but hardly a trend
    rising = [500.0 + 0.1 * i for i in range(720)]  # 0.1 MB per 5 s = 72 MB per hour
    assert rss_growth(_samples(rising, {}))["slope_mb_per_h"] == pytest.approx(72.0, rel=1e-3)


def test_summary_keeps_the_series_and_reports_both_warm_ups():
    churn_at = {15.0 * (i + 1): CHURN_KINDS[i % 3] for i in range(40)}
    rss = [450.0 + min(i, 60) for i in range(120)]  # rises for 5 minutes, then flat
    samples = _samples(rss, churn_at)
    out = summarise(samples, [], [], {}, SoakOptions(seconds=600))
    json.dumps(out)  # what the bench writes
    assert out["series"]["columns"] == list(SERIES_COLUMNS)
    assert len(out["series"]["rows"]) == len(samples) == out["samples"]
    t_col, rss_col = SERIES_COLUMNS.index("t"), SERIES_COLUMNS.index("rss_mb")
    assert [r[t_col] for r in out["series"]["rows"]] == [s["t"] for s in samples]
    assert [r[rss_col] for r in out["series"]["rows"]] == rss
    assert out["warm_up"]["ends_s"] == 45.0 * WARM_UP_EACH and str(WARM_UP_EACH) in out["warm_up"]["rule"]
    assert out["rss_after_20s"]["growth"] == 510.0 - 453.0
    after = out["rss_after_warm_up"]
    assert after["from_t"] == out["warm_up"]["ends_s"] and after["growth"] == 510.0 - after["first"]
    assert out["server_cpu_cores"] == pytest.approx(0.5)
