"""``JoyVasaEngine``: the neural real-time engine, JoyVASA audio -> motion + the LivePortrait renderer.

    avatar serve  --engine joyvasa --weights DIR [--backend CHOICE --engines-dir ENGINES_DIR]
    avatar render --engine joyvasa --weights DIR IMAGE AUDIO OUT.mp4

``--backend`` takes ``engines.runtimes.backend_choice`` text (``onnxruntime``, ``warping_spade=tensorrt,default=torch``):
the renderer's stages (appearance + motion extractors, warping + SPADE) then run on the graphs and engines
that ``avatar export`` wrote to ``ENGINES_DIR``; the motion generator stays on torch.

``DIR`` is the official ``pretrained_weights/`` tree (``avatar weights download --dest DIR``):
LivePortrait human (and optionally animal v1.0) networks, the JoyVASA motion generator and its
motion template, and optionally ``chinese-hubert-base/config.json``.

Per stream: the portrait is framed as a square around the face (``engines.face.framing``), the
face is cropped LivePortrait-style from the 68 landmarks (``engines.liveportrait.source``), F and
M run once, and every motion frame from the ``StreamingMotionGenerator`` becomes driving keypoints
(``KeypointDriver``, JoyVASA's post-processing) rendered by W + G in batches, then pasted back into
the framed portrait with a soft mask.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from avatarstream.engines.base import (SAMPLES_PER_FRAME, AvatarFrame, EngineError, MissingWeightsError, Portrait, StageTimes,
                          check_audio)
from avatarstream.engines.joyvasa.checkpoint import load_motion_generator
from avatarstream.engines.torch_device import resolve_device
from avatarstream.engines.joyvasa.motion import DRIVING_MULTIPLIER, LIP_KEYPOINTS, KeypointDriver, MotionFrame, MotionTemplate, SourceMotion
from avatarstream.engines.joyvasa.options import CAPABILITIES, JoyVasaOptions
from avatarstream.engines.joyvasa.streaming import StreamingConfig, StreamingMotionGenerator
from avatarstream.engines.liveportrait.checkpoint import load_networks, missing_files, variant_files
from avatarstream.engines.liveportrait.config import LivePortraitConfig
from avatarstream.engines.liveportrait.renderer import RUNTIME_STAGES, PreparedAvatar, Renderer
from avatarstream.engines.liveportrait.face_models import FaceModels
from avatarstream.engines.liveportrait.source import (SourceCrop, crop_source, crop_transform_106, crop_with_transform, paste_back,
                                         soft_mask, whole_image_source)
from avatarstream.engines.runtimes.backend_choice import open_stage_runtimes, parse_backend_choice
from avatarstream.engines.runtimes.network_source import NetworkSource

log = logging.getLogger(__name__)

MOTION_GENERATOR_FILE = "JoyVASA/motion_generator/motion_generator_hubert_chinese.pt"
MOTION_TEMPLATE_FILE = "JoyVASA/motion_template/motion_template.pkl"
AUDIO_CONFIG_DIR = "chinese-hubert-base"
ANIMAL_VARIANT = "animal-v1.0"  # JoyVASA's animal mode uses LivePortrait animals v1.0
SPEECH_RMS = 0.01  # a frame whose audio RMS exceeds this counts as speech (AvatarFrame.speaking)


def required_files() -> list[str]:
    return variant_files("human") + [MOTION_GENERATOR_FILE, MOTION_TEMPLATE_FILE]


def render_backends(backend: str) -> dict[str, str]:
    """``--backend`` text -> {renderer stage: backend} for the stages not on torch (empty: all torch)."""
    if backend.strip() in ("", "torch"):
        return {}
    choice = parse_backend_choice(backend)
    ignored = sorted(n for n, b in choice.items() if n not in RUNTIME_STAGES and b != "torch")
    if ignored:
        log.info("joyvasa engine: %s stay on torch (the engine runs only %s on exported runtimes)",
                 ", ".join(ignored), ", ".join(RUNTIME_STAGES))
    return {n: b for n, b in choice.items() if n in RUNTIME_STAGES and b != "torch"}


def check_engines_dir(choice: Mapping[str, str], engines_dir: str | Path | None) -> None:
    """Non-torch stages need an existing ``engines_dir``."""
    if not choice:
        return
    if engines_dir is None:
        raise EngineError(f"--backend puts {', '.join(choice)} on {'/'.join(sorted(set(choice.values())))}: "
                          "give --engines-dir ENGINES_DIR written by 'avatar export'")
    if not Path(engines_dir).is_dir():
        raise EngineError(f"--engines-dir {engines_dir} is not a directory; write it with 'avatar export --out DIR'")


def open_render_runtimes(choice: Mapping[str, str], engines_dir: str | Path | None, device: str) -> dict:
    """Open the exported runtimes of ``choice`` (non-torch renderer stages) from ``engines_dir``."""
    check_engines_dir(choice, engines_dir)
    if not choice:
        return {}
    # Only non-torch stages are opened, so the network source is never built from.
    return open_stage_runtimes(choice, source=NetworkSource(), engines_dir=Path(engines_dir), device=device)


class JoyVasaEngine:
    """``engines.base.AvatarEngine`` for joyvasa; options: ``JoyVasaOptions`` (engines/joyvasa/options.py)."""

    name = "joyvasa"
    capabilities = CAPABILITIES

    def __init__(self, options: JoyVasaOptions | None = None, /, **overrides: Any) -> None:
        self.options = o = JoyVasaOptions.build(options, overrides)
        weights, engines_dir, liveportrait_config = o.weights, o.engines_dir, o.liveportrait_config
        if liveportrait_config is not None and not isinstance(liveportrait_config, LivePortraitConfig):
            raise EngineError(f"the joyvasa engine's option 'liveportrait_config' must be a LivePortraitConfig, "
                              f"got {type(liveportrait_config).__name__}")
        self.backends = render_backends(o.backend)  # checked before the weights: a bad --backend fails fast
        check_engines_dir(self.backends, engines_dir)
        if weights is None:
            raise MissingWeightsError(
                "the joyvasa engine needs --weights DIR holding: " + ", ".join(required_files())
                + " (fetch them with: avatar weights download --dest DIR)")
        self.root = Path(weights)
        missing = [rel for rel in required_files() if not (self.root / rel).is_file()]
        if missing:
            raise MissingWeightsError(
                f"joyvasa weights missing in {self.root}: {', '.join(missing)} "
                f"(fetch them with: avatar weights download --dest {self.root})")
        self.device = resolve_device(o.device)
        # The exported graphs hold the human networks; an animal portrait renders on torch (see ``renderer``).
        self.runtimes = open_render_runtimes(self.backends, engines_dir, self.device)
        self.fp16 = (self.device != "cpu") if o.fp16 is None else o.fp16
        self.batch_size = o.batch_size or (8 if self.device != "cpu" else 1)
        self.crop = o.crop
        self.liveportrait_config = liveportrait_config  # None: the official network sizes
        audio_dir = self.root / AUDIO_CONFIG_DIR
        self.model, self.checkpoint_info = load_motion_generator(
            self.root / MOTION_GENERATOR_FILE, pe_mode=o.pe_mode, device=self.device,
            audio_config_dir=audio_dir if (audio_dir / "config.json").is_file() else None)
        self.template = MotionTemplate.load(self.root / MOTION_TEMPLATE_FILE)
        kwargs = dict(chunk_frames=o.chunk_frames, lookahead_ms=o.lookahead_ms, seed=o.seed)
        if o.cfg_scale is not None:
            kwargs["cfg_scale"] = o.cfg_scale
        self.stream_config = StreamingConfig(**kwargs)
        self.stream_config.validate(self.model.cfg.n_motions)
        self._renderers: dict[str, Renderer] = {}
        self._lock = threading.Lock()
        self._face_models: FaceModels | None = None

    def renderer(self, variant: str) -> Renderer:
        """The shared renderer for one LivePortrait variant (loaded on first use)."""
        with self._lock:
            if variant not in self._renderers:
                nets = load_networks(self.root, variant, device=self.device, config=self.liveportrait_config)
                runtimes = self.runtimes if variant == "human" else {}
                if self.runtimes and variant != "human":
                    log.warning("the exported stages hold the human networks; %s renders on torch", variant)
                self._renderers[variant] = Renderer(nets, device=self.device, fp16=self.fp16, runtimes=runtimes)
            return self._renderers[variant]

    def face_models(self) -> FaceModels | None:
        """The official insightface detector + 106-point model when the weights directory has them."""
        with self._lock:
            if self._face_models is None and FaceModels.available(self.root):
                self._face_models = FaceModels(self.root)
            return self._face_models

    def crop_face(self, image: np.ndarray, face) -> SourceCrop:
        """LivePortrait's source crop: from insightface 106 points when available (humans), else the 68 points."""
        models = self.face_models() if face.kind == "human" else None
        points106 = models.face_106(image) if models is not None else None
        if points106 is not None:
            return crop_with_transform(image, crop_transform_106(points106))
        return crop_source(image, face.points)

    def _variant_for(self, kind: str) -> str:
        if kind != "animal":
            return "human"
        if missing_files(self.root, ANIMAL_VARIANT):
            log.warning("LivePortrait animal v1.0 weights not in %s; rendering the animal with the human networks",
                        self.root)
            return "human"
        return ANIMAL_VARIANT

    def open_stream(self, portrait: Portrait, *, size: int = CAPABILITIES.default_size,
                    controls: Mapping[str, Any] | None = None) -> "JoyVasaStream":
        from avatarstream.engines.face import detect_face
        from avatarstream.engines.face.framing import frame_portrait

        size = CAPABILITIES.check_size(size)
        face = detect_face(portrait.image, portrait.kind)  # raises NoFaceError
        framed = frame_portrait(portrait.image, face, max(size, 512))  # paste back at >= 512, then resize
        source = self.crop_face(framed.image, framed.face) if self.crop else whole_image_source(framed.image)
        variant = self._variant_for(face.kind)
        renderer = self.renderer(variant)
        avatar = renderer.prepare(source.network_input)
        generator = StreamingMotionGenerator(self.model, self.template, self.stream_config)
        mode = "animal" if face.kind == "animal" else "human"
        return JoyVasaStream(renderer, avatar, source, generator, mode=mode, size=size, paste=self.crop,
                             batch_size=self.batch_size, controls=controls)


def source_motion(avatar: PreparedAvatar) -> SourceMotion:
    m = avatar.motion
    return SourceMotion(kp=m.kp[0].cpu().numpy(), exp=m.exp[0].cpu().numpy(), pitch=float(m.pitch[0]),
                        yaw=float(m.yaw[0]), roll=float(m.roll[0]), t=m.t[0].cpu().numpy(), scale=float(m.scale[0, 0]))


def _check_controls(controls: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    return CAPABILITIES.validate_controls(controls)


class JoyVasaStream:
    """One session: audio in, LivePortrait frames out (``engines.base.EngineStream``)."""

    def __init__(self, renderer: Renderer, avatar: PreparedAvatar, source: SourceCrop,
                 generator: StreamingMotionGenerator, *, mode: str, size: int, paste: bool, batch_size: int,
                 controls: Mapping[str, Any] | None = None) -> None:
        self.renderer = renderer
        self.avatar = avatar
        self.source = source
        self.generator = generator
        self.mode = mode
        self.size = size
        self.paste = paste
        self.batch_size = max(1, batch_size)
        self.lookahead_frames = generator.lookahead_frames
        self.times = StageTimes()
        self.expression_intensity = 1.0
        if controls:
            ok, bad = _check_controls(controls)
            if bad:
                raise EngineError("; ".join(f"control {k}: {v}" for k, v in bad.items()))
            self.expression_intensity = ok.get("expression_intensity", 1.0)
        self._source_motion = source_motion(avatar)
        self._driver: KeypointDriver | None = None
        self._mask = soft_mask()
        self._rms: dict[int, float] = {}  # frame index -> audio RMS, for frames not rendered yet
        self._partial = np.zeros(0, np.float32)
        self._next_audio_frame = 0
        self._last_index = -1

    # -- audio bookkeeping (speaking flags) ----------------------------------------------------

    def _track_audio(self, audio: np.ndarray) -> None:
        buf = np.concatenate([self._partial, audio])
        n = buf.size // SAMPLES_PER_FRAME
        for i in range(n):
            chunk = buf[i * SAMPLES_PER_FRAME:(i + 1) * SAMPLES_PER_FRAME]
            self._rms[self._next_audio_frame + i] = float(np.sqrt(np.mean(chunk * chunk)))
        self._next_audio_frame += n
        self._partial = buf[n * SAMPLES_PER_FRAME:]

    # -- EngineStream ---------------------------------------------------------------------------

    def feed(self, audio: np.ndarray) -> list[AvatarFrame]:
        a = check_audio(audio)
        self._track_audio(a)
        t0 = time.perf_counter()
        self.generator.push_audio(a)
        motions = self.generator.pull_motion()
        self.times.add("motion", (time.perf_counter() - t0) * 1000)
        return self._render(motions)

    def flush(self) -> list[AvatarFrame]:
        t0 = time.perf_counter()
        motions = self.generator.flush()
        self.times.add("motion", (time.perf_counter() - t0) * 1000)
        return self._render(motions)

    def interrupt(self) -> None:
        self.generator.interrupt()
        self._rms.clear()
        self._partial = np.zeros(0, np.float32)
        self._next_audio_frame = self._last_index + 1

    def set_controls(self, controls: Mapping[str, Any]) -> dict[str, str]:
        ok, rejected = _check_controls(controls)
        if "expression_intensity" in ok:
            self.expression_intensity = ok["expression_intensity"]
            if self._driver is not None:
                self._driver.multiplier = DRIVING_MULTIPLIER * self.expression_intensity
        return rejected

    def close(self) -> None:
        self._rms.clear()
        self.avatar = None  # type: ignore[assignment]

    # -- rendering ------------------------------------------------------------------------------

    def _keypoints(self, motion: MotionFrame) -> np.ndarray:
        if self._driver is None:
            reference = self.generator.reference_frame or motion
            self._driver = KeypointDriver(self._source_motion, reference, self.mode,
                                          multiplier=DRIVING_MULTIPLIER * self.expression_intensity)
        return self._driver(motion)

    def _mouth_open(self, motion: MotionFrame) -> float:
        ref = self._driver.reference if self._driver is not None else motion
        lips = list(LIP_KEYPOINTS)
        return float(np.clip(np.abs(motion.exp[lips, 1] - ref.exp[lips, 1]).mean() * 20.0, 0.0, 1.0))

    def _finish(self, generated: np.ndarray) -> np.ndarray:
        image = paste_back(generated, self.source, self._mask) if self.paste else generated
        if image.shape[0] != self.size or image.shape[1] != self.size:
            interp = cv2.INTER_AREA if image.shape[0] > self.size else cv2.INTER_LINEAR
            image = cv2.resize(image, (self.size, self.size), interpolation=interp)
        return np.ascontiguousarray(image)

    def _render(self, motions: list[MotionFrame]) -> list[AvatarFrame]:
        if self.avatar is None:
            raise EngineError("the stream is closed")
        out: list[AvatarFrame] = []
        for start in range(0, len(motions), self.batch_size):
            batch = motions[start:start + self.batch_size]
            keypoints = [self._keypoints(m) for m in batch]
            t0 = time.perf_counter()
            images = self.renderer.render([(self.avatar, kp) for kp in keypoints])
            self.times.add("render", (time.perf_counter() - t0) * 1000 / len(batch))
            for motion, generated in zip(batch, images):
                rms = self._rms.pop(motion.index, 0.0)
                out.append(AvatarFrame(index=motion.index, image=self._finish(generated), speaking=rms > SPEECH_RMS,
                                       mouth_open=self._mouth_open(motion)))
                self._last_index = motion.index
        for k in [k for k in self._rms if k <= self._last_index]:
            del self._rms[k]
        return out
