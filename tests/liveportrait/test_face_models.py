"""insightface detector / 106-point decoding, checked with stand-in ONNX graphs of the same I/O."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the face-model tests build ONNX graphs (pip install onnx)")
pytest.importorskip("onnxruntime", reason="the official face models run with onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from avatarstream.engines.liveportrait import face_models as fm  # noqa: E402
from avatarstream.engines.liveportrait.source import crop_transform_106  # noqa: E402


def _constant_model(path, input_name: str, input_shape, outputs: dict[str, np.ndarray]) -> None:
    """A graph whose outputs are constants (the input is declared, as in the real files, and ignored)."""
    nodes = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr.astype(np.float32), name + "_v"))
             for name, arr in outputs.items()]
    graph = helper.make_graph(
        nodes, "stand_in", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape)) for name, arr in outputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture()
def face_dir(tmp_path):
    outs = {}
    for stride in fm.STRIDES:
        n = (fm.DET_SIZE // stride) ** 2 * fm.NUM_ANCHORS
        outs[f"score_{stride}"] = np.zeros((n, 1))
        outs[f"bbox_{stride}"] = np.zeros((n, 4))
        outs[f"kps_{stride}"] = np.zeros((n, 10))
    # one face at the stride-8 anchor of location (x=32, y=20): centre (256, 160) in the 512 input
    idx = (20 * 64 + 32) * fm.NUM_ANCHORS
    outs["score_8"][idx] = 0.9
    outs["bbox_8"][idx] = [5, 6, 5, 6]  # distances in stride units: box 80 x 96 pixels
    outs["kps_8"][idx] = [-2, -1, 2, -1, 0, 1, -1.5, 3, 1.5, 3]
    outs["score_8"][idx + 2] = 0.5  # an overlapping weaker box, removed by NMS
    outs["bbox_8"][idx + 2] = [5, 6, 5, 6]
    ordered = {k: outs[k] for k in [f"score_{s}" for s in fm.STRIDES] + [f"bbox_{s}" for s in fm.STRIDES]
               + [f"kps_{s}" for s in fm.STRIDES]}
    _constant_model(tmp_path / fm.DETECTOR_FILE, "input.1", [1, 3, 512, 512], ordered)
    pred = np.zeros((106, 2))
    pred[:, 0] = np.linspace(-0.4, 0.4, 106)
    pred[:, 1] = np.linspace(-0.3, 0.5, 106)
    pred[[33, 35, 40, 39]] = [-0.3, -0.1]
    pred[[87, 89, 94, 93]] = [0.3, -0.1]
    pred[52], pred[61] = [-0.05, 0.35], [0.05, 0.35]
    _constant_model(tmp_path / fm.LANDMARK_106_FILE, "data", [1, 3, 192, 192], {"fc1": pred.reshape(1, 212)})
    return tmp_path


def test_detector_and_landmarks_decode(face_dir):
    assert fm.FaceModels.available(face_dir)
    models = fm.FaceModels(face_dir)
    assert (models._lmk_mean, models._lmk_std) == (127.5, 128.0)  # no Sub/Mul at the graph start
    image = np.zeros((768, 1024, 3), np.uint8)  # scale 0.5 into the 512 detector input
    dets = models.detect(image)
    assert len(dets) == 1  # NMS removed the duplicate
    np.testing.assert_allclose(dets[0].box, np.array([256 - 40, 160 - 48, 256 + 40, 160 + 48]) * 2)
    np.testing.assert_allclose(dets[0].keypoints[0], np.array([256 - 16, 160 - 8]) * 2)
    assert dets[0].score == pytest.approx(0.9)
    pts = models.face_106(image)
    assert pts.shape == (106, 2)
    # the model's (0, 0) is the crop centre = the box centre; one unit is 96 / s image pixels
    side = 1.5 * 192  # longer box side in image pixels (96 * 2) times 1.5
    np.testing.assert_allclose(pts[[33, 35, 40, 39]].mean(0), [512 - 0.3 * side / 2, 320 - 0.1 * side / 2], atol=1e-3)
    m = crop_transform_106(pts)
    eyes = np.array([pts[[33, 35, 40, 39]].mean(0), pts[[87, 89, 94, 93]].mean(0)]) @ m[:, :2].T + m[:, 2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-3 and abs(eyes[:, 0].mean() - 256) < 1e-3


def test_no_face_and_missing_files(face_dir, tmp_path_factory):
    assert not fm.FaceModels.available(tmp_path_factory.mktemp("empty"))
    boxes, scores, kps = fm.decode_scrfd([np.zeros(((512 // s) ** 2 * 2, 1)) for s in fm.STRIDES]
                                         + [np.zeros(((512 // s) ** 2 * 2, 4)) for s in fm.STRIDES]
                                         + [np.zeros(((512 // s) ** 2 * 2, 10)) for s in fm.STRIDES])
    assert boxes.shape == (0, 4) and scores.shape == (0,) and kps.shape == (0, 5, 2)
