"""The official face models, when present: insightface ``buffalo_l`` detector and 106-point landmarks (ONNX).

LivePortrait crops a source image from these (ARCHITECTURE.md 1.5). They run with onnxruntime on
CPU and are optional: without the files the engine uses ``engines.face`` (dlib / cat cascades).

* ``det_10g.onnx`` (SCRFD): the image is resized keeping its aspect ratio into 512 x 512, placed
  top-left on a black canvas, normalised as (x - 127.5) / 128 (RGB). Strides 8/16/32, 2 anchors per
  location; boxes are distances from the anchor centre in stride units; threshold 0.15, NMS 0.4.
* ``2d106det.onnx``: a 192 x 192 crop around the box (scale 192 / (1.5 * longer side), no
  rotation); output in [-1, 1] -> (p + 1) * 96 -> back to the image. Its input normalisation is
  chosen, like insightface does, by looking for Sub/Mul nodes at the start of the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DETECTOR_FILE = "insightface/models/buffalo_l/det_10g.onnx"
LANDMARK_106_FILE = "insightface/models/buffalo_l/2d106det.onnx"
DET_SIZE = 512
DET_THRESHOLD = 0.15
NMS_THRESHOLD = 0.4
STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
LMK_SIZE = 192


@dataclass(frozen=True)
class Detection:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in image pixels
    score: float
    keypoints: np.ndarray  # (5, 2) eyes, nose, mouth corners


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    order = np.argsort(-scores)
    keep: list[int] = []
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    while order.size:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy1 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy2 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][iou <= threshold]
    return keep


def anchor_centers(height: int, width: int, stride: int) -> np.ndarray:
    """(H/s * W/s * NUM_ANCHORS, 2) anchor centres in input pixels, row-major, anchors repeated."""
    ys, xs = np.mgrid[: height // stride, : width // stride]
    centers = (np.stack([xs, ys], -1).reshape(-1, 2) * stride).astype(np.float32)
    return np.repeat(centers, NUM_ANCHORS, axis=0)


def decode_scrfd(outputs: list[np.ndarray], input_size: int = DET_SIZE, threshold: float = DET_THRESHOLD):
    """SCRFD raw outputs [scores x3, boxes x3, keypoints x3] -> (boxes (N,4), scores (N,), kps (N,5,2))."""
    n = len(STRIDES)
    boxes, scores, kpss = [], [], []
    for i, stride in enumerate(STRIDES):
        s = outputs[i].reshape(-1)
        b = outputs[i + n].reshape(-1, 4) * stride
        k = outputs[i + 2 * n].reshape(-1, 10) * stride
        centers = anchor_centers(input_size, input_size, stride)
        keep = np.where(s >= threshold)[0]
        c = centers[keep]
        boxes.append(np.stack([c[:, 0] - b[keep, 0], c[:, 1] - b[keep, 1], c[:, 0] + b[keep, 2], c[:, 1] + b[keep, 3]], -1))
        kpss.append((k[keep].reshape(-1, 5, 2) + c[:, None, :]))
        scores.append(s[keep])
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(kpss)


class FaceModels:
    """insightface detector + 106-point landmarks from a weights directory."""

    def __init__(self, root: str | Path):
        root = Path(root)
        self.detector = _session(root / DETECTOR_FILE)
        self.landmarks = _session(root / LANDMARK_106_FILE)
        self._lmk_mean, self._lmk_std = self._landmark_normalisation(root / LANDMARK_106_FILE)

    @staticmethod
    def available(root: str | Path) -> bool:
        root = Path(root)
        return (root / DETECTOR_FILE).is_file() and (root / LANDMARK_106_FILE).is_file()

    @staticmethod
    def _landmark_normalisation(path: Path) -> tuple[float, float]:
        import onnx

        graph = onnx.load(str(path)).graph
        sub = mul = False
        for i, node in enumerate(graph.node[:8]):
            if node.name.startswith(("Sub", "_minus")):
                sub = True
            if node.name.startswith(("Mul", "_mul")):
                mul = True
            if i < 3 and node.name == "bn_data":
                sub = mul = True
        return (0.0, 1.0) if sub and mul else (127.5, 128.0)

    def detect(self, image_rgb: np.ndarray) -> list[Detection]:
        """Faces sorted by box area, largest first."""
        h, w = image_rgb.shape[:2]
        scale = DET_SIZE / max(h, w)
        nh, nw = int(round(h * scale)), int(round(w * scale))
        canvas = np.zeros((DET_SIZE, DET_SIZE, 3), np.float32)
        canvas[:nh, :nw] = cv2.resize(image_rgb, (nw, nh)).astype(np.float32)
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outputs = self.detector.run(None, {self.detector.get_inputs()[0].name: blob})
        boxes, scores, kpss = decode_scrfd(outputs)
        if not len(scores):
            return []
        keep = nms(boxes, scores, NMS_THRESHOLD)
        dets = [Detection(boxes[i] / scale, float(scores[i]), kpss[i] / scale) for i in keep]
        return sorted(dets, key=lambda d: -(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))

    def landmarks_106(self, image_rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(106, 2) landmarks in image pixels for the face in ``box``."""
        x0, y0, x1, y1 = box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        s = LMK_SIZE / (1.5 * max(x1 - x0, y1 - y0))
        m = np.array([[s, 0, LMK_SIZE / 2 - s * cx], [0, s, LMK_SIZE / 2 - s * cy]], np.float64)
        crop = cv2.warpAffine(image_rgb, m, (LMK_SIZE, LMK_SIZE), borderValue=(0, 0, 0)).astype(np.float32)
        blob = ((crop - self._lmk_mean) / self._lmk_std).transpose(2, 0, 1)[None]
        pred = self.landmarks.run(None, {self.landmarks.get_inputs()[0].name: blob})[0].reshape(-1, 2)[:106]
        pts = (pred + 1) * (LMK_SIZE // 2)
        inv = cv2.invertAffineTransform(m)
        return pts @ inv[:, :2].T + inv[:, 2]

    def face_106(self, image_rgb: np.ndarray) -> np.ndarray | None:
        """The largest face's 106 landmarks, or None when the detector finds no face."""
        dets = self.detect(image_rgb)
        return self.landmarks_106(image_rgb, dets[0].box) if dets else None
