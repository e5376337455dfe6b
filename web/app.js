// avatarstream browser page, on the sessions API (/v1, docs/server.md "The browser page"):
// choose a portrait (built-in or uploaded; the server checks it has a face) and see it as a still,
// Start = create the session (if not yet) + a WebRTC viewer (/v1/sessions/{id}/offer; the microphone
// only when asked), speak typed text (POST .../say, espeak-ng on the server) or an audio file (decoded
// here with WebAudio, sent as PCM over the agent socket), live engine controls as sliders (ranges from
// GET /v1/engines), stream health from getStats(), reconnect after a network drop.
// window.avatarStats exposes counters for tests/diagnostics; window.avatarRecorder records
// presented frames (pixels + timing) and received audio levels on the same clock.
"use strict";

const $ = (id) => document.getElementById(id);
const video = $("avatar");
const still = $("still");
const screenBox = $("screen");
const button = $("start");
const muteButton = $("mute");
const micBox = $("mic");
const statusText = $("status");
const messageText = $("message");
const keyInput = $("api-key");

const AGENT_RATE = 16000;
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000, 8000];
const DISCONNECT_GRACE_MS = 3000;
const STALL_MS = 5000; // connected but no new video frame for this long: the stream is gone (frames flow even in silence)
const FRIENDLY = {
  no_face: "No face was found in this photo.",
  too_large: "This file is too large.",
  unreadable_image: "The server could not read this file as a picture.",
  unauthorized: "The server did not accept the API key.",
  forbidden: "The server did not accept the API key.",
  session_limit: "The server is busy: every session slot is in use. Try again in a moment.",
  speech_unavailable: "This server cannot speak typed text.",
  buffer_full: "Too much speech is queued: wait for the avatar to finish.",
  not_found: "The session has ended.",
};

let server = { api_key_required: false, speech_synthesis: false, limits: {} };
let engine = null; // {name, controls: [{name, min, max}]}
let apiKey = "";
let choice = { type: "demo", id: "astronaut" }; // or {type: "upload", file}
let session = null; // {id, token, choiceKey}
let pc = null;
let mic = null;
let statsTimer = null;
let wantCall = false; // Start pressed and not stopped: reconnect on a drop
let reconnectTry = 0;
let reconnectTimer = null;
let disconnectTimer = null;
let connected = null; // {promise, resolve} for the current connection
const dirtyControls = {}; // slider values the user set: sent live, and at creation
let busy = false;
let kindFromDemo = false; // the face type was set by choosing a built-in portrait, not by the user

window.avatarStats = {
  state: "idle", sessionId: null, token: null, viewerId: null, framesDecoded: 0, fps: 0,
  audioEnergy: 0, audioSamplesDuration: 0, audioPacketsReceived: 0, rttMs: null,
  jitterAudioMs: null, jitterVideoMs: null, avOffsetMs: null, lastEvent: null, events: [],
  lastControls: null, reconnects: 0,
};

function setStatus(text) {
  statusText.textContent = text;
  window.avatarStats.state = text;
}

function showMessage(text) {
  messageText.textContent = text;
  messageText.hidden = !text;
}

// ---- the server's API ----------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  get plain() {
    const lead = FRIENDLY[this.code];
    return lead ? `${lead} The server says: ${this.message}` : `The server refused: ${this.message}`;
  }
}

async function api(method, path, { body, token, json = true } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: payload });
  } catch (err) {
    throw new ApiError(0, "network", `the server could not be reached (${err.message})`);
  }
  if (!resp.ok) {
    let detail = { error: "error", message: resp.statusText };
    try { detail = await resp.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, detail.error, detail.message || resp.statusText);
  }
  if (!json || resp.status === 204) return null;
  return resp.json();
}

function currentKey() {
  return (keyInput.value || apiKey).trim();
}

function choiceKey(c) {
  return c.type === "demo" ? `demo:${c.id}:${$("kind").value}` : `upload:${c.file.name}:${c.file.size}:${$("kind").value}`;
}

async function createSession() {
  if (server.api_key_required && !currentKey()) {
    $("key-panel").hidden = false;
    keyInput.focus();
    throw new ApiError(401, "unauthorized", "this server needs an API key: paste it in the API key box");
  }
  const controls = { ...dirtyControls };
  let body;
  if (choice.type === "upload") {
    body = new FormData();
    body.append("image", choice.file, choice.file.name);
    body.append("kind", $("kind").value);
    if (Object.keys(controls).length) body.append("controls", JSON.stringify(controls));
  } else {
    body = { image: choice.id, kind: $("kind").value };
    if (Object.keys(controls).length) body.controls = controls;
  }
  const reply = await api("POST", "/v1/sessions", { body, token: currentKey() || undefined });
  session = { id: reply.id, token: reply.token, choiceKey: choiceKey(choice) };
  window.avatarStats.sessionId = reply.id;
  window.avatarStats.token = reply.token;
  showControlsReply({ applied: reply.controls, unsupported: reply.unsupported_controls });
  return session;
}

function sessionPath(suffix = "") {
  return `/v1/sessions/${encodeURIComponent(session.id)}${suffix}`;
}

async function endSession() {
  const s = session;
  session = null;
  if (!s) return;
  try {
    await api("DELETE", `/v1/sessions/${encodeURIComponent(s.id)}`, { token: s.token, json: false });
  } catch (err) {
    if (err.code !== "not_found") console.warn("ending the session:", err.message);
  }
}

// ---- portrait choice -------------------------------------------------------------------------------
function showStill(url) {
  still.src = url;
}

async function choose(newChoice, previousKind = { value: $("kind").value, fromDemo: kindFromDemo }) {
  const previous = choice;
  choice = newChoice;
  showMessage("");
  const live = wantCall;
  if (session && session.choiceKey !== choiceKey(choice)) {
    if (live) await stop("switching portrait...");
    else await endSession();
  }
  if (choice.type === "demo") {
    showStill(`/v1/portraits/${encodeURIComponent(choice.id)}.jpg`);
    if (live) await start();
    return;
  }
  // an upload is checked by the server right away (face found? readable? size?)
  setStatus("checking the photo...");
  try {
    await createSession();
  } catch (err) {
    choice = previous;
    $("kind").value = previousKind.value; // as it was before this photo
    kindFromDemo = previousKind.fromDemo;
    $("photo").value = ""; // the refused file is not the current choice
    markDemo(previous.type === "demo" ? previous.id : null);
    showMessage(err.plain || err.message);
    setStatus("idle: the photo was not used");
    return;
  }
  showStill(`${sessionPath("/portrait.jpg")}?token=${encodeURIComponent(session.token)}`);
  setStatus("idle: your photo is ready, press Start");
  if (live) await start();
}

function markDemo(id) {
  for (const input of document.querySelectorAll('#demos input[name="demo"]')) input.checked = input.value === id;
}

function buildDemos(list) {
  const box = $("demos");
  box.textContent = "";
  for (const p of list.portraits) {
    const label = document.createElement("label");
    label.className = "demo";
    const input = document.createElement("input");
    input.type = "radio";
    input.name = "demo";
    input.value = p.id;
    input.id = `demo-${p.id}`;
    input.checked = p.id === list.default;
    input.addEventListener("change", () => {
      if (input.checked) {
        $("kind").value = p.kind === "animal" ? "animal" : "auto";
        kindFromDemo = true;
        choose({ type: "demo", id: p.id });
      }
    });
    const img = document.createElement("img");
    img.src = p.url;
    img.alt = "";
    img.width = 48;
    img.height = 48;
    label.append(input, img, document.createTextNode(` ${p.id}`));
    box.append(label);
  }
  choice = { type: "demo", id: list.default };
  showStill(`/v1/portraits/${encodeURIComponent(list.default)}.jpg`);
}

function photoChosen(file) {
  if (!file) return;
  const previousKind = { value: $("kind").value, fromDemo: kindFromDemo };
  if (kindFromDemo) $("kind").value = "auto"; // the cat's "animal" is not a choice the user made for this photo
  kindFromDemo = false;
  markDemo(null);
  choose({ type: "upload", file }, previousKind);
}

function dropZone(zone, onFile) {
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    if (ev.dataTransfer.files.length) onFile(ev.dataTransfer.files[0]);
  });
}

// ---- the call ---------------------------------------------------------------------------------------
function waitForIceGathering(conn) {
  if (conn.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (conn.iceGatheringState === "complete") {
        conn.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    conn.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000); // host candidates are enough on a LAN; do not hang on STUN
  });
}

async function openMicrophone() {
  if (!micBox.checked) return null;
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
    });
  } catch (err) {
    showMessage(`The microphone is not available (${err.message}); the avatar still speaks typed text and audio files.`);
    return null;
  }
}

async function connect() {
  const conn = new RTCPeerConnection();
  pc = conn;
  for (const k of Object.keys(prevStats)) delete prevStats[k]; // counters start again on a new connection
  avSamples.length = 0;
  window.avatarStats.lastFrameTime = performance.now();
  let ready;
  connected = { promise: new Promise((resolve) => { ready = resolve; }) };
  connected.resolve = ready;
  let wasConnected = false;
  const stream = new MediaStream();
  conn.addEventListener("track", (ev) => {
    stream.addTrack(ev.track);
    video.srcObject = stream;
  });
  conn.addEventListener("connectionstatechange", () => {
    if (conn !== pc) return;
    const state = conn.connectionState;
    setStatus("connection: " + state);
    $("h-state").textContent = state;
    clearTimeout(disconnectTimer);
    if (state === "connected") {
      wasConnected = true;
      reconnectTry = 0;
      connected.resolve(true);
    } else if (state === "failed" || (wasConnected && (state === "new" || state === "closed"))) {
      dropped();
    } else if (state === "disconnected") {
      disconnectTimer = setTimeout(() => { if (conn === pc && conn.connectionState === "disconnected") dropped(); },
        DISCONNECT_GRACE_MS);
    }
  });
  if (!mic) mic = await openMicrophone();
  if (mic) for (const track of mic.getAudioTracks()) conn.addTransceiver(track, { direction: "sendrecv" });
  else conn.addTransceiver("audio", { direction: "recvonly" });
  conn.addTransceiver("video", { direction: "recvonly" });
  const events = conn.createDataChannel("events");
  events.addEventListener("message", (ev) => {
    const e = JSON.parse(ev.data);
    window.avatarStats.lastEvent = e;
    window.avatarStats.events.push(e);
    if (window.avatarStats.events.length > 200) window.avatarStats.events.shift();
  });
  await conn.setLocalDescription(await conn.createOffer());
  await waitForIceGathering(conn);
  const answer = await api("POST", sessionPath("/offer"), {
    token: session.token,
    body: { sdp: conn.localDescription.sdp, type: "offer", microphone: Boolean(mic) },
  });
  if (conn !== pc) return;
  window.avatarStats.viewerId = answer.viewer_id;
  await conn.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
}

async function start() {
  if (busy) return;
  setBusy(true);
  showMessage("");
  wantCall = true;
  try {
    if (session && session.choiceKey !== choiceKey(choice)) await endSession();
    if (!session) {
      setStatus("starting a session...");
      await createSession();
    }
    setStatus("connecting...");
    try {
      await connect();
    } catch (err) {
      if (err.code !== "not_found") throw err;
      await endSession(); // timed out while waiting: start afresh with the same portrait
      await createSession();
      await connect();
    }
    button.textContent = "Stop";
    button.classList.add("stop");
    muteButton.disabled = false;
    clearInterval(statsTimer);
    statsTimer = setInterval(pollStats, 500);
  } catch (err) {
    wantCall = false;
    hangUp();
    showMessage(err.plain || err.message);
    setStatus("idle: could not start");
    button.textContent = "Start";
    button.classList.remove("stop");
  } finally {
    setBusy(false);
  }
}

// The button stays enabled while busy (a disabled button would drop the keyboard focus); clicks wait.
function setBusy(on) {
  busy = on;
  button.setAttribute("aria-disabled", String(on));
  button.classList.toggle("busy", on);
}

function hangUp() {
  clearTimeout(disconnectTimer);
  clearTimeout(reconnectTimer);
  reconnectTimer = null;
  const conn = pc;
  pc = null;
  if (conn) conn.close();
  video.srcObject = null;
  screenBox.classList.remove("live");
}

async function stop(text = "stopped") {
  wantCall = false;
  clearInterval(statsTimer);
  hangUp();
  if (mic) mic.getTracks().forEach((t) => t.stop());
  mic = null;
  button.textContent = "Start";
  button.classList.remove("stop");
  muteButton.disabled = true;
  setBusy(true);
  await endSession();
  setBusy(false);
  $("h-state").textContent = "idle";
  setStatus(text);
}

function dropped() {
  if (!wantCall || reconnectTimer) return;
  hangUp();
  const delay = RECONNECT_DELAYS_MS[Math.min(reconnectTry, RECONNECT_DELAYS_MS.length - 1)];
  reconnectTry += 1;
  setStatus(`connection lost: reconnecting (try ${reconnectTry})...`);
  reconnectTimer = setTimeout(async () => {
    reconnectTimer = null;
    if (!wantCall) return;
    window.avatarStats.reconnects += 1;
    try {
      if (session) {
        try { await api("GET", sessionPath(), { token: session.token }); } catch (err) {
          if (err.code === "not_found") session = null; else throw err;
        }
      }
      if (!session) await createSession();
      await connect();
    } catch (err) {
      setStatus(`reconnect failed: ${err.message}`);
      dropped();
    }
  }, delay);
}

async function ensureCall() {
  if (!wantCall) await start();
  if (!wantCall || !connected) throw new Error("the avatar is not running");
  const ok = await Promise.race([connected.promise, new Promise((r) => setTimeout(() => r(false), 20000))]);
  if (!ok) throw new Error("the video connection did not come up");
}

// ---- speaking ---------------------------------------------------------------------------------------
async function sayText(ev) {
  ev.preventDefault();
  const text = $("say-text").value.trim();
  const note = $("say-note");
  if (!text) { note.textContent = "type something first"; return; }
  $("say").disabled = true;
  try {
    await ensureCall();
    const reply = await api("POST", sessionPath("/say"), { token: session.token, body: { text } });
    note.textContent = `speaking ${reply.seconds.toFixed(1)} s of speech`;
  } catch (err) {
    note.textContent = "";
    showMessage(err.plain || err.message);
  } finally {
    $("say").disabled = !server.speech_synthesis;
  }
}

async function decodeTo16k(file) {
  const ctx = new AudioContext();
  let decoded;
  try {
    decoded = await ctx.decodeAudioData(await file.arrayBuffer());
  } finally {
    ctx.close();
  }
  const off = new OfflineAudioContext(1, Math.max(1, Math.ceil(decoded.duration * AGENT_RATE)), AGENT_RATE);
  const src = off.createBufferSource();
  src.buffer = decoded;
  src.connect(off.destination); // down-mixed to mono, resampled to 16 kHz
  src.start();
  const f32 = (await off.startRendering()).getChannelData(0);
  const pcm = new Int16Array(f32.length);
  for (let i = 0; i < f32.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(f32[i] * 32767)));
  return pcm;
}

async function playAudioFile(file) {
  if (!file) return;
  const note = $("say-note");
  try {
    let pcm;
    try {
      pcm = await decodeTo16k(file);
    } catch (err) {
      throw new Error(`This browser could not decode ${file.name} as audio (${err.message || err}).`);
    }
    await ensureCall();
    const base = location.origin.replace(/^http/, "ws");
    const ws = new WebSocket(`${base}${sessionPath("/agent")}?sample_rate=${AGENT_RATE}&token=${encodeURIComponent(session.token)}`);
    ws.binaryType = "arraybuffer";
    await new Promise((resolve, reject) => {
      ws.addEventListener("open", resolve, { once: true });
      ws.addEventListener("error", () => reject(new Error(
        "could not open the session's agent socket (is another agent connected to this session?)")), { once: true });
    });
    const finished = new Promise((resolve) => {
      ws.addEventListener("message", (ev) => {
        const msg = JSON.parse(ev.data);
        if (msg.type === "error") showMessage(`The server refused the audio: ${msg.message}`);
        if (msg.type === "playback_finished") resolve(msg);
      });
      ws.addEventListener("close", () => resolve(null));
    });
    for (let i = 0; i < pcm.length; i += AGENT_RATE) ws.send(pcm.slice(i, i + AGENT_RATE)); // <= 1 s a frame
    ws.send(JSON.stringify({ type: "end_of_utterance" }));
    note.textContent = `playing ${file.name} (${(pcm.length / AGENT_RATE).toFixed(1)} s)`;
    await finished;
    ws.close();
    note.textContent = `played ${file.name}`;
  } catch (err) {
    showMessage(err.plain || err.message);
  }
}

// ---- engine controls ---------------------------------------------------------------------------------
function showControlsReply(reply) {
  window.avatarStats.lastControls = reply;
  const parts = Object.entries(reply.applied || {}).map(([k, v]) => `${k} = ${Number(v).toFixed(2)}`);
  const refused = Object.entries(reply.unsupported || {}).map(([k, why]) => `${k}: ${why}`);
  $("controls-note").textContent = (parts.length ? `applied ${parts.join(", ")}` : "") +
    (refused.length ? ` (not applied: ${refused.join("; ")})` : "");
}

let pendingControls = {};
let controlsTimer = null;

function sendControls() {
  controlsTimer = null;
  const controls = pendingControls;
  pendingControls = {};
  if (!session || !Object.keys(controls).length) return;
  api("POST", sessionPath("/controls"), { token: session.token, body: controls })
    .then(showControlsReply)
    .catch((err) => showMessage(err.plain || err.message));
}

function buildSliders(eng) {
  const box = $("sliders");
  box.textContent = "";
  if (!eng.controls.length) {
    $("controls-note").textContent = `the ${eng.name} engine has no live controls`;
    return;
  }
  for (const c of eng.controls) {
    const row = document.createElement("div");
    row.className = "slider";
    const id = `ctl-${c.name}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = c.name.replace(/_/g, " ");
    const input = document.createElement("input");
    input.type = "range";
    input.id = id;
    input.name = c.name;
    input.min = c.min;
    input.max = c.max;
    input.step = c.max - c.min > 10 ? (c.max - c.min) / 1000 : 0.01;
    input.value = Math.min(c.max, Math.max(c.min, 1)); // 1 = natural in the engines' shared vocabulary
    const out = document.createElement("output");
    out.htmlFor = id;
    out.textContent = Number(input.value).toFixed(2);
    input.addEventListener("input", () => {
      const v = Number(input.value);
      out.textContent = v.toFixed(2);
      dirtyControls[c.name] = v;
      pendingControls[c.name] = v;
      if (!controlsTimer) controlsTimer = setTimeout(sendControls, 150); // live, at most ~7 requests/s
    });
    row.append(label, input, out);
    box.append(row);
  }
}

// ---- health ------------------------------------------------------------------------------------------
const prevStats = {};
const avSamples = [];

function delta(kind, r, field) {
  const prev = prevStats[kind];
  return prev && r[field] !== undefined && prev[field] !== undefined ? r[field] - prev[field] : null;
}

function jitterMs(kind, r) {
  const d = delta(kind, r, "jitterBufferDelay");
  const n = delta(kind, r, "jitterBufferEmittedCount");
  return d !== null && n > 0 ? (1000 * d) / n : null;
}

function fmt(v, unit, digits = 0) {
  return v === null || v === undefined || Number.isNaN(v) ? "–" : `${v.toFixed(digits)} ${unit}`;
}

async function pollStats() {
  const conn = pc;
  if (!conn) return;
  const report = await conn.getStats();
  const s = window.avatarStats;
  let v = null;
  let a = null;
  let transport = null;
  report.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") v = r;
    if (r.type === "inbound-rtp" && r.kind === "audio") a = r;
    if (r.type === "transport") transport = r;
  });
  const now = performance.now();
  if (v) {
    const frames = delta("video", v, "framesDecoded");
    if (frames) s.lastFrameTime = now;
    else if (frames === 0 && wantCall && now - (s.lastFrameTime || now) > STALL_MS) {
      s.lastFrameTime = now;
      dropped();
      return;
    }
    const dt = prevStats.time ? (now - prevStats.time) / 1000 : 0;
    s.fps = v.framesPerSecond || (frames !== null && dt > 0 ? frames / dt : 0);
    s.framesDecoded = v.framesDecoded || 0;
    s.framesReceived = v.framesReceived || 0;
    s.jitterVideoMs = jitterMs("video", v) ?? s.jitterVideoMs;
  }
  if (a) {
    s.audioEnergy = a.totalAudioEnergy || 0;
    s.audioSamplesDuration = a.totalSamplesDuration || 0;
    s.audioPacketsReceived = a.packetsReceived || 0;
    s.jitterAudioMs = jitterMs("audio", a) ?? s.jitterAudioMs;
  }
  // A/V offset: both receivers' estimatedPlayoutTimestamp (the sender-clock time of what plays now)
  if (v && a && v.estimatedPlayoutTimestamp && a.estimatedPlayoutTimestamp) {
    avSamples.push(a.estimatedPlayoutTimestamp - v.estimatedPlayoutTimestamp);
    if (avSamples.length > 5) avSamples.shift(); // the median of the last 2.5 s
    const sorted = [...avSamples].sort((x, y) => x - y);
    s.avOffsetMs = sorted[Math.floor(sorted.length / 2)];
  }
  const pair = transport && transport.selectedCandidatePairId ? report.get(transport.selectedCandidatePairId) : null;
  if (pair && pair.currentRoundTripTime !== undefined) s.rttMs = pair.currentRoundTripTime * 1000;
  prevStats.video = v;
  prevStats.audio = a;
  prevStats.time = now;
  s.statsTime = now;
  if (conn !== pc) return;
  $("h-state").textContent = conn.connectionState;
  $("h-fps").textContent = fmt(s.fps, "fps");
  $("h-rtt").textContent = fmt(s.rttMs, "ms", 1);
  $("h-jitter").textContent = `${fmt(s.jitterAudioMs, "ms")} / ${fmt(s.jitterVideoMs, "ms")}`;
  $("h-av").textContent = fmt(s.avOffsetMs, "ms");
  $("h-frames").textContent = `${s.framesDecoded}`;
}

// ---- wiring ------------------------------------------------------------------------------------------
video.addEventListener("playing", () => screenBox.classList.add("live"));
video.addEventListener("loadeddata", () => {
  video.play().catch(() => {
    video.muted = true; // autoplay with sound refused: play muted, the Mute button says so
    muteButton.textContent = "Unmute";
    muteButton.setAttribute("aria-pressed", "true");
    video.play().catch(() => {});
  });
});
button.addEventListener("click", () => {
  if (!busy) wantCall ? stop() : start();
});
muteButton.addEventListener("click", () => {
  video.muted = !video.muted;
  muteButton.textContent = video.muted ? "Unmute" : "Mute";
  muteButton.setAttribute("aria-pressed", String(video.muted));
});
$("photo").addEventListener("change", (ev) => photoChosen(ev.target.files[0]));
$("audio-file").addEventListener("change", (ev) => playAudioFile(ev.target.files[0]));
dropZone($("photo-drop"), photoChosen);
dropZone($("audio-drop"), playAudioFile);
$("say-form").addEventListener("submit", sayText);
$("key-form").addEventListener("submit", (ev) => { ev.preventDefault(); start(); });
$("kind").addEventListener("change", () => { // a new session with the face type the user chose
  kindFromDemo = false;
  choose(choice);
});
window.addEventListener("pagehide", () => {
  if (session) fetch(sessionPath(), { method: "DELETE", keepalive: true, headers: { Authorization: `Bearer ${session.token}` } });
});

async function init() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("key")) {
    apiKey = fragment.get("key");
    history.replaceState(null, "", location.pathname + location.search); // keep the key out of the address bar
  }
  try {
    const [info, engines, portraits] = await Promise.all([
      api("GET", "/v1/server"), api("GET", "/v1/engines"), api("GET", "/v1/portraits")]);
    server = info;
    $("key-panel").hidden = !(server.api_key_required && !apiKey);
    engine = engines.engines.find((e) => e.name === engines.default) || engines.engines[0];
    buildDemos(portraits);
    buildSliders(engine);
    $("say").disabled = !server.speech_synthesis;
    $("say-note").textContent = server.speech_synthesis ? "" : "this server has no text-to-speech (espeak-ng is not installed)";
    $("say-text").maxLength = server.limits.max_say_chars || 1000;
    window.avatarStats.ready = true;
  } catch (err) {
    showMessage(err.plain || err.message);
  }
}

init();

// ---- recording for tests: presented frames and played-out audio levels, one clock ----
// Video: requestVideoFrameCallback gives each presented frame's expectedDisplayTime
// (performance.now() clock) and RTP timestamp; the frame is drawn into a canvas and kept as JPEG.
// Audio: RTCRtpReceiver.getSynchronizationSources() reports, per played-out packet, its RTP
// timestamp, the playout time (same clock) and the sender's RFC 6464 audio level.
window.avatarRecorder = {
  frames: [], audio: [], recording: false, _timer: null,
  // grab: keep each frame as JPEG; crop: [x, y, w, h] in video pixels to keep only that region
  start(grab = true, crop = null) {
    this.frames = []; this.audio = []; this.recording = true;
    const canvas = document.createElement("canvas");
    const ctx = canvas.getContext("2d");
    const onFrame = (now, meta) => {
      if (!this.recording) return;
      const rec = { display: meta.expectedDisplayTime, now, rtp: meta.rtpTimestamp,
        presented: meta.presentedFrames, mediaTime: meta.mediaTime, width: meta.width, height: meta.height };
      if (grab) {
        const [x, y, w, h] = crop || [0, 0, meta.width, meta.height];
        canvas.width = w; canvas.height = h;
        ctx.drawImage(video, x, y, w, h, 0, 0, w, h);
        rec.jpeg = canvas.toDataURL("image/jpeg", 0.92);
        rec.crop = [x, y, w, h];
      }
      this.frames.push(rec);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
    let lastRtp = null;
    this._timer = setInterval(() => {
      if (!pc) return;
      for (const r of pc.getReceivers()) {
        if (r.track.kind !== "audio") continue;
        for (const src of r.getSynchronizationSources()) {
          if (src.rtpTimestamp !== lastRtp) {
            lastRtp = src.rtpTimestamp;
            this.audio.push({ rtp: src.rtpTimestamp, time: src.timestamp, level: src.audioLevel });
          }
        }
      }
    }, 4);
  },
  stop() {
    this.recording = false;
    clearInterval(this._timer);
    return { frames: this.frames, audio: this.audio, timeOrigin: performance.timeOrigin };
  },
};
