// Watch an agent-driven session (docs/agent.md): receive-only WebRTC viewer of
// /v1/sessions/{id}/offer with the session's bearer token; events arrive on the "events" data channel.
"use strict";

const params = new URLSearchParams(location.search);
const sessionId = params.get("session");
const token = params.get("token");
const video = document.getElementById("avatar");
const button = document.getElementById("start");
const statusText = document.getElementById("status");
const eventsText = document.getElementById("events");
let pc = null;

window.avatarEvents = [];

function setStatus(text) { statusText.textContent = text; }

function waitForIceGathering(conn) {
  if (conn.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    conn.addEventListener("icegatheringstatechange", () => {
      if (conn.iceGatheringState === "complete") resolve();
    });
    setTimeout(resolve, 3000);
  });
}

async function watch() {
  if (!sessionId || !token) { setStatus("missing ?session=ID&token=TOKEN in the address"); return; }
  button.disabled = true;
  pc = new RTCPeerConnection();
  const stream = new MediaStream();
  pc.addEventListener("track", (ev) => { stream.addTrack(ev.track); video.srcObject = stream; });
  pc.addEventListener("connectionstatechange", () => setStatus("connection: " + pc.connectionState));
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const channel = pc.createDataChannel("events");
  channel.addEventListener("message", (ev) => {
    const e = JSON.parse(ev.data);
    window.avatarEvents.push(e);
    eventsText.textContent = window.avatarEvents.slice(-12).map((x) => JSON.stringify(x)).join("\n");
  });
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc);
  const resp = await fetch(`/v1/sessions/${encodeURIComponent(sessionId)}/offer`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "Authorization": `Bearer ${token}` },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
  });
  const answer = await resp.json();
  if (!resp.ok) { setStatus("refused: " + (answer.message || resp.statusText)); pc.close(); pc = null; button.disabled = false; return; }
  await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  button.textContent = "Stop";
  button.disabled = false;
}

button.addEventListener("click", () => {
  if (pc) { pc.close(); pc = null; video.srcObject = null; button.textContent = "Watch"; setStatus("stopped"); }
  else watch();
});
