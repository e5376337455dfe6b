"""Python aiortc client <-> real server, real lite engine: speech in, talking portrait back.

Alignment method (the one WebRTC receivers use for lip sync): every received frame carries its
RTP timestamp (aiortc puts it in ``frame.pts``); the client records the RTCP sender reports of
each stream, which map an RTP timestamp to the server's NTP clock. Every received video frame
and audio frame is thus placed on the *sender's* clock, where the mouth opening (landmarks
re-detected on the received frame) is cross-correlated with the envelope of the received
audio. The lag of the best correlation is the A/V offset a synchronising player would show.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from fractions import Fraction

import av

import numpy as np
import pytest
from aiohttp import ClientSession
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtp import RtcpSrPacket

from avatarstream.bench.av_sync import coarse_offset, cross_correlate, rms_envelope, segment_correlation
from avatarstream.realtime.transports.webrtc.aiortc_compat import listen_rtcp, rtp_timestamp_origin

NTP_EPOCH_OFFSET = 2208988800


def _signed32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= (1 << 31) else x


class SenderClock:
    """RTP timestamp -> sender wall time, from the RTCP sender reports of one stream.

    aiortc hands out ``frame.pts = rtp_timestamp - first_rtp_timestamp``; the receiver's (private)
    timestamp mapper keeps that first timestamp (``aiortc_compat``), so pts can be turned
    back into RTP timestamps and then, through the sender reports, into sender time.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.reports: list[tuple[int, float]] = []
        self._receiver = None
        self.fixed_origin: int | None = None  # set where the timestamps are absolute (a browser's stats)

    def hook(self, receiver) -> None:
        self._receiver = receiver

        def listen(packet) -> None:
            if isinstance(packet, RtcpSrPacket):
                ntp = packet.sender_info.ntp_timestamp
                self.reports.append((packet.sender_info.rtp_timestamp,
                                     (ntp >> 32) - NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / 2**32))

        listen_rtcp(receiver, listen)

    @property
    def origin(self) -> int | None:
        """The RTP timestamp received pts count from: the one set (0 for absolute RTP timestamps), else aiortc's
        timestamp mapper's, read through aiortc_compat."""
        if self.fixed_origin is not None:
            return self.fixed_origin
        return None if self._receiver is None else rtp_timestamp_origin(self._receiver)

    @origin.setter
    def origin(self, value: int) -> None:
        self.fixed_origin = value

    def time_of(self, pts: int) -> float:
        """Sender time of ``pts``. Each report maps an RTP timestamp to the time its packet left
        the sender, which is never early but may be late (encoding, a busy event loop); the
        least-delayed report (lower envelope) gives the sender's intended timeline."""
        rtp = self.origin + pts
        return min(t + _signed32(rtp - r) / self.rate for r, t in self.reports)


@contextlib.contextmanager
def serve_subprocess(*args: str):
    """``avatar serve`` in its own process (as deployed: the client below does not share its
    interpreter); yields the base URL once ``/health`` answers."""
    import subprocess
    import sys
    import tempfile
    import urllib.request
    from pathlib import Path

    from avatarstream.bench.serve_process import free_port, stop_process

    port = free_port()
    repo = Path(__file__).resolve().parents[2]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([sys.executable, "-m", "avatarstream.cli", "serve", "--port", str(port), *args],
                            cwd=repo, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    log.seek(0)
                    raise AssertionError(f"avatar serve did not start: {log.read()}") from None
                time.sleep(0.3)
        yield url
    finally:
        stop_process(proc)
        log.close()


class WavMicrophone(AudioStreamTrack):
    """A microphone that speaks a WAV file: 20 ms frames at 48 kHz, paced in real time, then silence."""

    def __init__(self, path) -> None:
        super().__init__()
        speech, rate = read_wav_mono(path)
        n48 = int(round(speech.size * 48000 / rate))
        self._pcm = (np.interp(np.arange(n48) * rate / 48000, np.arange(speech.size), speech) * 32767).astype(np.int16)
        self._k = 0
        self._t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._t0 is None:
            self._t0 = time.monotonic()
            self.t0_wall = time.time()  # when the first sample left (the sender clock is wall time)
        delay = self._t0 + self._k * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = self._pcm[self._k * 960:(self._k + 1) * 960]
        chunk = np.pad(chunk, (0, 960 - chunk.size))
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self._k * 960
        frame.time_base = Fraction(1, 48000)
        self._k += 1
        return frame


async def call_avatar(base_url: str, speech_path, seconds: float):
    """Send ``speech_path`` as the microphone; return received video + audio with sender times."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    mic = WavMicrophone(speech_path)
    pc.addTrack(mic)
    pc.addTransceiver("video", direction="recvonly")
    clocks = {"video": SenderClock(90_000), "audio": SenderClock(48_000)}
    video, audio, tasks = [], [], []

    async def consume(track) -> None:
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            if track.kind == "video":
                video.append((frame.pts, time.monotonic(), frame.to_ndarray(format="rgb24")))
            else:
                pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                audio.append((frame.pts, pcm.astype(np.float32) / 32768.0))

    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    await pc.setLocalDescription(await pc.createOffer())
    for transceiver in pc.getTransceivers():
        clocks[transceiver.kind].hook(transceiver.receiver)
    async with ClientSession() as http:
        resp = await http.post(f"{base_url}/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    await asyncio.sleep(seconds)
    async with ClientSession() as http:
        resp = await http.get(f"{base_url}/stats/{answer['session_id']}")
        clocks["server_stats"] = await resp.json()
    clocks["received_at_stats"] = len(video)  # every one of them was sent before the server's counts were read
    # the client gets what was sent: wait until the frames the server had sent have all arrived (however
    # slowly this machine delivers them; the bound only ends a hang)
    sent = sum(v["video"]["sent"] for v in clocks["server_stats"]["viewers"] if "video" in v)
    for _ in range(300):
        if len(video) >= sent:
            break
        await asyncio.sleep(0.05)
    await pc.close()
    clocks["mic_t0"] = mic.t0_wall
    for t in tasks:
        t.cancel()
    return video, audio, clocks, answer["session_id"]


def read_wav_mono(path) -> tuple[np.ndarray, int]:
    import wave

    with wave.open(str(path)) as w:
        sr, n, ch = w.getframerate(), w.getnframes(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(n), dtype=np.int16).reshape(-1, ch)[:, 0]
    return pcm.astype(np.float32) / 32768.0, sr


def mouth_signal(images) -> np.ndarray:
    """Mouth opening re-detected on each received frame (NaN where no face is found)."""
    from avatarstream.engines.base import NoFaceError
    from avatarstream.engines.face import detect_face, mouth_opening

    out = []
    for img in images:
        try:
            out.append(float(mouth_opening(detect_face(img).points)))
        except NoFaceError:
            out.append(np.nan)
    return np.array(out)


def video_delivery(video, clocks) -> dict:
    """What the server sent against what arrived, on the session clock's 40 ms ticks (pts / 3600), never
    on how fast frames arrived: of the ticks spanned by the frames received before the server's counts
    were read, each missing one must be a tick the server counted as not sent (its sender fell behind
    the clock and skipped it, or waited for a keyframe); every frame it had sent must arrive."""
    viewers = [v for v in clocks["server_stats"]["viewers"] if "video" in v]
    pts = np.array([p for p, _, _ in video], dtype=np.int64)
    steps = np.diff(pts)
    early = pts[:clocks["received_at_stats"]]
    return {
        "pts_on_ticks": bool(np.all(steps > 0) and np.all(steps % 3600 == 0)),
        "ticks_spanned": int((early[-1] - early[0]) // 3600 + 1), "ticks_received": int(early.size),
        "server_sent": sum(v["video"]["sent"] for v in viewers),
        "server_unsent": sum(v["video"]["skipped"] + v["video"].get("keyframe_waits", 0) for v in viewers),
    }


def lip_sync_report(video, audio, clocks, speech: np.ndarray, speech_rate: int) -> dict:
    """fps, audio-vs-speech and mouth-vs-audio correlations, all on the sender's clock."""
    arrivals = np.array([v[1] for v in video])
    fps = (len(video) - 1) / (arrivals[-1] - arrivals[0])  # on this machine's clock: reported, not asserted
    t_audio = np.array([clocks["audio"].time_of(pts) for pts, _ in audio]) + 0.01  # 20 ms frame centres
    rms_audio = np.array([np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) for _, pcm in audio])
    # the received audio is the speech we sent (delayed): align it on the speech file's envelope
    t_speech, env_speech = rms_envelope(speech, speech_rate, hop_s=0.02, window_s=0.02)
    offset = coarse_offset(t_speech, env_speech, t_audio, rms_audio)
    audio_vs_speech_r = segment_correlation(t_speech + offset, env_speech, t_audio, rms_audio)
    t_video = np.array([clocks["video"].time_of(pts) for pts, _, _ in video])
    mouth = mouth_signal([img for _, _, img in video])
    ok = np.isfinite(mouth)
    mouth_vs_audio = cross_correlate(t_video[ok], mouth[ok], t_audio, rms_audio, max_lag=0.2)
    return {
        "video_frames": len(video), "fps": round(float(fps), 2), **video_delivery(video, clocks),
        "face_found": float(ok.mean()),
        "audio_frames": len(audio), "audio_rms_max": float(rms_audio.max()),
        "audio_vs_speech_r": round(audio_vs_speech_r, 3),
        "mouth_vs_audio_r": round(mouth_vs_audio.r, 3), "mouth_vs_audio_lag_ms": round(mouth_vs_audio.lag_s * 1000),
        "mouth_vs_audio_r_at_0": round(mouth_vs_audio.r_at(0.0), 3),
        # speech sample sent -> the same sample sent back with the avatar (both on wall time)
        "speech_to_avatar_latency_ms": round((offset - clocks["mic_t0"]) * 1000),
    }


@pytest.mark.timeout(180)
async def test_aiortc_client_lip_sync(speech_wav):
    speech, rate = read_wav_mono(speech_wav)
    with serve_subprocess("--max-sessions", "2") as url:
        video, audio, clocks, _ = await call_avatar(url, speech_wav, speech.size / rate + 2.0)
    report = lip_sync_report(video, audio, clocks, speech, rate)
    print("aiortc client lip sync:", report, "server:", clocks["server_stats"])
    assert report["pts_on_ticks"], "frames off the session clock's 40 ms ticks"
    assert report["ticks_received"] >= report["ticks_spanned"] - report["server_unsent"], "ticks lost uncounted"
    assert report["video_frames"] >= report["server_sent"] > 0, "frames the server sent did not arrive"
    assert report["face_found"] >= 0.9
    assert report["audio_rms_max"] > 0.02, "no speech came back"
    assert report["audio_vs_speech_r"] >= 0.7, "the returned audio does not follow the speech sent"
    assert report["mouth_vs_audio_r"] >= 0.5
    assert abs(report["mouth_vs_audio_lag_ms"]) <= 40, "lips and sound are more than one frame apart"
