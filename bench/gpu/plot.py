"""``gpu.png``, drawn with OpenCV (the GPU machine has no matplotlib): two rows of three panels.

Top: delivered fps per session (worst session and 5th percentile; the worst at the engine's latency "low" too)
against sessions, with the 25 fps line;
the stage budget (ms per frame, stacked by stage) at batch 1 and at the workers' batch; audio-to-mouth (default
and "low" streaming) and first-frame p50 / p99 against their targets. Bottom (the component sections, when they ran): W + G ms per
frame by mode and batch; the render worker's total fps against sessions; motion windows per second against
sessions, alone vs through the shared worker. A panel whose section did not run says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avatarstream.engines.base import EngineError

PANEL_W, PANEL_H, MARGIN = 440, 280, 60
COLORS = [(200, 80, 30), (40, 160, 40), (30, 30, 200), (150, 50, 150), (0, 140, 200), (120, 120, 0), (90, 90, 90)]
BLACK = (0, 0, 0)


def _text(img, text: str, xy, scale: float = 0.45, color=BLACK) -> None:
    import cv2

    cv2.putText(img, text, (int(xy[0]), int(xy[1])), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def _frame(img, x0: int, y0: int, title: str) -> None:
    import cv2

    cv2.rectangle(img, (x0, y0), (x0 + PANEL_W, y0 + PANEL_H), BLACK, 1)
    _text(img, title, (x0, y0 - 10), 0.5)


def _missing(img, x0: int, y0: int, section: dict | None) -> bool:
    """Say why a section has no figures (skipped or failed as a whole); False when it has them."""
    whole = isinstance(section, dict) and (isinstance(section.get("skipped"), str) or "error" in section)
    if isinstance(section, dict) and not whole:
        return False
    why = "not run" if not isinstance(section, dict) else str(section.get("skipped") or section.get("error"))
    _text(img, why[:60], (x0 + 10, y0 + PANEL_H // 2), 0.4, COLORS[2])
    return True


def _lines(img, x0, y0, series: dict[str, list[tuple[float, float]]], ymax: float, hline: float | None = None) -> None:
    import cv2

    xs = [x for pts in series.values() for x, _ in pts]
    if not xs:
        return
    xmax = max(xs) or 1.0

    def at(x, y):
        return (x0 + 20 + int((PANEL_W - 40) * x / xmax), y0 + PANEL_H - int((PANEL_H - 20) * min(y, ymax) / ymax))

    if hline is not None:
        cv2.line(img, at(0, hline), at(xmax, hline), (160, 160, 160), 1)
        _text(img, f"{hline:g}", (x0 + 2, at(0, hline)[1] - 3), 0.4, (120, 120, 120))
    for i, (name, pts) in enumerate(series.items()):
        c = COLORS[i % len(COLORS)]
        p = [at(x, y) for x, y in pts]
        for a, b in zip(p, p[1:]):
            cv2.line(img, a, b, c, 2, cv2.LINE_AA)
        for (_x, y), q in zip(pts, p):
            cv2.circle(img, q, 4, c, -1)
            _text(img, f"{y:.1f}", (q[0] - 14, q[1] - 8 + 20 * i), 0.38, c)
        _text(img, name, (x0 + PANEL_W - 150, y0 + 16 + 16 * i), 0.42, c)
    for x in sorted(set(xs)):
        _text(img, f"{x:g}", (at(x, 0)[0] - 4, y0 + PANEL_H + 16), 0.4)


def _bars(img, x0, y0, groups: list[tuple[str, list[tuple[str, float]]]], top: float,
          marks: dict[str, float] | None = None) -> None:
    """Grouped bars: groups of (label, [(series, value)]); ``marks``: a target line per group label."""
    import cv2

    names = list(dict.fromkeys(n for _, vals in groups for n, _ in vals))
    slots = sum(len(vals) + 1 for _, vals in groups) or 1
    bar = max(4, (PANEL_W - 20) // slots)
    x = x0 + 10
    for label, vals in groups:
        gx = x
        for name, v in vals:
            c = COLORS[names.index(name) % len(COLORS)]
            y = y0 + PANEL_H - int((PANEL_H - 20) * min(v, top) / top)
            cv2.rectangle(img, (x, y), (x + bar - 3, y0 + PANEL_H), c, -1)
            _text(img, f"{v:.1f}" if v < 10 else f"{v:.0f}", (x, y - 3), 0.35, c)
            x += bar
        if marks and label in marks:
            y = y0 + PANEL_H - int((PANEL_H - 20) * min(marks[label], top) / top)
            cv2.line(img, (gx - 2, y), (x, y), BLACK, 2)
        _text(img, label, (gx, y0 + PANEL_H + 16), 0.38)
        x += bar
    for i, n in enumerate(names):
        _text(img, n, (x0 + PANEL_W - 120, y0 + 16 + 16 * i), 0.42, COLORS[i % len(COLORS)])


def _stacked(img, x0, y0, columns: list[tuple[str, dict[str, float]]]) -> None:
    import cv2

    stages = list(dict.fromkeys(s for _, parts in columns for s in parts))
    top = max((sum(parts.values()) for _, parts in columns), default=1.0) or 1.0
    width = (PANEL_W - 200) // max(1, len(columns))
    for ci, (label, parts) in enumerate(columns):
        x = x0 + 20 + ci * width
        base = y0 + PANEL_H
        for s in stages:
            h = int((PANEL_H - 30) * parts.get(s, 0.0) / top)
            cv2.rectangle(img, (x, base - h), (x + width - 20, base), COLORS[stages.index(s) % len(COLORS)], -1)
            base -= h
        _text(img, f"{sum(parts.values()):.2f} ms", (x, base - 4), 0.4)
        _text(img, label, (x, y0 + PANEL_H + 16), 0.4)
    for i, s in enumerate(stages):
        _text(img, s, (x0 + PANEL_W - 170, y0 + 16 + 16 * i), 0.42, COLORS[i % len(COLORS)])


def plot(result: dict, path: Path) -> Path:
    import cv2

    w, h = 3 * (PANEL_W + MARGIN) + MARGIN, 2 * (PANEL_H + 2 * MARGIN) + 40
    img = np.full((h, w, 3), 255, np.uint8)
    _text(img, f"gpu check: {result.get('mode', '')} on {result.get('device_name', '')}", (10, 22), 0.6)
    cols = [MARGIN + i * (PANEL_W + MARGIN) for i in range(3)]
    rows_y = [70, 70 + PANEL_H + 2 * MARGIN]

    s = result.get("sessions")
    _frame(img, cols[0], rows_y[0], "delivered fps per session vs sessions")
    if not _missing(img, cols[0], rows_y[0], s):
        r = s["rows"]
        series = {"worst session": [(x["sessions"], x["fps_min"]) for x in r],
                  "p5 of seconds": [(x["sessions"], x["fps_p5"] or 0.0) for x in r]}
        low_rows = (((result.get("low_latency") or {}).get("sessions")) or {}).get("rows") or []
        if low_rows:
            series["worst, latency low"] = [(x["sessions"], x["fps_min"]) for x in low_rows]
        _lines(img, cols[0], rows_y[0], series, ymax=30.0, hline=25.0)

    b = result.get("stage_budget")
    _frame(img, cols[1], rows_y[0], "stage budget: ms per frame (product)")
    if not _missing(img, cols[1], rows_y[0], b):
        _stacked(img, cols[1], rows_y[0], [(f"batch {t['batch']}", {k: v for k, v in t["ms_per_frame"].items() if v})
                                           for t in b["product"]])

    _frame(img, cols[2], rows_y[0], "latency p50 / p99 (ms) vs target")
    groups, marks = [], {}
    low = ((result.get("low_latency") or {}).get("audio_to_mouth")) or {}
    for tag, a2m in (("", result.get("audio_to_mouth") or {}), ("low ", low)):
        for r in a2m.get("rows") or []:
            label = f"{tag}a2m N={r['sessions']}"
            groups.append((label, [("p50", r["p50_ms"] or 0.0), ("p99", r["p99_ms"] or 0.0)]))
            marks[label] = 150.0
    f = result.get("first_frame") or {}
    if f.get("p50_ms") is not None:
        groups.append(("first frame", [("p50", f["p50_ms"]), ("p99", f["p99_ms"])]))
        marks["first frame"] = 300.0
    if groups:
        _bars(img, cols[2], rows_y[0], groups, max(v for _, vals in groups for _, v in vals) * 1.15 or 1.0, marks)
    else:
        _missing(img, cols[2], rows_y[0], None)

    rr = result.get("renderer")
    _frame(img, cols[0], rows_y[1], "W+G ms per frame by mode")
    if not _missing(img, cols[0], rows_y[1], rr):
        batches = sorted({r["batch"] for r in rr["rows"]})
        groups = [(f"batch {bt}", [(r["mode"], r["ms_per_frame"]) for r in rr["rows"] if r["batch"] == bt])
                  for bt in batches]
        _bars(img, cols[0], rows_y[1], groups, max(r["ms_per_frame"] for r in rr["rows"]) * 1.15 or 1.0)
    wk = result.get("worker")
    _frame(img, cols[1], rows_y[1], "render worker: total fps vs sessions")
    if not _missing(img, cols[1], rows_y[1], wk):
        top = max(r["fps_total"] for r in wk["rows"]) * 1.2 or 1.0
        _lines(img, cols[1], rows_y[1], {"fps total": [(r["sessions"], r["fps_total"]) for r in wk["rows"]]}, top)
    mw = result.get("motion_worker")
    _frame(img, cols[2], rows_y[1], "motion windows/s vs sessions")
    if not _missing(img, cols[2], rows_y[1], mw):
        top = max(max(r["alone"]["windows_per_s"], r["worker"]["windows_per_s"]) for r in mw["rows"]) * 1.2 or 1.0
        _lines(img, cols[2], rows_y[1], {m: [(r["sessions"], r[m]["windows_per_s"]) for r in mw["rows"]]
                                         for m in ("alone", "worker")}, top)
    if not cv2.imwrite(str(path), img):
        raise EngineError(f"could not write {path}")
    return path
