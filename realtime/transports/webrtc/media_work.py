"""What a watched session's media costs beyond its engine, per frame, done for real with this transport's code:
the per-frame work of admission's start-up calibration (``realtime/session/calibration.py``).

A watched session (shared encoding, one WebRTC viewer) does per 40 ms frame, besides rendering it:

* **video encoding**: one ``FrameEncoder.encode`` of the frame at the server's settings (``shared_video.py``);
* **Opus encoding**: the frame's 40 ms of 16 kHz audio upsampled to 48 kHz once and encoded as two 20 ms
  packets, the shared audio encoder's own code (``shared_audio.py``: ``Upsampler16kTo48k``, ``encode_tick``);
* **RTP + SRTP**: the video packet and both audio packets packetised by aiortc's codec packetisers
  (``Encoder.pack``, as its sender does for a packet-yielding track), each payload an ``RtpPacket`` with the
  header extensions aiortc's sender sets (mid, abs-send-time; the audio level on audio), serialised, protected
  by libsrtp (pylibsrtp) with the first SRTP profile aiortc offers, and sent as one UDP datagram to a loopback
  socket of its own (a sender's ``sendto``; the datagrams are never read).

``session_media_work(encoding)`` returns these as three ``FrameWork`` terms that the calibration measures one
by one; ``close()`` releases the encoders and sockets once the calibration is done. What it leaves out is the
event loop's own share (the session clock's wake-ups, the senders' coroutines, RTCP, ICE consent): see
docs/server.md, "Admission", for what a watched session measured against it.
"""

from __future__ import annotations

import os
import socket
from contextlib import suppress

import av
import numpy as np
from aiortc import clock
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcdtlstransport import SRTP_PROFILES
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from pylibsrtp import Policy, Session

from avatarstream.engines.base import AvatarFrame
from avatarstream.realtime.clock import AUDIO_FRAMES_PER_VIDEO_FRAME, AUDIO_SAMPLES_PER_FRAME, VIDEO_PTS_PER_FRAME
from avatarstream.realtime.session.calibration import FrameWork
from avatarstream.realtime.transports.webrtc.audio_convert import Upsampler16kTo48k
from avatarstream.realtime.transports.webrtc.shared_audio import audio_level_dbov, encode_tick, opus_encoder
from avatarstream.realtime.transports.webrtc.video_encoder import FrameEncoder
from avatarstream.realtime.video_settings import VideoEncoding

# the header extensions aiortc's sender writes on every packet (ids as a browser's offer numbers them)
MID, ABS_SEND_TIME, AUDIO_LEVEL = 1, 2, 3
EXTENSIONS = (RTCRtpHeaderExtensionParameters(MID, "urn:ietf:params:rtp-hdrext:sdes:mid"),
              RTCRtpHeaderExtensionParameters(ABS_SEND_TIME,
                                              "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
              RTCRtpHeaderExtensionParameters(AUDIO_LEVEL, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"))
VIDEO_PAYLOAD_TYPE, AUDIO_PAYLOAD_TYPE = 96, 111


class _RtpStream:
    """One sender's RTP stream: a packet's payloads -> RTP packets with aiortc's header extensions -> SRTP ->
    one datagram each."""

    def __init__(self, ssrc: int, payload_type: int, srtp: Session, sock: socket.socket,
                 to: tuple[str, int]) -> None:
        self.ssrc, self.payload_type = ssrc, payload_type
        self._srtp, self._sock, self._to = srtp, sock, to
        self._extensions = HeaderExtensionsMap()
        self._extensions.configure(RTCRtpParameters(headerExtensions=list(EXTENSIONS)))
        self._sequence = 0
        self.packets = 0

    def send(self, payloads: list[bytes], timestamp: int, audio_level: int | None = None) -> None:
        for i, payload in enumerate(payloads):
            packet = RtpPacket(payload_type=self.payload_type, sequence_number=self._sequence, timestamp=timestamp,
                               ssrc=self.ssrc, payload=payload, marker=int(i == len(payloads) - 1))
            packet.extensions.mid = "0"
            packet.extensions.abs_send_time = (clock.current_ntp_time() >> 14) & 0x00FFFFFF
            if audio_level is not None:
                packet.extensions.audio_level = (False, -audio_level)
            with suppress(BlockingIOError):  # a full socket buffer drops it, as the kernel would a sender's
                self._sock.sendto(self._srtp.protect(packet.serialize(self._extensions)), self._to)
            self._sequence = (self._sequence + 1) & 0xFFFF
            self.packets += 1


class SessionMediaWork:
    """The three per-frame terms of a watched session's media (see the module docstring), sharing what one
    term hands the next: the encoded video packet and the frame's two Opus packets."""

    def __init__(self, encoding: VideoEncoding) -> None:
        self.encoding = encoding
        self._video: FrameEncoder | None = None
        self._video_packet: av.Packet | None = None
        self._opus = opus_encoder()
        self._upsampler = Upsampler16kTo48k()
        self._audio_packets: list[tuple[av.Packet, int]] = []
        self._tick = 0
        self._pack_video = (Vp8Encoder() if encoding.codec == "vp8" else H264Encoder()).pack
        self._pack_audio = OpusEncoder().pack
        self.srtp_profile = SRTP_PROFILES[0].libsrtp_profile  # what aiortc negotiates first
        self.srtp_key = os.urandom(SRTP_PROFILES[0].key_length + SRTP_PROFILES[0].salt_length)  # this run's only
        srtp = Session(Policy(key=self.srtp_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=self.srtp_profile))
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # where the datagrams go (never read here)
        self.sink.bind(("127.0.0.1", 0))
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        to = self.sink.getsockname()
        self.video_rtp = _RtpStream(1, VIDEO_PAYLOAD_TYPE, srtp, self._sock, to)
        self.audio_rtp = _RtpStream(2, AUDIO_PAYLOAD_TYPE, srtp, self._sock, to)

    def terms(self) -> list[FrameWork]:
        return [FrameWork(f"{self.encoding.codec} encoding", self.encode_video, off_loop=True),  # as shared_video.py
                FrameWork("opus encoding", self.encode_audio),
                FrameWork("rtp + srtp", self.send)]

    def encode_video(self, frame: AvatarFrame, audio: np.ndarray) -> None:
        if self._video is None:
            self._video = FrameEncoder(self.encoding.codec, frame.image.shape[0], self.encoding)
        self._video_packet, _ = self._video.encode(frame.image, frame.index * VIDEO_PTS_PER_FRAME)

    def encode_audio(self, frame: AvatarFrame, audio: np.ndarray) -> None:
        pcm48k = self._upsampler(audio)
        self._audio_packets = []
        for half in range(AUDIO_FRAMES_PER_VIDEO_FRAME):
            pcm = np.ascontiguousarray(pcm48k[half * AUDIO_SAMPLES_PER_FRAME:(half + 1) * AUDIO_SAMPLES_PER_FRAME])
            self._audio_packets.append((encode_tick(self._opus, pcm, self._tick), audio_level_dbov(pcm)))
            self._tick += 1

    def send(self, frame: AvatarFrame, audio: np.ndarray) -> None:
        if self._video_packet is not None:
            self.video_rtp.send(*self._pack_video(self._video_packet))
        for packet, level in self._audio_packets:
            self.audio_rtp.send(*self._pack_audio(packet), audio_level=level)

    def close(self) -> None:
        self._sock.close()
        self.sink.close()


def session_media_work(encoding: VideoEncoding) -> SessionMediaWork:
    """The per-frame media work of a watched session at ``encoding`` (call ``close()`` when done)."""
    return SessionMediaWork(encoding)
