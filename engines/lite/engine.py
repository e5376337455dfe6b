"""The lite engine: CPU only, no torch, no downloaded weights.

portrait -> face landmarks (dlib / cat cascade) -> framed square -> precomputed warp maps;
audio -> per-frame features -> motion (``FacePose``) -> warp render -> ``AvatarFrame``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections import deque
from typing import Any, Mapping

import numpy as np

from avatarstream.engines.base import (RERENDER_KEEP_FRAMES, SAMPLES_PER_FRAME, AvatarFrame, EngineError, Portrait,
                                       StageTimes, check_audio)
from avatarstream.engines.face import FaceLandmarks, detect_face
from avatarstream.engines.lite.audio_features import AudioFeatureExtractor, FrameFeatures
from avatarstream.engines.face.framing import frame_portrait
from avatarstream.engines.lite.motion import FacePose, MotionControls, MotionGenerator
from avatarstream.engines.lite.options import CAPABILITIES, LiteOptions
from avatarstream.engines.lite.face_mesh import UNSURE_MOUTH_TRAVEL
from avatarstream.engines.lite.warp_renderer import WarpRenderer

log = logging.getLogger(__name__)


def _apply_controls(target: MotionControls, controls: Mapping[str, Any]) -> dict[str, str]:
    ok, rejected = CAPABILITIES.validate_controls(controls)
    for name, value in ok.items():
        setattr(target, name, value)
    return rejected


class LiteStream:
    """One session's audio -> frames stream (``engines.base.EngineStream``)."""

    lookahead_frames = 1

    def __init__(self, renderer: WarpRenderer, face: FaceLandmarks, *, seed: int = 0,
                 controls: Mapping[str, Any] | None = None) -> None:
        self.renderer = renderer
        self.face = face  # landmarks in the output frame's pixels
        self.size = renderer.size
        self.motion_controls = MotionControls()
        if controls:
            bad = _apply_controls(self.motion_controls, controls)
            if bad:
                raise EngineError("; ".join(f"control {k}: {v}" for k, v in bad.items()))
        self._features = AudioFeatureExtractor()
        self._motion = MotionGenerator(seed=seed, controls=self.motion_controls)
        self._audio = np.zeros(0, np.float32)  # samples from frame ``_featured`` on
        self._featured = 0  # frames whose features are computed
        self._pending: deque[FrameFeatures] = deque()  # features of frames not yet rendered
        self._next = 0  # next frame index to emit
        self._total_samples = 0
        self.stage_times = StageTimes()
        self.last_pose = FacePose()
        self.dropped_frames = 0  # frames of audio discarded by interrupt()
        self._poses: deque[tuple[int, FacePose]] = deque(maxlen=RERENDER_KEEP_FRAMES)  # (index, pose) emitted

    # --- EngineStream -------------------------------------------------------------------------
    def feed(self, audio: np.ndarray) -> list[AvatarFrame]:
        a = check_audio(audio)
        self._total_samples += a.size
        self._audio = np.concatenate([self._audio, a]) if self._audio.size else a.copy()
        t = time.perf_counter()
        n_full = self._audio.size // SAMPLES_PER_FRAME
        for i in range(n_full):
            self._pending.append(self._features.frame(self._audio[i * SAMPLES_PER_FRAME:(i + 1) * SAMPLES_PER_FRAME]))
        if n_full:
            self._audio = self._audio[n_full * SAMPLES_PER_FRAME:]
            self._featured += n_full
            self.stage_times.add("features", (time.perf_counter() - t) * 1000 / n_full)
        out = []
        while self._next + self.lookahead_frames < self._featured:
            out.append(self._emit())
        return out

    def flush(self) -> list[AvatarFrame]:
        """Render every frame the audio fed so far covers (the last one may be partial)."""
        total_frames = -(-self._total_samples // SAMPLES_PER_FRAME)
        pad = (-self._audio.size) % SAMPLES_PER_FRAME
        out = []
        if pad or self._audio.size:
            out += self.feed(np.zeros(pad, np.float32))
            self._total_samples -= pad
        while self._next < total_frames:
            if self._next + self.lookahead_frames >= self._featured:
                # no audio after the end: the lookahead sees silence
                self._pending.append(self._features.frame(np.zeros(SAMPLES_PER_FRAME, np.float32)))
                self._featured += 1
            out.append(self._emit())
        return out

    def interrupt(self) -> None:
        # frames already featured but not rendered are dropped; the clock keeps counting
        dropped = self._featured - self._next
        self._pending.clear()
        self._audio = np.zeros(0, np.float32)
        self._featured = self._next
        self._total_samples = self._next * SAMPLES_PER_FRAME
        self._motion.idle()
        self._features.reset()
        self.dropped_frames += dropped

    def rerender_closed(self, since: int) -> list[AvatarFrame]:
        """``engines.base.ClosedMouthRerender``: the kept frames from ``since`` with the jaw shut and the lips
        relaxed at once, as ``interrupt()`` leaves the motion (the voice stops at once too); head, brows and
        blinks as they were rendered."""
        return [AvatarFrame(index, self.renderer.render(dataclasses.replace(pose, jaw=0.0, width=0.0, speaking=False)),
                            speaking=False, mouth_open=0.0)
                for index, pose in self._poses if index >= since]

    def set_controls(self, controls: Mapping[str, Any]) -> dict[str, str]:
        return _apply_controls(self.motion_controls, controls)

    def close(self) -> None:
        self._pending.clear()
        self._audio = np.zeros(0, np.float32)

    # --- internals ----------------------------------------------------------------------------
    def _emit(self) -> AvatarFrame:
        now = self._pending.popleft()
        ahead = self._pending[0] if self._pending else None
        t = time.perf_counter()
        pose = self._motion.step(self._next, now, ahead)
        t1 = time.perf_counter()
        image = self.renderer.render(pose)
        t2 = time.perf_counter()
        self.stage_times.add("motion", (t1 - t) * 1000)
        self.stage_times.add("render", (t2 - t1) * 1000)
        self.last_pose = pose
        self._poses.append((self._next, pose))
        frame = AvatarFrame(self._next, image, speaking=pose.speaking, mouth_open=float(min(1.0, pose.jaw)))
        self._next += 1
        return frame

    def idle_frame(self) -> np.ndarray:
        return self.renderer.render(FacePose())


class LiteEngine:
    """``engines.base.AvatarEngine`` for the lite engine; options: ``LiteOptions`` (engines/lite/options.py)."""

    name = "lite"
    capabilities = CAPABILITIES

    def __init__(self, options: LiteOptions | None = None, /, **overrides: Any) -> None:
        self.options = LiteOptions.build(options, overrides)
        self.seed = self.options.seed
        self._cache: dict[tuple, tuple] = {}
        self._lock = threading.Lock()  # sessions open streams from their own worker threads

    def prepare(self, portrait: Portrait, size: int = CAPABILITIES.default_size):
        """Face detection, framing and warp maps for ``portrait`` at ``size`` (cached per image)."""
        size = CAPABILITIES.check_size(size)
        known = None if portrait.face is None else hashlib.sha1(portrait.face.points.tobytes()).hexdigest()
        key = (portrait.image.shape, hashlib.sha1(portrait.image.tobytes()).hexdigest(), portrait.kind, int(size), known)
        with self._lock:
            if key not in self._cache:
                face = portrait.face if portrait.face is not None else detect_face(portrait.image, portrait.kind)
                framed = frame_portrait(portrait.image, face, int(size))
                if not face.mouth_found:
                    log.warning("lite: no mouth located with confidence on this %s portrait; its jaw moves "
                                "at %.0f%% and no mouth interior is painted", face.kind, 100 * UNSURE_MOUTH_TRAVEL)
                renderer = WarpRenderer(framed, teeth=face.kind == "human")
                if len(self._cache) >= 4:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = (framed, renderer)
            return self._cache[key]

    def open_stream(self, portrait: Portrait, *, size: int = CAPABILITIES.default_size,
                    controls: Mapping[str, Any] | None = None) -> LiteStream:
        framed, renderer = self.prepare(portrait, size)
        return LiteStream(renderer, framed.face, seed=self.seed, controls=controls)
