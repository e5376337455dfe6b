"""What the GPU check feeds the product, shipped in the tree (the GPU machine has no espeak-ng and no dlib):

* ``data/speech16k.wav``: 8.6 s of espeak-ng speech (16 kHz mono, "Hello there. My name is Ava, and I am a
  talking portrait. Open your mouth wide and say papa, mama, baba."), streamed to every session at 1x;
* the demo portrait's bytes (``engines/lite/portraits/astronaut.jpg``, 512 x 512 JPEG);
* ``data/astronaut_face.json``: that portrait's 68 face points as ``engines.face.detect_face`` (dlib) finds them,
  with the detector's CPU time measured where it was recorded (machine and load named in the file). The check
  hands the points to the engine as ``Portrait.face`` (no detection on the GPU machine) and states the recorded
  CPU time next to its first-frame figure. Re-record on a machine with dlib::

      python -m avatarstream.bench.gpu.inputs   # rewrites data/astronaut_face.json
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatarstream.engines.base import SAMPLE_RATE, SAMPLES_PER_FRAME, EngineError
from avatarstream.engines.face.landmarks import FaceLandmarks
from avatarstream.engines.portraits import DEMO_PORTRAITS

DATA = Path(__file__).resolve().parent / "data"
SPEECH_WAV = DATA / "speech16k.wav"
FACE_JSON = DATA / "astronaut_face.json"
PORTRAIT = DEMO_PORTRAITS["human"]
ONSET_RMS = 0.02  # a 40 ms frame louder than this starts speech (the engines' own flag is RMS > 0.01)


@dataclass(frozen=True)
class FaceRecord:
    """The shipped face of the demo portrait and what finding it cost on the CPU where it was recorded."""

    face: FaceLandmarks
    portrait_sha256: str
    detect_first_call_ms: float  # the first call, dlib's model loading included
    detect_warm_ms: float  # median of later calls
    recorded_on: str  # machine and load

    def describe(self) -> dict:
        return {"source": str(FACE_JSON.relative_to(DATA.parents[2])), "kind": self.face.kind,
                "detect_first_call_ms": self.detect_first_call_ms, "detect_warm_ms": self.detect_warm_ms,
                "recorded_on": self.recorded_on}


def portrait_bytes() -> bytes:
    return PORTRAIT.read_bytes()


def load_face() -> FaceRecord:
    """The shipped face; refuses a record made from other portrait bytes."""
    d = json.loads(FACE_JSON.read_text())
    data = portrait_bytes()
    if d["portrait_sha256"] != hashlib.sha256(data).hexdigest():
        raise EngineError(f"{FACE_JSON} was recorded for other bytes than {PORTRAIT}; re-record it "
                          "(python -m avatarstream.bench.gpu.inputs on a machine with dlib)")
    f = d["face"]
    face = FaceLandmarks(np.asarray(f["points"], np.float64), tuple(f["box"]), f["kind"], float(f["score"]))
    return FaceRecord(face, d["portrait_sha256"], d["detect_first_call_ms"], d["detect_warm_ms"], d["recorded_on"])


def record_face(runs: int = 7) -> dict:
    """Detect the demo portrait's face with dlib (``engines.face.detect_face``), timing each call."""
    from avatarstream.engines.face import detect_face
    from avatarstream.engines.portraits import portrait_from_bytes

    data = portrait_bytes()
    portrait = portrait_from_bytes(data, PORTRAIT.name)
    times, face = [], None
    for _ in range(runs):
        t = time.perf_counter()
        face = detect_face(portrait.image, portrait.kind)
        times.append((time.perf_counter() - t) * 1000)
    assert face is not None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"portrait": PORTRAIT.name, "portrait_sha256": hashlib.sha256(data).hexdigest(),
            "face": {"points": np.round(face.points, 3).tolist(), "box": list(face.box), "kind": face.kind,
                     "score": face.score},
            "detect_first_call_ms": round(times[0], 1), "detect_warm_ms": round(statistics.median(times[1:]), 1),
            "recorded_on": f"{platform.machine()} CPU, {os.cpu_count()} cores, load average {load:.2f}",
            "command": "python -m avatarstream.bench.gpu.inputs"}


def speech() -> np.ndarray:
    """The shipped speech, float32 in [-1, 1] at 16 kHz."""
    with wave.open(str(SPEECH_WAV)) as w:
        if w.getframerate() != SAMPLE_RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise EngineError(f"{SPEECH_WAV} must be 16 kHz mono 16-bit")
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    return pcm.astype(np.float32) / 32768.0


def frame_rms(audio: np.ndarray) -> np.ndarray:
    n = audio.size // SAMPLES_PER_FRAME
    return np.sqrt((audio[:n * SAMPLES_PER_FRAME].reshape(n, SAMPLES_PER_FRAME).astype(np.float64) ** 2).mean(1))


def speech_burst(audio: np.ndarray, seconds: float = 0.6) -> np.ndarray:
    """``seconds`` of speech starting at the first 40 ms frame louder than ``ONSET_RMS`` (its first sample is the
    onset: the frame that carries it is the first the engine flags as speech)."""
    loud = np.flatnonzero(frame_rms(audio) > ONSET_RMS)
    if loud.size == 0:
        raise EngineError("the speech has no frame above the onset level")
    start = int(loud[0]) * SAMPLES_PER_FRAME
    return np.ascontiguousarray(audio[start:start + int(seconds * SAMPLE_RATE)])


if __name__ == "__main__":
    record = record_face()
    FACE_JSON.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {FACE_JSON}: {record['face']['kind']} face, dlib {record['detect_first_call_ms']} ms first call, "
          f"{record['detect_warm_ms']} ms warm, on {record['recorded_on']}")
