"""Loopy training data.

Dataset format (a directory, searched recursively)::

    DATA/<name>.mp4             a talking-head clip: 25 fps, square face crop (512x512 for the
                                full model; other square sizes are resized to the config's
                                resolution), speech in its audio track
    DATA/<name>.wav             optional: the clip's audio (16 kHz mono preferred; any rate is
                                resampled); overrides the MP4's audio track
    DATA/<name>.landmarks.npy   optional: (T, 68, 2) float facial landmarks in pixels of the MP4's
                                frames, one row per video frame, in dlib's 68-point order
                                (``engines/face/landmarks.py``); enables the head-motion and
                                expression-variance queries of the audio-to-latents module

Each clip must have at least ``clip_frames`` (12) frames; the first frames of a clip have
no motion frames before them (masked), exactly as at the start of a rendered video.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from avatarstream.engines.base import FPS, SAMPLE_RATE, EngineError
from avatarstream.engines.face.landmarks import BROWS, EYE_LEFT, EYE_RIGHT

# The paper's audio-to-latents conditions on the 68-point layout (iBUG / dlib order):
NUM_LANDMARKS = 68
NOSE_TIP = 30
NOSE_BRIDGE = np.arange(27, 31)  # 27-30, ending at the nose tip
UPPER_FACE = np.concatenate([BROWS, NOSE_BRIDGE, EYE_LEFT, EYE_RIGHT])  # brows 17-26, bridge 27-30, eyes 36-47
VARIANCE_LOG_SCALE = 1e4  # variances are of positions in image widths: log1p(1e4 * v) spreads them over ~0-10


@dataclass(frozen=True)
class VideoClip:
    name: str  # path relative to the dataset root, without suffix
    frames: np.ndarray  # (T, R, R, 3) uint8 RGB at the model resolution
    audio: np.ndarray  # float32 mono 16 kHz
    landmarks: np.ndarray | None  # (T, 68, 2) in pixels of the MP4's frames, or None
    source_size: int = 0  # side of the MP4's (square) frames in pixels: the landmarks' unit

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def read_audio(path: Path, rate: int = SAMPLE_RATE) -> np.ndarray | None:
    """Decode the first audio stream of ``path`` to float32 mono at ``rate``; None if it has none."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = []
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def read_video(path: Path, resolution: int, sizes: list[int] | None = None) -> tuple[np.ndarray, float]:
    """All frames of ``path`` resized to ``resolution`` (must be square), and the frame rate;
    the original frame side is appended to ``sizes`` when given."""
    frames = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise EngineError(f"{path}: no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        for frame in container.decode(video=0):
            img = frame.to_ndarray(format="rgb24")
            h, w = img.shape[:2]
            if h != w:
                raise EngineError(f"{path}: frames are {w}x{h}; the dataset needs square face crops")
            if sizes is not None and not sizes:
                sizes.append(h)
            if h != resolution:
                img = cv2.resize(img, (resolution, resolution),
                                 interpolation=cv2.INTER_AREA if h > resolution else cv2.INTER_CUBIC)
            frames.append(img)
    if not frames:
        raise EngineError(f"{path}: no frames")
    return np.stack(frames), fps


def motion_variances(landmarks: np.ndarray, image_size: float) -> tuple[float, float]:
    """The paper's head-motion and expression variance of a clip's landmarks ``(T, 68, 2)``.

    Head motion: temporal variance of the nose tip's absolute position.
    Expression: temporal variance of the upper-face keypoints (brows, nose bridge, eyes) relative
    to the nose tip, averaged over the keypoints.
    Positions are in image widths (pixels / ``image_size``); variances are summed over x and y
    and returned log-scaled, ``log1p(VARIANCE_LOG_SCALE * v)``.
    """
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"expected (T, {NUM_LANDMARKS}, 2) landmarks, got {lm.shape}")
    if image_size <= 0:
        raise ValueError("image_size must be positive")
    lm = lm / float(image_size)
    nose = lm[:, NOSE_TIP]  # (T, 2)
    head = float(nose.var(axis=0).sum())
    relative = lm[:, UPPER_FACE] - nose[:, None]  # (T, K, 2)
    expression = float(relative.var(axis=0).sum(-1).mean())
    return float(np.log1p(VARIANCE_LOG_SCALE * head)), float(np.log1p(VARIANCE_LOG_SCALE * expression))


class LoopyVideoDataset:
    """Clips of a dataset directory, decoded on demand with a small cache."""

    def __init__(self, root: Path, resolution: int, min_frames: int = 12, cache_clips: int = 8) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise EngineError(f"dataset directory not found: {self.root}")
        self.paths = sorted(p for p in self.root.rglob("*.mp4") if not p.name.endswith(".partial.mp4"))
        if not self.paths:
            raise EngineError(f"no .mp4 clips in {self.root} (see docs/loopy.md for the dataset format)")
        self.resolution = resolution
        self.min_frames = min_frames
        self._cache: OrderedDict[int, VideoClip] = OrderedDict()
        self.cache_clips = cache_clips

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> VideoClip:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        clip = self._load(self.paths[i])
        self._cache[i] = clip
        while len(self._cache) > self.cache_clips:
            self._cache.popitem(last=False)
        return clip

    def _load(self, path: Path) -> VideoClip:
        sizes: list[int] = []
        frames, fps = read_video(path, self.resolution, sizes)
        if abs(fps - FPS) > 0.01:
            raise EngineError(f"{path}: {fps:g} fps; the dataset needs {FPS} fps (re-encode with: ffmpeg -i IN -r {FPS} OUT)")
        if len(frames) < self.min_frames:
            raise EngineError(f"{path}: {len(frames)} frames; need at least {self.min_frames}")
        wav = path.with_suffix(".wav")
        audio = read_audio(wav if wav.is_file() else path)
        if audio is None:
            raise EngineError(f"{path}: no audio track and no {wav.name} next to it")
        lm_path = path.with_name(path.stem + ".landmarks.npy")
        landmarks = None
        if lm_path.is_file():
            landmarks = np.load(lm_path)
            if landmarks.shape != (len(frames), NUM_LANDMARKS, 2):
                raise EngineError(f"{lm_path}: shape {landmarks.shape}; expected ({len(frames)}, {NUM_LANDMARKS}, 2) "
                                  "(68-point landmarks, dlib order)")
        return VideoClip(str(path.relative_to(self.root).with_suffix("")), frames, audio, landmarks, sizes[0])
