"""WebRTC negotiation for one viewer: offer in, answer out, one ``RTCPeerConnection`` = one Viewer.

The viewer receives the session's avatar video + audio (``tracks.py``); if its offer sends audio
(a microphone) and the caller accepts it, that audio is fed into the session (``microphone.py``),
its receiver holding as many packets as the session's latency settings say (``receive_buffer.py``);
if it opens a data channel named ``events``, the session's events are sent on it as JSON.

Viewer state follows the peer connection: ``connecting`` until ICE + DTLS complete, then
``connected``; ``closed`` once it fails or closes. A viewer that never connects is dropped by the
session registry after its connect deadline.

Video is encoded as the ``VideoEncoding`` handed to ``connect_viewer`` says (the server's ``video_*``
settings, ``realtime/video_settings.py``; the session knows nothing of them): by default once per
session and codec, shared by its viewers (``shared_video.py``); the codec is the first of the viewer's
offer in the preference order ``VideoEncoding.codec`` first. Audio follows the same mode switch: ``shared`` sends one Opus
stream per session to every viewer (``shared_audio.py``), ``per-viewer`` one Opus encoder per
viewer, ``aiortc`` and ``shared-video`` let each viewer's sender encode raw frames (aiortc's Opus);
so does a viewer whose offer has no Opus (e.g. PCMU only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.sdp import SessionDescription

from avatarstream.realtime.errors import BadOffer
from avatarstream.realtime.transports.base import ServedSession, ViewerState, ViewerStats
from avatarstream.realtime.transports.webrtc.aiortc_compat import route_keyframe_requests, sender_clock, set_audio_level
from avatarstream.realtime.transports.webrtc.microphone import MicrophoneInput
from avatarstream.realtime.transports.webrtc.receive_buffer import set_receive_buffer
from avatarstream.realtime.transports.webrtc.shared_audio import SESSION_AUDIO_ENCODERS
from avatarstream.realtime.transports.webrtc.shared_video import SESSION_ENCODERS
from avatarstream.realtime.transports.webrtc.tracks import (AvatarAudioTrack, AvatarVideoTrack, EncodedAudioTrack,
                                                             EncodedVideoTrack)
from avatarstream.realtime.video_settings import VIDEO_CODECS, VIDEO_DEFAULTS, EncoderMode, VideoEncoding

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024


def check_offer(sdp: object, type_: object = "offer") -> RTCSessionDescription:
    """Validate an SDP offer enough to give a clear error before any session work."""
    if type_ != "offer":
        raise BadOffer("expected an SDP of type 'offer'")
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadOffer("malformed SDP offer: empty or not a string")
    if len(sdp) > MAX_SDP_BYTES:
        raise BadOffer(f"SDP offer is larger than {MAX_SDP_BYTES} bytes")
    lines = [ln.strip() for ln in sdp.strip().splitlines()]
    if lines[0] != "v=0":
        raise BadOffer("malformed SDP offer: it must start with 'v=0'")
    media = [ln.split()[0][2:] for ln in lines if ln.startswith("m=") and len(ln.split()) > 1]
    if not any(kind in ("audio", "video") for kind in media):
        raise BadOffer("malformed SDP offer: no audio or video media section (m=audio / m=video)")
    check_usable(parse_offer(sdp))
    return RTCSessionDescription(sdp=sdp, type="offer")


def parse_offer(sdp: str) -> SessionDescription:
    """aiortc's parse of an offer: whatever it raises on this text is the offer's fault (400)."""
    try:
        return SessionDescription.parse(sdp)
    except Exception as exc:  # the parser's errors are many (ValueError, IndexError, KeyError...)
        raise BadOffer(f"malformed SDP offer: {type(exc).__name__}: {str(exc)[:200]}") from None


def check_usable(offer: SessionDescription) -> None:
    """Refuse (BadOffer, 400) what ``RTCPeerConnection.setRemoteDescription`` would refuse in a remote
    offer, with its reason: so any exception aiortc raises after this is ours (500), not the client's."""
    if not any(m.kind in ("audio", "video") for m in offer.media):
        raise BadOffer("malformed SDP offer: no usable media sections")
    for media in offer.media:
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise BadOffer(f"malformed SDP offer: the {media.kind} section has no a=ice-ufrag / a=ice-pwd")
        if media.kind not in ("audio", "video"):
            continue
        if not media.rtcp_mux:
            raise BadOffer(f"unusable SDP offer: the {media.kind} section does not offer a=rtcp-mux")
        supported = {c.mimeType.lower() for c in RTCRtpSender.getCapabilities(media.kind).codecs}
        if not any(c.mimeType.lower() in supported for c in media.rtp.codecs):
            raise BadOffer(f"unusable SDP offer: no {media.kind} codec this server handles "
                           f"({', '.join(sorted(supported))})")


def ice_configuration(ice_servers: list[str] | None) -> RTCConfiguration:
    # Explicit empty list: aiortc would otherwise add a public STUN server (network access).
    return RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in (ice_servers or [])])


def prefer_codec(pc: RTCPeerConnection, codec: str) -> None:
    """Put ``codec`` (vp8 or h264) first in the video transceivers' codec preferences."""
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    first = [c for c in capabilities if c.mimeType.lower() == f"video/{codec}"]
    rest = [c for c in capabilities if c not in first]
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":
            transceiver.setCodecPreferences(first + rest)


def negotiated_codec(sdp: str, kind: str) -> str | None:
    """The codec an answer sends ``kind`` (audio/video) with, lower case: its first codec."""
    for media in SessionDescription.parse(sdp).media:
        if media.kind == kind and media.rtp.codecs:
            return media.rtp.codecs[0].mimeType.lower().removeprefix(f"{kind}/")
    return None


def negotiated_video_codec(sdp: str) -> str | None:
    """The codec (``vp8``/``h264``) an answer sends video with: its first video codec."""
    name = negotiated_codec(sdp, "video")
    return name if name in VIDEO_CODECS else None


class WebRtcViewer:
    """One peer connection carrying a session's tracks (a ``transports.base.Viewer``)."""

    transport = "webrtc"

    def __init__(self, session: ServedSession, pc: RTCPeerConnection, encoding: VideoEncoding = VIDEO_DEFAULTS,
                 on_gone: Callable[[WebRtcViewer], Awaitable[None] | None] | None = None) -> None:
        self.id = secrets.token_hex(6)
        self.pc = pc
        self._session = session
        self._on_gone = on_gone
        self._state = ViewerState.CONNECTING
        self._state_since = session.now()
        self._tasks: set[asyncio.Task] = set()
        self.encoding = encoding
        self.video: AvatarVideoTrack | EncodedVideoTrack = (
            AvatarVideoTrack(session) if self.encoding.mode == EncoderMode.AIORTC else EncodedVideoTrack(session))
        self.audio: AvatarAudioTrack | EncodedAudioTrack = (
            EncodedAudioTrack(session) if self.encoding.mode.encodes_audio else AvatarAudioTrack(session))
        self.microphone: MicrophoneInput | None = None
        self._closed = False

    @property
    def state(self) -> ViewerState:
        return self._state

    @property
    def state_since(self) -> float:
        return self._state_since

    def _set_state(self, state: ViewerState) -> None:
        if state != self._state:
            self._state, self._state_since = state, self._session.now()

    def stats(self) -> ViewerStats:
        out: dict[str, Any] = {
            "video": {"sent": self.video.frames_sent, "skipped": self.video.frames_skipped},
            "audio": {"sent": self.audio.frames_sent, "skipped": self.audio.frames_skipped},
            "senders": self.sender_clock_samples(),
        }
        if isinstance(self.video, EncodedVideoTrack):
            out["video"]["keyframe_waits"] = self.video.keyframe_waits
            if self.video.encoder is not None:
                out["encoder"] = self.video.encoder.stats()
        if isinstance(self.audio, EncodedAudioTrack) and self.audio.encoder is not None:
            out["audio_encoder"] = self.audio.encoder.stats()
        if self.microphone is not None:
            out["mic_dropped_samples"] = self.microphone.dropped_samples
        waits = self.video.keyframe_waits if isinstance(self.video, EncodedVideoTrack) else 0
        return ViewerStats(video_frames_sent=self.video.frames_sent, video_frames_skipped=self.video.frames_skipped,
                           video_keyframe_waits=waits,
                           details=out)

    def sender_clock_samples(self) -> list[dict[str, Any]]:
        """For the video/audio sender: the (RTP timestamp, send time) pair of its last packet, i.e.
        what its next RTCP sender report will say. Diagnostics for lip-sync measurements on the
        sender's clock (``aiortc_compat.sender_clock``; empty before the first packet)."""
        out = []
        for sender in self.pc.getSenders():
            clock = sender_clock(sender)
            if clock is None or sender.track is None:
                continue
            ntp, rtp = clock
            unix = (ntp >> 32) - 2208988800 + (ntp & 0xFFFFFFFF) / 2**32
            out.append({"kind": sender.track.kind, "rtp_timestamp": rtp, "time": unix})
        return out

    def bind_video(self, codec: str, sender: RTCRtpSender) -> None:
        """Feed the video track from the session's shared encoder of ``codec``; the sender's keyframe
        requests (PLI/FIR, which aiortc would hand to a per-sender encoder) go to that encoder."""
        if not isinstance(self.video, EncodedVideoTrack) or self.video.encoder is not None:
            return
        self.video.bind(SESSION_ENCODERS.acquire(self._session, codec, self.encoding))
        route_keyframe_requests(sender, self.video.request_keyframe)

    def bind_audio(self, codec: str | None, sender: RTCRtpSender) -> None:
        """Feed the audio track from the session's Opus encoder (shared or this viewer's own); for
        any other negotiated codec the sender gets raw frames to encode (``AvatarAudioTrack``)."""
        if not isinstance(self.audio, EncodedAudioTrack) or self.audio.encoder is not None:
            return
        if codec == "opus":
            track = self.audio
            track.bind(SESSION_AUDIO_ENCODERS.acquire(self._session, shared=self.encoding.mode == EncoderMode.SHARED))
            # aiortc sets the RTP audio-level extension only for frames it encodes itself
            set_audio_level(sender, lambda: track.level)
            return
        self.audio.stop()
        self.audio = AvatarAudioTrack(self._session)
        sender.replaceTrack(self.audio)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"viewer-{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def accept_microphone(self, track: Any) -> None:
        self.microphone = MicrophoneInput(self._session, self._session.id)
        self._spawn(self.microphone.pump(track), "mic")

    async def forward_events(self, channel: Any) -> None:
        q = self._session.subscribe_events()
        try:
            while True:
                ev = await q.get()
                if ev is None or channel.readyState == "closed":
                    break
                if channel.readyState == "open":
                    channel.send(json.dumps({"type": ev.type, "frame": ev.frame, "wall_time": ev.wall_time, **ev.data}))
        finally:
            self._session.unsubscribe_events(q)

    async def close(self) -> None:
        """Stop the tracks and tasks, close the connection, leave the session; runs ``on_gone`` once."""
        if self._closed:
            return
        self._closed = True
        self._set_state(ViewerState.CLOSED)
        self._session.detach_viewer(self)
        self.video.stop()
        self.audio.stop()
        if isinstance(self.video, EncodedVideoTrack) and self.video.encoder is not None:
            SESSION_ENCODERS.release(self.video.encoder)
        if isinstance(self.audio, EncodedAudioTrack) and self.audio.encoder is not None:
            SESSION_AUDIO_ENCODERS.release(self.audio.encoder)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.pc.close()
        if self._on_gone is not None:
            with contextlib.suppress(Exception):
                res = self._on_gone(self)
                if asyncio.iscoroutine(res):
                    await res


async def connect_viewer(session: ServedSession, offer: RTCSessionDescription, *,
                         ice_servers: list[str] | None = None, accept_microphone: bool = True,
                         encoding: VideoEncoding = VIDEO_DEFAULTS,
                         on_gone: Callable[[WebRtcViewer], Awaitable[None] | None] | None = None,
                         ) -> tuple[WebRtcViewer, RTCSessionDescription]:
    """Answer ``offer`` with a new peer connection carrying ``session``'s tracks; the viewer is
    attached to the session (which may refuse it: ``ViewerLimitError``). ``encoding``: how its video (and,
    by the mode, its audio) is encoded; the server passes its configured settings.

    ``on_gone(viewer)`` runs once when the connection fails or closes or the viewer is closed.
    Raises BadOffer (400) for an offer that does not parse or that aiortc would refuse (``check_usable``);
    any other failure of the negotiation is logged and raised as it is (a 500: our bug or aiortc's,
    e.g. ``aiortc_compat.AiortcIncompatible``, never the client's "malformed SDP offer").
    """
    check_usable(parse_offer(offer.sdp))
    pc = RTCPeerConnection(ice_configuration(ice_servers))
    viewer = WebRtcViewer(session, pc, encoding, on_gone)

    @pc.on("connectionstatechange")
    async def _on_state() -> None:
        log.info("session %s viewer %s connection: %s", session.id, viewer.id, pc.connectionState)
        if pc.connectionState == "connected":
            viewer._set_state(ViewerState.CONNECTED)
            session.touch()
        elif pc.connectionState in ("failed", "closed"):
            await viewer.close()

    @pc.on("track")
    def _on_track(track: Any) -> None:
        if track.kind == "audio" and accept_microphone:
            for transceiver in pc.getTransceivers():  # before any packet: hold only what the session asks
                if transceiver.receiver.track is track:
                    set_receive_buffer(transceiver.receiver, session.latency.mic_receive_packets)
            viewer.accept_microphone(track)

    @pc.on("datachannel")
    def _on_channel(channel: Any) -> None:
        if channel.label == "events":
            viewer._spawn(viewer.forward_events(channel), "events")

    try:
        session.attach_viewer(viewer)
    except Exception:
        with contextlib.suppress(Exception):
            await pc.close()
        raise
    try:
        await pc.setRemoteDescription(offer)
        if not pc.getTransceivers():
            raise BadOffer("malformed SDP offer: no usable media sections")
        offered = {t.kind for t in pc.getTransceivers()}
        senders = {}
        for track in (viewer.video, viewer.audio):
            if track.kind in offered:  # a video-only (or audio-only) offer gets just that
                senders[track.kind] = pc.addTrack(track)
        if "video" in senders:
            prefer_codec(pc, viewer.encoding.codec)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        if "video" in senders:
            codec = negotiated_video_codec(pc.localDescription.sdp)
            if codec is None:
                raise BadOffer(f"the offer has no video codec this server encodes ({', '.join(VIDEO_CODECS)})")
            viewer.bind_video(codec, senders["video"])
        if "audio" in senders:
            viewer.bind_audio(negotiated_codec(pc.localDescription.sdp, "audio"), senders["audio"])
    except Exception as exc:
        viewer._on_gone = None
        await viewer.close()
        if not isinstance(exc, BadOffer):
            log.error("session %s viewer %s: WebRTC negotiation failed on a parsed, usable offer: %s: %s",
                      session.id, viewer.id, type(exc).__name__, exc)
        raise
    return viewer, pc.localDescription
