"""Raw talking-head video -> dataset format: 25 fps, face-centred square crop, landmarks, audio."""

import numpy as np
import pytest

from avatarstream.engines.base import EngineError
from avatarstream.engines.loopy.dataset import LoopyVideoDataset, read_audio
from avatarstream.engines.loopy.face_crop import face_square, square_around


def _raw_video(path, portrait_path, seconds=1.2, fps=30):
    import av
    import cv2

    img = cv2.cvtColor(cv2.imread(str(portrait_path)), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    img = img[: h - h % 2, : w - w % 2]
    n = int(seconds * fps)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = img.shape[1], img.shape[0], "yuv420p"
        a = c.add_stream("aac", rate=44100, layout="mono")
        for i in range(n):
            shifted = np.roll(img, int(4 * np.sin(i / 5)), axis=1)
            for p in v.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(shifted), format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        t = np.arange(int(seconds * 44100)) / 44100
        pcm = (0.3 * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16)
        for i in range(0, pcm.size, 4096):
            f = av.AudioFrame.from_ndarray(pcm[None, i: i + 4096], format="s16", layout="mono")
            f.sample_rate = 44100
            f.pts = i
            for p in a.encode(f):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    return n


def test_square_around_stays_inside():
    assert square_around((100, 200), (5, 50), 60) == (0, 20, 60)
    assert square_around((100, 200), (190, 95), 300) == (100, 0, 100)


def test_prepare_raw_video_into_dataset(human_portrait, tmp_path):
    from avatarstream.engines.loopy.prepare_data import prepare_dataset

    raw = tmp_path / "raw"
    raw.mkdir()
    _raw_video(raw / "speaker.mp4", human_portrait)
    (raw / "noface.mp4").write_bytes(b"not a video")
    (clip,) = prepare_dataset(raw, tmp_path / "data", resolution=64, progress=False)
    lm = np.load(clip.with_name("speaker.landmarks.npy"))
    ds = LoopyVideoDataset(tmp_path / "data", 64)
    item = ds[0]
    assert item.frames.shape == (30, 64, 64, 3)  # 1.2 s at 25 fps
    assert lm.shape == (30, 68, 2)
    assert abs(item.audio.size - 1.2 * 16000) < 0.05 * 16000
    assert read_audio(clip.with_suffix(".wav")).size == item.audio.size
    # the face sits in the middle of the crop
    centre = lm[:, 27:36].reshape(-1, 2).mean(0)
    assert np.all(np.abs(centre - 32) < 12), centre
    with pytest.raises(EngineError, match="no videos"):
        prepare_dataset(tmp_path / "data" / "none", tmp_path / "x")
    from avatarstream.cli import main

    assert main(["train", "loopy", "--prepare", str(raw), "--data", str(tmp_path / "d2"), "--config", "tiny",
                 "--prepare-only"]) == 0
    assert (tmp_path / "d2" / "speaker.landmarks.npy").is_file()


def test_face_square_finds_the_portrait_face(human_portrait):
    import cv2

    img = cv2.cvtColor(cv2.imread(str(human_portrait)), cv2.COLOR_BGR2RGB)
    x0, y0, side = face_square(img)
    assert side <= min(img.shape[:2]) and x0 >= 0 and y0 >= 0
    assert face_square(np.full((200, 200, 3), 128, np.uint8)) is None
