"""Turn raw talking-head videos into the Loopy dataset format (see ``dataset.py``).

For each source video: resample to 25 fps, find the face on a few frames and fix one
face-centred square crop for the whole clip (median box, so the head moves inside a still
frame as in the training data), resize to the model resolution, track 68-point landmarks on
every frame, and write ``<name>.mp4`` (+ audio), ``<name>.wav`` (16 kHz) and
``<name>.landmarks.npy``.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from tqdm.auto import tqdm

from avatarstream.engines.base import FPS, SAMPLE_RATE, EngineError
from avatarstream.engines.loopy.dataset import read_audio
from avatarstream.engines.loopy.face_crop import CROP_SCALE, crop_square, square_around
from avatarstream.engines.media_files import write_mp4

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
_DETECT_EVERY = 25  # frames between face detections used to fix the crop


def read_frames_at_fps(path: Path, fps: int = FPS) -> list[np.ndarray]:
    """Decode ``path`` resampled to ``fps``: each output tick shows the latest source frame."""
    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise EngineError(f"{path}: no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or fps)
        last, last_t = None, 0.0
        for i, frame in enumerate(container.decode(video=0)):
            t = float(frame.time) if frame.time is not None else i / rate
            img = frame.to_ndarray(format="rgb24")
            while last is not None and len(out) / fps < t - 1e-6:
                out.append(last)
            last, last_t = img, t
        if last is not None:
            while len(out) / fps < last_t + 1.0 / rate - 1e-6:
                out.append(last)
    return out


def prepare_clip(src: Path, out_dir: Path, resolution: int = 512, kind: str = "human") -> Path:
    from avatarstream.engines.base import NoFaceError
    from avatarstream.engines.face import detect_face, landmarks_in_box

    try:
        frames = read_frames_at_fps(src)
        audio = read_audio(src, SAMPLE_RATE)
    except (av.error.FFmpegError, OSError) as exc:
        raise EngineError(f"{src}: cannot decode ({exc})") from exc
    if not frames:
        raise EngineError(f"{src}: no frames")
    boxes = []
    for img in frames[::_DETECT_EVERY]:
        try:
            boxes.append(detect_face(img, kind=kind))
        except NoFaceError:
            continue
    if not boxes:
        raise EngineError(f"{src}: no face found; the dataset needs talking-head videos")
    centre = np.median([f.center for f in boxes], axis=0)
    side = float(np.median([max(f.box[2], f.box[3]) for f in boxes])) * CROP_SCALE
    square = square_around(frames[0].shape[:2], centre, side)
    crops = [crop_square(img, square, resolution) for img in frames]
    landmarks = []
    face = detect_face(crops[0], kind=kind)
    for img in crops:
        try:
            face = landmarks_in_box(img, face.box, kind=face.kind)
        except NoFaceError:
            pass  # keep the previous face's landmarks for a frame the tracker loses
        landmarks.append(face.points.astype(np.float32))
    if audio is None:
        raise EngineError(f"{src}: no audio track")
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / (src.stem + ".mp4")
    write_mp4(dst, crops, audio)
    from scipy.io import wavfile

    wavfile.write(str(dst.with_suffix(".wav")), SAMPLE_RATE, (np.clip(audio, -1, 1) * 32767).astype(np.int16))
    np.save(dst.with_name(dst.stem + ".landmarks.npy"), np.stack(landmarks))
    return dst


def prepare_dataset(raw_dir: Path, out_dir: Path, resolution: int = 512, kind: str = "human",
                    progress: bool = True) -> list[Path]:
    raw_dir = Path(raw_dir)
    sources = sorted(p for p in raw_dir.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not sources:
        raise EngineError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {raw_dir}")
    done, skipped = [], []
    for src in tqdm(sources, desc="prepare", unit="clip", disable=not progress):
        try:
            done.append(prepare_clip(src, Path(out_dir), resolution, kind))
        except EngineError as exc:
            skipped.append(f"{src.name}: {exc}")
    if not done:
        raise EngineError("no clip could be prepared: " + "; ".join(skipped[:5]))
    for msg in skipped:
        print(f"skipped {msg}")
    return done
