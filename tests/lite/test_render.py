"""``avatar render`` end to end: real espeak-ng speech, real landmark models, real H.264/AAC codecs.

The mouth is measured on the *decoded MP4 frames* with ``engines.face`` (landmarks re-detected).
"""

from __future__ import annotations

import av
import numpy as np
import pytest

from avatarstream.engines.face import detect_face, landmarks_in_box, mouth_opening
from avatarstream.cli import main


def decode(path) -> tuple[list[np.ndarray], float]:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        audio = c.streams.audio[0]
        audio_s = float(audio.duration * audio.time_base) if audio.duration else 0.0
    return frames, audio_s


@pytest.fixture(scope="module")
def human_mp4(tmp_path_factory, speech_wav):
    out = tmp_path_factory.mktemp("render") / "human.mp4"
    assert main(["render", "--image", "human", "--audio", str(speech_wav), "-o", str(out), "--size", "384"]) == 0
    return out


def test_frame_count_and_streams(human_mp4, speech_audio):
    frames, audio_s = decode(human_mp4)
    duration = speech_audio.size / 16000
    assert abs(len(frames) - duration * 25) <= 1
    assert frames[0].shape == (384, 384, 3)
    assert abs(audio_s - duration) < 0.1


def test_mouth_moves_with_speech_and_rests_in_silence(human_mp4, speech_audio, signals):
    frames, _ = decode(human_mp4)
    mouth = np.array([mouth_opening(detect_face(f, "human").points) for f in frames])
    env = signals.envelope(speech_audio, len(frames))
    r, lag = signals.lagged_r(mouth, env)
    assert r >= 0.5 and abs(lag) <= 1, (r, lag)
    # silence: at least 3 frames from any sound
    quiet = env < 1e-3
    deep = quiet & np.roll(quiet, 3) & np.roll(quiet, -3)
    deep[:3] = deep[-3:] = False
    loud = env > np.percentile(env, 60)
    rest = np.median(mouth[deep])
    assert deep.sum() >= 10
    assert np.percentile(mouth[deep], 90) < rest + 0.05, "mouth should stay closed-ish in silence"
    assert np.median(mouth[loud]) > rest + 0.12, "mouth should open while speaking"


def test_background_outside_the_face_is_unchanged(human_mp4):
    frames, _ = decode(human_mp4)
    x, y, w, h = detect_face(frames[0], "human").box
    cx, cy = x + w / 2, y + h / 2
    yy, xx = np.mgrid[0:384, 0:384]
    outside = (np.abs(xx - cx) > 1.15 * w) | (np.abs(yy - cy) > 1.15 * h)
    assert outside.mean() > 0.15  # the portrait is framed on the face: hair, shoulders, backdrop
    ref = frames[0].astype(np.int16)
    for f in frames[1::5]:
        diff = np.abs(f.astype(np.int16) - ref)[outside]
        assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 12


def test_cat_renders_and_its_mouth_moves(tmp_path, speech_audio, speech_wav, signals):
    short = tmp_path / "short.wav"
    import wave

    with wave.open(str(speech_wav)) as src, wave.open(str(short), "wb") as dst:
        dst.setparams(src.getparams())
        dst.writeframes(src.readframes(int(3.5 * 16000)))
    out = tmp_path / "cat.mp4"
    assert main(["render", "--image", "cat", "--audio", str(short), "-o", str(out), "--size", "256",
                 "--no-progress"]) == 0
    frames, _ = decode(out)
    assert abs(len(frames) - 3.5 * 25) <= 1
    face = detect_face(frames[0], "animal")
    assert face.kind == "animal"
    # the cat layout comes from the box, so measure the mouth as change in the mouth region
    m = face.points[48:68]
    pad = 0.15 * face.eye_distance
    x0, y0 = np.floor(m.min(axis=0) - pad).astype(int)
    x1, y1 = np.ceil(m.max(axis=0) + pad).astype(int) + [0, int(0.3 * face.eye_distance)]
    rest = frames[0][y0:y1, x0:x1].astype(np.float32)  # frame 0 is silent
    change = np.array([np.abs(f[y0:y1, x0:x1].astype(np.float32) - rest).mean() for f in frames])
    env = signals.envelope(speech_audio[:int(3.5 * 16000)], len(frames))
    r, lag = signals.lagged_r(change, env)
    assert change.max() > 8 and r >= 0.5, (change.max(), r, lag)


def test_errors_are_clear(tmp_path, speech_wav, capsys):
    import cv2

    flat = tmp_path / "flat.png"
    cv2.imwrite(str(flat), np.full((200, 200, 3), 128, np.uint8))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF not really a wave file" * 10)
    out = str(tmp_path / "o.mp4")
    cases = [
        (["--image", str(flat), "--audio", str(speech_wav)], "no human or cat face"),
        (["--image", str(junk), "--audio", str(speech_wav)], "could not decode image"),
        (["--image", "human", "--audio", str(junk)], "could not read audio file"),
        (["--image", "human", "--audio", str(tmp_path / "missing.wav")], "audio file not found"),
        (["--image", str(tmp_path / "missing.png"), "--audio", str(speech_wav)], "image file not found"),
    ]
    for args, message in cases:
        assert main(["render", *args, "-o", out, "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("avatar render: error:") and message in err, err
    assert not list(tmp_path.glob("o*.mp4")), "no output (or partial output) is left behind"


def test_cli_module_entry_point(tmp_path, speech_wav):
    import subprocess
    import sys

    out = tmp_path / "cli.mp4"
    proc = subprocess.run([sys.executable, "-m", "avatarstream.cli", "render", "--image", str(tmp_path / "nope.jpg"),
                           "--audio", str(speech_wav), "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "image file not found" in proc.stderr


def test_landmarks_in_box_agrees_with_detection_on_video(human_mp4):
    frames, _ = decode(human_mp4)
    face = detect_face(frames[40], "human")
    tracked = landmarks_in_box(frames[40], face.box)
    assert np.abs(tracked.points - face.points).max() < 1e-6


def test_any_audio_format_is_decoded_to_16k_mono(tmp_path, speech_audio):
    """A 44.1 kHz stereo MP3 (made with PyAV) comes back as 16 kHz mono matching the speech."""
    from fractions import Fraction

    from avatarstream.engines.media_files import load_audio_16k
    from scipy.signal import resample_poly

    clip = speech_audio[:2 * 16000]
    hi = resample_poly(clip, 441, 160).astype(np.float32)
    stereo = np.stack([hi, 0.5 * hi])
    path = tmp_path / "speech.mp3"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libmp3lame", rate=44100)
        s.layout = "stereo"
        for i in range(0, stereo.shape[1], 1152):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, i:i + 1152]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = 44100, i, Fraction(1, 44100)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    audio = load_audio_16k(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - clip.size) < 0.1 * 16000  # codec padding only
    # mono = mean of the channels (0.75 x); align (codec delay) and compare envelopes
    env = lambda a: np.sqrt((a[: a.size // 640 * 640].reshape(-1, 640) ** 2).mean(axis=1))  # noqa: E731
    e_in, e_out = env(0.75 * clip), env(audio)
    n = min(e_in.size, e_out.size)
    assert np.corrcoef(e_in[:n], e_out[:n])[0, 1] > 0.9
