"""The browser page (``web/index.html`` + ``app.js``) in headless Chromium, against the real server
(lite engine, sessions API, the page routes of ``realtime/http/page.py``), with no microphone.

What it shows, each with a screenshot kept under ``test-artifacts/web-page/`` (gitignored):
* before Start the chosen portrait is visible as a still; choosing the cat changes it; an uploaded
  photo without a face (or too large) shows the server's message on the page in plain words; an
  uploaded face becomes the avatar;
* typed text makes the avatar speak: the mouth opening re-detected in the video Chromium received
  follows the level envelope of the audio it played (r >= 0.5, on the sender clock as in
  ``test_browser_e2e.py``); an audio file dropped on the page plays through the avatar too;
* the health panel's fps and A/V offset (from ``getStats()``) agree with what the test measures
  from the received media; the sliders are the engine's declared controls and moving one reaches
  the engine stream on the server;
* a phone-width layout has no horizontal scrolling; Start works from the keyboard alone; with an
  API key set the page asks for it, or reads it from the URL fragment.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import statistics
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web

from avatarstream.engines.registry import engine_capabilities
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http import page as page_routes
from avatarstream.realtime.http.app import create_app
from avatarstream.realtime.http.keys import REGISTRY

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "web-page"
SAY = "Hello there. My name is Ava, and I am a talking portrait. Open wide and say papa, mama, baba."
API_KEY = "page-test-key-8d1f"

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- a server whose engine remembers the controls its streams were given ----------------------------
class RecordingStream:
    def __init__(self, stream, log: list[dict]) -> None:
        self._stream, self._log = stream, log

    def set_controls(self, controls):
        self._log.append(dict(controls))
        return self._stream.set_controls(controls)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class RecordingEngine:
    """The real lite engine; every ``set_controls`` reaching one of its streams is logged."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.controls: list[dict] = []

    def open_stream(self, portrait, **kwargs):
        if kwargs.get("controls"):
            self.controls.append(dict(kwargs["controls"]))
        return RecordingStream(self._engine.open_stream(portrait, **kwargs), self.controls)

    def __getattr__(self, name):
        return getattr(self._engine, name)


class PageServer:
    def __init__(self, url: str, app: web.Application, engine: RecordingEngine, http: aiohttp.ClientSession):
        self.url, self.app, self.engine, self.http = url, app, engine, http

    @property
    def sessions(self) -> int:
        return len(self.app[REGISTRY])

    async def sender_samples(self, session_id: str, token: str) -> list[dict]:
        async with self.http.get(f"{self.url}/stats/{session_id}", headers={"Authorization": f"Bearer {token}"}) as r:
            return (await r.json())["senders"] if r.status == 200 else []


async def _start(engine: RecordingEngine, **config) -> tuple[PageServer, web.AppRunner]:
    cfg = ServerConfig(engine="lite", size=512, max_sessions=3, port=0, admission=False, engine_loader=lambda name, **o: engine,
                       **config)
    app = create_app(cfg)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return PageServer(f"http://127.0.0.1:{port}", app, engine, aiohttp.ClientSession()), runner


@pytest.fixture(scope="module")
def lite(engine_loader):
    return engine_loader("lite")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(lite):
    srv, runner = await _start(RecordingEngine(lite), api_key="")
    yield srv
    await srv.http.close()
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser():
    if shutil.which(CHROMIUM) is None:
        pytest.skip("needs Debian chromium (/usr/bin/chromium)")
    playwright_api = pytest.importorskip("playwright.async_api", reason="needs playwright")
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


async def open_page(browser, url: str, *, width: int = 1200, height: int = 1000):
    page = await browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status == 404 else None)
    page.errors = errors
    await page.goto(url)
    await page.wait_for_function("window.avatarStats.ready === true", timeout=15000)
    return page


async def still_state(page) -> dict:
    return await page.evaluate("""() => {
        const img = document.getElementById('still'), box = img.getBoundingClientRect();
        return {src: img.src, complete: img.complete, w: img.naturalWidth, h: img.naturalHeight,
                visible: getComputedStyle(img).visibility === 'visible' && box.width > 100 && box.height > 100,
                videoVisible: getComputedStyle(document.getElementById('avatar')).visibility === 'visible'};
    }""")


def faceless_png() -> bytes:
    """A smooth colour gradient: an image, but no face in it."""
    y, x = np.mgrid[0:300, 0:400]
    img = np.stack([x * 255 // 400, y * 255 // 300, np.full_like(x, 120)], axis=-1).astype(np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def huge_header_png() -> bytes:
    """A small PNG whose header claims 10000 x 10000 pixels (refused from the header, before decoding)."""
    data = bytearray(faceless_png())
    data[16:24] = (10000).to_bytes(4, "big") * 2
    return bytes(data)


# ---- the routes alone ------------------------------------------------------------------------------
async def test_discovery_and_portrait_routes(server):
    http, url = server.http, server.url
    info = await (await http.get(f"{url}/v1/server")).json()
    assert info["api_key_required"] is False and info["default_engine"] == "lite"
    assert info["speech_synthesis"] is (shutil.which("espeak-ng") is not None)
    engines = await (await http.get(f"{url}/v1/engines")).json()
    lite = next(e for e in engines["engines"] if e["name"] == "lite")
    assert engines["default"] == "lite"
    assert {c["name"]: (c["min"], c["max"]) for c in lite["controls"]} == dict(engine_capabilities("lite").controls)
    assert all(engine_capabilities(e["name"]).streams for e in engines["engines"])
    portraits = await (await http.get(f"{url}/v1/portraits")).json()
    assert {p["id"]: p["kind"] for p in portraits["portraits"]} == {"astronaut": "human", "cat": "animal"}
    cat = await (await http.get(f"{url}/v1/portraits/cat.jpg")).read()
    assert cat == (REPO / "engines" / "lite" / "portraits" / "cat.jpg").read_bytes()
    missing = await http.get(f"{url}/v1/portraits/dog.jpg")
    assert missing.status == 404 and (await missing.json())["error"] == "not_found"

    async with http.post(f"{url}/v1/sessions", json={"image": "cat", "size": 256}) as r:
        created = await r.json()
    prefix = f"{url}/v1/sessions/{created['id']}"
    assert (await http.get(f"{prefix}/portrait.jpg")).status == 401
    resp = await http.get(f"{prefix}/portrait.jpg", params={"token": created["token"]})
    assert resp.status == 200 and resp.content_type == "image/jpeg"
    still = cv2.imdecode(np.frombuffer(await resp.read(), np.uint8), cv2.IMREAD_COLOR)
    assert still.shape[:2] == (300, 451)  # the portrait itself (under 512 px: not scaled)
    offer = await http.post(f"{prefix}/offer", json={"sdp": "v=0", "type": "offer", "microphone": "yes"},
                            headers={"Authorization": f"Bearer {created['token']}"})
    assert offer.status == 400 and "microphone" in (await offer.json())["message"]
    assert (await http.delete(prefix, headers={"Authorization": f"Bearer {created['token']}"})).status == 204


async def test_say_route(server, monkeypatch):
    http, url = server.http, server.url
    async with http.post(f"{url}/v1/sessions", json={"size": 256}) as r:
        created = await r.json()
    prefix, auth = f"{url}/v1/sessions/{created['id']}", {"Authorization": f"Bearer {created['token']}"}
    try:
        bad = [{}, {"text": "  "}, {"text": "x" * (page_routes.MAX_SAY_CHARS + 1)}, {"text": "hi", "voice": "-x /etc"},
               {"text": "hi", "words_per_minute": 5}, {"text": "hi", "words_per_minute": True}]
        for body in bad:
            resp = await http.post(f"{prefix}/say", json=body, headers=auth)
            assert resp.status == 400, body
        assert (await http.post(f"{prefix}/say", json={"text": "hi"})).status == 401
        if shutil.which("espeak-ng") is not None:
            resp = await http.post(f"{prefix}/say", json={"text": "Hello there."}, headers=auth)
            reply = await resp.json()
            assert resp.status == 202 and 0.5 < reply["seconds"] < 3 and reply["queued_seconds"] > 0
            resp = await http.post(f"{prefix}/say", json={"text": "hi", "voice": "xx-nosuchvoice"}, headers=auth)
            assert resp.status == 400 and "voice" in (await resp.json())["message"]
        monkeypatch.setattr(page_routes, "ESPEAK", "espeak-ng-absent-on-purpose")
        resp = await http.post(f"{prefix}/say", json={"text": "Hello"}, headers=auth)
        body = await resp.json()
        assert resp.status == 501 and body["error"] == "speech_unavailable" and "espeak-ng" in body["message"]
        info = await (await http.get(f"{url}/v1/server")).json()
        assert info["speech_synthesis"] is False
    finally:
        await http.delete(prefix, headers=auth)


# ---- the page ----------------------------------------------------------------------------------------
async def test_portrait_still_choice_and_upload_errors(server, browser, shots):
    page = await open_page(browser, server.url + "/")
    try:
        before = await still_state(page)
        assert before["src"].endswith("/v1/portraits/astronaut.jpg")
        assert before["complete"] and before["w"] == 512 and before["visible"] and not before["videoVisible"]
        assert server.sessions == 0  # a built-in portrait is shown without starting anything
        await page.screenshot(path=str(shots / "01-still-before-start.png"), full_page=True)

        await page.check("#demo-cat")
        await page.wait_for_function("document.getElementById('still').src.endsWith('/cat.jpg')")
        await page.wait_for_function("document.getElementById('still').naturalWidth === 451")
        assert await page.input_value("#kind") == "animal"
        await page.screenshot(path=str(shots / "02-cat-chosen.png"), full_page=True)

        # a photo with no face: the server's 422 message, in plain words, on the page
        form = aiohttp.FormData({"kind": "auto"})  # an upload is searched for any face (not the cat's "animal")
        form.add_field("image", faceless_png(), filename="gradient.png", content_type="image/png")
        direct = await server.http.post(f"{server.url}/v1/sessions", data=form)
        server_message = (await direct.json())["message"]
        assert direct.status == 422
        await page.set_input_files("#photo", files=[{"name": "gradient.png", "mimeType": "image/png",
                                                     "buffer": faceless_png()}])
        await page.wait_for_selector("#message:not([hidden])")
        shown = await page.inner_text("#message")
        assert shown.startswith("No face was found in this photo.") and server_message in shown
        assert (await still_state(page))["src"].endswith("/cat.jpg")  # the previous choice stays
        assert await page.input_value("#kind") == "animal" and await page.input_value("#photo") == ""
        assert await page.is_checked("#demo-cat")
        await page.screenshot(path=str(shots / "03-no-face-message.png"), full_page=True)

        await page.set_input_files("#photo", files=[{"name": "huge.png", "mimeType": "image/png",
                                                     "buffer": huge_header_png()}])
        await page.wait_for_function("document.getElementById('message').textContent.includes('too large')")
        shown = await page.inner_text("#message")
        assert shown.startswith("This file is too large.") and "10000x10000 pixels" in shown
        assert server.sessions == 0

        # a photo with a face becomes the avatar: its still comes from the session
        face = (REPO / "engines" / "lite" / "portraits" / "astronaut.jpg").read_bytes()
        await page.set_input_files("#photo", files=[{"name": "me.jpg", "mimeType": "image/jpeg", "buffer": face}])
        await page.wait_for_function("document.getElementById('still').src.includes('/portrait.jpg?token=')")
        await page.wait_for_function("document.getElementById('still').naturalWidth === 512")
        assert await page.is_hidden("#message") and server.sessions == 1
        assert not await page.is_checked("#demo-cat") and not await page.is_checked("#demo-astronaut")
        await page.screenshot(path=str(shots / "04-uploaded-photo.png"), full_page=True)

        await page.check("#demo-astronaut")  # back to a built-in portrait: the upload's session ends
        await page.wait_for_function("document.getElementById('still').src.endsWith('/astronaut.jpg')")
        for _ in range(300):  # the bound only ends a hang
            if server.sessions == 0:
                break
            await asyncio.sleep(0.1)
        assert server.sessions == 0
        assert page.errors == []
    finally:
        await page.close()


def measured_av_offset_ms(rec: dict, senders: list[dict], SenderClock, audio_device_delay_s: float) -> float:
    """How much later than audio the video is shown, relative to when the sender sent each: the
    median of (display time - sender time) over the frames Chromium presented, minus the same over
    the audio packets it played out plus the audio device's own playout delay (what is heard lags
    the packets handed to the device by that much)."""
    e2e = _load("test_browser_e2e")
    video_clock = e2e.sender_clock(senders, "video", 90_000, SenderClock)
    audio_clock = e2e.sender_clock(senders, "audio", 48_000, SenderClock)
    video = [(rec["timeOrigin"] + f["display"]) / 1000 - video_clock.time_of(f["rtp"]) for f in rec["frames"]]
    audio = [a["time"] / 1000 - audio_clock.time_of(a["rtp"]) for a in rec["audio"]]
    return 1000 * (statistics.median(video) - statistics.median(audio) - audio_device_delay_s)


async def record_health(page, seconds: float, sample_senders) -> tuple[list[dict], list[dict]]:
    """Sample the page's health numbers and the server's sender clock for ``seconds``."""
    health, senders = [], []
    loop = asyncio.get_running_loop()
    t_end, next_health = loop.time() + seconds, 0.0
    while loop.time() < t_end:
        senders += await sample_senders()
        if loop.time() >= next_health:
            # read at one instant: the panel's text, the page's figure, and the getStats() report it came from
            health.append(await page.evaluate(
                "({fps: avatarStats.fps, av: avatarStats.avOffsetMs, rtt: avatarStats.rttMs, "
                "jitter: avatarStats.jitterVideoMs, panel_fps: document.getElementById('h-fps').textContent, "
                "report_fps: prevStats.video ? (prevStats.video.framesPerSecond ?? null) : null})"))
            next_health = loop.time() + 0.5
        await asyncio.sleep(0.02)
    return health, senders


@pytest.mark.timeout(300)
async def test_typed_text_speaks_health_and_sliders(server, browser, shots, lite, tmp_path):
    from conftest import read_wav, speak

    e2e, browser_e2e = _load("test_aiortc_e2e"), _load("test_browser_e2e")
    speech, rate = read_wav(speak(SAY, tmp_path / "say.wav"))  # what the server's espeak-ng says (150 wpm)
    page = await open_page(browser, server.url + "/")
    try:
        # the sliders are the engine's declared controls
        sliders = await page.eval_on_selector_all(
            "#sliders input[type=range]", "els => els.map(e => [e.name, Number(e.min), Number(e.max)])")
        assert {n: (lo, hi) for n, lo, hi in sliders} == dict(engine_capabilities("lite").controls)

        await page.evaluate("crop => window.avatarRecorder.start(true, crop)", browser_e2e.face_crop(lite))
        await page.click("#start")
        await page.wait_for_function("window.avatarStats.framesDecoded > 0", timeout=20000)
        stats0 = await page.evaluate("({...window.avatarStats, events: undefined})")
        token = stats0["token"]
        await asyncio.sleep(1.0)

        await page.fill("#say-text", SAY)
        await page.click("#say")  # no microphone: the server speaks the text into the session
        await page.wait_for_function("document.getElementById('say-note').textContent.startsWith('speaking')")
        health, senders = await record_health(page, speech.size / rate + 2.0,
                                              lambda: server.sender_samples(stats0["sessionId"], token))
        stats1 = await page.evaluate("({...window.avatarStats, events: undefined})")
        rec = await page.evaluate("window.avatarRecorder.stop()")
        device_delay = await page.evaluate("""async () => {  // the audio sink's mean playout delay
            let d = null;
            (await pc.getStats()).forEach(r => { if (r.type === 'media-playout') d = r.totalPlayoutDelay / r.totalSamplesCount; });
            return d; }""")
        panel = {k: await page.inner_text(f"#h-{k}") for k in ("state", "fps", "rtt", "jitter", "av")}
        panel["frames"], frames_decoded = await page.evaluate(
            "[document.getElementById('h-frames').textContent, avatarStats.framesDecoded]")
        await page.screenshot(path=str(shots / "05-speaking-typed-text.png"), full_page=True)

        result = {"rec": rec, "stats0": stats0, "stats1": stats1, "senders": senders}
        report = browser_e2e.browser_report(result, speech, rate, e2e.mouth_signal, e2e.SenderClock)
        assert device_delay is not None, "Chromium reports no media-playout stats"
        measured_av = measured_av_offset_ms(rec, senders, e2e.SenderClock, device_delay)
        panel_fps = statistics.median(h["fps"] for h in health[2:])  # reported: a rate on this machine's clock
        panel_av = statistics.median(h["av"] for h in health[2:] if h["av"] is not None)
        print("typed text:", report, "panel:", panel, "panel fps", panel_fps, "panel A/V", panel_av,
              "measured A/V", round(measured_av, 1), "audio device delay", round(1000 * device_delay, 1),
              "health samples", len(health), "with Chromium's framesPerSecond", sum(1 for h in health if h["report_fps"]))
        assert stats1["framesDecoded"] > stats0["framesDecoded"]  # how many in this time is the machine's speed
        assert report["face_found"] >= 0.9
        assert report["audio_vs_speech_r"] >= 0.7, "the audio the page played is not the typed text's speech"
        assert report["mouth_vs_audio_r"] >= 0.5, "the mouth does not follow the spoken text"
        assert panel["state"] == "connected" and "fps" in panel["fps"] and "ms" in panel["rtt"]
        assert "ms" in panel["av"] and panel["jitter"].count("ms") == 2 and int(panel["frames"]) == frames_decoded
        # the panel shows the page's own measured frame rate: the figure of the getStats() report it read
        # (Chromium's framesPerSecond), at every sample, not a rate the test measures on its own clock
        # (where the report has none, or 0, the page falls back to its own count of decoded frames)
        shown = [h for h in health if h["report_fps"]]
        assert len(shown) >= len(health) // 2, health
        for h in shown:
            assert h["fps"] == h["report_fps"] and h["panel_fps"].endswith(" fps"), h
            assert abs(float(h["panel_fps"].split()[0]) - h["fps"]) <= 0.5, h  # shown to the unit
        # within 50 ms (1.25 frames): the panel shows a running median of instantaneous readings, the
        # measurement is one median over the whole recording
        assert panel_av == pytest.approx(measured_av, abs=50.0), "health panel A/V offset vs the received media"

        # a slider moved with the keyboard reaches the engine stream on the server
        await page.focus("#ctl-head_motion_scale")
        await page.keyboard.press("Home")  # the range's minimum, 0
        await page.wait_for_function("document.getElementById('controls-note').textContent"
                                     ".includes('applied head_motion_scale = 0.00')")
        assert {"head_motion_scale": 0.0} in server.engine.controls

        # an audio file dropped on the page plays through the avatar (PCM over the agent socket)
        clip, clip_rate = read_wav(speak("Papa, mama.", tmp_path / "clip.wav"))
        finished_js = "window.avatarStats.events.filter(e => e.type === 'playback_finished')"
        done_before = len(await page.evaluate(finished_js))
        await page.set_input_files("#audio-file", str(tmp_path / "clip.wav"))
        await page.wait_for_function(f"{finished_js}.length > {done_before}", timeout=20000)
        await page.wait_for_function("document.getElementById('say-note').textContent === 'played clip.wav'")
        finished = await page.evaluate(finished_js)
        assert finished[-1]["playback_position"] == pytest.approx(clip.size / clip_rate, abs=0.1)
        assert finished[-1]["interrupted"] is False

        # a dropped connection (the server ends this viewer) comes back without reloading the page
        old_viewer = await page.evaluate("window.avatarStats.viewerId")
        gone = await server.http.delete(f"{server.url}/v1/sessions/{stats0['sessionId']}/whep/{old_viewer}",
                                        headers={"Authorization": f"Bearer {token}"})
        assert gone.status == 204
        await page.wait_for_function("window.avatarStats.reconnects >= 1 && window.avatarStats.framesDecoded > 25 "
                                     f"&& window.avatarStats.viewerId !== '{old_viewer}'", timeout=30000)
        assert await page.evaluate("window.avatarStats.sessionId") == stats0["sessionId"]  # the same session
        await page.wait_for_function("document.getElementById('status').textContent === 'connection: connected'")

        await page.click("#mute")
        assert await page.evaluate("document.getElementById('avatar').muted") is True
        assert await page.get_attribute("#mute", "aria-pressed") == "true" and await page.inner_text("#mute") == "Unmute"
        await page.click("#mute")
        assert await page.evaluate("document.getElementById('avatar').muted") is False

        # Stop ends the session
        await page.click("#start")
        await page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
        assert server.sessions == 0
        assert (await still_state(page))["visible"]
        assert page.errors == []
    finally:
        await page.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def keyed_server(lite):
    srv, runner = await _start(RecordingEngine(lite), api_key=API_KEY)
    yield srv
    await srv.http.close()
    await runner.cleanup()


async def test_phone_width_keyboard_and_api_key(keyed_server, browser, shots):
    phone = {"width": 390, "height": 844}
    page = await open_page(browser, keyed_server.url + "/", **phone)
    try:
        assert await page.is_visible("#key-panel")  # the server needs a key: the page asks for it
        assert await page.evaluate("document.documentElement.scrollWidth") <= phone["width"]  # no sideways scroll
        assert (await still_state(page))["visible"]
        await page.screenshot(path=str(shots / "06-phone-width-asks-for-key.png"), full_page=True)

        await page.click("#start")  # no key yet: nothing is sent, the page says what is missing
        await page.wait_for_selector("#message:not([hidden])")
        assert "API key" in await page.inner_text("#message") and keyed_server.sessions == 0
        assert await page.evaluate("document.activeElement.id") == "api-key"
        await page.fill("#api-key", "not-the-key")
        await page.click("#start")
        await page.wait_for_function("document.getElementById('message').textContent"
                                     ".startsWith('The server did not accept the API key.')")
        assert keyed_server.sessions == 0 and page.errors == []
    finally:
        await page.close()

    # the key in the URL fragment (never sent to the server in a request line); keyboard only
    page = await open_page(browser, keyed_server.url + f"/#key={API_KEY}", **phone)
    try:
        assert await page.is_hidden("#key-panel") and "key=" not in page.url  # taken out of the address bar
        presses = 0
        while presses < 5 and await page.evaluate("document.activeElement.id") != "start":
            await page.keyboard.press("Tab")
            presses += 1
        assert await page.evaluate("document.activeElement.id") == "start", "Start is not reachable with Tab"
        assert presses <= 2  # the skip link, then Start
        await page.keyboard.press("Enter")
        await page.wait_for_function("window.avatarStats.framesDecoded > 25", timeout=20000)
        await page.wait_for_function("document.getElementById('screen').classList.contains('live')")
        state = await still_state(page)
        assert state["videoVisible"] and not state["visible"] and keyed_server.sessions == 1
        assert await page.evaluate("document.documentElement.scrollWidth") <= phone["width"]
        await page.screenshot(path=str(shots / "07-phone-width-live.png"), full_page=True)
        assert await page.evaluate("document.activeElement.id") == "start"
        await page.keyboard.press("Space")  # Stop, still from the keyboard
        await page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
        assert keyed_server.sessions == 0 and page.errors == []
    finally:
        await page.close()
