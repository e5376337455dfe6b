"""``avatar bench --suite portraits``: does the lite engine move each portrait's real mouth, and only it?

Per portrait (the bundled cat and astronaut, plus every picture in ``AVATARSTREAM_PORTRAITS`` or
``../shared/portraits/animals`` next to the repository), rendered at 512x512 with real speech
(espeak-ng) and no head motion (``head_motion_scale`` 0, so every change is facial motion):

- where the engine's face detection puts the mouth and nose, and how far that is from the
  hand-labelled positions below (eye distances);
- mouth opening vs speech envelope: the opening is re-measured on the OUTPUT frames, independent of
  the engine's motion values: how much further down a patch of lower lip and chin under the
  LABELLED mouth (the detected one where no label exists) has moved from the silent rest frame
  than a patch of upper lip above it (template matching, sub-pixel), in eye distances, so moving
  the whole muzzle (or the nose) does not count as opening; Pearson r and lag at -3..3 frames
  (positive lag: the mouth follows the sound); the same r for the mean colour change
  (|RGB - rest|, levels) in a mouth box, a cruder measure that also counts a painted interior;
- motion outside the mouth: in a patch on the labelled nose, the colour change (mean |RGB - rest|,
  levels) and the patch's shift (template matching, px) per frame, their maxima and the colour
  change's correlation with the envelope;
- whether the crop keeps the head: the labelled ear tips mapped into the 512x512 frame.

Writes ``portraits.json`` (via the CLI) and ``portraits.png``, a contact sheet: per portrait the
rest frame and the frames of smallest, median and largest mouth-box change, the chin patch (red),
upper-lip patch (orange) and nose patch (green) drawn on the first. About 8 s per portrait on a 2-core CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from avatarstream.bench.speech import espeak_speech, require_espeak
from avatarstream.engines.base import SAMPLES_PER_FRAME, NoFaceError

SIZE = 512
SPEECH = ("Hello there. I would like to tell you about my day at the park, where the sun was warm "
          "and every dog I met wanted to play ball with me.")
SPEECH_QUICK = "Hello there. I would like to tell you about my day at the park."  # --quick: ~3.5 s
REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "engines" / "lite" / "portraits"
SHARED = REPO.parent / "shared" / "portraits" / "animals"


@dataclass(frozen=True)
class Labels:
    """Hand-labelled source-pixel positions (looked up by eye on the pictures)."""

    nose: tuple[float, float]
    mouth: tuple[float, float] | None  # None: no mouth visible in the photo
    ears: tuple[tuple[float, float], ...] = field(default_factory=tuple)  # ear tips the photo shows whole


LABELS: dict[str, Labels] = {
    # Chelsea: the mouth is hidden under the nose at the picture's bottom edge; the ear tips are cut off
    "cat.jpg": Labels(nose=(262, 240), mouth=None),
    "s23.jpg": Labels(nose=(341, 385), mouth=(340, 415), ears=((150, 95), (478, 140))),  # cartoon alpaca
    "s25.jpg": Labels(nose=(222, 272), mouth=(225, 335), ears=((82, 88), (430, 76))),  # shiba, mouth closed
    "s31.jpg": Labels(nose=(124, 160), mouth=(123, 192), ears=((52, 20), (190, 18))),  # shiba, mouth ajar
    "s32.jpg": Labels(nose=(152, 148), mouth=(142, 188), ears=((35, 45), (215, 30))),  # shiba, mouth open
    "s36.jpg": Labels(nose=(310, 158), mouth=(306, 212), ears=((235, 32), (390, 48))),  # alpaca
    "s39.jpg": Labels(nose=(303, 298), mouth=(305, 338), ears=((85, 135), (385, 45))),  # ragdoll cat
}


def portrait_set() -> list[Path]:
    extra = Path(os.environ.get("AVATARSTREAM_PORTRAITS", SHARED))
    paths = [BUNDLED / "astronaut.jpg", BUNDLED / "cat.jpg"]
    if extra.is_dir():
        paths += sorted(p for p in extra.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return paths


def speech(text: str = SPEECH) -> np.ndarray:
    """espeak-ng speech at the engine's sample rate, float32 in [-1, 1]."""
    require_espeak("portraits")
    return espeak_speech(text)


def envelope(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS per 40 ms video frame."""
    padded = np.zeros(n_frames * SAMPLES_PER_FRAME, np.float32)
    k = min(audio.size, padded.size)
    padded[:k] = audio[:k]
    return np.sqrt((padded.reshape(n_frames, SAMPLES_PER_FRAME).astype(np.float64) ** 2).mean(axis=1))


def lagged_r(signal: np.ndarray, env: np.ndarray, max_lag: int) -> list[tuple[int, float]]:
    """Pearson r of ``signal`` against ``env`` shifted by each lag (lag > 0: signal follows env)."""
    out = []
    n = len(signal)
    for lag in range(-max_lag, max_lag + 1):
        s = signal[max(0, lag):n + min(0, lag)]
        e = env[max(0, -lag):n + min(0, -lag)]
        r = float(np.corrcoef(s, e)[0, 1]) if s.std() > 1e-9 and e.std() > 1e-9 else 0.0
        out.append((lag, r))
    return out


def _box(centre: np.ndarray, half_w: float, top: float, bottom: float) -> tuple[int, int, int, int]:
    x0, x1 = int(max(0, centre[0] - half_w)), int(min(SIZE, centre[0] + half_w))
    y0, y1 = int(max(0, centre[1] + top)), int(min(SIZE, centre[1] + bottom))
    return x0, y0, max(x1, x0 + 2), max(y1, y0 + 2)


def _shift(rest_gray: np.ndarray, gray: np.ndarray, box, search: int) -> tuple[float, float]:
    """Where the rest frame's patch ``box`` is found in ``gray`` (normalised cross-correlation,
    sub-pixel peak), as (dx, dy) in px; ``search`` px searched around it."""
    x0, y0, x1, y1 = box
    tpl = rest_gray[y0:y1, x0:x1]
    a0, b0 = max(0, x0 - search), max(0, y0 - search)
    a1, b1 = min(SIZE, x1 + search), min(SIZE, y1 + search)
    res = cv2.matchTemplate(gray[b0:b1, a0:a1], tpl, cv2.TM_CCOEFF_NORMED)
    _, _, _, (px, py) = cv2.minMaxLoc(res)

    def sub(c, i, n):  # parabola through the peak and its neighbours
        if 0 < i < n - 1:
            den = c[i - 1] - 2 * c[i] + c[i + 1]
            return i + (0.5 * (c[i - 1] - c[i + 1]) / den if abs(den) > 1e-9 else 0.0)
        return float(i)

    fx = sub(res[py, :], px, res.shape[1])
    fy = sub(res[:, px], py, res.shape[0])
    return float(fx + a0 - x0), float(fy + b0 - y0)


def measure(path: Path, engine, audio: np.ndarray) -> tuple[dict, list[np.ndarray] | None]:
    from avatarstream.engines.portraits import load_portrait

    out: dict = {"portrait": path.name, "source": str(path)}
    labels = LABELS.get(path.name)
    portrait = load_portrait(path)
    try:
        framed, renderer = engine.prepare(portrait, SIZE)
    except NoFaceError as e:
        out["error"] = f"no face found: {e}"
        return out, None
    face = framed.face
    m = framed.matrix
    d = face.eye_distance
    to_frame = lambda p: np.asarray(p, np.float64) @ m[:, :2].T + m[:, 2]  # noqa: E731
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    src_d = d / scale
    mouth_det = face.points[60:68].mean(axis=0)
    nose_det = face.points[30]
    out.update(kind=face.kind, mouth_found=bool(face.mouth_found), eye_distance_px=round(d, 1),
               detected_mouth_src=[round(float(v), 1) for v in (mouth_det - m[:, 2]) @ np.linalg.inv(m[:, :2]).T],
               detected_nose_src=[round(float(v), 1) for v in (nose_det - m[:, 2]) @ np.linalg.inv(m[:, :2]).T],
               mouth_open_at_rest=round(float(np.linalg.norm(face.points[66] - face.points[62]) / d), 3),
               interior_painted=bool(renderer.paint_interior))
    mouth = mouth_det
    nose = nose_det
    if labels is not None:
        nose = to_frame(labels.nose)
        out["nose_error_eye_distances"] = round(float(np.linalg.norm(nose_det - nose) / d), 3)
        out["mouth_visible"] = labels.mouth is not None
        if labels.mouth is not None:
            mouth = to_frame(labels.mouth)
            out["mouth_error_eye_distances"] = round(float(np.linalg.norm(mouth_det - mouth) / d), 3)
        ears = [to_frame(e) for e in labels.ears]
        out["ears_in_source"] = len(ears)
        out["ears_in_crop"] = int(sum(bool((e >= 0).all() and (e < SIZE).all()) for e in ears))
    out["mouth_region_from"] = "label" if labels is not None and labels.mouth is not None else "detection"
    out["source_eye_distance_px"] = round(src_d, 1)

    stream = engine.open_stream(portrait, size=SIZE, controls={"head_motion_scale": 0.0})
    rest = stream.idle_frame()
    frames = [f.image for f in stream.feed(audio)] + [f.image for f in stream.flush()]
    rest_gray = cv2.cvtColor(rest, cv2.COLOR_RGB2GRAY)
    # the jaw: a patch of lower lip and chin under the mouth line, tracked by template matching
    jaw_box = _box(mouth, 0.3 * d, 0.0 * d, 0.45 * d)
    if out["mouth_region_from"] == "label":
        chin_box = _box(mouth, 0.25 * d, 0.12 * d, 0.42 * d)
        lip_box = _box(mouth, 0.2 * d, -0.3 * d, -0.1 * d)
    else:  # under the detected outer lower lip, above the upper one
        chin_box = _box(np.array([mouth[0], face.points[57][1]]), 0.25 * d, 0.05 * d, 0.35 * d)
        lip_box = _box(np.array([mouth[0], face.points[51][1]]), 0.2 * d, -0.2 * d, 0.0)
    nr = max(3.0, 0.1 * d)
    nose_box = _box(nose, nr, -nr, nr)
    opening, change, nose_color, nose_flow = [], [], [], []
    for img in frames:
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        chin_dy = _shift(rest_gray, g, chin_box, int(0.5 * d))[1]
        lip_dy = _shift(rest_gray, g, lip_box, int(0.3 * d))[1]
        opening.append((chin_dy - lip_dy) / d)
        x0, y0, x1, y1 = jaw_box
        change.append(float(np.abs(img[y0:y1, x0:x1].astype(np.float32) - rest[y0:y1, x0:x1]).mean()))
        nose_flow.append(float(np.hypot(*_shift(rest_gray, g, nose_box, int(0.2 * d)))))
        x0, y0, x1, y1 = nose_box
        nose_color.append(float(np.abs(img[y0:y1, x0:x1].astype(np.float32) - rest[y0:y1, x0:x1]).mean()))
    opening_a, env = np.array(opening), envelope(audio, len(frames))
    lags = lagged_r(opening_a, env, 3)
    near = max((x for x in lags if abs(x[0]) <= 1), key=lambda x: x[1])
    best = max(lags, key=lambda x: x[1])
    nose_c = np.array(nose_color)
    change_lags = lagged_r(np.array(change), env, 3)
    change_near = max((x for x in change_lags if abs(x[0]) <= 1), key=lambda x: x[1])
    out.update(
        frames=len(frames),
        mouth_opening_max_eye_distances=round(float(opening_a.max()), 3),
        mouth_r_at_lag_le_1=round(near[1], 3), mouth_lag_at_lag_le_1=near[0],
        mouth_r_best=round(best[1], 3), mouth_lag_best=best[0],
        mouth_r_by_lag={str(k): round(r, 3) for k, r in lags},
        mouth_change_max=round(float(max(change)), 2),
        mouth_change_r_at_lag_le_1=round(change_near[1], 3), mouth_change_lag=change_near[0],
        nose_color_change_max=round(float(nose_c.max()), 2), nose_color_change_mean=round(float(nose_c.mean()), 3),
        nose_color_r=round(max(r for _, r in lagged_r(nose_c, env, 1)), 3),
        nose_shift_max_px=round(float(max(nose_flow)), 3),
    )
    order = np.argsort(np.array(change))
    picks = [rest] + [frames[int(order[i])] for i in (0, len(order) // 2, -1)]
    sheet = [p.copy() for p in picks]
    cv2.rectangle(sheet[0], chin_box[:2], chin_box[2:], (255, 0, 0), 2)
    cv2.rectangle(sheet[0], lip_box[:2], lip_box[2:], (255, 160, 0), 2)
    cv2.rectangle(sheet[0], nose_box[:2], nose_box[2:], (0, 255, 0), 2)
    return out, sheet


def _contact_sheet(path: Path, rows: list[tuple[str, list[np.ndarray]]]) -> None:
    tile = 192
    lines = []
    for name, frames in rows:
        tiles = [cv2.resize(f, (tile, tile), interpolation=cv2.INTER_AREA) for f in frames]
        label = np.full((tile, 110, 3), 255, np.uint8)
        cv2.putText(label, name, (6, tile // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        lines.append(np.hstack([label] + tiles))
    head = np.full((24, lines[0].shape[1], 3), 255, np.uint8)
    for i, t in enumerate(("rest (boxes)", "least open", "median", "most open")):
        cv2.putText(head, t, (116 + i * tile, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack([head] + lines), cv2.COLOR_RGB2BGR))


def run_bench(opts) -> dict:
    from avatarstream.engines.lite.engine import LiteEngine

    engine = LiteEngine(seed=3)
    text = SPEECH_QUICK if opts.quick else SPEECH
    audio = speech(text)
    paths = portrait_set()[:3] if opts.quick else portrait_set()
    results, rows = [], []
    for p in paths:
        r, sheet = measure(p, engine, audio)
        results.append(r)
        if sheet is not None:
            rows.append((p.stem, sheet))
    if rows:
        _contact_sheet(opts.out_dir / "portraits.png", rows)
    return {"size": SIZE, "speech": text, "speech_s": round(audio.size / 16000, 2),
            "head_motion_scale": 0.0, "portraits": results, "contact_sheet": "portraits.png"}
