"""aiortc's internals we rely on (``realtime/transports/webrtc/aiortc_compat.py``) still exist in the installed
aiortc, each checked by name; they still do what we use them for, on real aiortc objects; nothing else reaches
into aiortc's privates; and only an offer's own faults are a client's 400: any other failure is a logged 500."""

from __future__ import annotations

import ast
import logging
import tomllib
from fractions import Fraction
from importlib.metadata import version
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpCodecParameters
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket, RtcpSenderInfo, RtcpSrPacket
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from app_server import serving
from avatarstream.engines.base import Portrait
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.app import create_app
from avatarstream.realtime.http.keys import REGISTRY
from avatarstream.realtime.transports.webrtc import aiortc_compat as compat
from avatarstream.realtime.transports.webrtc.aiortc_compat import PRIVATE_MEMBERS, AiortcIncompatible, PrivateMember

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[2]


# -- each private member, by name --------------------------------------------------------------------------------

@pytest.mark.parametrize("member", PRIVATE_MEMBERS, ids=[m.qualname for m in PRIVATE_MEMBERS])
def test_the_installed_aiortc_has_it(member: PrivateMember):
    problems = member.problems()
    assert not problems, f"aiortc {version('aiortc')} moved what aiortc_compat.py relies on: {problems}"


def test_a_moved_member_fails_naming_it():
    """The checks can fail, each naming the attribute: gone, renamed parameters, a coroutine no more, an
    aiortc call site that no longer exists; and using a gone member raises AiortcIncompatible naming it."""
    gone = PrivateMember(RTCRtpSender, "__ntp_time", "attribute").problems()
    assert gone and "RTCRtpSender.__ntp_time" in gone[0], gone
    method = PrivateMember(RTCRtpSender, "_send_keyframe_now", "method").problems()
    assert method == ["aiortc.rtcrtpsender.RTCRtpSender._send_keyframe_now: no such method"], method
    params = PrivateMember(RTCRtpSender, "_next_encoded_frame", "coroutine", ("parameters",)).problems()
    assert params and "('codec',)" in params[0], params
    sync = PrivateMember(RTCRtpSender, "_send_keyframe", "coroutine").problems()
    assert sync and "no longer a coroutine" in sync[0], sync
    site = PrivateMember(RTCRtpSender, "_send_keyframe", "method", (), ((RTCRtpSender, "self._keyframe()"),))
    assert "no longer contains 'self._keyframe()'" in site.problems()[0]

    class Moved:
        """A class with none of the members: every one reads as moved."""

    with pytest.raises(AiortcIncompatible, match="RTCRtpReceiver.__jitter_buffer"):
        compat.replace_jitter_buffer(Moved(), JitterBuffer(capacity=16))  # type: ignore[arg-type]


def test_the_version_bound_covers_the_checked_release():
    """pyproject bounds aiortc above (a release these checks have not seen is not accepted) and the installed
    one is inside the bound."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if d.split(">")[0].split("<")[0].split("=")[0].strip() == "aiortc"]
    specifier = SpecifierSet(spec.removeprefix("aiortc").split("#")[0].strip())
    assert any(s.operator in ("<", "<=", "==", "~=") for s in specifier), f"no upper bound on aiortc: {spec}"
    assert Version(version("aiortc")) in specifier, (version("aiortc"), spec)


def test_no_other_module_touches_aiortc_privates():
    """Name-mangled aiortc fields and aiortc's private methods appear in the compatibility module only (and in
    this test, which drives aiortc's own handlers to see the hooks act)."""
    names = {m.attribute for m in PRIVATE_MEMBERS if m.attribute.startswith("_") and not m.name.startswith("__init")}
    wrong = []
    for top in ("realtime", "bench", "avatarstream", "engines", "export", "tests", "examples"):
        for path in (REPO / top).rglob("*.py"):
            if path.name in ("aiortc_compat.py", Path(__file__).name) or "__pycache__" in path.parts:
                continue
            source = path.read_text()
            for node in ast.walk(ast.parse(source)):
                text = (node.attr if isinstance(node, ast.Attribute) else
                        node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None)
                if text is not None and (text in names or text.startswith(("_RTCRtpSender__", "_RTCRtpReceiver__"))):
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno} {text}")
    assert not wrong, f"aiortc internals outside aiortc_compat.py: {wrong}"


# -- what they do, on real aiortc objects ------------------------------------------------------------------------

class _PacketTrack(MediaStreamTrack):
    """Yields one pre-encoded Opus packet (as the shared audio encoder's track does)."""

    kind = "audio"

    async def recv(self) -> av.Packet:  # type: ignore[override]
        packet = av.Packet(b"\xf8\xff\xfe")  # an Opus TOC byte + padding: pack() copies it
        packet.pts, packet.time_base = 960, Fraction(1, 48000)
        return packet


async def test_the_hooks_act_on_real_senders_and_receivers():
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        video = pc.addTransceiver("video", direction="sendonly")
        audio_sender = pc.addTrack(_PacketTrack())
        receiver = pc.addTransceiver("audio", direction="recvonly").receiver

        # a PLI reaches the routed callback (aiortc's own RTCP handler calls it)
        asked = []
        compat.route_keyframe_requests(video.sender, lambda: asked.append(1))
        await video.sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=video.sender._ssrc))
        assert asked == [1]

        # a pre-encoded packet is packed, not encoded, and leaves with our audio level
        compat.set_audio_level(audio_sender, lambda: 42)
        opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
        frame = await audio_sender._next_encoded_frame(opus)
        assert frame is not None and frame.payloads == [b"\xf8\xff\xfe"] and frame.audio_level == 42
        assert compat.sender_clock(audio_sender) is None  # nothing sent yet

        # the receive buffer is the one we put there
        buffer = JitterBuffer(capacity=16, prefetch=1)
        compat.replace_jitter_buffer(receiver, buffer)
        assert compat.jitter_buffer(receiver) is buffer

        # RTCP listening (the bench's recording viewer) sees a sender report, aiortc still handles it
        seen = []
        compat.listen_rtcp(receiver, seen.append)
        report = RtcpSrPacket(ssrc=7, sender_info=RtcpSenderInfo(ntp_timestamp=1 << 32, rtp_timestamp=5,
                                                                 packet_count=1, octet_count=1))
        await receiver._handle_rtcp_packet(report)
        assert seen == [report]
        assert compat.rtp_timestamp_origin(receiver) is None  # no frame received yet
    finally:
        await pc.close()


# -- 400 for the offer's faults only -------------------------------------------------------------------------------

@pytest.fixture
async def server(bar_engine):
    config = ServerConfig(admission=False, size=64, engine_loader=lambda name, **_: bar_engine,
                          portrait=Portrait(np.full((64, 64, 3), 128, np.uint8)))
    app = create_app(config)
    async with serving(app) as http:
        yield http, app[REGISTRY]


async def _offer_sdp() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_offers_that_do_not_parse_or_cannot_be_used_are_400(server):
    http, registry = server
    good = await _offer_sdp()
    cases = {
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus\r\n": "malformed SDP offer: IndexError",
        "v=0\r\nm=audio x UDP/TLS/RTP/SAVPF 111\r\n": "malformed SDP offer",
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n": "no a=ice-ufrag / a=ice-pwd",
        good.replace("a=rtcp-mux\r\n", ""): "does not offer a=rtcp-mux",
    }
    for sdp, message in cases.items():
        resp = await http.post("/whep", data=sdp, headers={"Content-Type": "application/sdp"})
        body = await resp.json()
        assert (resp.status, body["error"]) == (400, "bad_sdp") and message in body["message"], (sdp, body)
    assert len(registry) == 0


async def test_a_failure_after_a_usable_offer_is_a_logged_500_not_a_bad_offer(server, monkeypatch, caplog):
    """What aiortc raises on an offer that parsed and passed its checks is our bug (or an aiortc release's):
    500 internal_error, logged, the session freed; never the client's "malformed SDP offer"."""
    http, registry = server
    sdp = await _offer_sdp()

    async def moved(self):
        raise AttributeError("'RTCRtpSender' object has no attribute '_RTCRtpSender__encoder'")

    monkeypatch.setattr(RTCPeerConnection, "createAnswer", moved)
    with caplog.at_level(logging.ERROR):
        resp = await http.post("/whep", data=sdp, headers={"Content-Type": "application/sdp"})
    body = await resp.json()
    assert (resp.status, body["error"]) == (500, "internal_error"), body
    assert "SDP" not in body["message"]
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("negotiation failed" in m and "_RTCRtpSender__encoder" in m for m in logged), logged
    assert len(registry) == 0
    monkeypatch.undo()
    resp = await http.post("/whep", data=sdp, headers={"Content-Type": "application/sdp"})
    assert resp.status == 201, await resp.text()  # and a usable offer is answered once aiortc behaves
