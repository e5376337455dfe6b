"""Receive a session's avatar as a WebRTC viewer (WHEP, aiortc), for agents not co-located with it.

``WhepReader.join`` offers to the session's ``whep_url`` with its bearer token; the received
video frames (RGB arrays) and audio (int16 mono, 48 kHz: the WebRTC rate) come out of ``next()``
in arrival order through one bounded queue (a consumer that falls behind loses the oldest media,
memory never grows). ``close()`` hangs up (``DELETE`` on the viewer's location) and stops the
reading tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from yarl import URL

from avatarstream.realtime.transports.webrtc.peer import ice_configuration

QUEUE_ITEMS = 200  # about 2.7 s of media (25 video + 50 audio frames per second)
AUDIO_RATE = 48_000


@dataclass(frozen=True)
class ReceivedVideo:
    image: np.ndarray  # H x W x 3 uint8 RGB
    pts: int  # 90 kHz, from the first received frame


@dataclass(frozen=True)
class ReceivedAudio:
    samples: np.ndarray  # int16 mono at AUDIO_RATE
    pts: int  # at AUDIO_RATE, from the first received frame


class WhepReader:
    def __init__(self, ice_servers: list[str] | None = None) -> None:
        self.pc = RTCPeerConnection(ice_configuration(ice_servers))
        self.location: str | None = None
        self._queue: asyncio.Queue[ReceivedVideo | ReceivedAudio | None] = asyncio.Queue(QUEUE_ITEMS)
        self._tasks: list[asyncio.Task] = []
        self._http: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        self.dropped = 0

    async def join(self, http: aiohttp.ClientSession, whep_url: str, token: str) -> None:
        """Negotiate; raises ``ConnectionError`` if the server refuses the offer."""
        self._http, self._token = http, token
        pc = self.pc
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def _on_track(track) -> None:
            self._tasks.append(asyncio.ensure_future(self._read(track)))

        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
        async with http.post(whep_url, data=pc.localDescription.sdp, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise ConnectionError(f"the avatar server refused the WHEP offer: {resp.status} {body[:200]}")
            location = resp.headers.get("Location")
        self.location = str(URL(whep_url).join(URL(location))) if location else None
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    async def next(self) -> ReceivedVideo | ReceivedAudio | None:
        """The next received media item; None once both tracks ended."""
        return await self._queue.get()

    async def _read(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    item: ReceivedVideo | ReceivedAudio = ReceivedVideo(frame.to_ndarray(format="rgb24"), int(frame.pts))
                else:
                    pts = int(frame.pts)
                    frames = self._resampler.resample(frame)
                    if not frames:
                        continue
                    samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16)
                    item = ReceivedAudio(samples, pts)
                if self._queue.full():  # the consumer fell behind: lose the oldest
                    self._queue.get_nowait()
                    self.dropped += 1
                self._queue.put_nowait(item)
        except MediaStreamError:
            pass
        finally:
            if all(t.done() or t is asyncio.current_task() for t in self._tasks):
                with contextlib.suppress(asyncio.QueueFull):
                    self._queue.put_nowait(None)

    async def close(self) -> None:
        if self.location and self._http is not None and not self._http.closed:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self._http.delete(self.location, headers={"Authorization": f"Bearer {self._token}"},
                                             timeout=aiohttp.ClientTimeout(total=5)):
                    pass
        self.location = None
        await self.pc.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
