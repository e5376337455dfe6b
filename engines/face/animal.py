"""Animal faces: OpenCV's Haar cat-face cascades (which also find many dogs), searched robustly,
then the 68-point layout placed from the box, refined with the pupils found in it and with the nose
and mouth that ``muzzle.locate_muzzle`` finds; where the cascades find nothing, a pair of eyes with a
nose and mouth below them (``animal_by_eyes``).

The cascades were trained on faces filling a fraction of the picture; a close-up whose face fills
the frame (or runs past its edge) is missed at the native scale. So the search also runs on
copies padded with the edge pixels and scaled down; every copy votes, votes are clustered, and the
largest face seen by at least two copies wins.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from dataclasses import replace

import cv2
import numpy as np

from avatarstream.engines.face.landmarks import FaceLandmarks
from avatarstream.engines.face.layout import CAT, place_layout
from avatarstream.engines.face.muzzle import Muzzle, locate_muzzle

CASCADES = ("haarcascade_frontalcatface_extended.xml", "haarcascade_frontalcatface.xml")
PADS = (0.0, 0.15, 0.3, 0.45)  # border added on each side, as a fraction of the longer side
LONG_SIDES = (360, 260, 200)  # the padded copy is scaled to these longer sides
MIN_VOTES = 2  # a face seen by one copy only is accepted when nothing better exists
MIN_FACE = 0.2  # smallest face searched, as a fraction of the picture's shorter side
# Where a cat's eyes sit in the cascade's box (fractions of the box side), measured on cat photos.
EYE_Y = 0.41
EYE_X = (0.28, 0.70)


@functools.lru_cache(maxsize=1)
def _cascades() -> tuple[cv2.CascadeClassifier, ...]:
    out = []
    for name in CASCADES:
        c = cv2.CascadeClassifier(cv2.data.haarcascades + name)
        if c.empty():
            raise RuntimeError(f"OpenCV cascade missing: {name} (need opencv-python-headless 4.x)")
        out.append(c)
    return tuple(out)


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / max(aw * ah + bw * bh - inter, 1e-9)


def _inside_fraction(box, w: int, h: int) -> float:
    """How much of ``box`` lies inside a w x h picture (boxes found mostly on the padding are noise)."""
    x, y, bw, bh = box
    ix = max(0.0, min(x + bw, w) - max(x, 0.0))
    iy = max(0.0, min(y + bh, h) - max(y, 0.0))
    return ix * iy / max(bw * bh, 1e-9)


def cat_face_votes(gray: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Every box found on every padded / scaled copy, in the original image's pixels."""
    h, w = gray.shape
    votes = []
    for pad_frac in PADS:
        pad = int(round(pad_frac * max(h, w)))
        padded = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else gray
        for long_side in LONG_SIDES:
            s = min(1.0, long_side / max(padded.shape))
            if s < 1.0:
                img = cv2.resize(padded, (round(padded.shape[1] * s), round(padded.shape[0] * s)),
                                 interpolation=cv2.INTER_AREA)
            else:
                img = padded
            for cascade in _cascades():
                min_side = max(24, int(MIN_FACE * min(h, w) * s))
                for x, y, bw, bh in cascade.detectMultiScale(img, 1.05, 3, minSize=(min_side, min_side)):
                    box = (x / s - pad, y / s - pad, bw / s, bh / s)
                    if _inside_fraction(box, w, h) >= 0.6 and box[2] >= 0.08 * min(h, w):
                        votes.append(box)
    return votes


def cluster_votes(votes, min_iou: float = 0.45) -> list[tuple[tuple[float, float, float, float], int]]:
    """Group overlapping votes; each cluster -> (median box, number of votes)."""
    clusters: list[list] = []
    for v in sorted(votes, key=lambda b: -b[2]):
        for c in clusters:
            if _iou(np.median(c, axis=0), v) >= min_iou:
                c.append(v)
                break
        else:
            clusters.append([v])
    return [(tuple(float(x) for x in np.median(c, axis=0)), len(c)) for c in clusters]


def best_cat_box(gray: np.ndarray) -> tuple[tuple[float, float, float, float], int] | None:
    clusters = cluster_votes(cat_face_votes(gray))
    if not clusters:
        return None
    clusters = [c for c in clusters if c[1] >= MIN_VOTES] or clusters
    return max(clusters, key=lambda c: c[0][2] * c[0][3])


def _pupil(gray: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray | None:
    """The darkest blob near ``center`` (a pupil), or None if the window is off the image."""
    x0, y0 = int(center[0] - radius), int(center[1] - radius)
    x1, y1 = int(center[0] + radius), int(center[1] + radius)
    if x0 < 0 or y0 < 0 or x1 > gray.shape[1] or y1 > gray.shape[0] or x1 - x0 < 8:
        return None
    win = cv2.GaussianBlur(gray[y0:y1, x0:x1].astype(np.float32), (0, 0), max(1.0, radius / 10))
    yy, xx = np.mgrid[0:win.shape[0], 0:win.shape[1]]
    r2 = ((xx - win.shape[1] / 2) ** 2 + (yy - win.shape[0] / 2) ** 2) / (radius ** 2)
    win = win + 60.0 * r2  # prefer blobs near the expected position
    iy, ix = np.unravel_index(int(np.argmin(win)), win.shape)
    return np.array([x0 + ix, y0 + iy], np.float64)


def cat_landmarks_in_box(image_rgb: np.ndarray, box, score: float = 0.0) -> FaceLandmarks:
    """68 points for the animal face in ``box``: eyes at the pupils when they are found, nose and mouth
    where ``muzzle.locate_muzzle`` finds them (else by the cat's proportions, ``mouth_found`` False)."""
    x, y, w, h = box
    side = (w + h) / 2
    left = np.array([x + EYE_X[0] * w, y + EYE_Y * h])
    right = np.array([x + EYE_X[1] * w, y + EYE_Y * h])
    gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    pl, pr = _pupil(gray, left, 0.13 * side), _pupil(gray, right, 0.13 * side)
    if pl is not None and pr is not None:
        d = pr - pl
        dist = float(np.linalg.norm(d))
        if 0.3 * side <= dist <= 0.6 * side and abs(np.degrees(np.arctan2(d[1], d[0]))) <= 25:
            left, right = pl, pr
    return landmarks_from_eyes(image_rgb, left, right, box, score)


def landmarks_from_eyes(image_rgb: np.ndarray, left: np.ndarray, right: np.ndarray, box, score: float = 0.0,
                        muzzle: Muzzle | None = None) -> FaceLandmarks:
    """68 points for an animal with its eyes at ``left`` / ``right``; nose and mouth from ``muzzle``
    (located here when not given) or, where no mouth is located, by the cat's proportions."""
    x, y, w, h = box
    if muzzle is None:
        muzzle = locate_muzzle(image_rgb, left, right)
    if muzzle is not None and muzzle.found:
        gap = muzzle.mouth_bottom - muzzle.mouth_top
        # the nostril points at the nose's lower edge, as wide as a nose: every mesh triangle over
        # the nose then has still corners only, so the jaw cannot drag it
        shape = replace(CAT, nose_tip_y=muzzle.nose_bottom - 0.08, nostril_half_width=0.2,
                        mouth_y=muzzle.mouth_top + gap / 2, lip_gap=gap,
                        mouth_half_width=muzzle.mouth_half_width, upper_lip_height=0.05, lower_lip_height=0.07,
                        chin_y=max(CAT.chin_y, muzzle.mouth_bottom + 0.35),
                        mouth_x=float(np.clip(muzzle.mouth_x, -0.25, 0.25)))
        pts = place_layout(shape, left, right)
        return FaceLandmarks(pts, (float(x), float(y), float(w), float(h)), "animal", float(score))
    # no mouth located: the cat proportions, which the engine animates less
    pts = place_layout(CAT, left, right)
    # A turned head puts the muzzle off the eyes' midpoint; the cascade box is centred on the
    # muzzle, so slide the nose and mouth (and half-way the jaw) onto the box's centre line.
    ex = (right - left) / max(np.linalg.norm(right - left), 1e-6)
    shift = float(np.dot(np.array([x + w / 2, 0.0]) - pts[30] * [1, 0], ex))
    shift = float(np.clip(shift, -0.25 * np.linalg.norm(right - left), 0.25 * np.linalg.norm(right - left)))
    pts[27:36] += shift * ex
    pts[48:68] += shift * ex
    pts[0:17] += 0.5 * shift * ex
    return FaceLandmarks(pts, (float(x), float(y), float(w), float(h)), "animal", float(score), mouth_found=False)


EYE_SEARCH_SIDE = 400  # the eye search runs on a copy with this longer side
EYE_RADII = (0.012, 0.05)  # eye radii searched, fractions of the shorter side
EYE_MIN_RESPONSE = 12.0  # grey levels: how much darker than its surround a blob must be


def dark_blobs(gray: np.ndarray) -> list[tuple[float, float, float, float]]:
    """(response, x, y, radius) of the 40 strongest dark round blobs (difference of Gaussians)."""
    g = gray.astype(np.float32)
    out = []
    for r in np.geomspace(*EYE_RADII, 5) * min(g.shape):
        resp = cv2.GaussianBlur(g, (0, 0), 2.5 * r) - cv2.GaussianBlur(g, (0, 0), r)
        k = max(3, int(2 * r) | 1)
        peaks = (resp == cv2.dilate(resp, np.ones((k, k), np.uint8))) & (resp > EYE_MIN_RESPONSE)
        out += [(float(resp[y, x]), float(x), float(y), float(r)) for y, x in zip(*np.nonzero(peaks))]
    return sorted(out, reverse=True)[:40]


def animal_by_eyes(image_rgb: np.ndarray) -> FaceLandmarks | None:
    """Last resort for faces the cat cascades miss (e.g. an alpaca): pairs of dark blobs of similar
    size and strength, level within 25 degrees and 3-10 radii apart, kept where ``locate_muzzle``
    finds a nose and a mouth below them; the strongest (response x distance) wins. 30-150 ms on a
    2-core CPU (load 9)."""
    h, w = image_rgb.shape[:2]
    s = min(1.0, EYE_SEARCH_SIDE / max(h, w))
    small = image_rgb if s == 1.0 else cv2.resize(image_rgb, (round(w * s), round(h * s)),
                                                   interpolation=cv2.INTER_AREA)
    blobs = dark_blobs(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    best = None
    for i, a in enumerate(blobs):
        for b in blobs[i + 1:]:
            a_, b_ = (a, b) if a[1] <= b[1] else (b, a)
            dist = float(np.hypot(b_[1] - a_[1], b_[2] - a_[2]))
            rr = max(a[3], b[3])
            if abs(np.degrees(np.arctan2(b_[2] - a_[2], b_[1] - a_[1]))) > 25 or not 3.0 * rr <= dist <= 10 * rr:
                continue
            if min(a[0], b[0]) < 0.5 * max(a[0], b[0]) or min(a[3], b[3]) < 0.5 * rr or dist < 0.08 * min(small.shape[:2]):
                continue
            score = min(a[0], b[0]) * dist
            if best is not None and score <= best[0]:
                continue
            left, right = np.array(a_[1:3]) / s, np.array(b_[1:3]) / s
            muzzle = locate_muzzle(image_rgb, left, right)
            if muzzle is not None and muzzle.found:
                best = (score, left, right, muzzle)
    if best is None:
        return None
    _, left, right, muzzle = best
    d = float(np.linalg.norm(right - left))
    cx, cy = (left + right) / 2 + [0.0, 0.45 * d]
    box = (float(cx - 1.1 * d), float(cy - 1.1 * d), 2.2 * d, 2.2 * d)
    return landmarks_from_eyes(image_rgb, left, right, box, 0.0, muzzle)


_recent: OrderedDict[str, FaceLandmarks | None] = OrderedDict()  # the search is slow (~1 s CPU): remember a few
_recent_lock = threading.Lock()


def detect_cat(image_rgb: np.ndarray) -> FaceLandmarks | None:
    key = hashlib.sha1(np.ascontiguousarray(image_rgb).tobytes()).hexdigest() + str(image_rgb.shape)
    with _recent_lock:
        if key in _recent:
            face = _recent[key]
            return None if face is None else replace(face, points=face.points.copy())
    gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    found = best_cat_box(gray)
    face = None if found is None else cat_landmarks_in_box(image_rgb, found[0], found[1])
    if face is None:  # no cat-like face: an animal whose eyes, nose and mouth can be found
        face = animal_by_eyes(image_rgb)
    with _recent_lock:
        _recent[key] = face
        while len(_recent) > 8:
            _recent.popitem(last=False)
    return None if face is None else replace(face, points=face.points.copy())
