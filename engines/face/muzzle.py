"""An animal's nose and mouth, found in the picture below its eyes (no model: image analysis).

The face is resampled into the face frame (origin between the eyes, x along the eye line, y down
the face, unit = the eye distance, ``PX`` pixels per unit). On the midline strip below the eyes:

- the nose is the topmost blob whose colour stands out from the fur (dark for dogs and alpacas,
  pink or orange for cats: the CIELAB distance from the fur's median colour);
- the mouth is the darkest horizontal band below the nose (a lip line, or an opening with its
  tongue); its top and bottom rows are the inner lips, a band taller than ``OPEN_MIN`` is a mouth
  already open in the photo.

A mouth whose band is faint (darkness below ``MIN_CONTRAST`` L* units over a whole band) is
reported as not found: the engine then animates less instead of painting a mouth in the wrong
place. 2-4 ms on a 2-core CPU (load 9).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PX = 64  # face-frame resampling: pixels per eye distance
U_RANGE = (-1.0, 1.0)  # resampled window, eye distances
V_RANGE = (-0.6, 2.0)
NOSE_HALF_WIDTH = 0.2  # the nose is searched within this distance of the midline
NOSE_V = (-0.15, 1.05)
MOUTH_HALF_WIDTH = 0.18  # the mouth band's darkness is averaged over this half-width
MOUTH_SPAN = 0.9  # the mouth is searched this far below the nose
MAX_NOSE_GAP = 0.2  # ... and must start at most this far below it
NOSE_PEAK_HALF_WIDTH = 0.15  # ... and centred this close to the midline
NOSE_PEAK_SHARE = 0.35  # nose candidates: blobs at least this share of the strongest
LINE_MAX_HEIGHT = 0.1  # a candidate ending this close below its centre (eye distances) is a line
NOSE_MIN_DISTINCT = 14.0  # CIELAB distance from the fur a nose above such a line must reach
OPEN_MIN = 0.12  # a dark band taller than this (eye distances) is an open mouth
MIN_CONTRAST = 12.0  # L* units: the mouth band must be at least this much darker than the fur


@dataclass(frozen=True)
class Muzzle:
    """Face-frame positions in eye distances (y down from the eyes' midpoint, x along the eye line)."""

    nose_x: float
    nose_y: float  # the nose's centre
    nose_bottom: float
    mouth_x: float
    mouth_top: float  # upper inner lip
    mouth_bottom: float  # lower inner lip (== mouth_top for a closed mouth line)
    mouth_half_width: float
    contrast: float  # how much darker than the fur the mouth band is, L* units
    found: bool  # False: the mouth position is a guess (no band with enough contrast)

    @property
    def open_at_rest(self) -> bool:
        return self.mouth_bottom - self.mouth_top >= OPEN_MIN


def face_frame_patch(image_rgb: np.ndarray, left_eye: np.ndarray, right_eye: np.ndarray) -> np.ndarray:
    """The face resampled into the face frame: (V * PX) x (U * PX) x 3 uint8."""
    le, re = np.asarray(left_eye, np.float64), np.asarray(right_eye, np.float64)
    ex = re - le
    d = float(np.linalg.norm(ex))
    ex = ex / max(d, 1e-6)
    ey = np.array([-ex[1], ex[0]])
    mid = (le + re) / 2
    a = np.zeros((2, 3))
    a[:, 0] = d * ex / PX
    a[:, 1] = d * ey / PX
    a[:, 2] = mid + d * (U_RANGE[0] * ex + V_RANGE[0] * ey)
    size = (int((U_RANGE[1] - U_RANGE[0]) * PX), int((V_RANGE[1] - V_RANGE[0]) * PX))
    interp = cv2.INTER_AREA if d > PX else cv2.INTER_LINEAR
    return cv2.warpAffine(image_rgb, a, size, flags=cv2.WARP_INVERSE_MAP | interp, borderMode=cv2.BORDER_REPLICATE)


def _col(u: float) -> int:
    return int(round((u - U_RANGE[0]) * PX))


def _row(v: float) -> int:
    return int(round((v - V_RANGE[0]) * PX))


def _v(row: float) -> float:
    return row / PX + V_RANGE[0]


def _run_height(distinct: np.ndarray, row: int, col: int) -> int:
    """Rows from (row, col) down its column that stay at half its distinctness or more (a nose's
    lower half is tall; a smile is a thin line, though a drawn philtrum may join it to the nose above)."""
    col_v = distinct[:, col]
    hi = row
    while hi + 1 < len(col_v) and col_v[hi + 1] >= 0.5 * col_v[row]:
        hi += 1
    return hi - row + 1


def locate_muzzle(image_rgb: np.ndarray, left_eye: np.ndarray, right_eye: np.ndarray) -> Muzzle | None:
    """The nose and mouth below these eyes; None where no nose-like blob is found at all."""
    patch = face_frame_patch(image_rgb, left_eye, right_eye)
    lab = cv2.cvtColor(patch, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 0] *= 100.0 / 255.0  # L* in 0..100; a*, b* offset by 128 (differences only)
    lab = cv2.GaussianBlur(lab, (0, 0), 0.03 * PX)
    face = lab[_row(-0.3):_row(1.4), _col(-0.8):_col(0.8)].reshape(-1, 3)
    fur = np.median(face, axis=0)
    distinct = np.linalg.norm(lab - fur, axis=2)
    darkness = fur[0] - lab[..., 0]

    # nose: the topmost nose-sized blob of distinct colour near the midline (a difference of
    # Gaussians ignores thin lines such as a lip line and wide areas such as a dark muzzle)
    blob = cv2.GaussianBlur(distinct, (0, 0), 0.08 * PX) - cv2.GaussianBlur(distinct, (0, 0), 0.25 * PX)
    c0, c1 = _col(-NOSE_HALF_WIDTH), _col(NOSE_HALF_WIDTH) + 1
    r0, r1 = _row(NOSE_V[0]), _row(NOSE_V[1])
    win = blob[r0:r1, c0:c1]
    c0_in, c1_in = _col(-NOSE_PEAK_HALF_WIDTH) - c0, _col(NOSE_PEAK_HALF_WIDTH) + 1 - c0
    # candidates: local maxima near the midline, at least NOSE_PEAK_SHARE of the strongest; the
    # nose is the topmost (below it come the lip line and an open mouth, which can be stronger)
    local_max = win == cv2.dilate(win, np.ones((int(0.15 * PX), int(0.15 * PX)), np.uint8))
    peaks = local_max & (win >= NOSE_PEAK_SHARE * win.max()) & (win > 0)
    peaks[:, :c0_in] = False
    peaks[:, c1_in:] = False
    ys, xs = np.nonzero(peaks)
    if ys.size == 0:
        return None
    k = int(np.argmin(ys))
    nr, nc = r0 + int(ys[k]), c0 + int(xs[k])
    if _run_height(distinct, nr, nc) < LINE_MAX_HEIGHT * PX:
        # a thin line (a smile) stronger than a pale nose (a cartoon's pink nose): the nose is the
        # most distinct spot above it, where one stands out
        top_r = _row(NOSE_V[0])
        bottom_r = nr - int(0.1 * PX)
        if bottom_r > top_r:
            above = distinct[top_r:bottom_r, c0 + c0_in:c0 + c1_in]
            iy, ix = np.unravel_index(int(np.argmax(above)), above.shape)
            if above[iy, ix] >= max(NOSE_MIN_DISTINCT, 0.25 * distinct[nr, nc]):
                nr, nc = top_r + int(iy), c0 + c0_in + int(ix)
    at = float(distinct[nr, nc])
    end = nr
    low = at
    # down the column to where the nose fades (half its distinctness) or, after a dip, a stronger
    # feature begins (a drawn philtrum joining a pale nose to a dark smile)
    while end + 1 < min(lab.shape[0], nr + int(0.35 * PX)) and distinct[end + 1, nc] >= 0.5 * at:
        if low < 0.8 * at and distinct[end + 1, nc] > at:
            break
        end += 1
        low = min(low, float(distinct[end, nc]))
    nose_x = nc / PX + U_RANGE[0]
    nose_y = _v(nr)
    nose_bottom = _v(end)

    # mouth: the darkest horizontal band below the nose, centred under it
    m0, m1 = _col(nose_x - MOUTH_HALF_WIDTH), _col(nose_x + MOUTH_HALF_WIDTH) + 1
    s0 = _row(nose_bottom + 0.04)
    s1 = min(_row(nose_bottom + MOUTH_SPAN), lab.shape[0] - 1)
    band = np.clip(darkness[s0:s1, m0:m1], 0, None).mean(axis=1)
    if band.size < 3:
        return None
    best = int(np.argmax(band))
    contrast = float(band[best])
    lo = hi = best
    while lo > 0 and band[lo - 1] >= 0.6 * contrast:
        lo -= 1
    while hi + 1 < len(band) and band[hi + 1] >= 0.6 * contrast:
        hi += 1
    mouth_top, mouth_bottom = _v(s0 + lo), _v(s0 + hi)
    # an opening shows a tongue (redder than the fur) or a cavity (much darker than the fur);
    # a dark band without either is lip/muzzle skin, whose lower edge is the mouth line
    redness = float(lab[s0 + lo:s0 + hi + 1, m0:m1, 1].mean() - fur[1])
    cavity = contrast >= 0.5 * fur[0]
    if mouth_bottom - mouth_top < OPEN_MIN:  # a lip line: one row, at the band's darkest
        mouth_top = mouth_bottom = _v(s0 + best)
    elif redness < 6.0 and not cavity:
        mouth_top = mouth_bottom
    # half-width: how far the dark band reaches sideways at the mouth's rows
    rows = darkness[s0 + lo:s0 + hi + 1, _col(-0.6):_col(0.6)].mean(axis=0)
    dark_cols = np.nonzero(rows >= 0.4 * contrast)[0]
    half = 0.25
    if dark_cols.size:
        half = float(np.clip((dark_cols[-1] - dark_cols[0]) / PX / 2, 0.15, 0.45))
    found = contrast >= MIN_CONTRAST and mouth_top - nose_bottom <= MAX_NOSE_GAP
    return Muzzle(float(nose_x), float(nose_y), float(nose_bottom), float(nose_x), float(mouth_top),
                  float(mouth_bottom), half, contrast, bool(found))
