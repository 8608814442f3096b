/* Heat Steward video calls: the WebRTC client shared by the resident, steward and supervisor pages.
   Plain script (no build step, no framework); everything lives on window.HeatVideo. */
(function () {
  "use strict";
  var API = "/api/v1/video";

  var CAMERA = {
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    video: { facingMode: { ideal: "environment" }, width: { ideal: 640 }, height: { ideal: 480 },
             frameRate: { ideal: 24, max: 24 } }
  };

  function HttpError(status, code, message) {
    this.status = status; this.code = code; this.message = message;
  }

  async function api(method, path, token, body) {
    var headers = { "Accept": "application/json" };
    if (token) headers["Authorization"] = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    var r;
    try {
      r = await fetch(path, { method: method, headers: headers, cache: "no-store",
                              body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new HttpError(0, "network", "网络连接失败");
    }
    var data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      var d = (data && data.detail) || {};
      throw new HttpError(r.status, d.code || "http_" + r.status, d.message || r.statusText);
    }
    return data;
  }

  /* Sign in with the page's form: the access token, or an HttpError whose message says what to do. A lockout
     (429, also for the right password) and a server error were both shown as a wrong password. */
  function signInMessage(status, code) {
    if (status === 0) return "网络连接失败，请稍后重试。";
    if (status === 429) return "尝试次数过多，请稍后再试。";
    if (code === "inactive_user") return "账号已停用，请联系管理员。";
    if (status >= 500) return "服务暂时不可用，请稍后重试。";
    return "用户名或密码错误。";
  }

  async function signIn(form) {
    var r;
    try {
      r = await fetch("/api/v1/auth/token", { method: "POST", body: new URLSearchParams(new FormData(form)) });
    } catch (e) {
      throw new HttpError(0, "network", signInMessage(0, "network"));
    }
    var data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      var code = (data && data.detail && data.detail.code) || "http_" + r.status;
      throw new HttpError(r.status, code, signInMessage(r.status, code));
    }
    return data.access_token;
  }

  /* What this browser lacks for a call, or null. WeChat and other in-app browsers often have no
     getUserMedia; phones only allow the camera on secure pages (HTTPS or localhost). */
  function missingSupport() {
    var ua = navigator.userAgent || "";
    var inApp = /MicroMessenger|WeChat|QQ\//i.test(ua) ? "wechat" : null;
    if (!window.RTCPeerConnection || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      if (!window.isSecureContext) return "insecure";
      return inApp || "no_webrtc";
    }
    return null;
  }

  function waitForIce(pc, timeoutMs) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise(function (resolve) {
      var done = function () { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
      var check = function () { if (pc.iceGatheringState === "complete") done(); };
      pc.addEventListener("icegatheringstatechange", check);
      setTimeout(done, timeoutMs);  // send what we have: host candidates come first
    });
  }

  function preferVp8(transceiver) {
    if (!window.RTCRtpSender || !RTCRtpSender.getCapabilities || !transceiver.setCodecPreferences) return;
    var caps = RTCRtpSender.getCapabilities("video");
    if (!caps) return;
    var rank = function (c) { return c.mimeType === "video/VP8" ? 0 : c.mimeType === "video/rtx" ? 1 : 2; };
    try { transceiver.setCodecPreferences(caps.codecs.slice().sort(function (a, b) { return rank(a) - rank(b); })); }
    catch (e) { /* older browsers: the server prefers VP8 anyway */ }
  }

  /* Join a room. opts: roomId, token, role, relayUrl (the worker hosting the room, "" for this one),
     stream (local media or null), receive {audio, video}
     (how many remote tracks of each kind to ask for), iceServers, onTrack(track, index), onState(state). */
  async function join(opts) {
    var pc = new RTCPeerConnection({ iceServers: opts.iceServers || [] });
    var local = opts.stream;
    var kinds = ["audio", "video"];
    var recvIndex = { audio: 0, video: 0 };
    kinds.forEach(function (kind) {
      var want = (opts.receive && opts.receive[kind]) || 0;
      var tracks = local ? local.getTracks().filter(function (t) { return t.kind === kind; }) : [];
      var n = Math.max(want, tracks.length);
      for (var i = 0; i < n; i++) {
        var dir = tracks[i] ? (i < want ? "sendrecv" : "sendonly") : "recvonly";
        var t = pc.addTransceiver(tracks[i] || kind, { direction: dir, streams: local && tracks[i] ? [local] : [] });
        if (kind === "video") preferVp8(t);
        if (tracks[i] && kind === "video" && t.sender.getParameters) {
          var p = t.sender.getParameters();
          if (p.encodings && p.encodings.length) { p.encodings[0].maxBitrate = 800000; t.sender.setParameters(p).catch(function () {}); }
        }
      }
    });
    pc.addEventListener("track", function (e) {
      var kind = e.track.kind;
      if (opts.onTrack) opts.onTrack(e.track, recvIndex[kind]++);
    });
    pc.addEventListener("connectionstatechange", function () { if (opts.onState) opts.onState(pc.connectionState); });
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await waitForIce(pc, 3000);
      var answer = await api("POST", (opts.relayUrl || "") + API + "/rooms/" + opts.roomId + "/connect", opts.token,
                             { sdp: pc.localDescription.sdp, type: "offer", role: opts.role });
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      return { pc: pc, participantId: answer.participant_id };
    } catch (e) {
      pc.close();
      throw e;
    }
  }

  function leave(roomId, token, participantId, relayUrl) {
    if (!participantId) return;
    try {
      fetch((relayUrl || "") + API + "/rooms/" + roomId + "/leave?participant_id=" + participantId,
            { method: "POST", keepalive: true, headers: { "Authorization": "Bearer " + token } });
    } catch (e) { /* the server reaps it anyway */ }
  }

  /* Frames sent and received so far, from getStats() (the tests read it too). */
  async function mediaStats(pc) {
    var out = { framesEncoded: 0, framesSent: 0, framesDecoded: 0, audioPacketsReceived: 0, codecs: [] };
    if (!pc) return out;
    var report = await pc.getStats();
    report.forEach(function (s) {
      if (s.type === "outbound-rtp" && s.kind === "video") { out.framesEncoded += s.framesEncoded || 0; out.framesSent += s.framesSent || 0; }
      if (s.type === "inbound-rtp" && s.kind === "video") out.framesDecoded += s.framesDecoded || 0;
      if (s.type === "inbound-rtp" && s.kind === "audio") out.audioPacketsReceived += s.packetsReceived || 0;
      if (s.type === "codec") out.codecs.push(s.mimeType);
    });
    return out;
  }

  window.HeatVideo = { api: api, join: join, leave: leave, missingSupport: missingSupport, mediaStats: mediaStats,
                       signIn: signIn, signInMessage: signInMessage, CAMERA: CAMERA, HttpError: HttpError };
})();
