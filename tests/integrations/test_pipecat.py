"""The Pipecat video service in a real running Pipecat pipeline (pipecat-ai from the registry, no
network services): espeak-ng TTS -> AvatarStreamVideoService -> a sink that collects frames.

Measured on what the sink receives: video cadence, the speech samples out against the samples in
(and the waveform itself), the mouth re-detected on the received frames (``engines.face``) against
the speech envelope, interruption, errors, and the session's end on the server.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pipecat", reason="pipecat-ai is not installed: pip install 'avatarstream[pipecat]'")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)", allow_module_level=True)

from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    SpeechOutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.utils.errors import ErrorCategory  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from avatarstream.integrations.espeak_tts import EspeakTTSService  # noqa: E402
from avatarstream.integrations.local_server import LocalAvatarServer  # noqa: E402
from avatarstream.integrations.pipecat import AvatarStreamVideoService, InProcessOutput, WebRTCOutput  # noqa: E402
from avatarstream.bench.viewer_recorder import mouth_openings  # noqa: E402

pytestmark = pytest.mark.timeout(180)
RATE = 24_000
SIZE = 256
SENTENCES = ["Hello there, I am your avatar.", "Every word you hear moves my mouth.",
             "And this third sentence ends the demo."]
WAIT_FOR_PLAYBACK_S = 10.0  # longer than the three sentences: the face idles after them


class Tap(FrameProcessor):
    """Records every frame passing (arrival time, frame) and passes it on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.items: list[tuple[float, Frame]] = []
        self.upstream: list[Frame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.items.append((time.perf_counter(), frame))
        else:
            self.upstream.append(frame)
        await self.push_frame(frame, direction)

    def of(self, kind: type) -> list[tuple[float, Any]]:
        return [(t, f) for t, f in self.items if isinstance(f, kind)]


@dataclass
class Run:
    tts_in: Tap
    sink: Tap
    avatar: AvatarStreamVideoService
    errors: list[ErrorFrame] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def images(self) -> list[tuple[float, OutputImageRawFrame]]:
        return self.sink.of(OutputImageRawFrame)

    def speech(self) -> list[tuple[float, TTSAudioRawFrame]]:
        return self.sink.of(TTSAudioRawFrame)


async def run_pipeline(avatar: AvatarStreamVideoService, script, tts: EspeakTTSService | None = None) -> Run:
    """Run [tts, tap, avatar, sink] until ``script(worker, run)`` has queued its EndFrame."""
    tts = tts or EspeakTTSService()
    run = Run(Tap(), Tap(), avatar)
    worker = PipelineWorker(Pipeline([tts, run.tts_in, avatar, run.sink]),
                            params=PipelineParams(audio_out_sample_rate=RATE), cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_w, _f) -> None:
        started.set()

    @worker.event_handler("on_pipeline_error")
    async def _error(_w, frame: ErrorFrame) -> None:
        run.errors.append(frame)

    async def drive() -> None:
        await asyncio.wait_for(started.wait(), 60)
        await script(worker, run)

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.wait_for(asyncio.gather(runner.run(), drive()), 150)
    return run


async def wait_until(predicate, timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def speech_timeline(run: Run, frames: int) -> np.ndarray:
    """The speech pushed out, placed on the video timeline by its pts (int16 -> float, zeros between)."""
    spf = RATE // 25
    out = np.zeros(frames * spf + RATE, np.float32)
    for _, f in run.speech():
        start = int(round(f.pts * RATE / 1e9))
        a = np.frombuffer(f.audio, "<i2").astype(np.float32) / 32768
        out[start:start + a.size] = a[: max(0, min(a.size, out.size - start))]
    return out


def frame_envelope(signal: np.ndarray, frames: int) -> np.ndarray:
    spf = RATE // 25
    return np.sqrt(np.mean(signal[: frames * spf].reshape(frames, spf).astype(np.float64) ** 2, axis=1))


def best_lag_correlation(x: np.ndarray, y: np.ndarray, max_lag: int = 5) -> tuple[int, float]:
    """(lag, r): y shifted by lag frames correlates best with x (NaNs left out)."""
    best = (0, -1.0)
    for lag in range(-max_lag, max_lag + 1):
        a = x[max(0, lag):len(x) + min(0, lag)]
        b = y[max(0, -lag):len(y) + min(0, -lag)]
        ok = ~(np.isnan(a) | np.isnan(b))
        if ok.sum() > 20:
            r = float(np.corrcoef(a[ok], b[ok])[0, 1])
            if r > best[1]:
                best = (lag, r)
    return best


async def test_three_sentences_come_back_as_lip_synced_video_and_the_same_speech():
    async with LocalAvatarServer(size=SIZE) as server:
        avatar = AvatarStreamVideoService(local_server=server, size=SIZE)

        async def script(worker, run: Run) -> None:
            for text in SENTENCES:
                await worker.queue_frame(TTSSpeakFrame(text))
            await wait_until(lambda: run.avatar.session_id is not None)
            run.marks["session"] = run.avatar.session_id
            run.marks["inprocess"] = float(isinstance(run.avatar.output, InProcessOutput))
            await asyncio.sleep(WAIT_FOR_PLAYBACK_S)
            await worker.queue_frame(TTSSpeakFrame("A last one."))
            await worker.queue_frame(EndFrame())  # the replies already sent play out first

        run = await run_pipeline(avatar, script)
        # EndFrame deleted the session on the server (which is still running)
        assert len(server.registry) == 0 and server.session(run.marks["session"]) is None

    assert not run.errors and run.marks["inprocess"] == 1.0  # no server URL: read in process
    images = run.images()
    pts = np.array([f.pts for _, f in images])
    arrival = np.array([t for t, _ in images])
    assert len(images) > 150 and np.all(np.diff(pts) == 40_000_000)  # every frame, 40 ms apart, no gap
    fps = (len(arrival) - 1) / (arrival[-1] - arrival[0])
    steps = np.diff(arrival)
    print(f"\nvideo: {len(images)} frames at {fps:.2f} fps (arrival), step p50 {np.median(steps) * 1e3:.1f} ms, "
          f"p99 {np.percentile(steps, 99) * 1e3:.1f} ms")
    assert 23.0 < fps < 27.0  # paced on the session clock, not pushed in bursts
    assert all(f.size == (SIZE, SIZE) and f.format == "RGB" and len(f.image) == SIZE * SIZE * 3 for _, f in images)

    # the speech: as many samples out as in, the same waveform, utterance by utterance
    tts_in = [f for _, f in run.tts_in.of(TTSAudioRawFrame)]
    samples_in = sum(f.num_frames for f in tts_in)
    speech = run.speech()
    samples_out = sum(f.num_frames for _, f in speech)
    print(f"speech: {samples_in} samples in, {samples_out} out, {len(speech)} frames at {speech[0][1].sample_rate} Hz")
    assert samples_out == samples_in and all(f.sample_rate == RATE for _, f in speech)
    wave_in = np.concatenate([np.frombuffer(f.audio, "<i2") for f in tts_in]).astype(np.float32)
    wave_out = np.concatenate([np.frombuffer(f.audio, "<i2") for _, f in speech]).astype(np.float32)
    r_wave = float(np.corrcoef(wave_in, wave_out)[0, 1])
    print(f"waveform out vs in: r = {r_wave:.4f}")
    assert r_wave > 0.95  # the samples cut back out of the avatar's audio are the TTS samples

    # the mouth, re-detected on the received frames, follows the speech placed by its pts
    n = len(images)
    frames = [np.frombuffer(f.image, np.uint8).reshape(SIZE, SIZE, 3) for _, f in images]
    mouth = mouth_openings(frames)
    envelope = frame_envelope(speech_timeline(run, n), n)
    lag, r = best_lag_correlation(envelope, mouth)
    speaking = envelope > 0.01
    # silence: frames at least 5 frames (200 ms) away from any speech
    near = np.convolve(speaking.astype(float), np.ones(11), mode="same") > 0
    silent = ~near
    moving = np.nanstd(mouth[speaking]) / max(np.nanstd(mouth[silent]), 1e-9)
    print(f"mouth vs speech envelope: r = {r:.2f} at lag {lag} frame(s); mouth motion (std) in speech / in silence "
          f"= {moving:.1f}x ({speaking.sum()} / {silent.sum()} frames); face found in {np.mean(~np.isnan(mouth)):.0%}")
    assert abs(lag) <= 1 and r >= 0.5
    assert silent.sum() > 25 and moving > 2.0


async def test_an_interruption_drops_the_reply_in_flight_and_the_next_reply_plays():
    long_text = ("This is a long reply that keeps going and going, so that there is plenty of it left "
                 "to interrupt when the user starts talking over the avatar in the middle of it.")
    async with LocalAvatarServer(size=SIZE) as server:
        avatar = AvatarStreamVideoService(local_server=server, size=SIZE)

        async def script(worker, run: Run) -> None:
            await worker.queue_frame(TTSSpeakFrame(long_text))
            await wait_until(lambda: len(run.speech()) > 0)
            await asyncio.sleep(1.0)
            run.marks["interrupt"] = time.perf_counter()
            run.marks["speech_frames_before"] = len(run.speech())
            await worker.queue_frame(InterruptionFrame())
            await asyncio.sleep(1.5)  # the face goes back to idle
            run.marks["next"] = time.perf_counter()
            run.marks["tts_frames_before_next"] = len(run.tts_in.of(TTSAudioRawFrame))
            await worker.queue_frame(TTSSpeakFrame("Sorry, go ahead."))
            await asyncio.sleep(0.5)
            await worker.queue_frame(EndFrame())

        run = await run_pipeline(avatar, script)
    assert not run.errors and avatar.interruptions == 1
    t_int, t_next = run.marks["interrupt"], run.marks["next"]
    speech = run.speech()
    first = [(t, f) for t, f in speech if t < t_next]
    last_of_first = max(t for t, _ in first)
    print(f"\ninterruption: last speech of the interrupted reply {1e3 * (last_of_first - t_int):.0f} ms after "
          f"the InterruptionFrame was queued")
    # nothing of the interrupted reply reaches the sink after the InterruptionFrame (which the avatar passes on
    # once it has dropped the reply): an order of frames, however long this machine took between them
    i_int = next(i for i, (_, f) in enumerate(run.sink.items) if isinstance(f, InterruptionFrame))
    after = [f for t, f in run.sink.items[i_int:] if isinstance(f, TTSAudioRawFrame) and t < t_next]
    assert not after, f"{len(after)} speech frames of the interrupted reply after the interruption"
    # what left of the first reply is a prefix: fewer samples than it had
    tts_first = run.tts_in.of(TTSAudioRawFrame)[:int(run.marks["tts_frames_before_next"])]
    assert sum(f.num_frames for _, f in first) < sum(f.num_frames for _, f in tts_first)

    # the mouth is back to idle before the next reply: re-detected on the frames in between
    images = run.images()
    frames = [np.frombuffer(f.image, np.uint8).reshape(SIZE, SIZE, 3) for _, f in images]
    mouth = mouth_openings(frames)
    t = np.array([t for t, _ in images])
    talking = mouth[(t > t_int - 1.0) & (t < t_int)]
    idle_after = mouth[(t > t_int + 0.4) & (t < t_next)]
    print(f"mouth opening: speaking p90 {np.nanpercentile(talking, 90):.3f}, after the interruption "
          f"max {np.nanmax(idle_after):.3f}")
    assert np.nanmax(idle_after) < np.nanpercentile(talking, 90)

    # the next reply plays in full
    tts_next = run.tts_in.of(TTSAudioRawFrame)[int(run.marks["tts_frames_before_next"]):]
    out_next = [f for t, f in speech if t >= t_next]
    assert sum(f.num_frames for f in out_next) == sum(f.num_frames for _, f in tts_next) > 0


async def test_unreachable_server_gives_an_error_frame_and_the_voice_goes_on():
    avatar = AvatarStreamVideoService(server_url="http://127.0.0.1:9", connect_timeout_s=10)

    async def script(worker, run: Run) -> None:
        await worker.queue_frame(TTSSpeakFrame("Can you hear me?"))
        await wait_until(lambda: len(run.sink.of(TTSAudioRawFrame)) > 0)
        await worker.queue_frame(EndFrame())

    t0 = time.monotonic()
    run = await run_pipeline(avatar, script)
    assert len(run.errors) == 1 and run.errors[0].category == ErrorCategory.CONNECTIVITY
    assert "127.0.0.1:9" in run.errors[0].error and "avatarstream" in run.errors[0].error
    assert not run.images()  # no avatar, but the TTS audio passed through unchanged
    assert sum(f.num_frames for _, f in run.speech()) == sum(f.num_frames for _, f in run.tts_in.of(TTSAudioRawFrame))
    print(f"\nunreachable server: error frame, pipeline ended in {time.monotonic() - t0:.1f} s")


async def test_a_refused_api_key_gives_an_authentication_error_frame():
    async with LocalAvatarServer(size=SIZE, api_key="the-right-key") as server:
        avatar = AvatarStreamVideoService(server_url=server.url, api_key="a-wrong-key")

        async def script(worker, run: Run) -> None:
            await wait_until(lambda: bool(run.errors))
            await worker.queue_frame(EndFrame())

        run = await run_pipeline(avatar, script)
        assert len(server.registry) == 0
    assert len(run.errors) == 1 and run.errors[0].category == ErrorCategory.AUTHENTICATION
    assert "401" in run.errors[0].error


async def test_webrtc_path_receives_video_and_audio_from_a_remote_style_server():
    async with LocalAvatarServer(size=SIZE) as server:
        avatar = AvatarStreamVideoService(server_url=server.url, size=SIZE)

        async def script(worker, run: Run) -> None:
            await worker.queue_frame(TTSSpeakFrame("Hello over WebRTC."))
            await wait_until(lambda: len(run.images()) > 100, timeout=60)
            run.marks["webrtc"] = float(isinstance(run.avatar.output, WebRTCOutput))
            await worker.queue_frame(EndFrame())

        run = await run_pipeline(avatar, script)
        assert len(server.registry) == 0
    assert not run.errors and run.marks["webrtc"] == 1.0  # a server URL: the WHEP path
    images = run.images()
    audio = run.sink.of(SpeechOutputAudioRawFrame)
    assert images[0][1].size == (SIZE, SIZE) and len(audio) > 50
    assert all(f.sample_rate == RATE for _, f in audio)
    loud = max(np.abs(np.frombuffer(f.audio, "<i2")).max() for _, f in audio)
    assert loud > 3000  # the speech came back over the avatar's audio track
