"""Routes the browser page (``web/index.html``) needs beside the sessions API.

    GET  /v1/server                         {api_key_required, speech_synthesis, default_engine, default_portrait, limits}
    GET  /v1/engines                        the streaming engines: sizes and live controls with their ranges
    GET  /v1/portraits                      the built-in portraits: id, kind, preview URL
    GET  /v1/portraits/{id}.jpg             a built-in portrait (the file itself)
    GET  /v1/sessions/{id}/portrait.jpg     the portrait a session animates (JPEG, longest side <= 512 px)
    POST /v1/sessions/{id}/say              JSON {text, voice?, words_per_minute?} -> 202: espeak-ng speaks it
                                            into the session; 501 speech_unavailable without espeak-ng

The discovery routes (server, engines, portraits) are public: they describe the installation,
not any session. The session routes need the session's token or the API key (``auth.py``);
``?token=`` works for an ``<img src>``, and the access log never shows query strings.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import wave
from io import BytesIO
from math import gcd

import cv2
import numpy as np
from aiohttp import web
from scipy.signal import resample_poly

from avatarstream.engines.base import SAMPLE_RATE
from avatarstream.engines.portraits import DEMO_PORTRAITS, MAX_IMAGE_BYTES
from avatarstream.engines.registry import engine_capabilities, engine_names
from avatarstream.realtime.errors import BadRequest, NotFound, ServerError, echo
from avatarstream.realtime.http.auth import authorize_session
from avatarstream.realtime.http.bodies import read_json_object
from avatarstream.realtime.http.keys import CONFIG, REGISTRY
from avatarstream.realtime.session.session import AvatarSession

ESPEAK = "espeak-ng"
MAX_SAY_CHARS = 1000  # one utterance of typed text (about a minute of speech)
SAY_WPM_RANGE = (80, 400)  # espeak-ng -s
DEFAULT_SAY_WPM = 150
SAY_TIMEOUT_S = 30.0  # espeak-ng is far faster than real time; a stuck process is killed
PREVIEW_MAX_SIDE = 512  # the session portrait preview is scaled down to this
_VOICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+\-]{0,39}")  # espeak-ng voice names: en, en-us, en+f3 ...
DEMO_KIND = {"cat": "animal"}  # demo portraits that are not human faces


class SpeechUnavailable(ServerError):
    """The server has no text-to-speech (espeak-ng is not installed)."""

    status = 501
    code = "speech_unavailable"


def speech_synthesis_available() -> bool:
    return shutil.which(ESPEAK) is not None


def _session(request: web.Request) -> AvatarSession:
    return authorize_session(request, request.app[REGISTRY], request.match_info["id"], request.app[CONFIG].api_key)


def _demo_ids() -> list[str]:
    """Built-in portrait ids, one per image (``human`` is an alias of ``astronaut``)."""
    seen: dict[object, str] = {}
    for name, path in DEMO_PORTRAITS.items():
        seen.setdefault(path, name if name != "human" else "astronaut")
    return list(dict.fromkeys(seen.values()))


# ---- discovery -------------------------------------------------------------------------------------
async def server_info(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    return web.json_response({
        "api_key_required": bool(cfg.api_key),
        "speech_synthesis": speech_synthesis_available(),
        "default_engine": cfg.engine,
        "default_size": cfg.size,
        "default_portrait": "astronaut",
        "limits": {"max_image_bytes": MAX_IMAGE_BYTES, "max_say_chars": MAX_SAY_CHARS,
                   "idle_timeout_s": cfg.idle_timeout},
    })


def engine_description(name: str) -> dict:
    caps = engine_capabilities(name)
    return {
        "name": name,
        "sizes": caps.describe_sizes(),
        "default_size": caps.default_size,
        "controls": [{"name": k, "min": lo, "max": hi} for k, (lo, hi) in caps.controls.items()],
    }


async def engines(request: web.Request) -> web.Response:
    names = [n for n in engine_names() if engine_capabilities(n).streams]
    return web.json_response({"default": request.app[CONFIG].engine,
                              "engines": [engine_description(n) for n in names]})


async def portraits(request: web.Request) -> web.Response:
    return web.json_response({"default": "astronaut", "portraits": [
        {"id": i, "kind": DEMO_KIND.get(i, "human"), "url": f"/v1/portraits/{i}.jpg"} for i in _demo_ids()]})


async def demo_portrait(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in DEMO_PORTRAITS:
        raise NotFound(f"no built-in portrait {echo(name)}; built-in: {', '.join(_demo_ids())}")
    return web.FileResponse(DEMO_PORTRAITS[name], headers={"Cache-Control": "public, max-age=3600"})


def preview_jpeg(image_rgb: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """The portrait as a JPEG whose longest side is at most ``max_side`` pixels."""
    h, w = image_rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        image_rgb = cv2.resize(image_rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


async def session_portrait(request: web.Request) -> web.Response:
    session = _session(request)
    loop = asyncio.get_running_loop()
    data = await loop.run_in_executor(None, preview_jpeg, session.portrait.image)
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "private, no-store"})


# ---- typed text -> speech ---------------------------------------------------------------------------
def wav_to_engine_rate(wav: bytes) -> np.ndarray:
    """A mono/stereo 16-bit WAV (espeak-ng writes 22050 Hz) -> float32 mono at the engine rate."""
    with wave.open(BytesIO(wav)) as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise RuntimeError(f"{ESPEAK} wrote {8 * width}-bit samples, expected 16-bit")
    pcm = np.frombuffer(raw[: len(raw) // (2 * channels) * 2 * channels], "<i2").reshape(-1, channels)
    audio = pcm.mean(axis=1).astype(np.float32) / 32768.0
    if rate != SAMPLE_RATE:
        g = gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return audio


async def synthesize(text: str, voice: str | None, words_per_minute: int) -> np.ndarray:
    """``text`` spoken by espeak-ng, as float32 mono at the engine rate (text on stdin, never argv)."""
    exe = shutil.which(ESPEAK)
    if exe is None:
        raise SpeechUnavailable(f"this server cannot speak typed text: {ESPEAK} is not installed "
                                f"(apt-get install {ESPEAK}); send audio instead (agent socket or microphone)")
    args = [exe, "--stdout", "--stdin", "-s", str(words_per_minute)] + (["-v", voice] if voice else [])
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(text.encode("utf-8")), SAY_TIMEOUT_S)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise ServerError(f"{ESPEAK} took longer than {SAY_TIMEOUT_S:g} s", code="speech_failed") from None
    if proc.returncode != 0 or not out:
        detail = err.decode("utf-8", "replace").strip()[:200]
        if voice and "voice" in detail.lower():
            raise BadRequest(f"{ESPEAK} has no voice {echo(voice)}")
        raise ServerError(f"{ESPEAK} failed (exit {proc.returncode}): {detail}", code="speech_failed")
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, wav_to_engine_rate, out)
    except (wave.Error, EOFError, RuntimeError) as exc:
        raise ServerError(f"{ESPEAK} wrote unreadable audio: {exc}", code="speech_failed") from None


def _say_fields(body: dict) -> tuple[str, str | None, int]:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest('\'text\' must be a non-empty string, e.g. {"text": "Hello!"}')
    text = text.strip()
    if len(text) > MAX_SAY_CHARS:
        raise BadRequest(f"'text' has {len(text)} characters; the limit is {MAX_SAY_CHARS} per request")
    voice = body.get("voice")
    if voice is not None and (not isinstance(voice, str) or not _VOICE.fullmatch(voice)):
        raise BadRequest(f"'voice' must be an {ESPEAK} voice name such as 'en' or 'en-us', got {echo(voice)}")
    wpm = body.get("words_per_minute", DEFAULT_SAY_WPM)
    lo, hi = SAY_WPM_RANGE
    if isinstance(wpm, bool) or not isinstance(wpm, int) or not lo <= wpm <= hi:
        raise BadRequest(f"'words_per_minute' must be an integer from {lo} to {hi}, got {echo(wpm)}")
    return text, voice, wpm


async def say(request: web.Request) -> web.Response:
    session = _session(request)
    text, voice, wpm = _say_fields(await read_json_object(request, '{"text": "Hello!"}'))
    audio = await synthesize(text, voice, wpm)
    if session.closed:
        raise NotFound("no such session (ended or timed out)")
    utterance = session.push_audio(audio)  # BufferFull -> 429
    session.end_utterance()
    return web.json_response({"utterance": utterance, "seconds": round(audio.size / SAMPLE_RATE, 3),
                              "queued_seconds": round(session.queued_seconds, 3)}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/server", server_info)
    app.router.add_get("/v1/engines", engines)
    app.router.add_get("/v1/portraits", portraits)
    app.router.add_get("/v1/portraits/{name}.jpg", demo_portrait)
    app.router.add_get("/v1/sessions/{id}/portrait.jpg", session_portrait)
    app.router.add_post("/v1/sessions/{id}/say", say)
