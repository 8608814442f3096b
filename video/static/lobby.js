/* The lobby (/video): sign in, pick a work order (or type its id) and open a call about it. */
(function () {
  "use strict";
  var V = window.HeatVideo;
  var $ = function (id) { return document.getElementById(id); };
  var token = function () { return sessionStorage.getItem("heat_token"); };
  // The work-order categories as the console names them (the buttons showed `not_warm`).
  var CATEGORY = { not_warm: "不热", leak: "漏水", noise: "噪音", air_lock: "气堵", valve: "阀门", billing: "收费",
                   other: "其他" };
  function say(text, kind) { var m = $("message"); m.textContent = text; m.className = "message" + (kind ? " " + kind : ""); }

  async function open(workOrderId) {
    try {
      var room = await V.api("POST", "/api/v1/video/rooms", token(), { work_order_id: workOrderId });
      sessionStorage.setItem("heat_sms_" + room.room_id, room.sms_text);
      location.href = "/video/room/" + room.room_id;
    } catch (e) { say("无法发起视频：" + e.message, "error"); }
  }

  async function load() {
    if (!token()) { say("请先登录。"); $("login").hidden = false; return; }
    $("byid").hidden = false;
    var list;
    try { list = await V.api("GET", "/api/v1/work-orders?status=assigned&status=in_progress&status=waiting_resident&limit=20", token()); }
    catch (e) {
      if (e.status === 401) { sessionStorage.removeItem("heat_token"); $("login").hidden = false; say("请重新登录。"); return; }
      say(e.message, "error"); return;
    }
    say(list.count ? "选择一个工单发起视频，或输入工单号。" : "没有进行中的工单；可输入工单号。");
    list.data.forEach(function (o) {
      var b = document.createElement("button"); b.className = "secondary";
      b.textContent = (CATEGORY[o.category] || o.category) + " · " + (o.description || o.id).slice(0, 40);
      b.addEventListener("click", function () { open(o.id); });
      $("orders").appendChild(b);
    });
  }

  $("login").addEventListener("submit", async function (ev) {
    ev.preventDefault();
    var access;
    try { access = await V.signIn($("login")); } catch (e) { say(e.message, "error"); return; }
    sessionStorage.setItem("heat_token", access);
    $("login").hidden = true; load();
  });
  $("byid").addEventListener("submit", function (ev) { ev.preventDefault(); open(new FormData($("byid")).get("work_order_id").trim()); });
  load();
})();
