"""The glue around the networks in the joyvasa engine, against the reference pipeline (random weights, narrow
LivePortrait networks, the miniature motion generator: CPU seconds)."""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest
import torch

from avatarstream.engines.portraits import load_portrait
from avatarstream.engines.base import Portrait


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    pytest.importorskip("transformers", reason="the joyvasa engine needs transformers (pip install '.[neural]')")
    from avatarstream.engines.joyvasa.avatar_engine import AUDIO_CONFIG_DIR, MOTION_GENERATOR_FILE, MOTION_TEMPLATE_FILE
    from avatarstream.engines.joyvasa.checkpoint import ARG_NAMES, SMALL_CONFIG, small_audio_config, small_motion_generator
    from avatarstream.engines.joyvasa.motion import MotionTemplate
    from avatarstream.engines.liveportrait.checkpoint import write_random_checkpoints
    from avatarstream.engines.liveportrait.config import LivePortraitConfig
    from avatarstream.engines.registry import load_engine

    tmp = tmp_path_factory.mktemp("joyvasa_small")
    write_random_checkpoints(tmp, seed=5, variants=("human",), config=LivePortraitConfig.small())
    generator = tmp / MOTION_GENERATOR_FILE
    generator.parent.mkdir(parents=True)
    args = argparse.Namespace(**{k: getattr(SMALL_CONFIG, k) for k in ARG_NAMES})
    torch.save({"args": args, "model": small_motion_generator(seed=0).state_dict(), "iter": 0}, generator)
    small_audio_config(SMALL_CONFIG.audio_model).save_pretrained(str(tmp / AUDIO_CONFIG_DIR))
    (tmp / MOTION_TEMPLATE_FILE).parent.mkdir(parents=True)
    MotionTemplate.synthetic().save(tmp / MOTION_TEMPLATE_FILE)
    return load_engine("joyvasa", weights=str(tmp), device="cpu", chunk_frames=3, lookahead_ms=40,
                       liveportrait_config=LivePortraitConfig.small())


def _padding(image: np.ndarray, image_to_crop: np.ndarray) -> float:
    """Fraction of the 512 crop that lies outside the picture (filled with the reference's black border)."""
    white = np.full(image.shape[:2], 255, np.uint8)
    return float((cv2.warpAffine(white, image_to_crop, (512, 512), flags=cv2.INTER_NEAREST, borderValue=0) == 0).mean())


def _portraits(human_portrait, cat_portrait):
    human = load_portrait(human_portrait)
    cat = load_portrait(cat_portrait, kind="animal")
    img = human.image
    wide = cv2.copyMakeBorder(img, 60, 200, 500, 90, cv2.BORDER_REFLECT)  # landscape, face left of centre
    tall = cv2.copyMakeBorder(img, 420, 40, 30, 160, cv2.BORDER_REFLECT)  # portrait format, face low
    return {"human": human, "cat": cat, "wide": Portrait(wide, kind="human"), "tall": Portrait(tall, kind="human")}


def _crop_padding(engine, portraits, preset) -> dict[str, float]:
    from avatarstream.engines.face import detect_face
    from avatarstream.engines.liveportrait.source import resize_to_limit

    padding = {}
    for name, portrait in portraits.items():
        prepared = engine.prepare_portrait(portrait, 512, preset)
        image = resize_to_limit(portrait.image)
        own = engine.crop_face(image, detect_face(image, portrait.kind), preset)
        np.testing.assert_array_equal(prepared.source.crop, own.crop)  # F and M see the crop of the picture itself
        padding[name] = _padding(image, own.image_to_crop)
    return padding


def test_source_crop_is_cut_from_the_original_picture(engine, human_portrait, cat_portrait):
    from dataclasses import replace

    from avatarstream.engines.joyvasa.options import LIVE_PRESET

    portraits = _portraits(human_portrait, cat_portrait)
    assert LIVE_PRESET.crop_scale == 3.0  # JoyVASA inference.py's scale
    padding = _crop_padding(engine, portraits, LIVE_PRESET)
    # the bundled pictures are close-ups, so the crop runs past them (the reference's would too): at inference.py's
    # 3.0 on 14.1 % (human) and 63.6 % (cat) of the crop, docs/joyvasa.md
    assert padding["human"] < 0.15 and padding["cat"] < 0.65, padding
    assert padding["wide"] == 0.0 and padding["tall"] == 0.0, padding  # margin around the face: no padding
    # at LivePortrait's (and JoyVASA gradio's) 2.3: 0.4 % and 39.6 %; cut from the 5.6 / 3.3 eye-distance framing
    # square instead, it was padded on 5.6 % (human) and 68 % (cat)
    padding = _crop_padding(engine, portraits, replace(LIVE_PRESET, crop_scale=2.3))
    assert padding["human"] < 0.02 and padding["cat"] < 0.45, padding
    assert padding["wide"] == 0.0 and padding["tall"] == 0.0, padding


# Official values, read from JoyVASA's code (jdh-algo/JoyVASA at 74290f6): the defaults of ArgumentConfig
# (src/config/argument_config.py), which inference.py and app.py parse with tyro and hand to InferenceConfig
# and CropConfig (partial_fields); README.md's human command line; app.py's gradio widget values.
ARGUMENT_CONFIG = dict(cfg_scale=2.8, flag_do_crop=False, scale=3.0, vy_ratio=-0.125, flag_pasteback=False,
                       flag_stitching=False, driving_multiplier=1.10, flag_relative_motion=False,
                       flag_normalize_lip=False, source_max_dim=1280)
# python inference.py -r IMAGE -a AUDIO --animation_mode human --cfg_scale 2.0
README_HUMAN = {**ARGUMENT_CONFIG, "cfg_scale": 2.0}
# python inference.py -r IMAGE -a AUDIO --animation_mode human --flag_do_crop --flag_pasteback --flag_stitching
INFERENCE_CROP = {**ARGUMENT_CONFIG, "flag_do_crop": True, "flag_pasteback": True, "flag_stitching": True}
# python app.py: the widgets' values (cfg_scale 4.0, do crop, image crop scale 2.3 / y -0.125, driving multiplier
# 1.0, normalize lip, relative motion, paste-back, stitching all checked)
GRADIO_APP = dict(cfg_scale=4.0, flag_do_crop=True, scale=2.3, vy_ratio=-0.125, flag_pasteback=True,
                  flag_stitching=True, driving_multiplier=1.0, flag_relative_motion=True, flag_normalize_lip=True,
                  source_max_dim=1280)


def _official_fields(preset) -> dict:
    return dict(cfg_scale=preset.cfg_scale, flag_do_crop=preset.do_crop, scale=preset.crop_scale,
                vy_ratio=preset.crop_vy, flag_pasteback=preset.paste_back, flag_stitching=preset.stitching,
                driving_multiplier=preset.driving_multiplier, flag_relative_motion=preset.relative_motion,
                flag_normalize_lip=preset.normalize_lip, source_max_dim=preset.source_max_dim)


def test_each_preset_is_one_official_configuration():
    from avatarstream.engines.base import EngineError
    from avatarstream.engines.joyvasa.options import LIVE_PRESET, OFFLINE_PRESET, Preset

    assert _official_fields(OFFLINE_PRESET) == README_HUMAN  # avatar render
    assert _official_fields(LIVE_PRESET) == INFERENCE_CROP  # avatar serve
    assert "--cfg_scale 2.0" in OFFLINE_PRESET.configuration and "--flag_pasteback" in LIVE_PRESET.configuration
    # the gradio app's configuration needs what the engine does not implement, and is refused, not approximated
    gradio = dict(cfg_scale=4.0, do_crop=True, crop_scale=2.3, crop_vy=-0.125, paste_back=True, stitching=True,
                  driving_multiplier=1.0, relative_motion=True, normalize_lip=True, source_max_dim=1280)
    with pytest.raises(EngineError, match="not implemented"):
        Preset(name="gradio", configuration="JoyVASA app.py", **gradio)
    with pytest.raises(EngineError, match="together"):
        Preset(name="half", configuration="-", **{**gradio, "relative_motion": False, "normalize_lip": False,
                                                   "stitching": False})


def test_the_engine_uses_each_preset_for_its_path(engine, human_portrait):
    from avatarstream.engines.joyvasa.options import LIVE_PRESET, OFFLINE_PRESET
    from avatarstream.engines.liveportrait.source import whole_image_source

    assert engine.stream_config.cfg_scale == LIVE_PRESET.cfg_scale == 2.8
    assert engine.offline_cfg_scale == OFFLINE_PRESET.cfg_scale == 2.0
    portrait = load_portrait(human_portrait)
    offline = engine.prepare_portrait(portrait, 512, OFFLINE_PRESET)
    # inference.py's default flag_do_crop=False: the whole (framed) picture, resized to 256, no stitching
    assert not offline.paste and offline.stitch is None and offline.multiplier == pytest.approx(1.10)
    np.testing.assert_array_equal(offline.source.network_input, whole_image_source(offline.source.image).network_input)
    frame = offline.finish(offline.source.crop, 512)
    np.testing.assert_array_equal(frame, offline.source.crop)  # the render is the frame
    live = engine.prepare_portrait(portrait, 512, LIVE_PRESET)
    assert live.paste and live.stitch is not None and live.multiplier == pytest.approx(1.10)
    engine.crop = True  # the option turns the three crop switches on for the offline preset too
    try:
        forced = engine.prepare_portrait(portrait, 512, OFFLINE_PRESET)
    finally:
        engine.crop = None
    assert forced.paste and forced.stitch is not None
    np.testing.assert_array_equal(forced.source.crop, live.source.crop)  # both presets crop at scale 3.0


def test_source_picture_is_limited_to_1280_px(engine, human_portrait, monkeypatch):
    import avatarstream.engines.joyvasa.avatar_engine as module
    from avatarstream.engines.joyvasa.options import LIVE_PRESET

    seen = []
    real = module.detect_face
    monkeypatch.setattr(module, "detect_face", lambda image, kind: seen.append(image.shape) or real(image, kind))
    big = cv2.resize(load_portrait(human_portrait).image, (2001, 1703), interpolation=cv2.INTER_CUBIC)
    prepared = engine.prepare_portrait(Portrait(big, kind="human"), 512, LIVE_PRESET)
    assert seen == [(1088, 1280, 3)]  # long side 1280, both sides even (reference resize_to_limit)
    assert prepared.source.crop.shape == (512, 512, 3)


IDENTITY_PORTRAITS = ["human", "cat", "wide", "tall", "corner", "low_right"]


def _identity_portraits(human_portrait, cat_portrait):
    """``_portraits`` plus two more face positions / aspect ratios: the face in the top-left corner of a
    landscape picture (the crop runs past two edges), and a face low and right in a 1312 x 1112 picture
    (limited to 1280 px before cropping)."""
    out = _portraits(human_portrait, cat_portrait)
    img = out["human"].image
    out["corner"] = Portrait(cv2.copyMakeBorder(img, 0, 300, 0, 650, cv2.BORDER_REFLECT), kind="human")
    low_right = cv2.copyMakeBorder(img, 500, 100, 700, 100, cv2.BORDER_REFLECT)
    out["low_right"] = Portrait(low_right, kind="human")
    return out


@pytest.mark.parametrize("name", IDENTITY_PORTRAITS)
def test_identity_render_pasted_back_reproduces_the_portrait(engine, human_portrait, cat_portrait, name):
    """A renderer that returns its input crop, pasted back: the output frame is the framed portrait again,
    to within float -> uint8 rounding, everywhere (mask feather, crop edges, where the crop ran past the picture)."""
    from avatarstream.engines.joyvasa.options import LIVE_PRESET
    from avatarstream.engines.liveportrait.source import paste_back

    portrait = _identity_portraits(human_portrait, cat_portrait)[name]
    prepared = engine.prepare_portrait(portrait, 512, LIVE_PRESET)
    assert prepared.paste and prepared.paste_back.keep_detail
    frame = prepared.finish(prepared.source.crop, 512).astype(int)
    framed = prepared.source.image.astype(int)
    assert frame.shape == framed.shape
    assert np.abs(frame - framed).max() <= 1, (name, np.abs(frame - framed).max())
    # the reference formula resamples the crop twice (picture -> crop -> framing): far from the picture
    reference = paste_back(prepared.source.crop, prepared.source).astype(int)
    assert np.abs(reference - framed).max() > 20, name


def test_paste_detail_off_is_the_reference_formula_bit_for_bit(engine, human_portrait, cat_portrait):
    from avatarstream.engines.joyvasa.options import LIVE_PRESET
    from avatarstream.engines.liveportrait.source import paste_back, paste_mask

    engine.paste_detail = False
    try:
        prepared = {name: engine.prepare_portrait(p, 512, LIVE_PRESET)
                    for name, p in _identity_portraits(human_portrait, cat_portrait).items() if name in ("human", "cat")}
    finally:
        engine.paste_detail = True
    rng = np.random.default_rng(3)
    for p in prepared.values():
        assert not p.paste_back.keep_detail
        for generated in (p.source.crop, rng.integers(0, 256, p.source.crop.shape, dtype=np.uint8)):
            np.testing.assert_array_equal(p.finish(generated, 512), paste_back(generated, p.source, paste_mask()))


@pytest.mark.parametrize("name", ["human", "cat"])
def test_a_changed_region_is_pasted_with_the_reference_formula(engine, human_portrait, cat_portrait, name):
    """A render that differs from the source crop in a mouth patch: there the output is the reference formula
    bit for bit (none of the still source's detail is added: no ghost edges); elsewhere the picture itself."""
    from avatarstream.engines.joyvasa.options import LIVE_PRESET
    from avatarstream.engines.liveportrait.source import paste_back, paste_mask

    prepared = engine.prepare_portrait(_portraits(human_portrait, cat_portrait)[name], 512, LIVE_PRESET)
    source = prepared.source
    generated = source.crop.copy()
    patch = (slice(330, 420), slice(190, 330))  # around the mouth (the crop puts it below the centre)
    generated[patch] = (generated[patch].astype(np.int16) + 128) % 256  # every channel 128 levels away
    frame = prepared.finish(generated, 512).astype(int)
    reference = paste_back(generated, source, paste_mask()).astype(int)
    h, w = source.image.shape[:2]
    unchanged = np.ones(source.crop.shape[:2], np.float32)
    unchanged[patch] = 0
    # the agreement weight as the paste warps it: 0 where every bilinear neighbour is in the patch, 1 where none is
    seen = cv2.warpAffine(unchanged, source.crop_to_image, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    inside, outside = seen == 0, seen == 1
    assert inside.sum() > 2000 and outside.mean() > 0.8  # the patch covers 13 % of the cat's framing at scale 3.0
    np.testing.assert_array_equal(frame[inside], reference[inside])
    assert np.abs(frame[inside] - source.image[inside]).mean() > 30  # the patch does show
    assert np.abs(frame[outside] - source.image[outside]).max() <= 1
    # and the region's pixels go to 0 weight a few grey levels from the source already
    small = source.crop.copy()
    small[patch] = np.clip(small[patch].astype(int) + 4, 0, 255).astype(np.uint8)
    changed = np.abs(small.astype(int) - source.crop).max(-1) >= 4
    agreement = prepared.paste_back.agreement(small)
    assert changed[patch].mean() > 0.9 and np.all(agreement[changed] == 0)
    assert np.all(agreement[~changed] > 0)


def test_paste_mask_has_the_reference_shape():
    from avatarstream.engines.liveportrait.source import paste_mask, soft_mask

    mask = paste_mask(512)
    assert (mask >= 1).mean() == pytest.approx(481 ** 2 / 512 ** 2)  # 88.3 % at full weight
    row = mask[256]
    ramp = np.nonzero((row > 0) & (row < 1))[0]
    assert ramp[ramp < 256].tolist() == list(range(1, 16)) and row[0] == 0  # 16 px of linear feather
    np.testing.assert_allclose(row[:17], np.arange(17) / 16, atol=1e-6)
    assert mask[5, 5] == pytest.approx(1 - np.hypot(11, 11) / 16, abs=1e-6)  # rounded corners
    old = soft_mask(512)
    assert (old >= 1).mean() < 0.5  # the mask it replaces: full weight on 42.6 % only


def test_stitching_comes_with_paste_back_before_the_multiplier(engine, human_portrait):
    from avatarstream.engines.joyvasa.motion import KeypointDriver, MotionFrame
    from avatarstream.engines.joyvasa.options import LIVE_PRESET
    from avatarstream.engines.joyvasa.avatar_engine import source_motion

    prepared = engine.prepare_portrait(load_portrait(human_portrait), 512, LIVE_PRESET)
    assert prepared.paste and prepared.stitch is not None
    rng = np.random.default_rng(0)
    reference = MotionFrame(index=-2, exp=rng.normal(0, 0.02, (21, 3)), pitch=2, yaw=-3, roll=1,
                            t=[0.01, -0.02, 0.0], scale=1.6)
    frame = MotionFrame(index=0, exp=rng.normal(0, 0.02, (21, 3)), pitch=6, yaw=4, roll=-2, t=[0.03, 0.01, 0.0],
                        scale=1.65)
    driver = prepared.driver(reference, 1.0)
    plain = KeypointDriver(source_motion(prepared.avatar), reference, "human", multiplier=1.0)
    x_s, x_d = plain.x_s, plain(frame)
    # the reference's stitching, written out: delta = S([x_s, x_d]); x_d += delta[:63]; x_d[:, :2] += delta[63:65]
    net = prepared.renderer.networks.stitching
    with torch.no_grad():
        delta = net(torch.from_numpy(np.concatenate([x_s.reshape(-1), x_d.reshape(-1)])[None]).float())[0].numpy()
    stitched = x_d + delta[:63].reshape(21, 3)
    stitched[:, :2] += delta[63:65]
    expected = x_s + (stitched - x_s) * prepared.multiplier  # the multiplier after stitching
    np.testing.assert_allclose(driver(frame), expected, atol=1e-5)
    assert np.abs(delta).max() > 1e-3  # random weights do move the keypoints


def test_without_crop_there_is_no_stitching(engine, human_portrait):
    from avatarstream.engines.joyvasa.options import LIVE_PRESET

    engine.crop = False
    try:
        prepared = engine.prepare_portrait(load_portrait(human_portrait), 512, LIVE_PRESET)
    finally:
        engine.crop = None
    assert not prepared.paste and prepared.stitch is None


def test_render_file_uses_the_offline_generator_exactly(engine, human_portrait, speech_wav, tmp_path, monkeypatch):
    av = pytest.importorskip("av", reason="reading the MP4 needs PyAV")
    from conftest import read_wav

    from avatarstream.engines.joyvasa.offline import generate_offline
    from avatarstream.engines.joyvasa.options import OFFLINE_PRESET

    audio, _ = read_wav(speech_wav)
    audio = audio[8000:8000 + 6 * 640]  # whole frames: the reference would keep one more
    renderer = engine.renderer("human")
    driven = []
    real = type(renderer).render
    monkeypatch.setattr(type(renderer), "render", lambda self, items: driven.extend(k for _, k in items) or real(self, items))
    out = engine.render_file(load_portrait(human_portrait), audio, tmp_path / "o.mp4", progress=False)
    expected = generate_offline(engine.model, audio, template=engine.template, cfg_scale=OFFLINE_PRESET.cfg_scale,
                                seed=engine.seed)
    np.testing.assert_array_equal(engine.last_motion.motion, expected.motion)
    prepared = engine.prepare_portrait(load_portrait(human_portrait), 512, OFFLINE_PRESET)
    driver = prepared.driver(expected.frames(include_preroll=True)[0], 1.0)
    want = [driver(f) for f in expected.frames()[:6]]
    assert len(driven) == 6
    np.testing.assert_array_equal(np.stack(driven), np.stack(want))
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6


def test_render_file_writes_every_declared_size_resized_after_paste_back(engine, human_portrait, speech_wav,
                                                                          tmp_path, monkeypatch):
    """``size`` (CAPABILITIES.sizes, as open_stream) is honoured: the pasted-back 512 frame, resized (INTER_AREA)."""
    from conftest import read_wav

    from avatarstream.engines.base import EngineError
    from avatarstream.engines.joyvasa import avatar_engine
    from avatarstream.engines.joyvasa.options import CAPABILITIES

    audio, _ = read_wav(speech_wav)
    audio = audio[8000:8000 + 3 * 640]
    written = {}

    def capture(path, frames, audio16k, **kw):
        written[path.name] = [f.copy() for f in frames]
        return path

    monkeypatch.setattr(avatar_engine, "write_mp4", capture)
    portrait = load_portrait(human_portrait)
    for size in CAPABILITIES.sizes:
        engine.render_file(portrait, audio, tmp_path / f"{size}.mp4", progress=False, size=size)
    big, small = written["512.mp4"], written["256.mp4"]
    assert len(big) == len(small) == 3
    assert {f.shape for f in big} == {(512, 512, 3)} and {f.shape for f in small} == {(256, 256, 3)}
    for b, s in zip(big, small):
        np.testing.assert_array_equal(s, cv2.resize(b, (256, 256), interpolation=cv2.INTER_AREA))
    with pytest.raises(EngineError, match="256 or 512"):
        engine.render_file(portrait, audio, tmp_path / "x.mp4", progress=False, size=300)


def test_avatar_render_passes_size_to_render_file(engine, human_portrait, speech_wav, tmp_path, monkeypatch):
    av = pytest.importorskip("av", reason="reading the MP4 needs PyAV")
    from conftest import read_wav, write_wav

    from avatarstream.cli import main
    from avatarstream.engines import registry

    audio, rate = read_wav(speech_wav)
    clip = write_wav(tmp_path / "clip.wav", audio[8000:8000 + 2 * 640], rate)
    monkeypatch.setattr(registry, "load_engine", lambda name, **options: engine)  # the small random-weight engine
    out = tmp_path / "256.mp4"
    assert main(["render", "--engine", "joyvasa", "--image", str(human_portrait), "--audio", str(clip),
                 "-o", str(out), "--size", "256", "--no-progress"]) == 0
    with av.open(str(out)) as container:
        assert {(f.width, f.height) for f in container.decode(video=0)} == {(256, 256)}
    assert main(["render", "--engine", "joyvasa", "--image", str(human_portrait), "--audio", str(clip),
                 "-o", str(tmp_path / "300.mp4"), "--size", "300", "--no-progress"]) == 1  # refused, never ignored
    assert not (tmp_path / "300.mp4").exists()

