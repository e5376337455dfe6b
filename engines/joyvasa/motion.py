"""JoyVASA motion vectors and their conversion to LivePortrait driving keypoints (numpy only).

Layout of one 70-dim motion frame (ARCHITECTURE.md 2.5)::

    [0:63] exp (21 x 3, row-major)   [63] scale   [64:67] t (tx, ty, tz)
    [67] pitch   [68] yaw   [69] roll            (angles in degrees)

The network works on *normalised* vectors: exp is z-scored with the template's mean/std, every
other field is min-max scaled. ``MotionTemplate`` holds those statistics (the official
``motion_template.pkl``) and maps between the two spaces.

Post-processing (ARCHITECTURE.md 2.6): an exponential moving average (alpha 0.01) over the seven
pose terms [scale, tx, ty, tz, pitch, yaw, roll] (``PoseSmoother``, causal, so streaming and
offline agree), then ``KeypointDriver`` applies the motion relative to a reference frame on top of
the portrait's own LivePortrait motion, in human or animal mode.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from avatarstream.engines.base import EngineError

MOTION_DIM = 70
EXP = slice(0, 63)
SCALE = 63
T = slice(64, 67)
PITCH, YAW, ROLL = 67, 68, 69
POSE_TERMS = (SCALE, 64, 65, 66, PITCH, YAW, ROLL)  # smoothed by the reference
NUM_KEYPOINTS = 21
LIP_KEYPOINTS = (6, 12, 14, 17, 19, 20)  # copied absolutely from the driving motion (human mode)
EMA_ALPHA = 0.01  # reference smooth_(..., method="ema")
DRIVING_MULTIPLIER = 1.10  # JoyVASA CLI default
ANIMATION_MODES = ("human", "animal")

Stitch = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x_s, x_d) (21, 3) -> stitched x_d
# (x_s (21, 3), x_d (N, 21, 3), multiplier) -> x_s + (stitched x_d - x_s) * multiplier, (N, 21, 3), left where the
# stitching ran (``Renderer.stitch_on_device``: on the GPU, for the renderer to take as they are)
StitchBatch = Callable[[np.ndarray, np.ndarray, float], Any]

# template fields -> (slice into the 70-dim vector); "R", "lip", "eyes" exist in the file but are not modelled
TEMPLATE_FIELDS: dict[str, slice] = {
    "exp": EXP, "scale": slice(63, 64), "t": T,
    "pitch": slice(67, 68), "yaw": slice(68, 69), "roll": slice(69, 70),
}


def rotation_matrix(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """LivePortrait's ``get_rotation_matrix`` for angles in degrees: (Rz Ry Rx)^T, for row vectors ``x @ R``."""
    x, y, z = np.deg2rad([pitch, yaw, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return (rz @ ry @ rx).T.astype(np.float32)


def _frozen(a, shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.array(a, dtype=np.float32).reshape(shape) if np.size(a) == int(np.prod(shape)) else None
    if arr is None:
        raise ValueError(f"{name} must have {int(np.prod(shape))} values (shape {shape}), got shape {np.shape(a)}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class MotionFrame:
    """LivePortrait driving parameters for one video frame, de-normalised and smoothed.

    ``index`` is the frame number on the stream clock (``engines.base``): frame n shows the audio
    samples [n * 640, (n + 1) * 640) fed to the generator. Arrays are read-only float32.
    """

    index: int
    exp: np.ndarray  # (21, 3) expression deltas (LivePortrait "exp")
    pitch: float  # degrees
    yaw: float  # degrees
    roll: float  # degrees
    t: np.ndarray  # (3,) translation (tz is ignored when driving)
    scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "exp", _frozen(self.exp, (NUM_KEYPOINTS, 3), "exp"))
        object.__setattr__(self, "t", _frozen(self.t, (3,), "t"))
        for name in ("pitch", "yaw", "roll", "scale"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def rotation(self) -> np.ndarray:
        """(3, 3) LivePortrait rotation R for these angles (row-vector convention)."""
        return rotation_matrix(self.pitch, self.yaw, self.roll)

    def vector(self) -> np.ndarray:
        """The 70-dim (de-normalised) motion vector of this frame."""
        v = np.empty(MOTION_DIM, np.float32)
        v[EXP] = self.exp.reshape(-1)
        v[SCALE] = self.scale
        v[T] = self.t
        v[PITCH], v[YAW], v[ROLL] = self.pitch, self.yaw, self.roll
        return v

    @classmethod
    def from_vector(cls, index: int, v: np.ndarray) -> "MotionFrame":
        v = np.asarray(v, np.float32).reshape(MOTION_DIM)
        return cls(index=int(index), exp=v[EXP].reshape(NUM_KEYPOINTS, 3), pitch=v[PITCH], yaw=v[YAW],
                   roll=v[ROLL], t=v[T], scale=v[SCALE])


@dataclass(frozen=True)
class MotionTemplate:
    """Normalisation statistics of the training motions (``motion_template.pkl``), as 70-dim vectors."""

    mean: np.ndarray  # exp dims: mean; used for exp only
    std: np.ndarray
    min: np.ndarray  # non-exp dims: min-max
    max: np.ndarray

    @classmethod
    def from_dict(cls, d: Mapping[str, np.ndarray]) -> "MotionTemplate":
        out = {k: np.zeros(MOTION_DIM, np.float32) for k in ("mean", "std", "min", "max")}
        missing = [f"{s}_{f}" for s in out for f in TEMPLATE_FIELDS if f"{s}_{f}" not in d]
        if missing:
            raise EngineError(f"motion template lacks keys {missing}; expected the official motion_template.pkl")
        for stat, vec in out.items():
            for field, sl in TEMPLATE_FIELDS.items():
                vals = np.asarray(d[f"{stat}_{field}"], np.float32).reshape(-1)
                want = sl.stop - sl.start
                if vals.size != want:
                    raise EngineError(f"motion template {stat}_{field} has {vals.size} values, expected {want}")
                vec[sl] = vals
        return cls(**out)

    @classmethod
    def load(cls, path: str | Path) -> "MotionTemplate":
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"motion template not found: {path} (JoyVASA motion_template/motion_template.pkl)")
        with open(path, "rb") as f:
            d = pickle.load(f)  # noqa: S301 - the official file is a plain pickle of numpy arrays
        if not isinstance(d, Mapping):
            raise EngineError(f"{path} is not a motion template (expected a dict of arrays, got {type(d).__name__})")
        return cls.from_dict(d)

    @classmethod
    def synthetic(cls) -> "MotionTemplate":
        """Plausible statistics of LivePortrait motion (used with random weights when no template exists)."""
        mean = np.zeros(MOTION_DIM, np.float32)
        std = np.full(MOTION_DIM, 0.02, np.float32)
        lo = np.zeros(MOTION_DIM, np.float32)
        hi = np.zeros(MOTION_DIM, np.float32)
        lo[SCALE], hi[SCALE] = 1.2, 2.2
        lo[T], hi[T] = (-0.15, -0.15, -0.05), (0.15, 0.15, 0.05)
        for i, (a, b) in zip((PITCH, YAW, ROLL), ((-25, 25), (-35, 35), (-20, 20))):
            lo[i], hi[i] = a, b
        return cls(mean=mean, std=std, min=lo, max=hi)

    def to_dict(self) -> dict[str, np.ndarray]:
        """The official pickle layout ({mean,std,max,min,abs_max}_{field}); R/lip/eyes filled with neutral values."""
        d: dict[str, np.ndarray] = {}
        for field, sl in TEMPLATE_FIELDS.items():
            shape = (1, 21, 3) if field == "exp" else (1, sl.stop - sl.start)
            for stat in ("mean", "std", "min", "max"):
                d[f"{stat}_{field}"] = getattr(self, stat)[sl].reshape(shape).copy()
            d[f"abs_max_{field}"] = np.maximum(np.abs(self.min[sl]), np.abs(self.max[sl])).reshape(shape)
        for field, shape in (("R", (1, 3, 3)), ("lip", (1, 1)), ("eyes", (1, 2))):
            for stat in ("mean", "std", "min", "max", "abs_max"):
                d[f"{stat}_{field}"] = np.zeros(shape, np.float32)
        return d

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:
            pickle.dump(self.to_dict(), f)

    def _exp_mask(self) -> np.ndarray:
        m = np.zeros(MOTION_DIM, bool)
        m[EXP] = True
        return m

    def normalize(self, v: np.ndarray) -> np.ndarray:
        """Training normalisation: exp (x-mean)/(std+1e-9), other fields (x-min)/(max-min+1e-9)."""
        v = np.asarray(v, np.float32)
        m = self._exp_mask()
        return np.where(m, (v - self.mean) / (self.std + 1e-9), (v - self.min) / (self.max - self.min + 1e-9))

    def denormalize(self, v: np.ndarray) -> np.ndarray:
        """Inference inverse (no eps): exp v*std+mean, other fields v*(max-min)+min. Any leading shape."""
        v = np.asarray(v, np.float32)
        m = self._exp_mask()
        return np.where(m, v * self.std + self.mean, v * (self.max - self.min) + self.min).astype(np.float32)


class PoseSmoother:
    """Causal EMA over the pose terms (y0 = x0, y_i = a x_i + (1-a) y_{i-1}); exp is left alone."""

    def __init__(self, alpha: float = EMA_ALPHA, enabled: bool = True) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"EMA alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.enabled = enabled
        self._state: np.ndarray | None = None

    def reset(self) -> None:
        self._state = None

    def __call__(self, motion: np.ndarray) -> np.ndarray:
        """Smooth (T, 70) de-normalised motion, continuing from the previous call."""
        out = np.array(motion, np.float32, copy=True)
        if not self.enabled:
            return out
        idx = list(POSE_TERMS)
        for i in range(out.shape[0]):
            x = out[i, idx]
            self._state = x.copy() if self._state is None else self.alpha * x + (1 - self.alpha) * self._state
            out[i, idx] = self._state
        return out


@dataclass(frozen=True)
class SourceMotion:
    """The portrait's own LivePortrait motion (motion extractor M on the source image)."""

    kp: np.ndarray  # (21, 3) canonical keypoints x_c,s
    exp: np.ndarray  # (21, 3)
    pitch: float
    yaw: float
    roll: float
    t: np.ndarray  # (3,)
    scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "kp", _frozen(self.kp, (NUM_KEYPOINTS, 3), "kp"))
        object.__setattr__(self, "exp", _frozen(self.exp, (NUM_KEYPOINTS, 3), "exp"))
        object.__setattr__(self, "t", _frozen(self.t, (3,), "t"))
        for name in ("pitch", "yaw", "roll", "scale"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def rotation(self) -> np.ndarray:
        return rotation_matrix(self.pitch, self.yaw, self.roll)

    def keypoints(self) -> np.ndarray:
        """x_s = s (x_c R + exp), plus tx, ty only (LivePortrait ``transform_keypoint``)."""
        x = self.scale * (self.kp @ self.rotation() + self.exp)
        x[:, :2] += self.t[:2]
        return x.astype(np.float32)


def _hull_volume(points: np.ndarray) -> float:
    from scipy.spatial import ConvexHull

    return float(ConvexHull(points.astype(np.float64)).volume)


class KeypointDriver:
    """JoyVASA's post-processing: motion frames -> LivePortrait driving keypoints x_d for one portrait.

    Motion is applied relative to ``reference`` (the first generated frame) on top of the source:
    R = (R_d R_d0^T) R_s, exp = exp_s + (exp_d - exp_d0) (human: lip keypoints copied absolutely),
    scale = s_s * s_d / s_d0 (animal: s_s), t = t_s + (t_d - t_d0) with tz = 0, then (animal) the
    convex-hull multiplier, then ``stitch`` (LivePortrait's stitching, x_d = stitch(x_s, x_d); the reference
    applies it whenever it pastes back) and finally x_d = x_s + (x_d - x_s) * multiplier.
    """

    def __init__(self, source: SourceMotion, reference: MotionFrame, mode: str = "human",
                 multiplier: float = DRIVING_MULTIPLIER, stitch: Stitch | None = None,
                 stitch_batch: StitchBatch | None = None) -> None:
        if mode not in ANIMATION_MODES:
            raise EngineError(f"animation mode must be one of {ANIMATION_MODES}, got {mode!r}")
        self.source = source
        self.reference = reference
        self.mode = mode
        self.multiplier = float(multiplier)
        self.stitch = stitch
        self.stitch_batch = stitch_batch  # the same stitching as ``stitch``, for ``batch``
        self.x_s = source.keypoints()
        self._r_s = source.rotation()
        self._r_d0_t = reference.rotation().T
        self._hull = 1.0
        self._x_d0 = self._relative(reference)
        if mode == "animal":
            self._hull = float(np.sqrt(_hull_volume(self.x_s)) / np.sqrt(_hull_volume(self._x_d0)))

    def _relative(self, frame: MotionFrame) -> np.ndarray:
        src, ref = self.source, self.reference
        r_new = frame.rotation() @ self._r_d0_t @ self._r_s
        exp = src.exp + (frame.exp - ref.exp)
        if self.mode == "human":
            exp = exp.copy()
            exp[list(LIP_KEYPOINTS)] = frame.exp[list(LIP_KEYPOINTS)]
            scale = src.scale * (frame.scale / ref.scale)
        else:
            scale = src.scale
        t = src.t + (frame.t - ref.t)
        t = np.array([t[0], t[1], 0.0], np.float32)
        return (scale * (src.kp @ r_new + exp) + t).astype(np.float32)

    def _before_stitch(self, frame: MotionFrame) -> np.ndarray:
        x_d = self._relative(frame)
        if self.mode == "animal":
            x_d = (x_d - self._x_d0) * self._hull + self.x_s
        return x_d

    def batch(self, frames: Sequence[MotionFrame]) -> Any:
        """(N, 21, 3) driving keypoints of ``frames``: with ``stitch_batch``, one stitching call for all of them,
        whose result stays where it ran (a device tensor: no copy back per frame); else ``self(frame)`` each."""
        if self.stitch is None or self.stitch_batch is None:
            return np.stack([self(f) for f in frames])
        return self.stitch_batch(self.x_s, np.stack([self._before_stitch(f) for f in frames]), self.multiplier)

    def __call__(self, frame: MotionFrame) -> np.ndarray:
        """(21, 3) driving keypoints for ``frame``."""
        x_d = self._before_stitch(frame)
        if self.stitch is not None:
            x_d = np.asarray(self.stitch(self.x_s, x_d), np.float32)
        return (self.x_s + (x_d - self.x_s) * self.multiplier).astype(np.float32)
