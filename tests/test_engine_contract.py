"""One contract test for every registered engine (``engines.base``): the stream clock, flush, interrupt,
frame format, live controls, options, and capabilities that agree with behaviour.

Neural engines run on small random weights of their own architectures (CPU, seconds); an engine whose
packages are missing is skipped with the missing dependency named.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
import wave
from pathlib import Path

import numpy as np
import pytest

from avatarstream.engines.base import (SAMPLES_PER_FRAME, AvatarFrame, EngineError, EngineStream, MissingWeightsError,
                                       OfflineRenderer)
from avatarstream.engines.registry import engine_capabilities, engine_names, engine_options, load_engine

NEURAL = "pip install 'avatarstream[neural]'"
CHUNKS = (1, 333, 640, 1001, 2999, 77, 1919)  # odd feed() lengths, cycled


def _needs(engine: str, *modules: str) -> None:
    for module in modules:
        pytest.importorskip(module, reason=f"the {engine} engine needs {module} ({NEURAL})")


def _lite(tmp: Path):
    return load_engine("lite", seed=7), {}


def _joyvasa(tmp: Path):
    _needs("joyvasa", "torch", "transformers")
    import torch

    from avatarstream.engines.joyvasa.avatar_engine import MOTION_GENERATOR_FILE, MOTION_TEMPLATE_FILE, AUDIO_CONFIG_DIR
    from avatarstream.engines.joyvasa.checkpoint import ARG_NAMES, SMALL_CONFIG, small_audio_config, small_motion_generator
    from avatarstream.engines.joyvasa.motion import MotionTemplate
    from avatarstream.engines.liveportrait.checkpoint import write_random_checkpoints
    from avatarstream.engines.liveportrait.config import LivePortraitConfig

    # the official layout with narrow networks: LivePortrait "small", the miniature motion generator
    write_random_checkpoints(tmp, seed=5, variants=("human",), config=LivePortraitConfig.small())
    generator = tmp / MOTION_GENERATOR_FILE
    generator.parent.mkdir(parents=True)
    args = argparse.Namespace(**{k: getattr(SMALL_CONFIG, k) for k in ARG_NAMES})
    torch.save({"args": args, "model": small_motion_generator(seed=0).state_dict(), "iter": 0}, generator)
    small_audio_config(SMALL_CONFIG.audio_model).save_pretrained(str(tmp / AUDIO_CONFIG_DIR))
    (tmp / MOTION_TEMPLATE_FILE).parent.mkdir(parents=True)
    MotionTemplate.synthetic().save(tmp / MOTION_TEMPLATE_FILE)
    engine = load_engine("joyvasa", weights=str(tmp), device="cpu", chunk_frames=3, lookahead_ms=40,
                         liveportrait_config=LivePortraitConfig.small())
    return engine, {"weights": str(tmp)}


def _loopy(tmp: Path):
    _needs("loopy", "torch", "diffusers", "transformers")
    from avatarstream.engines.loopy.checkpoint import random_weights, save_weights_dir
    from avatarstream.engines.loopy.config import tiny_config

    save_weights_dir(tmp, random_weights(tiny_config(), seed=0))
    return load_engine("loopy", weights=str(tmp), device="cpu", steps=2), {"weights": str(tmp)}


BUILDERS = {"lite": _lite, "joyvasa": _joyvasa, "loopy": _loopy}  # every registered engine needs one here


@dataclasses.dataclass
class Case:
    name: str
    engine: object
    weights: dict
    caps: object


STREAMING = [n for n in engine_names() if engine_capabilities(n).streams]  # the stream tests run on these
OFFLINE = [n for n in engine_names() if engine_capabilities(n).offline_render]  # the render_file test on these
_BUILT: dict[str, Case] = {}  # one engine per name for the whole module (neural ones take seconds to build)


def _case(name: str, tmp_path_factory) -> Case:
    assert name in BUILDERS, f"engine {name!r} is registered but has no contract-test builder"
    if name not in _BUILT:
        engine, weights = BUILDERS[name](tmp_path_factory.mktemp(f"{name}_weights"))
        _BUILT[name] = Case(name, engine, weights, engine_capabilities(name))
    return _BUILT[name]


@pytest.fixture(scope="module", params=engine_names())
def case(request, tmp_path_factory) -> Case:
    return _case(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=STREAMING)
def stream_case(request, tmp_path_factory) -> Case:
    return _case(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=OFFLINE)
def offline_case(request, tmp_path_factory) -> Case:
    return _case(request.param, tmp_path_factory)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small neural models run fastest single-threaded, and the test machine is shared."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def speech(speech_wav) -> np.ndarray:
    with wave.open(str(speech_wav)) as w:
        assert w.getframerate() == 16000
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, w.getnchannels())[:, 0]
    return pcm.astype(np.float32)[8000:] / 32768.0  # from the first word on


@pytest.fixture(scope="module")
def portrait(human_portrait):
    from avatarstream.engines.portraits import load_portrait

    return load_portrait(human_portrait)


def _size(caps) -> int:
    return min(caps.sizes, key=lambda s: abs(s - 256))  # the cheapest supported size near 256


def _seconds(case: Case) -> float:
    return 2.0 if case.name == "lite" else 0.4  # neural engines on CPU: fewer frames


def _feed_in_odd_chunks(stream, audio: np.ndarray, start_index: int) -> list[AvatarFrame]:
    frames: list[AvatarFrame] = []
    pos, i = 0, 0
    while pos < audio.size:
        n = CHUNKS[i % len(CHUNKS)]
        frames += stream.feed(audio[pos:pos + n])
        # after every call: each index exactly once, in order, from the start
        assert [f.index for f in frames] == list(range(start_index, start_index + len(frames)))
        pos, i = pos + n, i + 1
    return frames


def _check_frame(f: AvatarFrame, size: int) -> None:
    assert isinstance(f.image, np.ndarray) and f.image.shape == (size, size, 3) and f.image.dtype == np.uint8
    assert isinstance(f.speaking, (bool, np.bool_)) and 0.0 <= f.mouth_open <= 1.0


# -- declarations (no engine instance needed) ------------------------------------------------------------


@pytest.mark.parametrize("name", engine_names())
def test_options_and_capabilities_are_declared(name):
    caps = engine_capabilities(name)
    options = engine_options(name)
    assert caps.name == name
    defaults = options()  # every option has a default
    names = options.option_names()
    assert names == [f.name for f in dataclasses.fields(defaults)]
    with pytest.raises(EngineError) as err:
        load_engine(name, no_such_option=1)
    assert "no_such_option" in str(err.value) and all(n in str(err.value) for n in names)
    hints = typing.get_type_hints(options)
    for field in names:
        if hints[field] is not typing.Any:  # a value no declared type accepts
            with pytest.raises(EngineError, match=field):
                load_engine(name, **{field: object()})
    assert ("backend" in names and "engines_dir" in names) == caps.exported_stages
    assert ("weights" in names) == caps.needs_weights
    assert caps.streams == bool(caps.sizes) and (caps.default_size in caps.sizes or not caps.streams)
    assert caps.streams or caps.offline_render  # an engine that does neither is of no use


# -- behaviour --------------------------------------------------------------------------------------------


def test_capabilities_match_the_engine(case, portrait):
    caps, engine = case.caps, case.engine
    assert engine.name == case.name
    assert isinstance(engine, OfflineRenderer) == caps.offline_render
    if caps.needs_weights:
        with pytest.raises(MissingWeightsError):
            load_engine(case.name)
    if not caps.streams:
        with pytest.raises(EngineError):
            engine.open_stream(portrait)
        return
    for bad in (32, 257, 384, 4096, "256", 256.5):
        if bad not in caps.sizes or not isinstance(bad, int):
            with pytest.raises(EngineError):
                engine.open_stream(portrait, size=bad)
    stream = engine.open_stream(portrait, size=_size(caps))
    assert isinstance(stream, EngineStream) and stream.size == _size(caps)
    assert isinstance(stream.lookahead_frames, int) and stream.lookahead_frames >= 0
    stream.close()


def test_stream_clock_flush_and_frames(stream_case, portrait, speech):
    case = stream_case
    size = _size(case.caps)
    audio = speech[:int(_seconds(case) * 16000) + 123]  # not a whole number of frames
    stream = case.engine.open_stream(portrait, size=size)
    frames = _feed_in_odd_chunks(stream, audio, 0)
    frames += stream.flush()
    assert [f.index for f in frames] == list(range(math.ceil(audio.size / SAMPLES_PER_FRAME)))
    for f in frames:
        _check_frame(f, size)
    assert any(f.speaking for f in frames)
    assert stream.flush() == []  # nothing left
    stream.close()


def test_interrupt_keeps_the_clock_going(stream_case, portrait, speech):
    case = stream_case
    size = _size(case.caps)
    stream = case.engine.open_stream(portrait, size=size)
    before = _feed_in_odd_chunks(stream, speech[:int(_seconds(case) * 16000)], 0)
    assert before, "a stream fed this much audio emits frames before flush"
    last = before[-1].index
    stream.interrupt()
    stream.interrupt()  # twice is harmless
    rest = np.zeros(4 * SAMPLES_PER_FRAME + 17, np.float32)
    after = _feed_in_odd_chunks(stream, rest, last + 1) + stream.flush()
    # the clock continues from the last emitted frame, and flush covers the audio fed since the interrupt
    assert [f.index for f in after] == list(range(last + 1, last + 1 + math.ceil(rest.size / SAMPLES_PER_FRAME)))
    for f in after:
        _check_frame(f, size)
    assert not any(f.speaking for f in after)
    stream.close()


def test_flush_after_whole_frames_adds_none(stream_case, portrait, speech):
    case = stream_case
    stream = case.engine.open_stream(portrait, size=_size(case.caps))
    frames = stream.feed(speech[:3 * SAMPLES_PER_FRAME]) + stream.flush()
    stream.close()
    assert [f.index for f in frames] == [0, 1, 2]


def test_set_controls_accepts_supported_and_explains_the_rest(stream_case, portrait):
    case = stream_case
    controls = case.caps.controls
    assert controls, "a streaming engine declares its live controls"
    stream = case.engine.open_stream(portrait, size=_size(case.caps))
    for name, (lo, hi) in controls.items():
        assert stream.set_controls({name: lo}) == {} and stream.set_controls({name: hi}) == {}
        assert stream.set_controls({name: (lo + hi) / 2}) == {}
        bad = stream.set_controls({name: hi + 1, "no_such_control": 1.0})
        assert set(bad) == {name, "no_such_control"}
        assert "not supported" in bad["no_such_control"] and name in bad["no_such_control"]
        for value in (lo - 1, float("nan"), "lots", None):
            reason = stream.set_controls({name: value}).get(name)
            assert isinstance(reason, str) and reason, (name, value)
    stream.close()
    name, (lo, hi) = next(iter(controls.items()))
    with pytest.raises(EngineError, match=name):
        case.engine.open_stream(portrait, size=_size(case.caps), controls={name: hi + 1})
    case.engine.open_stream(portrait, size=_size(case.caps), controls={name: lo}).close()


def test_offline_render_writes_one_frame_per_40ms(offline_case, portrait, speech, tmp_path):
    case = offline_case
    av = pytest.importorskip("av", reason="reading the MP4 needs PyAV")
    audio = speech[:int(0.3 * 16000) + 123]
    out = case.engine.render_file(portrait, audio, tmp_path / "out.mp4", progress=False)
    with av.open(str(out)) as container:
        images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(images) == math.ceil(audio.size / SAMPLES_PER_FRAME)
    size = case.engine.output_size
    assert all(im.shape == (size, size, 3) and im.dtype == np.uint8 for im in images)
