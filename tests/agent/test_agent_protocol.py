"""Wire-format parsing and PCM resampling of the agent socket (no server needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avatarstream.realtime.transports.agent.protocol import (
    MAX_FRAME_SECONDS,
    PcmResampler,
    ProtocolError,
    decode_pcm16,
    error_message,
    max_frame_bytes,
    parse_control,
)


def test_start_message_declares_rate():
    assert parse_control('{"type": "start", "sample_rate": 24000}').sample_rate == 24000
    assert parse_control('{"type": "end_of_utterance"}').type == "end_of_utterance"
    msg = parse_control('{"type": "set_controls", "controls": {"head_motion_scale": 0.5}}')
    assert msg.controls == {"head_motion_scale": 0.5}


@pytest.mark.parametrize(
    "text, code",
    [
        ('{"type": "start", "sample_rate": 44100}', "bad_sample_rate"),
        ('{"type": "start", "sample_rate": true}', "bad_sample_rate"),
        ('{"type": "start"}', "bad_sample_rate"),
        ("not json", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "set_controls", "controls": 3}', "bad_controls"),
    ],
)
def test_bad_text_messages_have_clear_codes(text, code):
    with pytest.raises(ProtocolError) as info:
        parse_control(text)
    assert info.value.code == code
    assert str(info.value)  # a human-readable message too


def test_pcm_frames_are_checked():
    assert decode_pcm16(np.arange(10, dtype="<i2").tobytes(), 16000).tolist() == list(range(10))
    with pytest.raises(ProtocolError, match="2 bytes per sample") as info:
        decode_pcm16(b"\x00\x01\x02", 16000)
    assert info.value.code == "odd_length"
    big = bytes(max_frame_bytes(48000) + 2)
    with pytest.raises(ProtocolError, match="split it") as info:
        decode_pcm16(big, 48000)
    assert info.value.code == "frame_too_large"
    assert max_frame_bytes(16000) == int(16000 * MAX_FRAME_SECONDS) * 2
    assert json.loads(error_message("odd_length", "x")) == {"type": "error", "code": "odd_length", "message": "x"}


@pytest.mark.parametrize("rate", [16000, 24000, 48000])
def test_streaming_resampler_keeps_tone_and_length(rate):
    seconds, f0 = 1.0, 440.0
    t = np.arange(int(rate * seconds)) / rate
    pcm = (0.5 * np.sin(2 * np.pi * f0 * t) * 32767).astype(np.int16)
    rs = PcmResampler(rate)
    chunks = [rs.convert(c) for c in np.array_split(pcm, 37)]  # uneven frame sizes
    out = np.concatenate(chunks + [rs.flush()])
    assert abs(out.size - 16000 * seconds) <= 2
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    peak_hz = np.argmax(spectrum) * 16000 / out.size
    assert abs(peak_hz - f0) < 3
    mid = out[2000:-2000]
    assert 0.45 < np.abs(mid).max() < 0.55  # amplitude preserved, no clicks at frame edges
    # the resampler is reusable after a flush (next utterance)
    again = np.concatenate([rs.convert(pcm[: rate // 10]), rs.flush()])
    assert abs(again.size - 1600) <= 2
