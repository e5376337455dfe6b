"""Python client for the agent API: create a session, push speech, receive playback events.

    async with AvatarClient("http://127.0.0.1:8080") as client:
        info = await client.create_session(image="astronaut")
        await client.connect(sample_rate=24000)
        client.on("playback_finished", lambda ev: print("done", ev))
        await client.push_audio(pcm_bytes)          # as fast as the TTS produces it
        await client.end_utterance()
        await client.wait_for("playback_finished")

Viewers watch with WHEP at ``info.whep_url`` (any WHEP player, or ``web/``).
The wire protocol is described in ``realtime/agent_protocol.py`` and ``docs/agent.md``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

import aiohttp
import numpy as np
from yarl import URL

from avatarstream.realtime.transports.agent.protocol import ACCEPTED_RATES, MAX_FRAME_SECONDS

log = logging.getLogger(__name__)

EventCallback = Callable[[dict], "Awaitable[None] | None"]
CHUNK_SECONDS = 0.1  # push_audio splits audio into frames of this length


class ClientError(Exception):
    """The server refused a request; ``status`` is the HTTP status (0 for socket errors)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


@dataclass(frozen=True)
class SessionInfo:
    """What ``POST /v1/sessions`` returns."""

    id: str
    token: str
    whep_url: str
    offer_url: str
    agent_url: str
    extra: dict[str, Any] = field(default_factory=dict)  # engine, size, fps, unsupported_controls, ...

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "SessionInfo":
        keys = ("id", "token", "whep_url", "offer_url", "agent_url")
        missing = [k for k in keys if k not in body]
        if missing:
            raise ClientError(0, f"session reply lacks {', '.join(missing)}")
        id_, token, whep_url, offer_url, agent_url = (str(body[k]) for k in keys)
        return cls(id_, token, whep_url, offer_url, agent_url, extra={k: v for k, v in body.items() if k not in keys})


class AvatarClient:
    """One avatar session seen from an agent: HTTP for the session, a WebSocket for audio and events."""

    def __init__(self, base_url: str, *, api_key: str | None = None, http: aiohttp.ClientSession | None = None) -> None:
        self.base_url = URL(base_url)
        self.api_key = api_key
        self._http = http
        self._own_http = http is None
        self.session: SessionInfo | None = None
        self.sample_rate: int | None = None
        self.events: list[dict] = []  # every event received, in order
        self._callbacks: dict[str, list[EventCallback]] = {}
        self._ws: aiohttp.ClientWebSocketResponse[bool] | None = None
        self._reader: asyncio.Task | None = None
        self._changed = asyncio.Condition()

    # ---- HTTP ---------------------------------------------------------------------------
    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    def _url(self, absolute_or_path: str) -> URL:
        """Server URLs are resolved against our base URL (the server may sit behind a proxy)."""
        return self.base_url.join(URL(URL(absolute_or_path).path_qs))

    def _auth(self) -> dict[str, str]:
        if self.session is None:
            raise ClientError(0, "no session: call create_session() or attach() first")
        return {"Authorization": f"Bearer {self.session.token}"}

    async def create_session(
        self,
        image: str | Path | bytes = "astronaut",
        *,
        engine: str = "lite",
        size: int = 512,
        fps: int = 25,
        controls: Mapping[str, Any] | None = None,
    ) -> SessionInfo:
        """Create a session. ``image`` is a built-in id ("astronaut", "cat"), a file path or image bytes."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        fields = {"engine": engine, "size": size, "fps": fps, "controls": dict(controls or {})}
        url = self.base_url.join(URL("/v1/sessions"))
        if isinstance(image, (bytes, Path)):
            data = aiohttp.FormData()
            for k, v in fields.items():
                data.add_field(k, json.dumps(v) if isinstance(v, dict) else str(v))
            payload = image if isinstance(image, bytes) else image.read_bytes()
            name = image.name if isinstance(image, Path) else "portrait"
            data.add_field("image", payload, filename=name, content_type="application/octet-stream")
            request = self.http.post(url, data=data, headers=headers)
        else:
            request = self.http.post(url, json={"image": image, **fields}, headers=headers)
        async with request as resp:
            body = await _json_or_error(resp)
        self.session = SessionInfo.from_json(body)
        return self.session

    def attach(self, info: SessionInfo) -> None:
        """Use a session created elsewhere (e.g. by a web backend that hands the agent id + token)."""
        self.session = info

    async def keepalive(self) -> dict:
        async with self.http.post(self._url(f"/v1/sessions/{self.session_id}/keepalive"), headers=self._auth()) as resp:
            return await _json_or_error(resp)

    async def delete_session(self) -> None:
        async with self.http.delete(self._url(f"/v1/sessions/{self.session_id}"), headers=self._auth()) as resp:
            if resp.status not in (200, 204, 404):
                await _json_or_error(resp)

    @property
    def session_id(self) -> str:
        if self.session is None:
            raise ClientError(0, "no session: call create_session() or attach() first")
        return self.session.id

    # ---- agent socket --------------------------------------------------------------------
    async def connect(self, sample_rate: int = 16000) -> dict:
        """Open the agent socket, declare the PCM rate; returns the server's ``ready`` message."""
        if sample_rate not in ACCEPTED_RATES:
            raise ClientError(0, f"sample_rate must be one of {ACCEPTED_RATES}, got {sample_rate}")
        url = self._url(self.session.agent_url if self.session else "")
        try:
            self._ws = await self.http.ws_connect(url, headers=self._auth(), heartbeat=20.0, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            raise ClientError(exc.status, f"agent socket refused: {exc.message}") from None
        self._reader = asyncio.create_task(self._read_events(), name=f"avatar-client-reader-{self.session_id}")
        mark = self.mark()
        await self.send_control({"type": "start", "sample_rate": sample_rate})
        ready = await self.wait_for("ready", start=mark, timeout=10.0)
        self.sample_rate = sample_rate
        return ready

    def on(self, event_type: str, callback: EventCallback) -> None:
        """Call ``callback(event_dict)`` (sync or async) for each event of ``event_type`` ("*" for all)."""
        self._callbacks.setdefault(event_type, []).append(callback)

    async def send_control(self, message: Mapping[str, Any]) -> None:
        await self._socket().send_str(json.dumps(dict(message)))

    async def push_audio(self, pcm: bytes | np.ndarray) -> None:
        """Send speech for the current utterance, as fast as you have it; the avatar paces playback.

        ``pcm`` is s16le mono bytes at the declared rate, or a numpy array (int16, or float in [-1, 1]).
        """
        ws, rate = self._socket(), self.sample_rate or 16000
        data = _to_pcm_bytes(pcm)
        step = 2 * max(1, int(rate * min(CHUNK_SECONDS, MAX_FRAME_SECONDS)))
        for i in range(0, len(data), step):
            await ws.send_bytes(data[i : i + step])

    async def end_utterance(self) -> None:
        await self.send_control({"type": "end_of_utterance"})

    async def interrupt(self) -> None:
        """Drop queued speech; the server acknowledges with ``playback_finished{interrupted: true}``."""
        await self.send_control({"type": "interrupt"})

    async def set_controls(self, controls: Mapping[str, Any], timeout: float = 5.0) -> dict:
        """Change live controls; returns ``{"applied": {...}, "unsupported": {name: reason}}``."""
        mark = self.mark()
        await self.send_control({"type": "set_controls", "controls": dict(controls)})
        reply = await self.wait_for(("controls", "error"), start=mark, timeout=timeout)
        if reply["type"] == "error":
            raise ClientError(0, reply.get("message", "set_controls failed"))
        return reply

    def mark(self) -> int:
        """A position in ``events``; pass it as ``start`` to wait only for events after it."""
        return len(self.events)

    async def wait_for(
        self,
        event_type: str | tuple[str, ...],
        *,
        start: int = 0,
        timeout: float = 30.0,
        predicate: Callable[[dict], bool] | None = None,
    ) -> dict:
        """The first event of ``event_type`` at or after position ``start`` (waiting up to ``timeout`` s)."""
        types = (event_type,) if isinstance(event_type, str) else tuple(event_type)

        def find() -> dict | None:
            for ev in self.events[start:]:
                if ev.get("type") in types and (predicate is None or predicate(ev)):
                    return ev
            return None

        async def wait() -> dict:
            async with self._changed:
                while (found := find()) is None:
                    if self._reader is None or self._reader.done():
                        raise ClientError(0, f"agent socket closed before a {'/'.join(types)} event")
                    await self._changed.wait()
                return found

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise ClientError(0, f"no {'/'.join(types)} event within {timeout:g} s") from None

    async def disconnect(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self._ws, self._reader = None, None

    async def close(self, delete_session: bool = True) -> None:
        """Close the socket, delete the session (unless told not to) and the HTTP client we own."""
        await self.disconnect()
        if delete_session and self.session is not None:
            try:
                await self.delete_session()
            except (aiohttp.ClientError, ClientError) as exc:
                log.warning("could not delete session %s: %s", self.session.id, exc)
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> "AvatarClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- internals -----------------------------------------------------------------------
    def _socket(self) -> aiohttp.ClientWebSocketResponse[bool]:
        if self._ws is None or self._ws.closed:
            raise ClientError(0, "agent socket is not connected: call connect() first")
        return self._ws

    async def _read_events(self) -> None:
        ws = self._ws
        if ws is None:  # started by connect() right after it opened the socket
            return
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    event = json.loads(msg.data)
                except json.JSONDecodeError:
                    log.warning("ignoring non-JSON message from server: %.80s", msg.data)
                    continue
                async with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
                for cb in self._callbacks.get(event.get("type"), []) + self._callbacks.get("*", []):
                    try:
                        result = cb(event)
                        if inspect.isawaitable(result):
                            await result
                    except Exception:  # a faulty callback must not kill the event stream
                        log.exception("event callback failed for %s", event.get("type"))
        finally:
            async with self._changed:
                self._changed.notify_all()


def _to_pcm_bytes(pcm: bytes | bytearray | memoryview | np.ndarray) -> bytes:
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        return bytes(pcm)
    a = np.asarray(pcm).reshape(-1)
    if a.dtype != np.int16:
        a = (np.clip(a.astype(np.float32), -1.0, 1.0) * 32767).astype(np.int16)
    return a.astype("<i2", copy=False).tobytes()


async def _json_or_error(resp: aiohttp.ClientResponse) -> dict:
    text = await resp.text()
    try:
        body = json.loads(text) if text else {}
    except json.JSONDecodeError:
        body = {"error": text}
    if resp.status >= 400:
        message = (body.get("message") or body.get("error")) if isinstance(body, dict) else text
        raise ClientError(resp.status, str(message))
    return body
