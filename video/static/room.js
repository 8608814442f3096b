/* The steward's room page (/video/room/{id}; ?watch=1 is the supervisor's watch-only view). Signs in with
   the tab's heat_token, shared with the console; a link never carries a token into this tab. */
(function () {
  "use strict";
  var V = window.HeatVideo;
  var $ = function (id) { return document.getElementById(id); };
  var roomId = location.pathname.split("/").pop();
  var watch = new URLSearchParams(location.search).get("watch") === "1";
  var state = { pc: null, participantId: null, stream: null, room: null, status: "loading", snapshots: 0 };
  window.__heat = state;
  var token = function () { return sessionStorage.getItem("heat_token"); };
  function say(text, kind) { var m = $("message"); m.textContent = text; m.className = "message" + (kind ? " " + kind : ""); }
  function show(id, on) { $(id).hidden = !on; }
  var REASONS = { closed: "已结束", empty: "长时间无人在线，已自动结束", max_duration: "已达最长通话时长",
                  shutdown: "服务重启，已结束", lost: "服务中断，已结束" };
  function ended(room) {  // the call is over: say why, offer nothing more
    if (state.poll) { clearInterval(state.poll); state.poll = null; }
    if (state.pc) { var pc = state.pc; state.pc = null; pc.close(); }
    ["join", "snapshot", "leave", "close", "invite"].forEach(function (id) { show(id, false); });
    say("本次通话" + (REASONS[room.close_reason] || "已结束") + "。" + (room.recording_note_id ? "录音已保存到工单。" : ""));
  }
  async function check() {  // while joined: a call closed elsewhere (a supervisor, the order, its time) ends here too
    try {
      var room = await V.api("GET", "/api/v1/video/rooms/" + roomId, token());
      if (room.state !== "open") { state.room = room; ended(room); }
    } catch (e) { /* a network blip: the next check tells */ }
  }

  async function load() {
    if (!token()) { say("请先登录。"); show("login", true); return; }
    try { state.room = await V.api("GET", "/api/v1/video/rooms/" + roomId, token()); }
    catch (e) {
      if (e.status === 401) { sessionStorage.removeItem("heat_token"); say("登录已过期，请重新登录。", "error"); show("login", true); return; }
      say("无法打开通话：" + e.message, "error"); return;
    }
    $("title").textContent = watch ? "旁听视频通话（只看）" : "视频通话";
    $("info").textContent = "工单 " + state.room.work_order_id + " · 通话 " + roomId;
    if (state.room.state !== "open") { ended(state.room); return; }
    var sms = sessionStorage.getItem("heat_sms_" + roomId);
    if (sms && !watch) { $("sms").textContent = sms; show("invite", true); }
    say(watch ? "点击「加入通话」开始旁听。" : "点击「加入通话」，等待住户打开链接。");
    show("join", true); show("close", !watch);
  }

  function tile(label) {
    var v = document.createElement("video"); v.autoplay = true; v.playsInline = true; v.title = label;
    v.srcObject = new MediaStream(); $("tiles").appendChild(v); return v;
  }

  async function join() {
    show("join", false);
    if (!watch && !state.stream && navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
      try { state.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false }); }
      catch (e) { say("未能打开麦克风（" + e.name + "），住户将听不到您的声音。", "error"); }
    }
    var tiles = $("tiles");
    while (tiles.firstChild) tiles.removeChild(tiles.firstChild);
    show("tiles", true);
    var videos = watch ? [tile("住户"), tile("管家")] : [tile("住户")];
    var audios = [];
    try {
      var joined = await V.join({
        roomId: roomId, token: token(), role: watch ? "supervisor" : "steward", stream: state.stream,
        receive: { audio: watch ? 2 : 1, video: watch ? 2 : 1 }, iceServers: state.room.ice_servers,
        onTrack: function (track, i) {
          if (track.kind === "video" && videos[i]) { videos[i].srcObject.addTrack(track); videos[i].play().catch(function () {}); }
          if (track.kind === "audio") {
            var a = new Audio(); a.autoplay = true; a.srcObject = new MediaStream([track]); audios.push(a); a.play().catch(function () {});
          }
        },
        onState: function (s) {
          state.status = s;
          if (s === "connected") say(watch ? "正在旁听。" : "已接通，等待或正在与住户通话。", "ok");
          if (s === "failed" || s === "closed") {
            if (!state.pc) return;  // hung up here (leave, close, the call ended)
            say("连接已断开，可点击「加入通话」重新连接。", "error"); show("join", true); show("snapshot", false);
            check();  // or did the call end?
          }
        }
      });
      state.pc = joined.pc; state.participantId = joined.participantId;
      say("正在连接…");
      show("snapshot", !watch); show("leave", true);
      if (!state.poll) state.poll = setInterval(check, 3000);
    } catch (e) {
      if (e.status === 409) { await check(); if (state.room.state !== "open") return; }
      say("加入失败：" + e.message, "error"); show("join", true);
    }
  }

  async function snapshot() {
    try {
      var s = await V.api("POST", "/api/v1/video/rooms/" + roomId + "/snapshot", token());
      state.snapshots++; say("已截图留证（" + s.width + "×" + s.height + "）。", "ok");
    } catch (e) { say("截图失败：" + e.message, "error"); }
  }

  function leave() {
    V.leave(roomId, token(), state.participantId);
    if (state.poll) { clearInterval(state.poll); state.poll = null; }
    if (state.pc) { var pc = state.pc; state.pc = null; pc.close(); }
    show("leave", false); show("snapshot", false); show("join", true); say("您已离开通话，通话仍在进行。");
  }

  async function closeRoom() {
    if (!confirm("结束本次视频通话？")) return;
    var room;
    try { room = await V.api("POST", "/api/v1/video/rooms/" + roomId + "/close", token()); } catch (e) { say(e.message, "error"); return; }
    state.room = room; ended(room);
  }

  $("login").addEventListener("submit", async function (ev) {
    ev.preventDefault();
    var access;
    try { access = await V.signIn($("login")); } catch (e) { say(e.message, "error"); return; }
    sessionStorage.setItem("heat_token", access);
    show("login", false); load();
  });
  $("copy").addEventListener("click", function () { navigator.clipboard && navigator.clipboard.writeText($("sms").textContent); });
  $("join").addEventListener("click", join);
  $("snapshot").addEventListener("click", snapshot);
  $("leave").addEventListener("click", leave);
  $("close").addEventListener("click", closeRoom);
  window.addEventListener("pagehide", function () { V.leave(roomId, token(), state.participantId); });
  load();
})();
