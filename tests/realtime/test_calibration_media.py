"""The WebRTC transport's share of admission's start-up calibration (``realtime/transports/webrtc/media_work.py``):
real work on real frames. The terms it measures are what a watched session sends: the datagrams it wrote decrypt
with its SRTP key into RTP packets that depayload to a decodable VP8 stream and two Opus packets per frame."""

from __future__ import annotations

import av
import numpy as np
from aiortc.codecs.vpx import vp8_depayload
from aiortc.rtp import RtpPacket
from pylibsrtp import Policy, Session

from avatarstream.engines.base import AvatarFrame
from avatarstream.realtime.session.calibration import calibration_audio
from avatarstream.realtime.transports.webrtc.media_work import (AUDIO_PAYLOAD_TYPE, VIDEO_PAYLOAD_TYPE,
                                                                session_media_work)
from avatarstream.realtime.video_settings import VideoEncoding

FRAMES = 10
SIZE = 64


def _frames() -> list[tuple[AvatarFrame, np.ndarray]]:
    audio = calibration_audio(FRAMES)
    out = []
    for i in range(FRAMES):
        image = np.full((SIZE, SIZE, 3), 60, np.uint8)
        image[20:44, 10 + 2 * i:30 + 2 * i] = (230, 180, 40)  # a moving block: inter frames carry motion
        out.append((AvatarFrame(i, image), audio[i * 640:(i + 1) * 640]))
    return out


def test_media_work_sends_what_a_watched_session_sends():
    work = session_media_work(VideoEncoding(codec="vp8"))
    try:
        terms = work.terms()
        assert [t.name for t in terms] == ["vp8 encoding", "opus encoding", "rtp + srtp"]
        for frame, audio in _frames():
            for term in terms:
                term.run(frame, audio)
        work.sink.setblocking(False)
        datagrams = []
        while True:
            try:
                datagrams.append(work.sink.recv(2048))
            except BlockingIOError:
                break
    finally:
        work.close()
    rx = Session(Policy(key=work.srtp_key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=work.srtp_profile))
    packets = [RtpPacket.parse(rx.unprotect(d)) for d in datagrams]
    assert len(packets) == work.video_rtp.packets + work.audio_rtp.packets
    video = [p for p in packets if p.payload_type == VIDEO_PAYLOAD_TYPE]
    audio = [p for p in packets if p.payload_type == AUDIO_PAYLOAD_TYPE]
    assert sum(p.marker for p in video) == FRAMES and len(audio) == 2 * FRAMES  # a frame, two 20 ms audio ticks

    vp8 = av.CodecContext.create("libvpx", "r")
    decoded, frame = [], b""
    for p in video:
        frame += vp8_depayload(p.payload)
        if p.marker:
            decoded += vp8.decode(av.Packet(frame))
            frame = b""
    assert len(decoded) == FRAMES and (decoded[-1].width, decoded[-1].height) == (SIZE, SIZE)
    opus = av.CodecContext.create("opus", "r")
    samples = sum(f.samples for p in audio for f in opus.decode(av.Packet(p.payload)))
    assert samples == 2 * FRAMES * 960  # every packet decodes to 20 ms at 48 kHz
    assert [p.timestamp for p in audio] == [960 * k for k in range(2 * FRAMES)]


def test_media_work_packetises_h264_too():
    """A server configured for H.264 calibrates with its encoder and aiortc's H.264 packetiser."""
    work = session_media_work(VideoEncoding(codec="h264"))
    try:
        terms = work.terms()
        assert terms[0].name == "h264 encoding" and terms[0].off_loop and not terms[1].off_loop
        for frame, audio in _frames():
            for term in terms:
                term.run(frame, audio)
    finally:
        work.close()
    assert work.video_rtp.packets >= FRAMES and work.audio_rtp.packets == 2 * FRAMES
