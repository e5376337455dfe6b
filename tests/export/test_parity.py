"""Every exported graph against eager torch on random weights of the real shapes (onnxruntime CPU).

FP32 graphs must agree within 1e-4 of the output range; the measured errors are printed (``-s``) and
also written by ``avatar export`` to parity.json.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="torch not installed (pip install -e .[neural])")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e .[neural,cpu])")

import torch

from avatarstream.engines.base import SAMPLES_PER_FRAME
from avatarstream.engines.runtimes.stage_registry import get_stage
from avatarstream.engines.runtimes.stage_runtime import OnnxRuntime
from avatarstream.export.parity import FP32_RELATIVE_BOUND, measure_parity, run_eager


def _parity(name: str, exported, source, batch: int, inputs=None):
    spec = get_stage(name)
    if inputs is None:
        inputs = spec.example_inputs(batch, torch.Generator().manual_seed(7))
    reference = run_eager(spec.build(source), inputs, spec.output_names)
    result = measure_parity(name, reference, OnnxRuntime(exported.graphs[name].path, threads=2),
                            dict(zip(spec.input_names, inputs)))
    print("\n" + result.summary())
    assert result.relative <= FP32_RELATIVE_BOUND, result.to_json()
    assert result.within_bound
    return result


@pytest.mark.parametrize("name,batch", [("stitching", 2), ("stitching_lip", 2), ("stitching_eye", 2),
                                        ("appearance_feature_extractor", 1), ("motion_extractor", 2)])
def test_liveportrait_stage(name, batch, exported, network_source):
    _parity(name, exported, network_source, batch)


def test_warping_spade_fused(exported, network_source):
    """W + G fused, batch 1 (the batch axis is dynamic: see test_small_warping_spade_batch_and_decomposed)."""
    graph = exported.graphs["warping_spade"]
    assert graph.dynamic_axes["feature_3d"] == {0: "batch"}
    result = _parity("warping_spade", exported, network_source, 1)
    assert result.outputs[0].ref_max_abs > 0.01  # the image is not blank


def test_audio_encoder_streaming_chunk_of_other_length(exported, network_source):
    """Exported on a 4 s window; fed a 1.6 s chunk through the dynamic length axis."""
    audio = 0.1 * torch.randn(1, 40 * SAMPLES_PER_FRAME, generator=torch.Generator().manual_seed(3))
    result = _parity("audio_encoder", exported, network_source, 1, inputs=(audio,))
    assert result.batch == 1


def test_dit_denoise_cond_uncond_batched(exported, network_source):
    """One denoising call for two guided windows: 4 rows [uncond, uncond, cond, cond]."""
    result = _parity("dit_denoise", exported, network_source, 2)
    assert result.batch == 4


def test_manifest_records_hashes_and_axes(exported):
    from avatarstream.engines.runtimes.manifest import load_export
    from avatarstream.export.onnx_export import model_hash

    graphs, engines = load_export(exported.out_dir)
    assert set(graphs) == set(exported.graphs)
    assert engines == {}
    for name, graph in graphs.items():
        assert graph.sha256 == model_hash(graph.path) == exported.graphs[name].sha256
        assert graph.opset == 20
