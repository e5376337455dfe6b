"""WebRTC negotiation for one viewer: offer in, answer out, one ``RTCPeerConnection``.

The viewer receives the session's avatar video + audio; if its offer sends audio (a
microphone), that audio is fed into the session's playback buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from avatarstream.engines.base import EngineError
from avatarstream.realtime.session import AvatarSession

log = logging.getLogger(__name__)


class OfferError(EngineError):
    """The SDP offer is malformed or unusable (HTTP 400)."""


def check_offer(sdp: object, type_: object = "offer") -> RTCSessionDescription:
    """Validate an SDP offer enough to give a clear error before any session work."""
    if type_ != "offer":
        raise OfferError(f"expected an SDP of type 'offer', got {type_!r}")
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError("malformed SDP offer: empty or not a string")
    lines = [ln.strip() for ln in sdp.strip().splitlines()]
    if lines[0] != "v=0":
        raise OfferError("malformed SDP offer: it must start with 'v=0'")
    media = [ln.split()[0][2:] for ln in lines if ln.startswith("m=") and len(ln.split()) > 1]
    if not any(kind in ("audio", "video") for kind in media):
        raise OfferError("malformed SDP offer: no audio or video media section (m=audio / m=video)")
    return RTCSessionDescription(sdp=sdp, type="offer")


def ice_configuration(ice_servers: list[str] | None) -> RTCConfiguration:
    # Explicit empty list: aiortc would otherwise add a public STUN server (network access).
    return RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in (ice_servers or [])])


async def connect_viewer(session: AvatarSession, offer: RTCSessionDescription, *,
                         ice_servers: list[str] | None = None, accept_microphone: bool = True,
                         on_gone: Callable[[RTCPeerConnection], Awaitable[None] | None] | None = None,
                         ) -> tuple[RTCPeerConnection, RTCSessionDescription]:
    """Answer ``offer`` with a new peer connection carrying ``session``'s tracks.

    ``on_gone(pc)`` runs once when the connection fails or closes (after the viewer was removed
    from the session). Raises OfferError for offers aiortc cannot use.
    """
    pc = RTCPeerConnection(ice_configuration(ice_servers))
    gone = False

    async def _gone() -> None:
        nonlocal gone
        if gone:
            return
        gone = True
        session.remove_viewer(pc)
        with contextlib.suppress(Exception):
            await pc.close()
        if on_gone is not None:
            res = on_gone(pc)
            if asyncio.iscoroutine(res):
                await res

    @pc.on("connectionstatechange")
    async def _on_state() -> None:
        log.info("session %s viewer connection: %s", session.id, pc.connectionState)
        if pc.connectionState in ("failed", "closed"):
            await _gone()

    @pc.on("track")
    def _on_track(track) -> None:
        if track.kind == "audio" and accept_microphone:
            session.attach_input(track)

    try:
        await pc.setRemoteDescription(offer)
        if not pc.getTransceivers():
            raise OfferError("malformed SDP offer: no usable media sections")
        session.add_viewer(pc)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
    except Exception as exc:
        session.remove_viewer(pc)
        with contextlib.suppress(Exception):
            await pc.close()
        if isinstance(exc, OfferError):
            raise
        raise OfferError(f"malformed SDP offer: {exc}") from exc
    return pc, pc.localDescription
