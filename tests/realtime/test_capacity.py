"""Capacity: shared per-session encoding, encoder settings, admission by measured load, the bench."""

from __future__ import annotations

import asyncio
import contextlib
import json
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from avatarstream.bench.viewer_recorder import RecordingViewer
from avatarstream.realtime.client import AvatarClient
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.app import create_app
from avatarstream.realtime.http.keys import REGISTRY
from avatarstream.realtime.session.session import AvatarSession
from avatarstream.realtime.transports.webrtc.shared_audio import (SESSION_AUDIO_ENCODERS, SharedAudioEncoder,
                                                                   audio_level_dbov)
from avatarstream.realtime.transports.webrtc.shared_video import SESSION_ENCODERS
from avatarstream.realtime.transports.webrtc.video_encoder import FrameEncoder
from avatarstream.realtime.video_settings import VideoEncoding

SIZE = 128


async def _serve(**config):
    app = create_app(ServerConfig(engine="lite", size=SIZE, port=0, **config))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", app[REGISTRY], runner


@contextlib.asynccontextmanager
async def _one_session(**config) -> AsyncIterator[tuple[aiohttp.ClientSession, AvatarClient, AvatarSession]]:
    """A server (``_serve(**config)``) with one session an ``AvatarClient`` created; the HTTP client and the
    server are closed on leaving."""
    url, registry, runner = await _serve(**config)
    http = aiohttp.ClientSession()
    try:
        client = AvatarClient(url, http=http)
        await client.create_session(size=SIZE)
        session = registry.get(client.session.id)
        assert session is not None
        yield http, client, session
    finally:
        await http.close()
        await runner.cleanup()


async def _until(predicate, what: str, timeout: float = 30.0) -> None:
    """Wait for ``predicate()`` to hold, however slowly this machine gets there; ``timeout`` only ends a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def _join(http, client) -> RecordingViewer:
    viewer = RecordingViewer(keep_images=True)
    await viewer.join(http, client.session.whep_url, client.session.token)
    await asyncio.wait_for(viewer.first_video.wait(), 20)
    return viewer


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_frame_encoder_roundtrip_and_keyframes(codec):
    """Every encode returns that frame's packet (no lag); a forced keyframe is one; it decodes close."""
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    enc = FrameEncoder(codec, SIZE, VideoEncoding(codec=codec, keyframe_interval_s=60))
    dec = av.CodecContext.create("libvpx" if codec == "vp8" else "h264", "r")
    keys = []
    for i in range(10):
        image = np.roll(base, i, axis=1)
        packet, key = enc.encode(image, i * 3600, keyframe=(i == 6))
        assert packet.pts == i * 3600 and packet.size > 0
        keys.append(key)
        decoded = dec.decode(av.Packet(bytes(packet)))
        assert len(decoded) == 1
    assert keys[0] and keys[6] and not any(keys[1:6])


def test_shared_encoder_serves_two_viewers_with_one_encode():
    """Two WHEP viewers of one session: both decode the stream; one encoder, one encode per tick;
    the second viewer joins late and starts at a keyframe."""

    async def main():
        async with _one_session() as (http, client, session):
            await _until(lambda: session.clock is not None, "session clock")
            assert session.clock is not None
            before_join = session.clock.current_frame()
            first = await _join(http, client)
            await asyncio.sleep(1.0)
            second = await _join(http, client)
            await _until(lambda: len(session.viewers) == 2 and all(v.video.frames_sent > 10 for v in session.viewers),
                         "10 frames sent to each viewer")
            encoders = SESSION_ENCODERS.encoders_of(session)
            assert len(encoders) == 1 and encoders[0].users == 2
            encoded = encoders[0].stats()["frames"]
            ticks = session.clock.current_frame() + 1 - before_join  # ticks any viewer could have asked for
            sent = [v.video.frames_sent for v in session.viewers]
            # once per tick, not once per viewer: at most the ticks elapsed (whatever either viewer skipped under
            # load), and fewer than the frames the two viewers took together
            print(f"shared encoder: {encoded} encodes over {ticks} ticks, viewers sent {sent}")
            assert encoded <= ticks + 1 and encoded < sum(sent), (encoded, ticks, sent)
            for viewer in (first, second):
                images = [v.image for v in viewer.recording.video[-5:]]
                assert all(im.shape == (SIZE, SIZE, 3) and im.std() > 5 for im in images)  # a picture, not grey
            assert len(first.recording.video) > len(second.recording.video)
            await first.close()
            await second.close()
            # released with its last viewer (once the server has seen both hang up)
            await _until(lambda: SESSION_ENCODERS.encoders_of(session) == [], "release of the shared encoder")
            await client.close()

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["per-viewer", "aiortc", "shared-video"])
def test_other_encoder_modes_stream(mode):
    async def main():
        async with _one_session(video_encoder=mode) as (http, client, session):
            viewer = await _join(http, client)
            # the first frames may be the grey placeholder sent before the engine's first frame
            await _until(lambda: viewer.recording.video[-1].image.std() > 5, "a picture (not grey)")
            await _until(lambda: len(viewer.recording.audio) > 10, "audio")  # audio flows (silence) in every mode
            assert SESSION_AUDIO_ENCODERS.encoder_of(session) is None  # audio shared only in "shared"
            (served,) = session.viewers
            assert (served.stats().details.get("audio_encoder") is not None) == (mode == "per-viewer")
            # video is shared in "shared-video" only
            assert len(SESSION_ENCODERS.encoders_of(session)) == (mode == "shared-video")
            await viewer.close()
            await client.close()

    asyncio.run(main())


def test_health_reports_capacity_and_admission_can_be_off():
    async def main():
        url, registry, runner = await _serve(admission=False)
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{url}/health") as resp:
                cap = (await resp.json())["capacity"]
            assert cap["admission"] is False and cap["target_fps"] == 24.0
            assert registry.load.refusal(100) is None
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="admission headroom"):
        ServerConfig(admission_headroom=1.5)
    with pytest.raises(ValueError, match="mode|EncoderMode|valid"):
        ServerConfig(video_encoder="gpu")
    with pytest.raises(ValueError, match="VP8 speed"):
        ServerConfig(vp8_speed=17)


@pytest.mark.slow  # ~100 s on 2 busy cores: three avatar serve subprocesses
def test_capacity_bench_quick(tmp_path):
    """The tiny capacity bench: 1..2 sessions per mode, both encoder modes, JSON fields and a plot;
    the admission mix: 3 sessions asked, watched at once and late, admission on."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("psutil", reason="psutil is not installed (pip install 'avatarstream[bench]')")
    from avatarstream.cli.bench import BenchOptions
    from avatarstream.bench import capacity

    result = capacity.run_bench(BenchOptions(out_dir=tmp_path, quick=True))
    json.dumps(result)
    assert set(result["servers"]) == {"aiortc", "shared"}
    for server in result["servers"].values():
        assert [p["sessions"] for p in server["by_sessions"]] == [1, 2]
        assert all(p["fps_mean"] > 0 and p["server_cpu_cores"] > 0 for p in server["by_sessions"])
        assert [p["viewers"] for p in server["by_viewers"]] == [1, 2]
    enc = result["encoders"]
    assert "aiortc vp8 (old)" in enc and all(e["frames_decoded"] > 0 and e["psnr_db"] > 25 for e in enc.values())
    assert Path(result["plot"]).exists()
    mix = result["admission_mix"]["settings"]["admission"]  # watched and unwatched sessions, admission on
    assert mix["asked"] == 3 and mix["created"] + len(mix["refused_at_create"]) == 3
    assert mix["viewers_admitted"] + mix["viewers_refused"] == mix["created"] and mix["viewers_admitted"] >= 1
    assert all((p["fps"] is not None) == p["admitted"] for p in mix["sessions"])
    assert all(p["fps"] > 0 for p in mix["sessions"] if p["admitted"])
    assert mix["health"]["capacity"]["summary"] and Path(result["admission_mix"]["plot"]).exists()


def _read_speech(path: Path) -> tuple[np.ndarray, int]:
    """float32 mono samples and rate of the 16-bit ``speech_wav`` fixture."""
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768, w.getframerate()


class _FakeSession:
    """The part of a session a ``SharedAudioEncoder`` reads: 16 kHz slots by content index."""

    delay_frames = 2

    def __init__(self, audio: np.ndarray) -> None:
        self.audio = audio

    def audio_for(self, index: int):
        if index < 0 or (index + 1) * 640 > self.audio.size:
            return None
        return self.audio[index * 640:(index + 1) * 640]


def test_shared_audio_encoder_is_one_continuous_opus_stream(speech_wav):
    """Every tick is encoded once, in order (skipped ticks included), stamped tick * 960 at 48 kHz;
    a late viewer gets the same packets from its join on, and decodes the speech."""
    audio, _ = _read_speech(speech_wav)
    enc = SharedAudioEncoder(_FakeSession(audio[:16000 * 3]))  # slots 0..74: 3 s
    first = [enc.packet_at(t) for t in range(100, 140)]
    assert enc.packet_at(120) is first[20] and enc.packet_at(99) is None  # cached; before the stream
    assert [p.packet.pts for p in first] == [t * 960 for t in range(100, 140)]
    later = enc.packet_at(150)  # nobody asked for 140..149: still encoded, the stream stays continuous
    assert later is not None and enc.packets == 51 and enc.packet_at(145).packet.pts == 145 * 960
    import av

    decoder = av.CodecContext.create("libopus", "r")
    decoder.format, decoder.layout, decoder.sample_rate = "s16", "mono", 48000
    decoded = np.concatenate([f.to_ndarray().reshape(-1) for p in first for f in decoder.decode(p.packet)])
    assert decoded.size == 40 * 960 and np.abs(decoded).max() > 1000  # speech, not silence
    assert max(p.level for p in first) > -50 and enc.packet_at(170).level == -127  # speech; then silence


def test_audio_level_is_aiortcs():
    """The RTP audio level of a shared packet is the one aiortc computes for a raw frame."""
    import av
    from aiortc.rtp import compute_audio_level_dbov

    rng = np.random.default_rng(1)
    for amplitude in (0, 1, 30, 3000, 30000):
        pcm = (rng.standard_normal(960) * amplitude).clip(-32768, 32767).astype(np.int16)
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(pcm.tobytes())
        assert audio_level_dbov(pcm) == compute_audio_level_dbov(frame)


def _aligned_frames(a: list, b: list) -> tuple[int, int, int]:
    """Match viewer ``b``'s decoded audio frames to ``a``'s by content (their RTP origins differ):
    (frames with sound compared, of them bit-identical, offset)."""
    loud = max(b, key=lambda f: float(np.abs(f.samples).sum()))
    offsets = [x.pts - loud.pts for x in a if np.array_equal(x.samples, loud.samples)]
    assert len(offsets) == 1, f"the loudest frame of the second viewer matches {len(offsets)} frames of the first"
    by_pts = {x.pts: x.samples for x in a}
    sounding = [f for f in b if np.abs(f.samples).max() > 0.01 and f.pts + offsets[0] in by_pts]
    same = sum(np.array_equal(f.samples, by_pts[f.pts + offsets[0]]) for f in sounding)
    return len(sounding), same, offsets[0]


def test_shared_audio_two_viewers_decode_identical_audio(speech_wav):
    """Two WHEP viewers of one session, the second joining later: one Opus encoder for both, one
    encode per audio tick; the speech both decode (PyAV's libopus in aiortc's receiver) is the same
    to the bit, sample for sample."""
    async def main():
        async with _one_session() as (http, client, session):
            first = await _join(http, client)
            await asyncio.sleep(1.0)
            second = await _join(http, client)
            await asyncio.sleep(1.0)  # silence: the second viewer's decoder settles on the stream
            encoder = SESSION_AUDIO_ENCODERS.encoder_of(session)
            assert encoder is not None and encoder.users == 2
            served = list(session.viewers)  # the two WebRTC viewers (the agent joins below)
            assert all(v.audio.encoder is encoder for v in served)
            await client.connect(sample_rate=16000)
            audio, _ = _read_speech(speech_wav)
            audio = audio[:5 * 16000]  # its first sentences: seconds of speech, well over 100 sounding frames
            await client.push_audio(audio)
            await client.end_utterance()
            await asyncio.sleep(audio.size / 16000 + 1.0)
            sent = [v.audio.frames_sent for v in served]
            # once per tick, not once per viewer: ticks that a viewer skipped under load are encoded all the same
            # (the stream stays continuous, bar a jump past the cache), so the count is at most the ticks spanned,
            # whatever the machine's speed
            assert encoder.packets <= encoder.ticks_spanned, (encoder.packets, encoder.ticks_spanned, sent)
            assert encoder.packets < sum(sent)  # two viewers took packets of one encode
            compared, same, _ = _aligned_frames(first.recording.audio, second.recording.audio)
            assert compared > 100  # seconds of speech reached both
            assert same == compared, f"{compared - same} of {compared} speech frames differ"
            await first.close()
            await second.close()
            # released with its last viewer (once the server has seen both hang up)
            await _until(lambda: SESSION_AUDIO_ENCODERS.encoder_of(session) is None, "release of the Opus encoder")
            await client.close()

    asyncio.run(main())
