// A WHEP player (docs/server.md "WHEP"): receive-only WebRTC from a WHEP endpoint, from this server's
// origin or any other (the server lists it with --cors-origin). It asks the endpoint for its ICE servers
// (OPTIONS, Link rel="ice-server"), POSTs its offer at once, trickles its candidates with PATCH
// (application/trickle-ice-sdpfrag), and on Stop closes its connection, then DELETEs the resource.
// Every answer the server gives is kept in `player.log` (status, error code, Retry-After ...).
"use strict";

function iceServersFrom(linkHeader) {
  const servers = [];
  for (const m of (linkHeader || "").matchAll(/<([^>]+)>\s*;([^,]*)/g)) {
    if (/rel\s*=\s*"?ice-server"?/.test(m[2])) servers.push({ urls: m[1] });
  }
  return servers;
}

async function describe(resp, what) {
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  return {
    what, status: resp.status, ok: resp.ok,
    error: body && body.error, message: body && body.message,
    retryAfter: resp.headers.get("Retry-After"),
  };
}

class WhepPlayer {
  constructor(video) {
    this.video = video;
    this.pc = null;
    this.resource = null; // the resource URL (Location, resolved against the endpoint)
    this.etag = null;
    this.token = null;
    this.candidates = []; // gathered before the resource is known
    this.ended = false; // end-of-candidates seen
    this.patching = Promise.resolve();
    this.log = [];
    this.iceServers = [];
  }

  headers(extra) {
    const h = Object.assign({}, extra);
    if (this.token) h.Authorization = "Bearer " + this.token;
    return h;
  }

  // Play `endpoint` with `token`; resolves to the POST's outcome ({status, error, retryAfter ...}).
  async play(endpoint, token) {
    this.token = token;
    try {
      const opts = await fetch(endpoint, { method: "OPTIONS", headers: this.headers({}) });
      this.iceServers = iceServersFrom(opts.headers.get("Link"));
      this.log.push({ what: "options", status: opts.status, iceServers: this.iceServers });
    } catch (e) {
      this.log.push({ what: "options", status: 0, message: String(e) });
    }
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    const stream = new MediaStream();
    pc.addEventListener("track", (ev) => { stream.addTrack(ev.track); if (this.video) this.video.srcObject = stream; });
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addEventListener("icecandidate", (ev) => {
      if (ev.candidate && ev.candidate.candidate) this.candidates.push(ev.candidate);
      else if (!ev.candidate) this.ended = true;
      this.trickle();
    });
    await pc.setLocalDescription(await pc.createOffer()); // no wait for gathering: candidates trickle
    let resp;
    try {
      resp = await fetch(endpoint, { method: "POST", headers: this.headers({ "Content-Type": "application/sdp" }),
                                     body: pc.localDescription.sdp });
    } catch (e) {
      const failed = { what: "post", status: 0, ok: false, message: String(e) };
      this.log.push(failed);
      this.close();
      return failed;
    }
    if (resp.status !== 201) {
      const refused = await describe(resp, "post");
      this.log.push(refused);
      this.close();
      return refused;
    }
    this.resource = new URL(resp.headers.get("Location"), endpoint).href;
    this.etag = resp.headers.get("ETag");
    const linked = iceServersFrom(resp.headers.get("Link"));
    const created = { what: "post", status: 201, ok: true, resource: this.resource, etag: this.etag,
                      iceServers: linked, acceptPatch: resp.headers.get("Accept-Patch") };
    this.log.push(created);
    if (linked.length) pc.setConfiguration({ iceServers: linked });
    await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
    this.trickle();
    return created;
  }

  // PATCH what was gathered since the last one (one request at a time).
  trickle() {
    if (!this.resource || (!this.candidates.length && !this.ended) || this.ended === "sent") return this.patching;
    const batch = this.candidates.splice(0);
    const end = this.ended === true;
    if (end) this.ended = "sent";
    // RFC 8840 fragment: the ICE credentials, then one m= section per media line with its candidates
    const ufrag = (this.pc.localDescription.sdp.match(/a=ice-ufrag:(\S+)/) || [])[1];
    const pwd = (this.pc.localDescription.sdp.match(/a=ice-pwd:(\S+)/) || [])[1];
    const lines = [`a=ice-ufrag:${ufrag}`, `a=ice-pwd:${pwd}`];
    const first = this.pc.getTransceivers()[0];
    const mids = [...new Set(batch.map((c) => c.sdpMid))];
    if (!mids.length) mids.push(first.mid);
    for (const mid of mids) {
      const t = this.pc.getTransceivers().find((x) => x.mid === mid) || first;
      lines.push(`m=${t.receiver.track.kind} 9 UDP/TLS/RTP/SAVPF 0`, `a=mid:${mid}`);
      for (const c of batch.filter((x) => x.sdpMid === mid)) lines.push("a=" + c.candidate);
    }
    if (end) lines.push("a=end-of-candidates");
    const body = lines.join("\r\n") + "\r\n";
    this.patching = this.patching.then(async () => {
      try {
        const resp = await fetch(this.resource, {
          method: "PATCH", body,
          headers: this.headers({ "Content-Type": "application/trickle-ice-sdpfrag", "If-Match": this.etag }),
        });
        const out = resp.status === 204 ? { what: "patch", status: 204, ok: true } : await describe(resp, "patch");
        this.log.push(Object.assign(out, { candidates: batch.length, end }));
      } catch (e) {
        this.log.push({ what: "patch", status: 0, ok: false, message: String(e) });
      }
    });
    return this.patching;
  }

  // Wait for the trickled PATCHes sent so far.
  async settled() { await this.patching; }

  close() {
    if (this.pc) this.pc.close();
    this.pc = null;
    if (this.video) this.video.srcObject = null;
  }

  // DELETE the resource (after close(), as players do); resolves to its outcome.
  async end() {
    if (!this.resource) return { what: "delete", status: 0, ok: false, message: "no resource" };
    let out;
    try {
      const resp = await fetch(this.resource, { method: "DELETE", headers: this.headers({}) });
      out = resp.ok ? { what: "delete", status: resp.status, ok: true } : await describe(resp, "delete");
    } catch (e) {
      out = { what: "delete", status: 0, ok: false, message: String(e) };
    }
    this.log.push(out);
    return out;
  }

  async framesDecoded() {
    if (!this.pc) return 0;
    let frames = 0;
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") frames += s.framesDecoded || 0;
    });
    return frames;
  }
}

window.WhepPlayer = WhepPlayer;

// The page's form: ?endpoint=URL&token=TOKEN fill it in.
const form = document.getElementById("whep");
if (form) {
  const params = new URLSearchParams(location.search);
  const status = document.getElementById("status");
  form.endpoint.value = params.get("endpoint") || new URL("/whep", location.href).href;
  form.token.value = params.get("token") || "";
  let player = null;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (player) {
      player.close();
      const out = await player.end();
      status.textContent = `stopped (DELETE: ${out.status})`;
      player = null;
      form.play.textContent = "Play";
      return;
    }
    player = new WhepPlayer(document.getElementById("avatar"));
    window.whepPlayer = player;
    const out = await player.play(form.endpoint.value, form.token.value || null);
    if (out.status === 201) {
      form.play.textContent = "Stop";
      status.textContent = "playing";
    } else {
      status.textContent = `refused: ${out.status} ${out.error || ""} ${out.message || ""}` +
        (out.retryAfter ? ` (retry in ${out.retryAfter} s)` : "");
      player = null;
    }
  });
}
