"""Exported stages in the renderer and the joyvasa engine: torch vs onnxruntime on LivePortrait's small networks."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'avatarstream[cpu]' or '[gpu]')")

import torch

from avatarstream.engines.base import EngineError


class CountingRuntime:
    """Wraps a ``StageRuntime`` and counts its calls."""

    def __init__(self, runtime) -> None:
        self.runtime, self.calls = runtime, 0

    def run(self, inputs):
        self.calls += 1
        return self.runtime.run(inputs)


def export_warping_spade(networks, avatar, engines_dir):
    """``networks``' warping + SPADE stage as ONNX plus the ``manifest.json`` that ``load_export`` reads."""
    from avatarstream.engines.liveportrait.stages import WarpSpadeStage
    from avatarstream.engines.runtimes.stage_registry import get_stage
    from avatarstream.export.onnx_export import export_onnx

    spec = get_stage("warping_spade")
    stage = WarpSpadeStage(networks.warping_module, networks.spade_generator).eval()
    example = (avatar.feature_3d, avatar.keypoints + 0.02, avatar.keypoints)
    engines_dir.mkdir(parents=True, exist_ok=True)
    graph = export_onnx(stage, example, engines_dir / "warping_spade.onnx", input_names=spec.input_names,
                        output_names=spec.output_names, dynamic_axes=spec.dynamic_axes)
    (engines_dir / "manifest.json").write_text(json.dumps({"stages": {"warping_spade": graph.to_json()}}))


def driving_keypoints(avatar, n: int) -> np.ndarray:
    g = torch.Generator().manual_seed(1)
    return (avatar.keypoints + 0.03 * torch.randn(n, 21, 3, generator=g)).numpy()


def test_renderer_runs_warping_spade_on_onnxruntime(small_networks, source_image256, tmp_path):
    from avatarstream.engines.joyvasa.avatar_engine import open_render_runtimes
    from avatarstream.engines.liveportrait.renderer import Renderer

    reference = Renderer(small_networks)
    avatar = reference.prepare(source_image256)
    export_warping_spade(small_networks, avatar, tmp_path / "engines")
    runtimes = open_render_runtimes({"warping_spade": "onnxruntime"}, tmp_path / "engines", "cpu")
    assert runtimes["warping_spade"].backend == "onnxruntime"
    spy = CountingRuntime(runtimes["warping_spade"])
    exported = Renderer(small_networks, runtimes={"warping_spade": spy})

    kp = driving_keypoints(avatar, 3)
    expected = reference.render_avatar(avatar, kp)
    got = exported.render_avatar(avatar, kp)
    assert spy.calls == 1  # one batch of three frames
    assert got.shape == expected.shape == (3, 512, 512, 3)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 2
    assert "warping_spade" in exported.times.mean_ms() and "warping_module" not in exported.times.mean_ms()


def test_joyvasa_engine_backend_onnxruntime_matches_torch(joyvasa_weights, tmp_path, human_portrait, speech_wav):
    from conftest import read_wav

    from avatarstream.engines.liveportrait.checkpoint import load_networks, write_random_checkpoints
    from avatarstream.engines.liveportrait.config import LivePortraitConfig
    from avatarstream.engines.liveportrait.renderer import Renderer
    from avatarstream.engines.registry import load_engine
    from avatarstream.engines.portraits import load_portrait

    small = LivePortraitConfig.small()
    root = tmp_path / "weights"
    write_random_checkpoints(root, seed=5, variants=("human",), config=small)
    (root / "JoyVASA").symlink_to(joyvasa_weights / "JoyVASA")
    nets = load_networks(root, "human", config=small)
    avatar = Renderer(nets).prepare(np.zeros((256, 256, 3), np.uint8))
    export_warping_spade(nets, avatar, tmp_path / "engines")

    options = dict(weights=str(root), chunk_frames=3, lookahead_ms=40, liveportrait_config=small, device="cpu")
    eager = load_engine("joyvasa", **options)
    onnx = load_engine("joyvasa", backend="warping_spade=onnxruntime", engines_dir=str(tmp_path / "engines"),
                       **options)
    assert set(onnx.runtimes) == {"warping_spade"} and not eager.runtimes
    spy = onnx.runtimes["warping_spade"] = CountingRuntime(onnx.runtimes["warping_spade"])

    audio, _ = read_wav(speech_wav)
    speech = audio[8000:8000 + 3 * 640]
    portrait = load_portrait(human_portrait)
    frames = []
    for engine in (eager, onnx):
        stream = engine.open_stream(portrait, size=256)
        frames.append(stream.feed(speech) + stream.flush())
        stream.close()
    assert spy.calls >= 1
    assert len(frames[0]) == len(frames[1]) >= 3
    for a, b in zip(*frames):
        assert a.index == b.index
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 2


def test_backend_errors_are_clear(tmp_path):
    from avatarstream.engines.joyvasa.avatar_engine import open_render_runtimes
    from avatarstream.engines.registry import load_engine

    with pytest.raises(EngineError, match="--engines-dir"):
        load_engine("joyvasa", weights=str(tmp_path), backend="warping_spade=onnxruntime")
    with pytest.raises(EngineError, match="unknown backend"):
        load_engine("joyvasa", weights=str(tmp_path), backend="warping_spade=openvino")
    with pytest.raises(EngineError, match="not a directory"):
        load_engine("joyvasa", weights=str(tmp_path), backend="onnxruntime", engines_dir=str(tmp_path / "none"))
    with pytest.raises(EngineError, match="manifest.json"):
        open_render_runtimes({"warping_spade": "onnxruntime"}, tmp_path, "cpu")
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {}}))
    with pytest.raises(EngineError, match="no ONNX graph for warping_spade"):
        open_render_runtimes({"warping_spade": "onnxruntime"}, tmp_path, "cpu")


def test_cli_passes_backend_options_only_when_given():
    from avatarstream.cli import render as render_command, serve as serve_command
    from avatarstream.cli.backend_options import backend_options

    for command in (render_command, serve_command):
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        required = ["--image", "x", "--audio", "y", "-o", "z"] if command is render_command else []
        args = parser.parse_args(required + ["--engine", "joyvasa", "--backend", "onnxruntime", "--engines-dir", "E"])
        assert backend_options(args) == {"backend": "onnxruntime", "engines_dir": "E"}
        assert backend_options(parser.parse_args(required + ["--engine", "joyvasa"])) == {}
        assert backend_options(parser.parse_args(required + ["--backend", "torch"])) == {}  # lite, torch: fine
        with pytest.raises(EngineError, match="'lite' engine runs none"):
            backend_options(parser.parse_args(required + ["--backend", "onnxruntime"]))


def test_renderer_runs_the_extractors_on_onnxruntime(small_networks, source_image256, tmp_path):
    from avatarstream.engines.liveportrait.stages import AppearanceStage, MotionStage
    from avatarstream.engines.runtimes.stage_registry import get_stage
    from avatarstream.engines.runtimes.stage_runtime import OnnxRuntime
    from avatarstream.export.onnx_export import export_onnx
    from avatarstream.engines.liveportrait.renderer import Renderer

    img = torch.from_numpy(source_image256).permute(2, 0, 1)[None].float() / 255
    runtimes = {}
    for name, stage in (("appearance_feature_extractor", AppearanceStage(small_networks.appearance_feature_extractor)),
                        ("motion_extractor", MotionStage(small_networks.motion_extractor))):
        spec = get_stage(name)
        graph = export_onnx(stage.eval(), (img,), tmp_path / f"{name}.onnx", input_names=spec.input_names,
                            output_names=spec.output_names, dynamic_axes=spec.dynamic_axes)
        runtimes[name] = CountingRuntime(OnnxRuntime(graph.path, threads=2))
    expected = Renderer(small_networks).prepare(source_image256)
    got = Renderer(small_networks, runtimes=runtimes).prepare(source_image256)
    assert all(r.calls == 1 for r in runtimes.values())
    torch.testing.assert_close(got.feature_3d, expected.feature_3d, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.keypoints, expected.keypoints, rtol=1e-4, atol=1e-4)
    with pytest.raises(EngineError, match="runs no stage"):
        Renderer(small_networks, runtimes={"audio_encoder": runtimes["motion_extractor"]})
