"""End-to-end learning check: the tiny Loopy config trained for a few hundred steps on a small
synthetic talking-portrait set (the lite engine animating the bundled portrait to espeak-ng
speech) lowers its loss; a rendered clip's mouth region is measured against its own audio and
against shuffled audio (reported; only the loss drop is asserted)."""

import shutil
import subprocess
from importlib import resources

import numpy as np
import pytest
import torch

SIZE = 64
SENTENCES = ("Hello there, how are you doing today? I am fine.",
             "Bright blue balloons float over the open market square.")


def _speech(text: str, path) -> np.ndarray:
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), text], check=True, capture_output=True)
    rate, data = wavfile.read(str(path))
    audio = data.astype(np.float32) / 32768.0
    return resample_poly(audio, 16000, rate).astype(np.float32) if rate != 16000 else audio


def _lite_clip(engine, portrait, audio):
    """Frames of the lite engine speaking ``audio`` and the mouth box (x0, y0, x1, y1) in pixels."""
    stream = engine.open_stream(portrait, size=SIZE)
    frames = [f.image for f in stream.feed(audio)] + [f.image for f in stream.flush()]
    mouth = stream.face.points[48:68]
    (x0, y0), (x1, y1) = mouth.min(0), mouth.max(0)
    pad = 0.25 * (x1 - x0)
    box = tuple(int(round(v)) for v in (x0 - pad, y0 - pad, x1 + pad, y1 + pad))
    return np.stack(frames), box


def _mouth_signal(frames, box):
    x0, y0, x1, y1 = box
    return frames[:, y0:y1, x0:x1].astype(np.float64).mean(axis=(1, 2, 3))


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-12))


@pytest.mark.slow
def test_tiny_loopy_learns_from_a_synthetic_talking_portrait_set(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from avatarstream.engines.base import Portrait
    from avatarstream.engines.lite.engine import LiteEngine
    from avatarstream.engines.loopy.checkpoint import random_weights
    from avatarstream.engines.loopy.config import tiny_config
    from avatarstream.engines.loopy.dataset import LoopyVideoDataset
    from avatarstream.engines.media_files import write_mp4
    from avatarstream.engines.loopy.pipeline import LoopyPipeline

    torch.manual_seed(0)
    import cv2

    path = resources.files("avatarstream.engines.lite") / "portraits" / "astronaut.jpg"
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    portrait = Portrait(image)
    engine = LiteEngine(seed=0)
    data = tmp_path / "data"
    data.mkdir()
    clips = []
    for i, text in enumerate(SENTENCES):
        audio = _speech(text, tmp_path / f"speech{i}.wav")
        frames, box = _lite_clip(engine, portrait, audio)
        write_mp4(data / f"talk{i}.mp4", list(frames), audio[: len(frames) * 640])
        clips.append((frames, audio, box))

    weights = random_weights(tiny_config(), seed=0)
    dataset = LoopyVideoDataset(data, weights.config.resolution)
    from avatarstream.engines.loopy.train import LoopyTrainer

    losses = {}
    for stage, steps in ((1, 150), (2, 150)):
        trainer = LoopyTrainer(weights, dataset, stage, lr=1e-3, seed=stage)
        losses[stage] = [trainer.step() for _ in range(steps)]
    first = {s: float(np.mean(v[:20])) for s, v in losses.items()}
    last = {s: float(np.mean(v[-20:])) for s, v in losses.items()}

    # render the first sentence with its own audio and with its audio shuffled in 0.2 s blocks
    frames, audio, box = clips[0]
    pipe = LoopyPipeline(weights, "cpu")
    n = len(frames) * 640
    blocks = audio[:n][: n // 3200 * 3200].reshape(-1, 3200)
    shuffled = blocks[np.random.default_rng(0).permutation(len(blocks))].reshape(-1)
    truth = _mouth_signal(frames, box)
    response = {}
    for name, a in (("real", audio[:n]), ("shuffled", shuffled)):
        pipe.render(image=frames[0], audio=a, out_path=tmp_path / f"{name}.mp4", num_steps=8, progress=False,
                    keep_work_dir=True)
        rendered = np.concatenate([np.load(p)["frames"] for p in sorted((tmp_path / f"{name}.mp4.loopy-work").glob("clip_*.npz"))])
        k = min(len(rendered), len(truth))
        response[name] = _corr(_mouth_signal(rendered[:k], box), truth[:k])
    print(f"\nloss stage 1: {first[1]:.4f} -> {last[1]:.4f}; stage 2: {first[2]:.4f} -> {last[2]:.4f}; "
          f"mouth-region correlation with the lite clip's mouth: real audio {response['real']:.3f}, "
          f"shuffled audio {response['shuffled']:.3f}")
    assert all(np.isfinite(v).all() for v in losses.values())
    assert last[1] < 0.7 * first[1], losses[1]
    assert last[2] < first[1]
