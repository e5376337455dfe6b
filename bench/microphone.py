"""``avatar bench --engine microphone``: speech from a microphone track -> the avatar's mouth, per latency preset.

A real server (``create_app``, lite engine, 512 px, 127.0.0.1) per latency preset runs in this process. An
aiortc client joins a session with ``POST /v1/sessions/{id}/offer`` and ``"microphone": true``: its audio
track is a microphone sending espeak-ng speech in real time (20 ms Opus packets, 48 kHz; 2.5 s of silence,
then each utterance followed by 1.2 s of silence), and the same peer connection receives the avatar's video.

* ``speech_to_mouth_ms``: the packet holding an utterance's first loud sample (espeak-ng's leading silence
  skipped) leaves the client -> the first received video frame whose mouth (re-detected with
  ``engines.face``) opens clearly beyond idle motion; ``viewer`` uses that frame's arrival at the client,
  ``sender`` the time the server sent it (RTCP sender reports). The path: aiortc's receive jitter buffer on
  the server, Opus decoding, the playback buffer's hold of the live stream, the wait for a take, the
  lip-sync delay (lookahead + margin), encoding; at the viewer also the network and aiortc's one-frame
  video hold and decoding.

The presets (``classic``: the fixed settings before issue 26; ``adaptive``, the default; ``low``) take turns
in blocks, alternating over rounds, so each meets the machine's changing load; one block runs at a time.
Each preset's row also gives the server's figures: delay in effect, measured input jitter, the standing
queue of live input (median of 10 samples a second), microphone audio dropped, frames missing, late
ticks, video ticks skipped. JSON + ``microphone_latency.png`` (CDF per preset).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import TYPE_CHECKING

import aiohttp
import numpy as np
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from avatarstream.bench.api_latency import (PRESETS, SIZE, alternate_presets, mouth_latencies, plot_cdfs, server_figures,
                                            side_by_side, stats_ms, sum_counters)
from avatarstream.bench.speech import require_espeak, speech_onset
from avatarstream.bench.viewer_recorder import RecordingViewer
from avatarstream.engines.base import SAMPLE_RATE, EngineError
from avatarstream.realtime.client import AvatarClient
from avatarstream.realtime.session.registry import SessionRegistry

if TYPE_CHECKING:  # the run_bench contract of `avatar bench`; the CLI imports this module by name only
    from avatarstream.cli.bench import BenchOptions

MIC_RATE = 48_000
PACKET = 960  # 20 ms at 48 kHz
LEADING_SILENCE_S = 2.5  # idle motion before the first word: the reference for "the mouth moved"
GAP_S = 1.2  # silence after each utterance


def run_bench(opts: BenchOptions) -> dict:
    """Entry point for ``avatar bench --engine microphone``."""
    if opts.device != "cpu":
        raise EngineError("the microphone benchmark runs the lite engine on the CPU; use --device cpu")
    require_espeak("microphone")
    return asyncio.run(_bench(opts))


class SpeakingMicrophone(MediaStreamTrack):
    """An audio track that plays ``signal`` (int16, 48 kHz mono) in real time as 20 ms frames, then
    silence; ``left_at[k]`` is when frame ``k`` left ``recv`` (its sender encodes and sends it at once)."""

    kind = "audio"

    def __init__(self, signal: np.ndarray) -> None:
        super().__init__()
        self.signal = signal
        self.left_at: list[tuple[float, float]] = []  # (monotonic, wall) per frame
        self.finished = asyncio.Event()  # every frame of ``signal`` has left
        self._t0: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        k = len(self.left_at)
        if self._t0 is None:
            self._t0 = time.monotonic()
        await asyncio.sleep(max(0.0, self._t0 + k * PACKET / MIC_RATE - time.monotonic()))
        pcm = np.zeros(PACKET, np.int16)
        chunk = self.signal[k * PACKET:(k + 1) * PACKET]
        pcm[:chunk.size] = chunk
        frame = AudioFrame(format="s16", layout="mono", samples=PACKET)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = MIC_RATE
        frame.pts = k * PACKET
        frame.time_base = fractions.Fraction(1, MIC_RATE)
        self.left_at.append((time.monotonic(), time.time()))
        if (k + 1) * PACKET >= self.signal.size:
            self.finished.set()
        return frame


def microphone_signal(utterances: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """The 48 kHz int16 stream and, per utterance, (sample of its first loud sample, seconds after it)."""
    from scipy.signal import resample_poly

    parts = [np.zeros(int(LEADING_SILENCE_S * MIC_RATE), np.float32)]
    onsets = []
    position = parts[0].size
    for audio in utterances:
        onset = speech_onset(audio)
        up = resample_poly(audio, MIC_RATE // SAMPLE_RATE, 1).astype(np.float32)
        onsets.append((position + int(onset * MIC_RATE), audio.size / SAMPLE_RATE - onset))
        parts += [up, np.zeros(int(GAP_S * MIC_RATE), np.float32)]
        position += up.size + int(GAP_S * MIC_RATE)
    signal = np.concatenate(parts)
    return (np.clip(signal, -1, 1) * 32767).astype(np.int16), onsets


class MicrophoneClient(RecordingViewer):
    """A browser-like client: sends a microphone track and records the avatar it gets back."""

    async def join_speaking(self, http: aiohttp.ClientSession, offer_url: str, token: str,
                            microphone: SpeakingMicrophone) -> None:
        pc = self.pc
        pc.addTrack(microphone)
        pc.addTransceiver("video", direction="recvonly")

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            reader = self._read_video if track.kind == "video" else self._read_audio
            self._tasks.append(asyncio.create_task(reader(track), name=f"mic-client-{track.kind}"))

        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Authorization": f"Bearer {token}"}
        body = {"sdp": pc.localDescription.sdp, "type": "offer", "microphone": True}
        async with http.post(offer_url, json=body, headers=headers) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"offer refused: {resp.status} {answer}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        for transceiver in pc.getTransceivers():
            self._capture_sender_reports(transceiver.receiver, transceiver.kind)


async def _block(http: aiohttp.ClientSession, url: str, registry: SessionRegistry,
                 utterances: list[np.ndarray]) -> tuple[list[float], list[float], dict, dict]:
    """One session of one preset: the client speaks ``utterances``; returns the latencies (viewer,
    sender), the mouth detection's figures and the server's."""
    client = AvatarClient(url, http=http)
    info = await client.create_session(size=SIZE)
    session = registry.get(info.id)
    assert session is not None  # created in this process a moment ago
    signal, onsets = microphone_signal(utterances)
    microphone = SpeakingMicrophone(signal)
    viewer = MicrophoneClient(keep_images=True, max_video_frames=5000, image_size=256)
    queued: list[float] = []
    try:
        await viewer.join_speaking(http, info.offer_url, info.token, microphone)
        await asyncio.wait_for(viewer.first_video.wait(), 30)
        while not microphone.finished.is_set():
            queued.append(session.queued_seconds)
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the last words reach the viewer
        figures = server_figures(session)
        mic = [v.get("mic_dropped_samples", 0) for v in session.viewer_stats()]
        figures.update(standing_queue_ms_p50=round(float(np.median(queued)) * 1000, 1) if queued else None,
                       mic_dropped_ms=round(sum(mic) / SAMPLE_RATE * 1000, 1))
    finally:
        microphone.stop()
        await viewer.close()
        await client.close()
    left = microphone.left_at
    pushes = [(left[p // PACKET][0], left[p // PACKET][1], seconds) for p, seconds in onsets]
    t_idle_end = pushes[0][0] - 0.2
    viewer_s, sender_s, detection = mouth_latencies(viewer.recording, pushes, t_idle_end)
    detection.pop("_series")
    return viewer_s, sender_s, detection, figures


async def _bench(opts: BenchOptions) -> dict:
    mouth: dict[str, tuple[list[float], list[float]]] = {p: ([], []) for p in PRESETS}
    detection: dict[str, list[dict]] = {p: [] for p in PRESETS}
    figures: dict[str, list[dict]] = {p: [] for p in PRESETS}

    async def run_block(http: aiohttp.ClientSession, preset: str, url: str, registry: SessionRegistry,
                        utterances: list[np.ndarray]) -> None:
        viewer_s, sender_s, info, server = await _block(http, url, registry, utterances)
        mouth[preset][0].extend(viewer_s)
        mouth[preset][1].extend(sender_s)
        detection[preset].append(info)
        figures[preset].append(server)

    result = await alternate_presets(opts, run_block)
    for preset in PRESETS:
        server = sum_counters(figures[preset])
        server["standing_queue_ms_p50"] = [f["standing_queue_ms_p50"] for f in figures[preset]]
        server["mic_dropped_ms"] = sum(f["mic_dropped_ms"] for f in figures[preset])
        result["presets"][preset] = {
            "speech_to_mouth_ms": {"viewer": stats_ms(mouth[preset][0]), "sender": stats_ms(mouth[preset][1])},
            "mouth_detection": detection[preset], "server": server,
        }
    result["side_by_side"] = side_by_side(result["presets"], "speech_to_mouth_ms")
    for row in result["side_by_side"]:
        srv = result["presets"][row["preset"]]["server"]
        row.update(input_jitter_ms=srv["input_jitter_ms"], standing_queue_ms_p50=srv["standing_queue_ms_p50"],
                   mic_dropped_ms=srv["mic_dropped_ms"])
    curves = {p: mouth[p] for p in PRESETS}
    result["plot"] = str(plot_cdfs(opts.out_dir, curves, "microphone_latency.png",
                                   "microphone: speech leaving the client -> mouth, by latency preset "
                                   "(lite, 512x512, 127.0.0.1)",
                                   [("speech -> mouth at the viewer", 0), ("speech -> mouth at the sender", 1)]))
    return result
