"""The avatar in a Pipecat WebRTC transport that a browser opens (SmallWebRTCTransport, no cloud key).

    pip install 'avatarstream[pipecat]'        # and espeak-ng (apt-get install espeak-ng)
    python examples/pipecat_webrtc_browser.py --port 7860
    # open http://127.0.0.1:7860 and press "Connect"

Each browser connection gets its own Pipecat pipeline::

    SmallWebRTCTransport.input() -> EspeakTTSService -> AvatarStreamVideoService -> SmallWebRTCTransport.output()

When the browser is connected the bot speaks the sentences (one ``TTSSpeakFrame`` each); the
avatar's video and voice reach the browser through Pipecat's own WebRTC transport (aiortc), not
through avatarstream's WHEP endpoint. "Interrupt" on the page sends a data-channel message that
queues an ``InterruptionFrame`` (barge-in); "Say" speaks the text field. The avatar sessions run on
one in-process lite server (or ``--server URL`` for a remote one). Signalling is one HTTP POST
(``/api/offer``: the browser's SDP offer in, the answer out, ICE candidates inside: no trickle),
host candidates only (add ``--ice stun:...`` for clients behind NAT).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from aiohttp import web
from pipecat.frames.frames import EndFrame, InterruptionFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner

from avatarstream.integrations.espeak_tts import EspeakTTSService
from avatarstream.integrations.local_server import LocalAvatarServer
from avatarstream.integrations.pipecat import AvatarStreamVideoService

RATE = 24000
SENTENCES = ["Hello! I am an avatar in a Pipecat pipeline.",
             "You are watching me through Pipecat's WebRTC transport."]
LOCAL_SERVER = web.AppKey("local_server", LocalAvatarServer)
OPTIONS = web.AppKey("options", dict)
RUNS = web.AppKey("runs", set)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>avatarstream + Pipecat</title>
<style>body{font-family:sans-serif;margin:2em}video{width:512px;height:512px;background:#222}</style></head>
<body><h1>avatarstream in a Pipecat pipeline</h1>
<video id="v" autoplay playsinline></video><br>
<button id="connect">Connect</button> <button id="interrupt" disabled>Interrupt</button>
<input id="text" size="40" value="Nice to meet you."> <button id="say" disabled>Say</button>
<pre id="log"></pre>
<script>
const log = (m) => document.getElementById("log").textContent += m + "\\n";
let channel = null;
document.getElementById("connect").onclick = async () => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("audio", {direction: "sendrecv"});   // Pipecat expects audio, then video
  pc.addTransceiver("video", {direction: "sendrecv"});
  channel = pc.createDataChannel("chat");
  const stream = new MediaStream();
  pc.ontrack = (e) => { stream.addTrack(e.track); document.getElementById("v").srcObject = stream; };
  pc.onconnectionstatechange = () => log("connection: " + pc.connectionState);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((ok) => { if (pc.iceGatheringState === "complete") ok();
    else pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && ok(); });
  const resp = await fetch("/api/offer", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: pc.localDescription.type})});
  if (!resp.ok) { log("offer refused: " + resp.status + " " + await resp.text()); return; }
  await pc.setRemoteDescription(await resp.json());
  for (const id of ["interrupt", "say"]) document.getElementById(id).disabled = false;
};
const send = (msg) => channel && channel.readyState === "open" && channel.send(JSON.stringify(msg));
document.getElementById("interrupt").onclick = () => send({type: "avatarstream", action: "interrupt"});
document.getElementById("say").onclick = () =>
  send({type: "avatarstream", action: "say", text: document.getElementById("text").value});
</script></body></html>
"""


async def index(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def offer(request: web.Request) -> web.Response:
    """One browser connection: answer its offer and start its pipeline."""
    try:
        body = await request.json()
        sdp, kind = body["sdp"], body.get("type", "offer")
        if not isinstance(sdp, str) or kind != "offer":
            raise ValueError
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        raise web.HTTPBadRequest(text='expected JSON {"sdp": "<offer SDP>", "type": "offer"}') from None
    opts = request.app[OPTIONS]
    connection = SmallWebRTCConnection(ice_servers=opts["ice"])
    await connection.initialize(sdp=sdp, type=kind)
    answer = connection.get_answer()
    task = asyncio.ensure_future(run_bot(connection, request.app))
    request.app[RUNS].add(task)
    task.add_done_callback(request.app[RUNS].discard)
    return web.json_response(answer)


async def run_bot(connection: SmallWebRTCConnection, app: web.Application) -> None:
    opts = app[OPTIONS]
    size = opts["size"]
    transport = SmallWebRTCTransport(connection, TransportParams(
        audio_in_enabled=False, audio_out_enabled=True, audio_out_sample_rate=RATE,
        video_out_enabled=True, video_out_is_live=True, video_out_width=size, video_out_height=size,
        video_out_framerate=25))
    if opts["server"]:
        avatar = AvatarStreamVideoService(server_url=opts["server"], api_key=opts["api_key"], size=size)
    else:
        avatar = AvatarStreamVideoService(local_server=app[LOCAL_SERVER], size=size)
    pipeline = Pipeline([transport.input(), EspeakTTSService(), avatar, transport.output()])
    worker = PipelineWorker(pipeline, params=PipelineParams(audio_out_sample_rate=RATE), cancel_on_idle_timeout=False)

    @transport.event_handler("on_client_connected")
    async def on_connected(_transport: Any, _client: Any) -> None:
        for line in opts["sentences"]:
            await worker.queue_frame(TTSSpeakFrame(line))

    @transport.event_handler("on_client_disconnected")
    async def on_disconnected(_transport: Any, _client: Any) -> None:
        await worker.queue_frame(EndFrame())

    @transport.event_handler("on_app_message")
    async def on_message(_transport: Any, message: Any, _sender: Any = None) -> None:
        if not isinstance(message, dict) or message.get("type") != "avatarstream":
            return
        if message.get("action") == "interrupt":
            await worker.queue_frame(InterruptionFrame())
        elif message.get("action") == "say" and isinstance(message.get("text"), str) and message["text"].strip():
            await worker.queue_frame(TTSSpeakFrame(message["text"][:500]))

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


def create_app(*, size: int = 512, sentences: list[str] | None = None, server: str | None = None,
               api_key: str | None = None, ice: list[str] | None = None) -> web.Application:
    app = web.Application()
    app[OPTIONS] = {"size": size, "sentences": sentences or SENTENCES, "server": server, "api_key": api_key,
                    "ice": ice or []}
    app[RUNS] = set()
    app.router.add_get("/", index)
    app.router.add_post("/api/offer", offer)

    async def startup(app: web.Application) -> None:
        if server is None:
            app[LOCAL_SERVER] = LocalAvatarServer(size=size)
            await app[LOCAL_SERVER].start()

    async def shutdown(app: web.Application) -> None:
        for task in list(app[RUNS]):
            task.cancel()
        await asyncio.gather(*app[RUNS], return_exceptions=True)
        if LOCAL_SERVER in app:
            await app[LOCAL_SERVER].stop()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lines", nargs="*", help="sentences the bot speaks when a browser connects")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--size", type=int, default=512, choices=[256, 512])
    p.add_argument("--server", default=None, help="an avatarstream server URL (default: an in-process lite server)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--ice", action="append", default=[], help="a STUN/TURN URL for clients behind NAT (repeatable)")
    args = p.parse_args(argv)
    app = create_app(size=args.size, sentences=args.lines or None, server=args.server, api_key=args.api_key,
                     ice=args.ice)
    print(f"open http://{args.host}:{args.port} in a browser", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
