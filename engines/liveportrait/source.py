"""Source preparation: the face crop LivePortrait expects, and pasting rendered crops back.

The crop follows the reference ``crop_image`` (ARCHITECTURE.md 1.5): an eye-centre -> mouth-centre
axis sets the roll, the landmarks' bounding box in that rotated frame sets the centre and size
(``scale`` x the longer side), the centre moves by ``vy_ratio`` x size along the face's vertical
axis, and a similarity transform maps it to a 512 x 512 crop; the network input is that crop
resized to 256 with INTER_AREA. Landmarks are the 68-point layout of ``engines.face`` (eye centres
= mean of each eye's six points, mouth centre = midpoint of the mouth corners), which plays the role
of the reference's 106-point eye/mouth rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatarstream.engines.base import EngineError

CROP_SIZE = 512
INPUT_SIZE = 256
EYE_LEFT = list(range(36, 42))
EYE_RIGHT = list(range(42, 48))
MOUTH_CORNERS = [48, 54]


@dataclass(frozen=True)
class SourceCrop:
    """A portrait prepared for LivePortrait, with the transforms between picture and crop."""

    image: np.ndarray  # H x W x 3 uint8, the picture the crop was cut from
    crop: np.ndarray  # 512 x 512 x 3 uint8
    network_input: np.ndarray  # 256 x 256 x 3 uint8 (what F and M see)
    image_to_crop: np.ndarray  # 2x3 affine, picture pixels -> crop pixels
    crop_to_image: np.ndarray  # 2x3 affine, crop pixels -> picture pixels


def resize_to_limit(image: np.ndarray, max_side: int = 1280, multiple: int = 2) -> np.ndarray:
    """Shrink so the longer side is at most ``max_side``, then trim H and W to multiples of ``multiple``."""
    h, w = image.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        image = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        h, w = image.shape[:2]
    return np.ascontiguousarray(image[: h - h % multiple, : w - w % multiple])


def crop_transform(points: np.ndarray, *, dsize: int = CROP_SIZE, scale: float = 2.3,
                   vy_ratio: float = -0.125) -> np.ndarray:
    """2x3 similarity transform picture -> ``dsize`` crop from 68-point landmarks (reference ``crop_image``)."""
    pts = np.asarray(points, np.float64)
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        raise EngineError(f"source crop needs 68 finite (x, y) landmarks, got shape {pts.shape}")
    return crop_transform_from(pts, pts[EYE_LEFT].mean(0), pts[EYE_RIGHT].mean(0), pts[MOUTH_CORNERS].mean(0),
                               dsize=dsize, scale=scale, vy_ratio=vy_ratio)


# The reference's animal crop uses X-Pose's 9 ``animal_face`` keypoints, in X-Pose's order (LivePortrait
# ``parse_pt2_from_pt9``: eye centre = mean of the four corners, mouth = lip-corner midpoint; the box is the
# extent of all nine). "right"/"left" are the animal's own sides, so "right eye" is the image-left eye.
# Their counterparts in the 68-point layout of ``engines.face`` (iBUG order, 0-based; docs/liveportrait.md):
ANIMAL_NINE: tuple[tuple[str, int], ...] = (
    ("right eye right", 36),  # image-left eye, outer corner
    ("right eye left", 39),  # image-left eye, inner corner
    ("left eye right", 42),  # image-right eye, inner corner
    ("left eye left", 45),  # image-right eye, outer corner
    ("nose tip", 30),  # last point of the nose bridge
    ("lip right", 48),  # image-left mouth corner
    ("lip left", 54),  # image-right mouth corner
    ("upper lip", 51),  # top middle of the outer lip contour
    ("lower lip", 57),  # bottom middle of the outer lip contour
)
ANIMAL_NINE_FROM_68 = [index for _name, index in ANIMAL_NINE]


def crop_transform_animal(points: np.ndarray, *, dsize: int = CROP_SIZE, scale: float = 2.3,
                          vy_ratio: float = -0.125) -> np.ndarray:
    """The animal crop from 68-point landmarks, with the reference's 9-point rule (extent of the 9 points)."""
    pts = np.asarray(points, np.float64)
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        raise EngineError(f"source crop needs 68 finite (x, y) landmarks, got shape {pts.shape}")
    nine = pts[ANIMAL_NINE_FROM_68]
    return crop_transform_from(nine, nine[0:2].mean(0), nine[2:4].mean(0), nine[5:7].mean(0),
                               dsize=dsize, scale=scale, vy_ratio=vy_ratio)


def crop_transform_106(points: np.ndarray, *, dsize: int = CROP_SIZE, scale: float = 2.3,
                       vy_ratio: float = -0.125) -> np.ndarray:
    """The same from insightface 106-point landmarks: eyes [33,35,40,39] / [87,89,94,93], mouth (52+61)/2."""
    pts = np.asarray(points, np.float64)
    if pts.shape != (106, 2) or not np.isfinite(pts).all():
        raise EngineError(f"expected 106 finite (x, y) landmarks, got shape {pts.shape}")
    return crop_transform_from(pts, pts[[33, 35, 40, 39]].mean(0), pts[[87, 89, 94, 93]].mean(0),
                               (pts[52] + pts[61]) / 2, dsize=dsize, scale=scale, vy_ratio=vy_ratio)


def crop_transform_from(pts: np.ndarray, eye_left: np.ndarray, eye_right: np.ndarray, mouth: np.ndarray, *,
                        dsize: int = CROP_SIZE, scale: float = 2.3, vy_ratio: float = -0.125) -> np.ndarray:
    """Crop transform from all landmark points plus the two eye centres and the mouth centre."""
    eye_center = (np.asarray(eye_left, np.float64) + np.asarray(eye_right, np.float64)) / 2
    uy = np.asarray(mouth, np.float64) - eye_center
    norm = np.linalg.norm(uy)
    if norm < 1e-6:
        raise EngineError("degenerate face landmarks: eyes and mouth coincide")
    uy = uy / norm
    ux = np.array([uy[1], -uy[0]])
    mean = pts.mean(0)
    rotated = (pts - mean) @ np.stack([ux, uy]).T  # coordinates along (ux, uy)
    lo, hi = rotated.min(0), rotated.max(0)
    mid = (lo + hi) / 2
    size = float((hi - lo).max() * scale)
    center = mean + ux * mid[0] + uy * mid[1] + uy * (vy_ratio * size)
    s = dsize / size
    cos, sin = ux[0], ux[1]
    tc = dsize / 2
    return np.array([[s * cos, s * sin, tc - s * (cos * center[0] + sin * center[1])],
                     [-s * sin, s * cos, tc - s * (-sin * center[0] + cos * center[1])]], np.float64)


def crop_with_transform(image: np.ndarray, m: np.ndarray) -> SourceCrop:
    """Cut the 512 crop and the 256 network input of ``image`` with the transform ``m``."""
    crop = cv2.warpAffine(image, m, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    net_in = cv2.resize(crop, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
    return SourceCrop(image=image, crop=crop, network_input=net_in, image_to_crop=m, crop_to_image=invert_affine(m))


def invert_affine(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(m, np.float64))


def crop_source(image: np.ndarray, points: np.ndarray, *, scale: float = 2.3, vy_ratio: float = -0.125) -> SourceCrop:
    """Crop the face of ``image`` (H x W x 3 uint8) around its 68 landmarks."""
    return crop_with_transform(image, crop_transform(points, scale=scale, vy_ratio=vy_ratio))


def whole_image_source(image: np.ndarray) -> SourceCrop:
    """JoyVASA's default (``flag_do_crop=False``): the whole picture resized to 256 (INTER_LINEAR), no crop."""
    h, w = image.shape[:2]
    m = np.array([[CROP_SIZE / w, 0, 0], [0, CROP_SIZE / h, 0]], np.float64)
    crop = cv2.resize(image, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR)
    net_in = cv2.resize(image, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    return SourceCrop(image=image, crop=crop, network_input=net_in, image_to_crop=m, crop_to_image=invert_affine(m))


# The reference's ``mask_template.png`` (512 x 512): full weight on the square of pixel indices
# [16, 496] (481 px a side, 88.3 % of the crop), falling linearly to 0 over 16 px of Euclidean distance
# from that square (rounded corners). ``paste_mask`` draws the same shape at any size.
MASK_FEATHER = 16 / 512
MASK_INNER = (16 / 512, 496 / 512)


def paste_mask(size: int = CROP_SIZE) -> np.ndarray:
    """size x size float32 paste-back mask of the reference's shape: 1 on the inner square, a linear
    16/512-of-the-side ramp around it (by distance to the square), 0 at the outer edge."""
    s = size / 512
    idx = np.arange(size, dtype=np.float64)
    lo, hi = MASK_INNER[0] * size, MASK_INNER[1] * size
    outside = np.maximum(np.maximum(lo - idx, idx - hi), 0)  # per-axis distance to the inner square
    dist = np.hypot(outside[:, None], outside[None, :])
    return np.clip(1 - dist / (MASK_FEATHER * 512 * s), 0, 1).astype(np.float32)


def reframe(source: SourceCrop, matrix: np.ndarray, image: np.ndarray) -> SourceCrop:
    """The same crop, pasted into ``image`` = the source picture warped by the 2x3 ``matrix`` (e.g. the
    output framing): the crop and network input are unchanged (still cut from the original picture)."""
    f = np.vstack([np.asarray(matrix, np.float64), [0, 0, 1]])
    c2o = np.vstack([source.crop_to_image, [0, 0, 1]])
    crop_to_image = (f @ c2o)[:2]
    return SourceCrop(image=image, crop=source.crop, network_input=source.network_input,
                      image_to_crop=invert_affine(crop_to_image), crop_to_image=crop_to_image)


def soft_mask(size: int = CROP_SIZE, margin: float = 0.06, feather: float = 0.12) -> np.ndarray:
    """A wide smoothstep mask (0 within ``margin`` of the border, a ``feather``-wide ramp); for crops
    whose border region must not show. LivePortrait's own paste-back uses ``paste_mask``."""
    t = (np.arange(size, dtype=np.float64) + 0.5) / size
    edge = np.minimum(t, 1 - t)  # distance to the nearest border, per axis
    ramp = np.clip((edge - margin) / feather, 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    return np.outer(ramp, ramp).astype(np.float32)


def paste_back(generated: np.ndarray, source: SourceCrop, mask: np.ndarray | None = None) -> np.ndarray:
    """Blend a rendered 512 x 512 crop into the source picture: mask * warped + (1 - mask) * picture
    (default mask: ``paste_mask``, the reference's shape). The reference formula; ``PasteBack`` caches its
    per-portrait parts and can keep the picture's own detail where the render is unchanged."""
    h, w = source.image.shape[:2]
    mask = paste_mask(generated.shape[0]) if mask is None else mask
    warped = cv2.warpAffine(generated, source.crop_to_image, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    m = cv2.warpAffine(mask, source.crop_to_image, (w, h), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
    out = m * warped.astype(np.float32) + (1 - m) * source.image.astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


# A rendered crop pixel whose channels all lie within this many grey levels of the source crop counts as
# "unchanged" in proportion: agreement weight 1 - max|render - crop| / AGREEMENT_TOLERANCE, clipped to [0, 1].
AGREEMENT_TOLERANCE = 4.0


class PasteBack:
    """Paste-back for one portrait, its per-portrait parts computed once (like F's appearance features).

    ``keep_detail=False`` is the reference formula bit for bit (``paste_back``): out = trunc(m W(g) + (1 - m) P)
    with W the bilinear crop -> picture warp, m the warped mask, g the render, P the picture.

    ``keep_detail=True`` (default) adds back what the picture -> crop -> picture round trip loses, where the render
    is unchanged: the detail D = P - W(crop) (crop = the source crop the networks saw), weighted by the warped
    agreement a = W(clip(1 - max_c|g - crop| / tolerance, 0, 1)) (warped with a replicated border):

        out = trunc(m W(g) + (1 - m) P + a (m D + 1/2))

    A render equal to the source crop gives a = 1 wherever the crop reaches, so out = trunc(P + 1/2 + float error)
    = P: the picture itself, including the mask's feather and where the crop ran past the picture. Where the
    render differs by ``tolerance`` grey levels or more around a pixel (a moving mouth), a = 0 and the output is
    the reference formula exactly: no edges of the still source show through a moving region.
    """

    def __init__(self, source: SourceCrop, mask: np.ndarray | None = None, *, keep_detail: bool = True,
                 tolerance: float = AGREEMENT_TOLERANCE) -> None:
        if tolerance <= 0:
            raise EngineError(f"paste-back agreement tolerance must be positive, got {tolerance}")
        self.source = source
        h, w = source.image.shape[:2]
        self.dsize = (w, h)
        size = source.crop.shape[0]
        mask = paste_mask(size) if mask is None else np.asarray(mask, np.float32)
        self.mask = cv2.warpAffine(mask, source.crop_to_image, self.dsize, flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
        picture = source.image.astype(np.float32)
        self.still = (1 - self.mask) * picture  # the reference's (1 - m) P, same float32 operations
        self.detail: np.ndarray | None = None
        if keep_detail:
            back = self._warp(source.crop)
            self.detail = self.mask * (picture - back.astype(np.float32)) + np.float32(0.5)
            levels = np.arange(256, dtype=np.float32)
            self.agreement_lut = np.clip(1 - levels / np.float32(tolerance), 0, 1).astype(np.float32)

    @property
    def keep_detail(self) -> bool:
        return self.detail is not None

    def _warp(self, crop_image: np.ndarray, border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
        return cv2.warpAffine(crop_image, self.source.crop_to_image, self.dsize, flags=cv2.INTER_LINEAR,
                              borderMode=border, borderValue=0)

    def agreement(self, generated: np.ndarray) -> np.ndarray:
        """crop-sized float32 weight: 1 where the render equals the source crop, 0 from ``tolerance`` levels on."""
        diff = cv2.absdiff(generated, self.source.crop)
        worst = cv2.max(cv2.max(diff[..., 0], diff[..., 1]), diff[..., 2])
        return cv2.LUT(worst, self.agreement_lut)

    def __call__(self, generated: np.ndarray) -> np.ndarray:
        """The rendered crop (the source crop's size, uint8 RGB) pasted into the picture."""
        if generated.shape != self.source.crop.shape or generated.dtype != np.uint8:
            raise EngineError(f"paste-back needs a {self.source.crop.shape} uint8 render, got "
                              f"{generated.shape} {generated.dtype}")
        out = self.mask * self._warp(generated).astype(np.float32) + self.still
        if self.detail is not None:
            # replicated border: the crop's edge pixels keep their own weight up to the footprint's edge, where
            # the warp of the render (and of the crop, in D) blends them with the black border
            weight = self._warp(self.agreement(generated), cv2.BORDER_REPLICATE)
            cv2.accumulateProduct(cv2.merge((weight, weight, weight)), self.detail, out)  # out += a * (m D + 1/2)
        return np.clip(out, 0, 255).astype(np.uint8)
