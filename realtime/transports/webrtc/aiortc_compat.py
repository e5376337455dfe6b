"""Every use of aiortc's private internals, in one place, each named with what it expects.

aiortc gives no public hook for several things the WebRTC transport does; this module is the only one that
touches aiortc objects' private attributes (the test below keeps it so), and ``PRIVATE_MEMBERS``
states each attribute with what we rely on: a method's parameters, an attribute aiortc itself assigns, the
call sites in aiortc's own code that make replacing it work. ``check()`` verifies all of them against the
installed aiortc; ``tests/realtime/test_aiortc_compat.py`` runs it per member, so a release that moves one
fails naming the attribute, not as a viewer's silence. pyproject.toml bounds aiortc to the releases checked.

What we use, and why:

* **keyframe requests** (``RTCRtpSender._send_keyframe()``): the sender calls it on PLI/FIR; the shared
  encoder (``shared_video.py``) must get the request, since the sender's own encoder never runs;
* **audio level** (``RTCRtpSender._next_encoded_frame(codec)``, ``RTCEncodedFrame.audio_level``): aiortc
  fills the RTP audio-level extension only for frames it encodes; for our Opus packets the level is set on
  each encoded frame on its way to packetisation;
* **pre-encoded packets** (``Encoder.pack(packet)`` of aiortc's VP8, H.264 and Opus encoders): a track that
  yields ``av.Packet`` is packetised by the sender's encoder without encoding again (no private name, but
  our shared encoders depend on that branch of ``_next_encoded_frame``);
* **sender clock** (``RTCRtpSender.__ntp_timestamp`` / ``__rtp_timestamp``): what its next RTCP sender report
  will say, for lip-sync diagnostics;
* **receive buffer** (``RTCRtpReceiver.__jitter_buffer``, ``RtpPacket._data``, ``JitterBuffer``,
  ``JitterFrame``): a microphone's packets are held as the session's latency settings say
  (``receive_buffer.py``), replacing the buffer aiortc reads once per packet;
* **measurement** (``RTCRtpReceiver._handle_rtcp_packet(packet)``, ``RTCRtpReceiver.__timestamp_mapper``,
  ``TimestampMapper._origin``): the recording viewer of ``avatar bench`` reads sender reports and the RTP
  timestamp its pts start from.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import RTCRtpReceiver, TimestampMapper
from aiortc.rtcrtpsender import RTCEncodedFrame, RTCRtpSender
from aiortc.rtp import RtpPacket


class AiortcIncompatible(RuntimeError):
    """The installed aiortc lacks a private member this module relies on (a server bug: 500, never a 400)."""


@dataclass(frozen=True)
class PrivateMember:
    """One internal of aiortc we rely on, as aiortc's source writes it."""

    owner: type
    name: str  # ``__jitter_buffer`` (name-mangled on instances), ``_send_keyframe``, ``pack``
    # "method", "coroutine", "constructor", "attribute" (the owner's code assigns it) or "attached" (another
    # aiortc class assigns it on the owner's instances: ``used_as`` names where)
    kind: str
    parameters: tuple[str, ...] = ()  # a method's or constructor's parameters after self, in order
    used_as: tuple[tuple[Any, str], ...] = ()  # (aiortc class or function, code its source must contain)
    why: str = ""

    @property
    def attribute(self) -> str:
        """The name on an instance: ``__x`` in class ``C`` is ``_C__x``."""
        if self.name.startswith("__") and not self.name.endswith("__"):
            return f"_{self.owner.__name__.lstrip('_')}{self.name}"
        return self.name

    @property
    def qualname(self) -> str:
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"

    def problems(self) -> list[str]:
        """What no longer holds in the installed aiortc (empty: as expected)."""
        out = []
        if self.kind in ("method", "coroutine", "constructor"):
            fn = inspect.getattr_static(self.owner, "__init__" if self.kind == "constructor" else self.attribute, None)
            if not callable(fn):
                return [f"{self.qualname}: no such {self.kind}"]
            if self.kind == "coroutine" and not inspect.iscoroutinefunction(fn):
                out.append(f"{self.qualname}: no longer a coroutine function")
            got = tuple(list(inspect.signature(fn).parameters)[1:])
            if got[: len(self.parameters)] != self.parameters:
                out.append(f"{self.qualname}: parameters {got}, expected {self.parameters}")
        elif self.kind == "attribute":
            if not re.search(rf"self\.{re.escape(self.name)}\s*(:[^=\n]*)?=[^=]", _source(self.owner)):
                out.append(f"{self.qualname}: {self.owner.__qualname__} no longer assigns self.{self.name}")
        elif self.kind != "attached":
            raise ValueError(f"unknown kind {self.kind!r}")
        for where, code in self.used_as:
            if code not in _source(where):
                out.append(f"{self.qualname}: {where.__qualname__} no longer contains {code!r}")
        return out


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError) as exc:
        raise AiortcIncompatible(f"the source of {obj!r} is not installed: cannot check aiortc's internals") from exc


SEND_KEYFRAME = PrivateMember(
    RTCRtpSender, "_send_keyframe", "method", (), ((RTCRtpSender, "self._send_keyframe()"),),
    "the sender calls it on PLI/FIR: routed to the shared encoder")
NEXT_ENCODED_FRAME = PrivateMember(
    RTCRtpSender, "_next_encoded_frame", "coroutine", ("codec",),
    ((RTCRtpSender, "await self._next_encoded_frame(codec)"), (RTCRtpSender, "enc_frame.audio_level")),
    "each frame on its way to packetisation: the audio level of our Opus packets is set there")
ENCODED_FRAME_LEVEL = PrivateMember(
    RTCEncodedFrame, "audio_level", "attribute", (), (), "the level the sender writes in the RTP extension")
SENDER_NTP = PrivateMember(RTCRtpSender, "__ntp_timestamp", "attribute", (), (),
                           "NTP time of the last packet sent (its next sender report)")
SENDER_RTP = PrivateMember(RTCRtpSender, "__rtp_timestamp", "attribute", (), (),
                           "RTP timestamp of the last packet sent (its next sender report)")
PACKS = tuple(
    PrivateMember(encoder, "pack", "method", ("packet",), ((RTCRtpSender, "self.__encoder.pack(data)"),),
                  "a track yielding av.Packet is packetised without encoding again (shared encoders)")
    for encoder in (Vp8Encoder, H264Encoder, OpusEncoder))
RECEIVER_JITTER_BUFFER = PrivateMember(
    RTCRtpReceiver, "__jitter_buffer", "attribute", (), ((RTCRtpReceiver, "self.__jitter_buffer.add(packet)"),),
    "the receive buffer a microphone's packets wait in (receive_buffer.py)")
PACKET_DATA = PrivateMember(
    RtpPacket, "_data", "attached", (), ((RTCRtpReceiver, "packet._data = depayload(codec, packet.payload)"),),
    "the depayloaded frame the receiver attaches to a packet before its jitter buffer")
JITTER_BUFFER = PrivateMember(JitterBuffer, "__init__", "constructor", ("capacity", "prefetch"), (),
                              "a receive buffer of our size")
JITTER_BUFFER_ADD = PrivateMember(JitterBuffer, "add", "method", ("packet",), (),
                                  "overridden by InOrderAudioBuffer: (pli_flag, frame or None)")
JITTER_FRAME = PrivateMember(JitterFrame, "__init__", "constructor", ("data", "timestamp"), (),
                             "the frame a buffer hands to the decoder")
RECEIVER_RTCP = PrivateMember(
    RTCRtpReceiver, "_handle_rtcp_packet", "coroutine", ("packet",), (),
    "the recording viewer (bench) listens to sender reports")
RECEIVER_TIMESTAMP_MAPPER = PrivateMember(
    RTCRtpReceiver, "__timestamp_mapper", "attribute", (), (), "maps received RTP timestamps to pts (bench)")
MAPPER_ORIGIN = PrivateMember(TimestampMapper, "_origin", "attribute", (), (),
                              "the RTP timestamp received pts start from (bench)")

PRIVATE_MEMBERS: tuple[PrivateMember, ...] = (
    SEND_KEYFRAME, NEXT_ENCODED_FRAME, ENCODED_FRAME_LEVEL, SENDER_NTP, SENDER_RTP, *PACKS,
    RECEIVER_JITTER_BUFFER, PACKET_DATA, JITTER_BUFFER, JITTER_BUFFER_ADD, JITTER_FRAME,
    RECEIVER_RTCP, RECEIVER_TIMESTAMP_MAPPER, MAPPER_ORIGIN,
)


def check() -> list[str]:
    """Every problem of every member against the installed aiortc (empty: all as expected)."""
    return [problem for member in PRIVATE_MEMBERS for problem in member.problems()]


def _require(obj: object, member: PrivateMember) -> Any:
    try:
        return getattr(obj, member.attribute)
    except AttributeError:
        raise AiortcIncompatible(f"aiortc {version('aiortc')}: {member.qualname} is gone ({member.why}); "
                                 "run tests/realtime/test_aiortc_compat.py") from None


# -- senders -------------------------------------------------------------------------------------------------

def route_keyframe_requests(sender: RTCRtpSender, request_keyframe: Callable[[], None]) -> None:
    """The sender's PLI/FIR requests call ``request_keyframe`` instead of flagging its own encoder."""
    _require(sender, SEND_KEYFRAME)
    setattr(sender, SEND_KEYFRAME.attribute, request_keyframe)


def set_audio_level(sender: RTCRtpSender, level: Callable[[], int | None]) -> None:
    """Frames the sender packetises without encoding carry ``level()`` (-dBov; None: none) in the RTP
    audio-level extension, as frames aiortc encodes itself do."""
    next_encoded_frame: Callable[[Any], Awaitable[RTCEncodedFrame | None]] = _require(sender, NEXT_ENCODED_FRAME)

    async def with_audio_level(codec: Any) -> RTCEncodedFrame | None:
        frame = await next_encoded_frame(codec)
        if frame is not None and frame.audio_level is None:
            frame.audio_level = level()
        return frame

    setattr(sender, NEXT_ENCODED_FRAME.attribute, with_audio_level)


def sender_clock(sender: RTCRtpSender) -> tuple[int, int] | None:
    """(NTP time, RTP timestamp) of the sender's last packet, i.e. its next RTCP sender report; None before
    its first packet. Diagnostics: None too where aiortc moved them (the compatibility test names which)."""
    ntp = getattr(sender, SENDER_NTP.attribute, 0)
    rtp = getattr(sender, SENDER_RTP.attribute, None)
    return (ntp, rtp) if ntp and rtp is not None else None


# -- receivers -----------------------------------------------------------------------------------------------

def replace_jitter_buffer(receiver: RTCRtpReceiver, buffer: JitterBuffer) -> None:
    """Packets of ``receiver`` wait in ``buffer`` before decoding (call before the first packet)."""
    _require(receiver, RECEIVER_JITTER_BUFFER)
    setattr(receiver, RECEIVER_JITTER_BUFFER.attribute, buffer)


def jitter_buffer(receiver: RTCRtpReceiver) -> JitterBuffer:
    buffer: JitterBuffer = _require(receiver, RECEIVER_JITTER_BUFFER)
    return buffer


def packet_frame_data(packet: RtpPacket) -> bytes:
    """The depayloaded frame the receiver attached to ``packet`` (what its jitter buffer hands on)."""
    data: bytes = _require(packet, PACKET_DATA)
    return data


def set_frame_data(packet: RtpPacket, data: bytes) -> RtpPacket:
    """Attach a depayloaded frame to ``packet`` as aiortc's receiver does before its jitter buffer (tests)."""
    setattr(packet, PACKET_DATA.attribute, data)
    return packet


def listen_rtcp(receiver: RTCRtpReceiver, listener: Callable[[Any], None]) -> None:
    """``listener(packet)`` sees every RTCP packet the receiver handles, before it does."""
    handle = _require(receiver, RECEIVER_RTCP)

    async def listening(packet: Any) -> None:
        listener(packet)
        await handle(packet)

    setattr(receiver, RECEIVER_RTCP.attribute, listening)


def rtp_timestamp_origin(receiver: RTCRtpReceiver) -> int | None:
    """The RTP timestamp received pts count from (aiortc rebases them to 0); None before the first frame."""
    mapper = _require(receiver, RECEIVER_TIMESTAMP_MAPPER)
    origin = _require(mapper, MAPPER_ORIGIN)
    return None if origin is None else int(origin)
