"""Benchmark: speech in -> first avatar speech out, through the Pipecat service vs the raw agent WebSocket.

    python examples/pipecat_latency_bench.py --utterances 20 --out bench-out   # JSON + plot

One in-process lite server, one run, the paths taking turns utterance by utterance (same load):

* ``pipecat``: a running Pipecat pipeline ``[AvatarStreamVideoService, sink]``; the clock starts
  when the first ``TTSAudioRawFrame`` of a reply is queued into the pipeline and stops when its
  first speech ``TTSAudioRawFrame`` (cut back out of the avatar's audio) reaches the sink;
* ``raw_ws_frame``: ``AvatarClient.push_audio`` on the agent socket of another session, read
  in-process (``SessionReader`` + ``SpeechCutter``, what the service does without Pipecat): the clock
  stops at the first speech sample read;
* ``raw_ws_event``: the same pushes, the clock stopping at the ``playback_started`` event the agent
  receives (what an agent without any media sees).

The floor of all three is the session's lip-sync delay (``delay_frames`` x 40 ms) plus the start
threshold (60 ms queued before an utterance starts) and the wait for the next 40 ms clock tick.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
import wave
from io import BytesIO
from pathlib import Path

import numpy as np
from pipecat.frames.frames import EndFrame, Frame, TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from avatarstream.integrations.espeak_tts import resample_pcm
from avatarstream.integrations.local_server import LocalAvatarServer
from avatarstream.integrations.pipecat import AvatarStreamVideoService
from avatarstream.integrations.session_reader import SessionReader
from avatarstream.integrations.speech_cutter import SpeechCutter
from avatarstream.realtime.client import AvatarClient

RATE = 24000
CHUNK = RATE // 10  # 100 ms TTS frames


def speech(text: str) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    wav = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout
    with wave.open(BytesIO(wav)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return resample_pcm(pcm, w.getframerate(), RATE)


class FirstSpeech(FrameProcessor):
    """Sink: time of the first speech audio frame after each ``arm()``."""

    def __init__(self) -> None:
        super().__init__()
        self.armed: asyncio.Future | None = None

    def arm(self) -> asyncio.Future:
        self.armed = asyncio.get_running_loop().create_future()
        return self.armed

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame) and self.armed is not None and not self.armed.done():
            self.armed.set_result(time.perf_counter())
        await self.push_frame(frame, direction)


def summary(ms: list[float]) -> dict[str, float]:
    a = np.array(ms)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


async def run(utterances: int, out: Path) -> dict:
    clip = speech("Testing the avatar's reaction time.")
    results: dict[str, list[float]] = {"pipecat": [], "raw_ws_frame": [], "raw_ws_event": []}
    async with LocalAvatarServer(size=256) as server:
        avatar = AvatarStreamVideoService(local_server=server, size=256)
        sink = FirstSpeech()
        worker = PipelineWorker(Pipeline([avatar, sink]), params=PipelineParams(audio_out_sample_rate=RATE),
                                cancel_on_idle_timeout=False)
        started = asyncio.Event()

        @worker.event_handler("on_pipeline_started")
        async def _started(_w, _f) -> None:
            started.set()

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        pipeline = asyncio.ensure_future(runner.run())
        await asyncio.wait_for(started.wait(), 60)
        while avatar.session_id is None:
            await asyncio.sleep(0.05)

        client = AvatarClient(server.url)
        info = await client.create_session(size=256)
        await client.connect(sample_rate=RATE)
        event_arrivals: list[float] = []
        client.on("playback_started", lambda ev: event_arrivals.append(time.perf_counter()))  # runs on arrival
        delay_ms = server.session(info.id).delay_frames * 40
        reader = SessionReader(server.session(info.id))
        await reader.open()
        cutter = SpeechCutter(RATE)
        first_read: dict[int, float] = {}

        async def read() -> None:
            while True:
                tick = await reader.next()
                for ev in tick.events:
                    cutter.on_event(ev)
                for piece in cutter.feed(tick.index, tick.audio16k):
                    first_read.setdefault(piece.utterance, time.perf_counter())

        reading = asyncio.ensure_future(read())
        seconds = clip.size / RATE
        try:
            for n in range(1, utterances + 1):
                # through Pipecat
                done = sink.arm()
                t0 = time.perf_counter()
                await worker.queue_frame(TTSStartedFrame())
                for i in range(0, clip.size, CHUNK):
                    await worker.queue_frame(TTSAudioRawFrame(clip[i:i + CHUNK].tobytes(), RATE, 1))
                await worker.queue_frame(TTSStoppedFrame())
                results["pipecat"].append((await asyncio.wait_for(done, 10) - t0) * 1e3)
                await asyncio.sleep(seconds + 0.3)
                # the raw agent socket
                mark = client.mark()
                cutter.expect(n, clip.size, final=True)
                t0 = time.perf_counter()
                await client.push_audio(clip)
                await client.end_utterance()
                await client.wait_for("playback_started", start=mark, timeout=10)
                results["raw_ws_event"].append((event_arrivals[-1] - t0) * 1e3)
                while n not in first_read:
                    await asyncio.sleep(0.005)
                results["raw_ws_frame"].append((first_read[n] - t0) * 1e3)
                await asyncio.sleep(seconds + 0.3)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            await reader.close()
            await client.close()
            await worker.queue_frame(EndFrame())
            await asyncio.wait_for(pipeline, 60)
    report = {
        "what": "speech in -> first avatar speech out (ms), lite engine 256x256, in-process server, one run",
        "lip_sync_delay_ms": delay_ms,
        "utterance_seconds": round(seconds, 2),
        **{k: summary(v) for k, v in results.items()},
        "raw_ms": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipecat_latency.json").write_text(json.dumps(report, indent=2))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.boxplot([results[k] for k in results], tick_labels=list(results))
        ax.set_ylabel("ms")
        ax.set_title("speech in -> first avatar speech out")
        fig.tight_layout()
        fig.savefig(out / "pipecat_latency.png", dpi=100)
    except ImportError:
        pass
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    args = p.parse_args(argv)
    report = asyncio.run(run(args.utterances, args.out))
    for k in ("pipecat", "raw_ws_frame", "raw_ws_event"):
        s = report[k]
        print(f"{k:>13}: p50 {s['p50']:.0f} ms  p90 {s['p90']:.0f} ms  p99 {s['p99']:.0f} ms  (n={s['n']})")
    print(f"wrote {args.out / 'pipecat_latency.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
