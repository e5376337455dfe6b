"""A Pipecat pipeline that speaks through an avatarstream avatar and writes the result to an MP4.

    pip install 'avatarstream[pipecat]'        # and espeak-ng (apt-get install espeak-ng)
    python examples/pipecat_espeak_to_mp4.py                     # in-process lite server -> avatar.mp4
    python examples/pipecat_espeak_to_mp4.py --server http://127.0.0.1:8080 --out talk.mp4 "Hi!" "Bye!"

Pipeline: ``EspeakTTSService`` (espeak-ng, no cloud key) -> ``AvatarStreamVideoService`` ->
``Mp4Writer``. The writer puts every ``OutputImageRawFrame`` and every speech audio frame at its
``pts`` (the session's timeline), so the file shows what a viewer would see and hear: the lips
and the voice together, silence between the sentences.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    TTSSpeakFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from avatarstream.integrations.espeak_tts import EspeakTTSService
from avatarstream.integrations.pipecat import AvatarStreamVideoService

FPS = 25
SENTENCES = [
    "Hello! I am an avatar, speaking through a Pipecat pipeline.",
    "My voice comes from espeak-ng, and my face from avatarstream.",
    "Everything you see and hear was made on this machine.",
]


class Mp4Writer(FrameProcessor):
    """Sink: encodes the avatar's frames (H.264) and speech (AAC) into ``path`` at their pts."""

    def __init__(self, path: Path, sample_rate: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.sample_rate = sample_rate
        self.frames = 0
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._audio_stream: av.AudioStream | None = None
        self._audio: list[tuple[int, np.ndarray]] = []  # (sample position, int16 samples)
        self._last_index = -1

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame) and frame.pts is not None:
            self._write_image(frame)
        elif isinstance(frame, OutputAudioRawFrame) and frame.pts is not None:
            position = round(frame.pts * frame.sample_rate / 1e9)
            self._audio.append((position, np.frombuffer(frame.audio, "<i2").copy()))
        elif isinstance(frame, EndFrame):
            self.close()
        await self.push_frame(frame, direction)

    def _write_image(self, frame: OutputImageRawFrame) -> None:
        index = round(frame.pts * FPS / 1e9)
        if index <= self._last_index:
            return
        width, height = frame.size
        if self._container is None:
            self._container = av.open(str(self.path), mode="w")
            self._video = self._container.add_stream("libx264", rate=FPS)
            self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
            self._video.options = {"preset": "veryfast", "crf": "23"}
            self._audio_stream = self._container.add_stream("aac", rate=self.sample_rate, layout="mono")
        image = np.frombuffer(frame.image, np.uint8).reshape(height, width, 3)
        video = av.VideoFrame.from_ndarray(image, format="rgb24")
        video.pts, video.time_base = index, Fraction(1, FPS)
        self._container.mux(self._video.encode(video))
        self._last_index = index
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        container, video = self._container, self._video
        self._container = None
        container.mux(video.encode(None))
        duration = (self._last_index + 1) * self.sample_rate // FPS
        track = np.zeros(duration, np.int16)
        for position, samples in self._audio:
            end = min(duration, position + samples.size)
            if end > position >= 0:
                track[position:end] = samples[: end - position]
        audio = self._audio_stream
        step = 1024
        for i in range(0, track.size, step):
            chunk = av.AudioFrame.from_ndarray(track[i:i + step].reshape(1, -1), format="s16", layout="mono")
            chunk.sample_rate, chunk.pts = self.sample_rate, i
            container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))
        container.close()


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lines", nargs="*", help="sentences to speak (default: three demo sentences)")
    p.add_argument("--out", type=Path, default=Path("avatar.mp4"))
    p.add_argument("--server", default=None, help="an avatarstream server URL (default: an in-process lite server)")
    p.add_argument("--api-key", default=None, help="the server's API key, if it has one")
    p.add_argument("--image", default="astronaut", help='built-in portrait id ("astronaut", "cat") or an image file')
    p.add_argument("--size", type=int, default=512, choices=[256, 512])
    p.add_argument("--rate", type=int, default=24000, help="the pipeline's audio output rate (Hz)")
    args = p.parse_args(argv)

    image = Path(args.image) if Path(args.image).is_file() else args.image
    tts = EspeakTTSService()
    avatar = AvatarStreamVideoService(server_url=args.server, api_key=args.api_key, image=image, size=args.size)
    writer = Mp4Writer(args.out, args.rate)
    worker = PipelineWorker(Pipeline([tts, avatar, writer]), params=PipelineParams(audio_out_sample_rate=args.rate),
                            cancel_on_idle_timeout=False)
    errors: list[str] = []

    @worker.event_handler("on_pipeline_started")
    async def on_started(worker: PipelineWorker, _frame: Frame) -> None:
        for line in args.lines or SENTENCES:
            await worker.queue_frame(TTSSpeakFrame(line))
        await worker.queue_frame(EndFrame())  # the avatar lets the sentences play out, then closes its session

    @worker.event_handler("on_pipeline_error")
    async def on_error(worker: PipelineWorker, frame: ErrorFrame) -> None:
        errors.append(frame.error)
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()
    if errors:
        print("failed:", *errors, sep="\n  ", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {writer.frames} frames ({writer.frames / FPS:.1f} s) at {FPS} fps, "
          f"{avatar.speech_samples_out / args.rate:.1f} s of speech")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
