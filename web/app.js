// avatarstream browser client: microphone -> WebRTC -> avatar video + audio back.
// One POST of the complete SDP offer to /offer (no trickle ICE).
// window.avatarStats exposes counters for tests/diagnostics; window.avatarRecorder records
// presented frames (pixels + timing) and received audio levels on the same clock.
"use strict";

const video = document.getElementById("avatar");
const button = document.getElementById("start");
const statusText = document.getElementById("status");
const statsText = document.getElementById("stats");

let pc = null;
let mic = null;
let statsTimer = null;

window.avatarStats = {
  state: "idle", sessionId: null, framesDecoded: 0, framesPresented: 0, fps: 0,
  audioEnergy: 0, audioSamplesDuration: 0, audioPacketsReceived: 0, lastEvent: null, events: [],
};

function setStatus(text) {
  statusText.textContent = text;
  window.avatarStats.state = text;
}

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

async function start() {
  button.disabled = true;
  setStatus("requesting microphone...");
  try {
    mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
    });
  } catch (err) {
    setStatus("microphone unavailable: " + err.message);
    button.disabled = false;
    return;
  }
  pc = new RTCPeerConnection();
  const stream = new MediaStream();
  pc.addEventListener("track", (ev) => {
    stream.addTrack(ev.track);
    video.srcObject = stream;
  });
  pc.addEventListener("connectionstatechange", () => {
    setStatus("connection: " + pc.connectionState);
    if (pc.connectionState === "failed") stop();
  });
  for (const track of mic.getAudioTracks()) pc.addTransceiver(track, { direction: "sendrecv" });
  pc.addTransceiver("video", { direction: "recvonly" });
  const events = pc.createDataChannel("events");
  events.addEventListener("message", (ev) => {
    const e = JSON.parse(ev.data);
    window.avatarStats.lastEvent = e;
    window.avatarStats.events.push(e);
    if (window.avatarStats.events.length > 200) window.avatarStats.events.shift();
  });
  setStatus("connecting...");
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc);
  let answer;
  try {
    const resp = await fetch("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
    });
    answer = await resp.json();
    if (!resp.ok) throw new Error(answer.message || resp.statusText);
  } catch (err) {
    setStatus("server refused the call: " + err.message);
    stop();
    return;
  }
  window.avatarStats.sessionId = answer.session_id;
  await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  button.textContent = "Stop";
  button.classList.add("stop");
  button.disabled = false;
  statsTimer = setInterval(pollStats, 500);
}

async function pollStats() {
  if (!pc) return;
  const report = await pc.getStats();
  const s = window.avatarStats;
  report.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") {
      s.fps = r.framesPerSecond || 0;
      s.framesDecoded = r.framesDecoded || 0;
    }
    if (r.type === "inbound-rtp" && r.kind === "audio") {
      s.audioEnergy = r.totalAudioEnergy || 0;
      s.audioSamplesDuration = r.totalSamplesDuration || 0;
      s.audioPacketsReceived = r.packetsReceived || 0;
    }
  });
  s.statsTime = performance.now();
  statsText.textContent = `${s.fps.toFixed(0)} fps, ${s.framesDecoded} frames`;
}

function stop() {
  clearInterval(statsTimer);
  if (pc) pc.close();
  if (mic) mic.getTracks().forEach((t) => t.stop());
  pc = null;
  mic = null;
  video.srcObject = null;
  button.textContent = "Start";
  button.classList.remove("stop");
  button.disabled = false;
  setStatus("stopped");
}

button.addEventListener("click", () => (pc ? stop() : start()));

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
