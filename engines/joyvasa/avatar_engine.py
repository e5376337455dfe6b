"""``JoyVasaEngine``: the neural real-time engine, JoyVASA audio -> motion + the LivePortrait renderer.

    avatar serve  --engine joyvasa --weights DIR [--backend CHOICE --engines-dir ENGINES_DIR]
    avatar render --engine joyvasa --weights DIR IMAGE AUDIO OUT.mp4

``--backend`` takes ``engines.runtimes.backend_choice`` text (``onnxruntime``, ``warping_spade=tensorrt,default=torch``):
the renderer's stages (appearance + motion extractors, warping + SPADE) then run on the graphs and engines
that ``avatar export`` wrote to ``ENGINES_DIR``; the motion generator stays on torch.

Shared workers, one thread each, serve every stream of an engine instance: ``motion_worker`` denoises the
streams' motion windows together (``engines.joyvasa.motion_worker``; options ``motion_max_batch`` /
``motion_max_wait_ms``), ``render_worker`` renders their frames together (``engines.liveportrait.render_worker``).

``DIR`` is the official ``pretrained_weights/`` tree (``avatar weights download --dest DIR``):
LivePortrait human (and optionally animal v1.0) networks, the JoyVASA motion generator and its
motion template, and optionally ``chinese-hubert-base/config.json``.

Per portrait (``prepare_portrait``), as the reference pipeline: the picture is limited to 1280 px; with the
preset's crop on, the face is cropped LivePortrait-style from the original picture (106 insightface points when
the weights have them, else the 68 points of ``engines.face``), else the output framing (a square around the
face, ``engines.face.framing``) is the network input; F and M run once. Every motion frame becomes driving
keypoints (``KeypointDriver``: JoyVASA's post-processing, then, with the crop, LivePortrait's stitching, then
the driving multiplier), rendered by W + G in batches and, with the crop, pasted back with the reference's mask
into the output framing.

Motion: ``open_stream`` uses the ``StreamingMotionGenerator`` (live); ``render_file`` (``avatar
render``) the reference's offline 100-frame-window algorithm (``generate_offline``). The settings around the
networks come from ``options.LIVE_PRESET`` / ``OFFLINE_PRESET``, each one official JoyVASA configuration
(docs/joyvasa.md).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from avatarstream.engines.base import (SAMPLES_PER_FRAME, AvatarFrame, EngineError, MissingWeightsError, Portrait, StageTimes,
                          check_audio)
from avatarstream.engines.face import detect_face
from avatarstream.engines.face.framing import frame_portrait
from avatarstream.engines.joyvasa.checkpoint import load_motion_generator
from avatarstream.engines.torch_device import resolve_device
from avatarstream.engines.joyvasa.motion import LIP_KEYPOINTS, KeypointDriver, MotionFrame, MotionTemplate, SourceMotion, Stitch
from avatarstream.engines.joyvasa.motion_worker import MotionWorker
from avatarstream.engines.joyvasa.offline import MotionSequence, generate_offline
from avatarstream.engines.joyvasa.options import CAPABILITIES, LIVE_PRESET, OFFLINE_PRESET, JoyVasaOptions, Preset
from avatarstream.engines.joyvasa.streaming import StreamingConfig, StreamingMotionGenerator
from avatarstream.engines.liveportrait.checkpoint import load_networks, missing_files, variant_files
from avatarstream.engines.media_files import write_mp4
from avatarstream.engines.liveportrait.config import LivePortraitConfig
from avatarstream.engines.liveportrait.render_worker import RenderWorker
from avatarstream.engines.liveportrait.renderer import RUNTIME_STAGES, PreparedAvatar, Renderer
from avatarstream.engines.liveportrait.face_models import FaceModels
from avatarstream.engines.liveportrait.source import (PasteBack, SourceCrop, crop_source, crop_transform_106,
                                                     crop_transform_animal, crop_with_transform, reframe,
                                                     resize_to_limit, whole_image_source)
from avatarstream.engines.runtimes.backend_choice import open_stage_runtimes, parse_backend_choice
from avatarstream.engines.runtimes.network_source import NetworkSource

log = logging.getLogger(__name__)

MOTION_GENERATOR_FILE = "JoyVASA/motion_generator/motion_generator_hubert_chinese.pt"
MOTION_TEMPLATE_FILE = "JoyVASA/motion_template/motion_template.pkl"
AUDIO_CONFIG_DIR = "chinese-hubert-base"
ANIMAL_VARIANT = "animal-v1.0"  # JoyVASA's animal mode uses LivePortrait animals v1.0
SPEECH_RMS = 0.01  # a frame whose audio RMS exceeds this counts as speech (AvatarFrame.speaking)
OUTPUT_SIZE = 512  # render_file's default frame size (G's output resolution); CAPABILITIES.sizes are all rendered


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
        self.crop = o.crop  # None: each preset's flag_do_crop
        self.paste_detail = o.paste_detail
        self.live_preset, self.offline_preset = LIVE_PRESET, OFFLINE_PRESET
        self.crop_scale = o.crop_scale  # None: each preset's
        self.offline_cfg_scale = o.cfg_scale if o.cfg_scale is not None else OFFLINE_PRESET.cfg_scale
        self.seed = o.seed
        self.last_motion: MotionSequence | None = None  # render_file's motion (tests, inspection)
        self.liveportrait_config = liveportrait_config  # None: the official network sizes
        audio_dir = self.root / AUDIO_CONFIG_DIR
        self.model, self.checkpoint_info = load_motion_generator(
            self.root / MOTION_GENERATOR_FILE, pe_mode=o.pe_mode, device=self.device,
            audio_config_dir=audio_dir if (audio_dir / "config.json").is_file() else None)
        self.pe_mode = self.checkpoint_info.pe_mode  # the denoiser's positional encoding (= model.cfg.pe_mode) and why
        log.info("joyvasa motion generator positional encoding: %s", self.pe_mode.describe())
        self.template = MotionTemplate.load(self.root / MOTION_TEMPLATE_FILE)
        chunk_frames, lookahead_ms = o.stream_settings()  # the latency option's, or chunk_frames / lookahead_ms
        self.stream_config = StreamingConfig(chunk_frames=chunk_frames, lookahead_ms=lookahead_ms, seed=o.seed,
                                             cfg_scale=o.cfg_scale if o.cfg_scale is not None else LIVE_PRESET.cfg_scale)
        self.stream_config.validate(self.model.cfg.n_motions)
        self._renderers: dict[str, Renderer] = {}
        self._workers: dict[int, RenderWorker] = {}  # id(renderer) -> the worker that batches its sessions' frames
        self._lock = threading.Lock()
        self._face_models: FaceModels | None = None
        self._motion_worker: MotionWorker | None = None  # denoises every stream's motion windows, batched

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

    def render_worker(self, renderer: Renderer) -> RenderWorker:
        """The one thread that renders for every session of ``renderer``, batching their frames together."""
        with self._lock:
            worker = self._workers.get(id(renderer))
            if worker is None:
                worker = RenderWorker(renderer, max_batch=max(self.batch_size, 8 if self.device != "cpu" else 1))
                self._workers[id(renderer)] = worker
            return worker

    def motion_worker(self) -> MotionWorker:
        """The one thread that runs the motion generator's denoiser for every stream, batching their windows."""
        with self._lock:
            if self._motion_worker is None:
                self._motion_worker = MotionWorker(self.model, max_batch=self.options.motion_max_batch,
                                                   max_wait_ms=self.options.motion_max_wait_ms)
            return self._motion_worker

    def close(self) -> None:
        """Stop the shared workers (motion and render); streams still open fail with a clear error."""
        with self._lock:
            workers = [w for w in (self._motion_worker,) if w is not None] + list(self._workers.values())
            self._motion_worker, self._workers = None, {}
        for worker in workers:
            worker.close()

    def face_models(self) -> FaceModels | None:
        """The official insightface detector + 106-point model when the weights directory has them."""
        with self._lock:
            if self._face_models is None and FaceModels.available(self.root):
                self._face_models = FaceModels(self.root)
            return self._face_models

    def crop_face(self, image: np.ndarray, face, preset: Preset) -> SourceCrop:
        """LivePortrait's source crop: from insightface 106 points when available (humans), else the 68 points."""
        kw = dict(scale=preset.crop_scale if self.crop_scale is None else self.crop_scale, vy_ratio=preset.crop_vy)
        if face.kind == "animal":
            return crop_with_transform(image, crop_transform_animal(face.points, **kw))
        models = self.face_models() if face.kind == "human" else None
        points106 = models.face_106(image) if models is not None else None
        if points106 is not None:
            return crop_with_transform(image, crop_transform_106(points106, **kw))
        return crop_source(image, face.points, **kw)

    def _variant_for(self, kind: str) -> str:
        if kind != "animal":
            return "human"
        if missing_files(self.root, ANIMAL_VARIANT):
            log.warning("LivePortrait animal v1.0 weights not in %s; rendering the animal with the human networks",
                        self.root)
            return "human"
        return ANIMAL_VARIANT

    def prepare_portrait(self, portrait: Portrait, size: int, preset: Preset) -> "PreparedPortrait":
        """Find the face (or take ``portrait.face``), cut the source crop from the original picture, run F and M,
        frame the output.

        The preset's crop, paste-back and stitching are on or off together; the engine's ``crop`` option, when
        given, turns all three on or off."""
        image = resize_to_limit(portrait.image, preset.source_max_dim)
        if portrait.face is not None:  # found by the caller, in portrait.image's pixels (resizing only scales them)
            sx = image.shape[1] / portrait.image.shape[1]
            sy = image.shape[0] / portrait.image.shape[0]
            face = portrait.face.transformed(np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0]]))
        else:
            face = detect_face(image, portrait.kind)  # raises NoFaceError
        framed = frame_portrait(image, face, max(size, 512))  # paste back at >= 512, then resize
        paste = preset.do_crop if self.crop is None else self.crop
        if paste:
            source = reframe(self.crop_face(image, face, preset), framed.matrix, framed.image)
        else:
            source = whole_image_source(framed.image)  # the reference's flag_do_crop=False, on the framed square
        variant = self._variant_for(face.kind)
        renderer = self.renderer(variant)
        avatar = renderer.prepare(source.network_input)
        stitch = renderer.stitch if paste else None  # the reference pastes back only with stitching
        return PreparedPortrait(renderer=renderer, avatar=avatar, source=source,
                                mode="animal" if face.kind == "animal" else "human", paste=paste, stitch=stitch,
                                multiplier=preset.driving_multiplier, paste_detail=self.paste_detail)

    def open_stream(self, portrait: Portrait, *, size: int = CAPABILITIES.default_size,
                    controls: Mapping[str, Any] | None = None) -> "JoyVasaStream":
        size = CAPABILITIES.check_size(size)
        prepared = self.prepare_portrait(portrait, size, self.live_preset)
        generator = StreamingMotionGenerator(self.model, self.template, self.stream_config, worker=self.motion_worker())
        return JoyVasaStream(prepared, generator, size=size, batch_size=self.batch_size, controls=controls,
                             render_worker=self.render_worker(prepared.renderer))

    @property
    def output_size(self) -> int:
        """The square frame size ``render_file`` writes unless given ``size``."""
        return OUTPUT_SIZE

    def render_file(self, portrait: Portrait, audio16k: np.ndarray, out_path: str | Path,
                    progress: Any = True, *, size: int | None = None) -> Path:
        """``avatar render``: the reference's offline motion (100-frame windows over the whole clip, one
        x_T) rendered with ``OFFLINE_PRESET`` into an MP4, one frame per started 40 ms of audio.

        ``size``: one of ``CAPABILITIES.sizes`` (None: ``OUTPUT_SIZE``), as for ``open_stream``: the 512 render
        (pasted back into a framing of at least 512 px when cropping) is resized (``PreparedPortrait.finish``)."""
        size = CAPABILITIES.check_size(OUTPUT_SIZE if size is None else size)
        audio = check_audio(audio16k)
        if audio.size == 0:
            raise EngineError("audio is empty: JoyVASA needs at least one sample of 16 kHz mono speech")
        if not isinstance(portrait, Portrait):
            portrait = Portrait(np.asarray(portrait))
        prepared = self.prepare_portrait(portrait, size, self.offline_preset)
        sequence = generate_offline(self.model, audio, template=self.template, cfg_scale=self.offline_cfg_scale,
                                    seed=self.seed)
        self.last_motion = sequence
        n_frames = -(-audio.size // SAMPLES_PER_FRAME)
        motions = sequence.frames()[:n_frames]  # the reference keeps one more frame when L is a multiple of 640
        reference = sequence.frames(include_preroll=True)[0]
        driver = prepared.driver(reference, 1.0)
        bar = _progress(progress, len(motions))

        def frames():
            for start in range(0, len(motions), self.batch_size):
                batch = motions[start:start + self.batch_size]
                keypoints = driver.batch(batch)  # one stitching call per batch, left on the renderer's device
                images = prepared.renderer.render([(prepared.avatar, keypoints[i]) for i in range(len(batch))])
                for generated in images:
                    yield prepared.finish(generated, size)
                bar.update(len(batch))

        try:
            write_mp4(Path(out_path), frames(), audio[:n_frames * SAMPLES_PER_FRAME], crf=20)
        finally:
            if bar is not progress:
                bar.close()
        return Path(out_path)


def _progress(progress: Any, total: int):
    """A caller's object with ``update(n)``, or a tqdm bar (shown when ``progress`` is True)."""
    if hasattr(progress, "update"):
        return progress
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="joyvasa render", disable=not progress)


@dataclass
class PreparedPortrait:
    """One portrait ready to animate: renderer + cached F/M results, the crop and how frames are finished."""

    renderer: Renderer
    avatar: PreparedAvatar
    source: SourceCrop  # crop cut from the original picture; ``source.image`` is the output framing
    mode: str  # "human" or "animal" (JoyVASA's animation mode)
    paste: bool  # paste the rendered crop back into the framing (else the render is the frame)
    stitch: Stitch | None  # LivePortrait's stitching (on exactly when pasting back, as the reference)
    multiplier: float  # the preset's driving multiplier
    paste_detail: bool = True  # PasteBack(keep_detail=...): False is the reference's formula bit for bit

    def __post_init__(self) -> None:
        # the paste-back's per-portrait parts (warped mask, still picture, round-trip detail), computed once
        self.paste_back = PasteBack(self.source, keep_detail=self.paste_detail) if self.paste else None

    def driver(self, reference: MotionFrame, intensity: float) -> KeypointDriver:
        return KeypointDriver(source_motion(self.avatar), reference, self.mode,
                              multiplier=self.multiplier * intensity, stitch=self.stitch,
                              stitch_batch=self.renderer.stitch_on_device if self.stitch is not None else None)

    def finish(self, generated: np.ndarray, size: int) -> np.ndarray:
        """A rendered 512 crop -> the output frame (pasted back, resized to ``size``)."""
        image = self.paste_back(generated) if self.paste_back is not None else generated
        if image.shape[0] != size or image.shape[1] != size:
            interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
            image = cv2.resize(image, (size, size), interpolation=interp)
        return np.ascontiguousarray(image)


def source_motion(avatar: PreparedAvatar) -> SourceMotion:
    m = avatar.motion
    return SourceMotion(kp=m.kp[0].cpu().numpy(), exp=m.exp[0].cpu().numpy(), pitch=float(m.pitch[0]),
                        yaw=float(m.yaw[0]), roll=float(m.roll[0]), t=m.t[0].cpu().numpy(), scale=float(m.scale[0, 0]))


def _check_controls(controls: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    return CAPABILITIES.validate_controls(controls)


class JoyVasaStream:
    """One session: audio in, LivePortrait frames out (``engines.base.EngineStream``)."""

    def __init__(self, prepared: PreparedPortrait, generator: StreamingMotionGenerator, *, size: int,
                 batch_size: int, controls: Mapping[str, Any] | None = None,
                 render_worker: RenderWorker | None = None) -> None:
        self.prepared = prepared
        # Frames go through the engine's shared worker (batched with other sessions) where there is one.
        self.renderer = render_worker if render_worker is not None else prepared.renderer
        self.avatar = prepared.avatar
        self.source = prepared.source
        self.generator = generator
        self.mode = prepared.mode
        self.size = size
        self.paste = prepared.paste
        self.batch_size = max(1, batch_size)
        self.lookahead_frames = generator.lookahead_frames
        self.times = StageTimes()
        self.expression_intensity = 1.0
        if controls:
            ok, bad = _check_controls(controls)
            if bad:
                raise EngineError("; ".join(f"control {k}: {v}" for k, v in bad.items()))
            self.expression_intensity = ok.get("expression_intensity", 1.0)
        self._driver: KeypointDriver | None = None
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
                self._driver.multiplier = self.prepared.multiplier * self.expression_intensity
        return rejected

    def close(self) -> None:
        self.generator.close()  # withdraw its windows from the shared motion worker
        self._rms.clear()
        self.avatar = None  # type: ignore[assignment]
        self.prepared = None  # type: ignore[assignment]

    # -- rendering ------------------------------------------------------------------------------

    def _keypoints(self, motions: list[MotionFrame]):
        """Driving keypoints of a render batch: stitched in one call, left on the renderer's device."""
        if self._driver is None:
            reference = self.generator.reference_frame or motions[0]
            self._driver = self.prepared.driver(reference, self.expression_intensity)
        return self._driver.batch(motions)

    def _mouth_open(self, motion: MotionFrame) -> float:
        ref = self._driver.reference if self._driver is not None else motion
        lips = list(LIP_KEYPOINTS)
        return float(np.clip(np.abs(motion.exp[lips, 1] - ref.exp[lips, 1]).mean() * 20.0, 0.0, 1.0))

    def _finish(self, generated: np.ndarray) -> np.ndarray:
        return self.prepared.finish(generated, self.size)

    def _render(self, motions: list[MotionFrame]) -> list[AvatarFrame]:
        if self.avatar is None:
            raise EngineError("the stream is closed")
        out: list[AvatarFrame] = []
        for start in range(0, len(motions), self.batch_size):
            batch = motions[start:start + self.batch_size]
            keypoints = self._keypoints(batch)
            t0 = time.perf_counter()
            images = self.renderer.render([(self.avatar, keypoints[i]) for i in range(len(batch))])
            self.times.add("render", (time.perf_counter() - t0) * 1000 / len(batch))
            for motion, generated in zip(batch, images):
                rms = self._rms.pop(motion.index, 0.0)
                out.append(AvatarFrame(index=motion.index, image=self._finish(generated), speaking=rms > SPEECH_RMS,
                                       mouth_open=self._mouth_open(motion)))
                self._last_index = motion.index
        for k in [k for k in self._rms if k <= self._last_index]:
            del self._rms[k]
        return out
