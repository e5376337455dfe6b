"""A headless WHEP viewer (aiortc) that records what a viewer receives, for tests and benchmarks.

Each received video frame, audio frame and data-channel event is kept with its arrival time
(``time.monotonic``) and its RTP timestamp. Arrival times are not a fair clock for lip sync:
aiortc's receiver holds audio back by 4 packets and video by one frame. So, like a browser,
the recorder puts both tracks on the *sender's* clock with the RTCP sender reports (each maps
an RTP timestamp of that track to the sender's NTP wall clock): ``video_times()`` and
``audio_signal()`` return times in ``time.time()`` seconds of the sending machine.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtcpSrPacket
from av import AudioFrame, VideoFrame

from avatarstream.realtime.transports.webrtc.aiortc_compat import listen_rtcp, rtp_timestamp_origin
from avatarstream.realtime.transports.webrtc.peer import ice_configuration

VIDEO_RATE = 90_000
NTP_TO_UNIX = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


@dataclass
class ReceivedVideo:
    t: float  # arrival (monotonic seconds)
    pts: int  # 90 kHz
    image: np.ndarray | None  # RGB, kept when the recorder keeps images


@dataclass
class ReceivedAudio:
    t: float
    pts: int  # at ``rate``
    rate: int
    samples: np.ndarray  # float32 mono


@dataclass
class Recording:
    video: list[ReceivedVideo] = field(default_factory=list)
    audio: list[ReceivedAudio] = field(default_factory=list)
    events: list[tuple[float, dict]] = field(default_factory=list)  # (arrival, event) from the data channel
    sender_reports: dict[str, list[tuple[int, int]]] = field(
        default_factory=lambda: {"audio": [], "video": []})  # kind -> [(ntp timestamp, rtp timestamp)]
    rtp_origin: dict[str, int] = field(default_factory=dict)  # kind -> RTP timestamp of received pts 0

    def sender_time(self, kind: str, rtp: np.ndarray, rate: int) -> np.ndarray:
        """Sender wall time (``time.time()`` seconds) of RTP timestamps of track ``kind``."""
        reports = self.sender_reports[kind]
        if not reports:
            raise RuntimeError(f"no RTCP sender report received for {kind}: record for at least 2 s")
        rtp = np.asarray(rtp, dtype=np.int64) + self.rtp_origin.get(kind, 0)
        estimates = []
        for ntp, rtp_sr in reports:
            wall = (ntp >> 32) + (ntp & 0xFFFFFFFF) / 2**32 - NTP_TO_UNIX
            diff = (rtp - rtp_sr + 2**31) % 2**32 - 2**31  # signed distance, across 32-bit wrap
            estimates.append(wall + diff / rate)
        return np.median(np.stack(estimates), axis=0)

    def video_times(self) -> np.ndarray:
        """Sender wall time of each recorded video frame."""
        return self.sender_time("video", np.array([v.pts for v in self.video]), VIDEO_RATE)

    def audio_signal(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(samples, wall time of each sample, rate) of the received audio, gaps filled with silence."""
        if not self.audio:
            return np.zeros(0, np.float32), np.zeros(0), 48000
        rate = self.audio[0].rate
        start_pts = self.audio[0].pts
        end_pts = max(a.pts + a.samples.size for a in self.audio)
        out = np.zeros(end_pts - start_pts, np.float32)
        for a in self.audio:
            out[a.pts - start_pts : a.pts - start_pts + a.samples.size] = a.samples
        t0 = float(self.sender_time("audio", np.array([start_pts]), rate)[0])
        return out, t0 + np.arange(out.size) / rate, rate


def mouth_openings(images: list[np.ndarray], redetect_every: int = 25) -> np.ndarray:
    """Mouth opening (``engines.face``, inner-lip gap / eye distance) re-measured on received frames.

    The face is detected now and then; in between, landmarks are fitted in the last box (the head
    only sways a little). NaN where no face was found.
    """
    from avatarstream.engines.face import NoFaceError, detect_face, landmarks_in_box, mouth_opening

    out = np.full(len(images), np.nan)
    face = None
    for i, image in enumerate(images):
        if image is None:
            continue
        if face is None or i % redetect_every == 0:
            try:
                face = detect_face(image)
            except NoFaceError:
                pass
        if face is not None:
            points = face.points if i % redetect_every == 0 else landmarks_in_box(image, face.box, face.kind).points
            out[i] = mouth_opening(points)
    return out


class RecordingViewer:
    """Join a session as a WHEP viewer and record everything received until ``close()``."""

    def __init__(self, keep_images: bool = True, max_video_frames: int = 3000, image_size: int | None = None) -> None:
        self.keep_images = keep_images
        self.image_size = image_size  # store images resized to image_size x image_size (memory)
        self.max_video_frames = max_video_frames
        self.recording = Recording()
        self.pc = RTCPeerConnection(ice_configuration([]))  # no STUN: host candidates only
        self.location: str | None = None
        self.first_video = asyncio.Event()
        self.first_audio = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._receivers: dict[str, Any] = {}
        self._new_event = asyncio.Condition()

    async def join(self, http: aiohttp.ClientSession, whep_url: str, token: str) -> None:
        pc = self.pc
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        channel = pc.createDataChannel("events")

        @channel.on("message")
        def _on_message(message: str) -> None:
            try:
                event = json.loads(message)
            except (TypeError, json.JSONDecodeError):
                return
            self.recording.events.append((time.monotonic(), event))
            asyncio.ensure_future(self._notify())

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            reader = self._read_video if track.kind == "video" else self._read_audio
            self._tasks.append(asyncio.create_task(reader(track), name=f"viewer-{track.kind}"))

        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
        async with http.post(whep_url, data=pc.localDescription.sdp, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"WHEP offer refused: {resp.status} {body}")
            self.location = resp.headers.get("Location")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        for transceiver in pc.getTransceivers():
            self._capture_sender_reports(transceiver.receiver, transceiver.kind)

    def _capture_sender_reports(self, receiver: Any, kind: str) -> None:
        # aiortc keeps the RTCP SR contents and its pts origin private: listen in (aiortc_compat.py)
        self._receivers[kind] = receiver
        reports = self.recording.sender_reports[kind]

        def listen(packet: object) -> None:
            if isinstance(packet, RtcpSrPacket):
                reports.append((packet.sender_info.ntp_timestamp, packet.sender_info.rtp_timestamp))

        listen_rtcp(receiver, listen)

    async def _notify(self) -> None:
        async with self._new_event:
            self._new_event.notify_all()

    async def wait_event(self, kind: str, timeout: float = 10.0, start: int = 0) -> tuple[float, dict]:
        """First data-channel event of type ``kind`` at index >= ``start``: (arrival, event)."""

        def find() -> tuple[float, dict] | None:
            for item in self.recording.events[start:]:
                if item[1].get("type") == kind:
                    return item
            return None

        async def wait() -> tuple[float, dict]:
            async with self._new_event:
                while (item := find()) is None:
                    await self._new_event.wait()
                return item

        return await asyncio.wait_for(wait(), timeout)

    async def _read_video(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = cast(VideoFrame, await track.recv())
                if frame.pts is None:  # aiortc stamps every frame it receives
                    continue
                now = time.monotonic()
                if len(self.recording.video) < self.max_video_frames:
                    image = None
                    if self.keep_images:
                        image = frame.to_ndarray(format="rgb24", width=self.image_size, height=self.image_size) \
                            if self.image_size else frame.to_ndarray(format="rgb24")
                    self.recording.video.append(ReceivedVideo(now, int(frame.pts), image))
                self.first_video.set()
        except MediaStreamError:
            return

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = cast(AudioFrame, await track.recv())
                if frame.pts is None:  # aiortc stamps every frame it receives
                    continue
                now = time.monotonic()
                pcm = frame.to_ndarray()
                channels = len(frame.layout.channels)
                if pcm.dtype == np.int16:
                    pcm = pcm.astype(np.float32) / 32768.0
                # packed s16 is (1, samples * channels): keep the first channel
                mono = pcm.reshape(-1, channels)[:, 0] if pcm.shape[0] == 1 else pcm[0]
                self.recording.audio.append(ReceivedAudio(now, int(frame.pts), frame.sample_rate, mono.astype(np.float32)))
                self.first_audio.set()
        except MediaStreamError:
            return

    def _note_rtp_origins(self) -> None:
        """aiortc rebases received pts to start at 0; keep the RTP timestamp that became pts 0."""
        for kind, receiver in self._receivers.items():
            origin = rtp_timestamp_origin(receiver)
            if origin is not None:
                self.recording.rtp_origin[kind] = origin

    async def close(self) -> None:
        self._note_rtp_origins()
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
