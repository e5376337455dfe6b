"""WHEP's optional parts, shared by both WHEP endpoints (``POST /whep`` and ``POST /v1/sessions/{id}/whep``).

* ICE servers: every ``--ice-server`` URL is handed to the player as ``Link: <url>; rel="ice-server"``
  on the 201 and on ``OPTIONS`` of the endpoint (a player may ask before it creates its offer).
* Trickle ICE: ``PATCH`` of the resource with an ``application/trickle-ice-sdpfrag`` body adds the
  player's candidates to its peer connection (aiortc's ``addIceCandidate``; ``a=end-of-candidates``
  ends them) and answers 204. ``If-Match`` must name the resource's ETag (or ``*``), else 412; a
  fragment with other ICE credentials asks for an ICE restart, which aiortc cannot do: 501.
* Ending: ``realtime/http/ended.py`` keeps the resources that ended, so a DELETE after the player
  closed its connection answers like the first one.
"""

from __future__ import annotations

from aiohttp import web
from aiortc.sdp import candidate_from_sdp
from multidict import CIMultiDict

from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.errors import BadRequest, NotFound, NotSupported, PreconditionFailed, UnsupportedMediaType
from avatarstream.realtime.http.bodies import read_text
from avatarstream.realtime.http.sdpfrag import MAX_FRAGMENT_BYTES, parse_sdpfrag, sdp_ice_ufrag
from avatarstream.realtime.session.session import AvatarSession
from avatarstream.realtime.transports.webrtc.peer import WebRtcViewer

SDPFRAG = "application/trickle-ice-sdpfrag"


def ice_server_links(config: ServerConfig) -> list[str]:
    """``Link`` header values for the configured ICE servers (RFC 9725 section 4.6)."""
    return [f'<{url}>; rel="ice-server"' for url in config.ice_servers if url and not set(url) & set("<>\r\n")]


def resource_headers(config: ServerConfig, location: str, etag: str) -> CIMultiDict[str]:
    """The headers of a WHEP 201: where the resource is, its ETag, the ICE servers, trickle accepted."""
    headers: CIMultiDict[str] = CIMultiDict({"Location": location, "ETag": etag, "Accept-Patch": SDPFRAG})
    for link in ice_server_links(config):
        headers.add("Link", link)
    return headers


def endpoint_options(config: ServerConfig) -> web.Response:
    """``OPTIONS`` of a WHEP endpoint: what it accepts and the ICE servers, before any offer."""
    headers: CIMultiDict[str] = CIMultiDict({"Allow": "OPTIONS, POST", "Accept-Post": "application/sdp"})
    for link in ice_server_links(config):
        headers.add("Link", link)
    return web.Response(status=204, headers=headers)


def webrtc_viewer(session: AvatarSession, viewer_id: str | None = None) -> WebRtcViewer:
    """The WebRTC viewer ``viewer_id`` of ``session`` (None: its only one, as for ``POST /whep``)."""
    viewers = [v for v in session.viewers if isinstance(v, WebRtcViewer)]
    if viewer_id is not None:
        viewers = [v for v in viewers if v.id == viewer_id]
    if not viewers:
        raise NotFound("no such viewer in this session (it ended)")
    return viewers[0]


async def trickle(request: web.Request, viewer: WebRtcViewer, etag: str) -> web.Response:
    """PATCH of a WHEP resource: add the fragment's candidates to ``viewer``'s connection; 204."""
    if request.content_type != SDPFRAG:
        raise UnsupportedMediaType(f"PATCH a WHEP resource with Content-Type: {SDPFRAG} (trickle ICE)")
    if_match = request.headers.get("If-Match")
    if if_match is not None and if_match.strip() not in ("*", etag):
        raise PreconditionFailed(f"If-Match {if_match[:80]!r} is not this resource's ETag {etag}")
    fragment = parse_sdpfrag(await read_text(request, MAX_FRAGMENT_BYTES))
    remote = viewer.pc.remoteDescription
    current = sdp_ice_ufrag(remote.sdp) if remote is not None else None
    if fragment.ufrag not in (None, current):  # other ICE credentials: an ICE restart (If-Match: *)
        raise NotSupported("ICE restarts are not supported: create a new WHEP session")
    try:
        for line in fragment.candidates:
            try:
                candidate = candidate_from_sdp(line.sdp)
            except (AssertionError, ValueError, IndexError):
                raise BadRequest(f"malformed ICE candidate {line.sdp[:80]!r}") from None
            # by mid when the fragment names one (its m= lines need not be all of the offer's)
            candidate.sdpMid = line.mid
            candidate.sdpMLineIndex = line.mline_index if line.mid is None else None
            await viewer.pc.addIceCandidate(candidate)  # a bundled (discarded) transport's: ignored
        if fragment.end_of_candidates:
            await viewer.pc.addIceCandidate(None)
    except ValueError as exc:  # aioice: a candidate after end-of-candidates
        raise BadRequest(f"trickle ICE refused: {str(exc)[:200]}") from None
    return web.Response(status=204)
