/* The resident's page (/join/{token}): the join token is the last part of the path. */
(function () {
  "use strict";
  var V = window.HeatVideo;
  var raw = location.pathname.split("/").pop() || "";
  var token;
  try { token = decodeURIComponent(raw); } catch (e) { token = raw; }  // a mangled %: the server says the link is invalid
  var $ = function (id) { return document.getElementById(id); };
  var state = { pc: null, participantId: null, stream: null, room: null, status: "checking", error: null };
  window.__heat = state;  // read by the browser test
  var WATCH_MS = 3000;  // how often a call in progress asks whether it still goes on

  function say(text, kind) {
    var m = $("message"); m.textContent = text; m.className = "message" + (kind ? " " + kind : ""); m.hidden = false;
  }
  function show(id, on) { $(id).hidden = !on; }
  function buttons() {  // show these buttons, hide the others
    var on = Array.prototype.slice.call(arguments);
    ["start", "rejoin", "retry", "hangup"].forEach(function (id) { show(id, on.indexOf(id) >= 0); });
  }
  // The details stay in the console: the server's and the browser's messages are English, and may name settings.
  function log(where, e) {
    if (e instanceof V.HttpError) console.warn("join:", where, e.status, e.code, e.message);
    else console.warn("join:", where, e && e.name, e && e.message);
  }

  var LINK_ERRORS = {
    join_link_expired: "链接已过期。请联系管家重新发送视频链接。",
    invalid_token: "链接无效。请确认短信中的链接完整，或联系管家重新发送。",
    wrong_room: "这个链接属于另一次视频通话。请使用管家最新发送的链接。",
    room_closed: "本次视频通话已经结束。如需继续，请联系管家重新发起。",
    work_order_closed: "这张工单已经结束，视频通话已关闭。如有问题，请联系管家。",
    room_lost: "视频通话已中断。请联系管家重新发起。",
    room_not_found: "本次视频通话已经结束。如需继续，请联系管家重新发起。",
    room_full: "通话人数已满，请稍后再试。",
    too_many_rooms: "当前视频通话较多，请稍后再试。"
  };
  var LATER = { room_full: true, too_many_rooms: true };  // the link is fine: the call may take the resident soon
  var UNKNOWN_ERROR = "无法加入视频通话，请联系管家重新发送链接。";
  var NETWORK_ERROR = "网络连接失败，请检查网络后点击「重试」。";
  var SERVER_BUSY = "服务暂时繁忙，请稍后点击「重试」。";
  var SUPPORT = {
    wechat: "微信内无法打开摄像头。请点击右上角「···」，选择「在浏览器打开」，用手机自带浏览器打开此链接。",
    insecure: "此页面不是安全连接（https），手机浏览器不允许使用摄像头。请联系管家获取正确的链接。",
    no_webrtc: "当前浏览器不支持视频通话。请复制链接，用手机自带浏览器（如 Safari、Chrome、华为/小米浏览器）打开。"
  };

  // Worth trying again: no answer at all (or not an HTTP error), our server's trouble (5xx) or its rate limit.
  function passing(e) {
    return !(e instanceof V.HttpError) || !e.status || e.status >= 500 || (e.status === 429 && !LINK_ERRORS[e.code]);
  }

  function stop() {  // the call is over on this page: no connection, no camera, no polling
    unwatch(); clearTimeout(dropTimer);
    if (state.pc) { state.pc.close(); state.pc = null; }
    if (state.stream) { state.stream.getTracks().forEach(function (t) { t.stop(); }); state.stream = null; }
    show("stage", false);
  }

  function linkError(e) {
    log("link", e);
    stop();
    state.status = "error"; state.error = e.code;
    say(LINK_ERRORS[e.code] || UNKNOWN_ERROR, "error");
    if (LATER[e.code]) buttons("retry"); else buttons();  // "try again later" needs a button to try with
  }

  function retryLater(e, where) {
    log(where, e);
    var network = !(e instanceof V.HttpError) || !e.status;
    state.status = "retry"; state.error = network ? "network" : "server_busy";
    say(network ? NETWORK_ERROR : SERVER_BUSY, "error");
    buttons("retry");
  }

  function failed(e, where) { return passing(e) ? retryLater(e, where) : linkError(e); }

  async function fetchRoom(inCall) {  // inCall: the link's expiry does not end a call already going
    state.room = await V.api("GET", "/api/v1/video/join/" + encodeURIComponent(token) + (inCall ? "?in_call=1" : ""));
  }

  async function check() {
    var missing = V.missingSupport();
    if (missing) { state.status = "unsupported"; state.error = missing; say(SUPPORT[missing], "error"); return; }
    state.status = "checking"; say("正在检查链接…"); buttons();
    try { await fetchRoom(); } catch (e) { return failed(e, "check"); }
    state.status = "ready";
    say("管家邀请您视频查看暖气。点击「开始视频」，并在弹出的提示中允许使用摄像头和麦克风。");
    buttons("start");
  }

  async function camera() {
    try {
      return await navigator.mediaDevices.getUserMedia(V.CAMERA);
    } catch (e) {
      if (e && (e.name === "NotAllowedError" || e.name === "SecurityError")) {
        state.status = "denied"; state.error = "permission_denied";
        say("您没有允许使用摄像头或麦克风。请在浏览器的网站设置中允许本页面使用摄像头和麦克风，然后点击「开始视频」重试。", "error");
      } else if (e && (e.name === "NotFoundError" || e.name === "OverconstrainedError")) {
        state.status = "error"; state.error = "no_camera";
        say("没有找到可用的摄像头或麦克风。请确认手机未被其他应用占用摄像头后重试。", "error");
      } else if (e && e.name === "NotReadableError") {
        state.status = "error"; state.error = "camera_busy";
        say("摄像头正被其他应用使用。请关闭其他使用摄像头的应用后重试。", "error");
      } else {
        state.status = "error"; state.error = "camera_error";
        say("无法打开摄像头，请关闭其他正在使用摄像头的应用后，点击「开始视频」重试。", "error");
      }
      log("camera", e);
      buttons("start");
      return null;
    }
  }

  async function start() {
    buttons();
    if (!state.stream) {
      say("正在打开摄像头…");
      state.stream = await camera();
      if (!state.stream) return;
      $("local").srcObject = state.stream;
      show("stage", true);
    }
    say("正在连接管家…");
    state.status = "connecting";
    var remote = new MediaStream();
    $("remote").srcObject = remote;
    try {
      var joined = await V.join({
        roomId: state.room.room_id, token: token, role: "resident", stream: state.stream,
        relayUrl: state.room.relay_url,
        receive: { audio: 1, video: 1 }, iceServers: state.room.ice_servers,
        onTrack: function (track) { remote.addTrack(track); $("remote").play().catch(function () {}); },
        onState: onState
      });
      state.pc = joined.pc; state.participantId = joined.participantId;
    } catch (e) {
      return failed(e, "connect");
    }
    buttons("hangup");
    watch();
  }

  var dropTimer = null;
  function onState(s) {
    if (s === "connected") {
      clearTimeout(dropTimer);
      state.status = "connected";
      say("已接通。请把后置摄像头对准暖气片。", "ok");
    } else if (s === "disconnected") {
      // often recovers by itself (switching between Wi-Fi and mobile data): wait a little first
      clearTimeout(dropTimer);
      dropTimer = setTimeout(function () { if (state.pc && state.pc.connectionState !== "connected") dropped(); }, 6000);
    } else if (s === "failed") {
      dropped();
    }
  }

  /* The steward's close or the work order's does not reach the browser as such: the connection just goes
     quiet, and Chrome notices it ~14 s later. Asking the link every few seconds tells an ended call within
     seconds and tells it apart from a network drop. */
  var watchTimer = null, asking = false;
  function watch() { unwatch(); watchTimer = setInterval(poll, WATCH_MS); }
  function unwatch() { clearInterval(watchTimer); watchTimer = null; }
  async function poll() {
    if (asking) return;
    asking = true;
    try { await fetchRoom(true); }
    catch (e) { if (watchTimer && !passing(e)) linkError(e); }  // a network blip is the connection's business
    finally { asking = false; }
  }

  async function dropped() {
    unwatch(); clearTimeout(dropTimer);
    if (state.pc) { state.pc.close(); state.pc = null; }
    state.status = "dropped";
    say("连接已断开，正在检查…", "error");
    buttons();
    try { await fetchRoom(); } catch (e) {
      if (state.status !== "dropped") return;  // hung up meanwhile
      if (!passing(e)) return linkError(e);  // the call ended: nothing the network can fix
      if (e.status) return retryLater(e, "drop");
      log("drop", e);
    }
    if (state.status !== "dropped") return;
    say("连接已断开。请检查网络，然后点击「重新连接」。", "error");
    buttons("rejoin");
  }

  async function rejoin() {
    buttons();
    try { await fetchRoom(); } catch (e) { return failed(e, "rejoin"); }
    start();
  }

  function retry() { return state.room ? rejoin() : check(); }

  function hangup() {
    V.leave(state.room.room_id, token, state.participantId, state.room.relay_url);
    stop();
    state.status = "ended";
    buttons("rejoin");
    say("您已挂断。如需继续，请点击「重新连接」。");
  }

  $("start").addEventListener("click", start);
  $("rejoin").addEventListener("click", rejoin);
  $("retry").addEventListener("click", retry);
  $("hangup").addEventListener("click", hangup);
  window.addEventListener("pagehide", function () {
    unwatch();
    if (state.room) V.leave(state.room.room_id, token, state.participantId, state.room.relay_url);
  });
  check();
})();
