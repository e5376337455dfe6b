"""Long audio -> the right number of frames in a valid MP4 with audio; resumable renders."""

import math

import av
import numpy as np
import pytest

from avatarstream.engines.base import EngineError, Portrait
from avatarstream.engines.loopy.pipeline import LoopyPipeline

STEPS = 2  # DDIM steps (the product default is 25); the chaining logic is what is tested here


def _portrait(size=96):
    rng = np.random.default_rng(0)
    img = (rng.random((size, size + 20, 3)) * 255).astype(np.uint8)
    return img


def _audio(seconds, seed=0):
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _probe(path):
    with av.open(str(path)) as c:
        kinds = sorted(s.type for s in c.streams)
        v = c.streams.video[0]
        size = (v.codec_context.width, v.codec_context.height)
    with av.open(str(path)) as c:
        n_video = sum(1 for _ in c.decode(video=0))
    with av.open(str(path)) as c:
        samples = sum(f.samples for f in c.decode(audio=0))
        rate = c.streams.audio[0].rate
    return kinds, size, n_video, samples / rate


def test_long_audio_renders_every_frame_with_audio(tiny_weights, tmp_path):
    pipe = LoopyPipeline(tiny_weights, "cpu")
    audio = _audio(2.13)  # 54 frames: 4 full clips + a partial one
    seen = []
    result = pipe.render(_portrait(), audio, tmp_path / "out.mp4", num_steps=STEPS, progress=lambda d, t: seen.append((d, t)))
    n = math.ceil(audio.size / 640)
    assert result.num_frames == n == 54 and result.clips_total == 5 and result.clips_rendered == 5
    assert seen[-1] == (n, n) and [d for d, _ in seen] == [12, 24, 36, 48, 54]
    kinds, size, n_video, audio_s = _probe(tmp_path / "out.mp4")
    assert kinds == ["audio", "video"] and size == (64, 64)
    assert n_video == n
    assert abs(audio_s - audio.size / 16000) < 0.1
    assert not (tmp_path / "out.mp4.loopy-work").exists()  # work dir removed after success


def test_interrupted_render_resumes_finished_clips(tiny_weights, tmp_path):
    pipe = LoopyPipeline(tiny_weights, "cpu")
    audio = _audio(1.3)  # 33 frames: 3 clips
    work = tmp_path / "work"

    class Stop(Exception):
        pass

    def stop_after_first_clip(done, total):
        if done >= 12:
            raise Stop

    with pytest.raises(Stop):
        pipe.render(_portrait(), audio, tmp_path / "a.mp4", work_dir=work, num_steps=STEPS,
                    progress=stop_after_first_clip)
    assert sorted(p.name for p in work.glob("clip_*.npz")) == ["clip_00000.npz"]
    assert not (tmp_path / "a.mp4").exists()
    resumed = pipe.render(_portrait(), audio, tmp_path / "a.mp4", work_dir=work, num_steps=STEPS, progress=False,
                          keep_work_dir=True)
    assert (resumed.clips_resumed, resumed.clips_rendered, resumed.frames_rendered) == (1, 2, 21)
    # a second run over the finished work dir renders nothing
    again = pipe.render(_portrait(), audio, tmp_path / "b.mp4", work_dir=work, num_steps=STEPS, progress=False,
                        keep_work_dir=True)
    assert (again.clips_resumed, again.clips_rendered) == (3, 0)
    # resuming gives the same clips as an uninterrupted render (per-clip seeds)
    fresh = tmp_path / "fresh"
    pipe.render(_portrait(), audio, tmp_path / "c.mp4", work_dir=fresh, num_steps=STEPS, progress=False,
                keep_work_dir=True)
    for c in range(3):
        with np.load(work / f"clip_{c:05d}.npz") as a, np.load(fresh / f"clip_{c:05d}.npz") as b:
            np.testing.assert_allclose(a["latents"], b["latents"], atol=1e-5)
    # a work dir from a different render is refused
    with pytest.raises(EngineError, match="different render"):
        pipe.render(_portrait(), _audio(1.3) * 0.5, tmp_path / "d.mp4", work_dir=work, num_steps=STEPS, progress=False)


def test_engine_renders_files_and_refuses_streaming(tiny_weights_dir, tmp_path):
    from avatarstream.engines.registry import load_engine

    engine = load_engine("loopy", weights=str(tiny_weights_dir), device="cpu", steps=STEPS)
    with pytest.raises(EngineError, match="offline-only"):
        engine.open_stream(Portrait(_portrait()))
    out = engine.render_file(Portrait(_portrait()), _audio(0.3), tmp_path / "e.mp4", progress=False)
    kinds, size, n_video, _ = _probe(out)
    assert kinds == ["audio", "video"] and n_video == 8
    with pytest.raises(EngineError, match="empty"):
        engine.render_file(Portrait(_portrait()), np.zeros(0, np.float32), tmp_path / "f.mp4", progress=False)
    with pytest.raises(EngineError, match="--weights"):
        load_engine("loopy")
    with pytest.raises(EngineError, match="incomplete|not found"):
        load_engine("loopy", weights=str(tmp_path))


def test_avatar_render_cli_with_loopy(tiny_weights_dir, human_portrait, tmp_path):
    import wave

    from avatarstream.cli import main

    wav = tmp_path / "a.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((_audio(0.44) * 32767).astype(np.int16).tobytes())  # 11 frames: one clip
    out = tmp_path / "cli.mp4"
    assert main(["render", "--engine", "loopy", "--weights", str(tiny_weights_dir), "--device", "cpu",
                 "--image", str(human_portrait), "--audio", str(wav), "-o", str(out), "--no-progress"]) == 0
    kinds, size, n_video, _ = _probe(out)
    assert kinds == ["audio", "video"] and n_video == 11 and size == (64, 64)
