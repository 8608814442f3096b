/* Heat Steward supervisor console (督办台). Plain script, no build step. Signs in with the API's own
   token (kept in this tab's sessionStorage, sent as a Bearer header: no cookie, so no CSRF); every value
   from the server is written with textContent. State for the tests is mirrored on window.__console. */
(function () {
  "use strict";
  var TOKEN_KEY = "heat_token";  // shared with the video pages of the same origin
  var PAGE = 20;

  var L = {
    transcript_status: { waiting_audio: "等待音频", queued: "排队中", running: "转写中", failed: "转写失败",
                         transcribed: "待审核", approved: "已审核" },
    category: { not_warm: "不热", leak: "漏水", noise: "噪音", air_lock: "气堵", valve: "阀门", billing: "收费",
                other: "其他" },
    order_status: { "new": "新建", assigned: "已派单", in_progress: "处理中", waiting_resident: "等待居民",
                    resolved: "已解决", closed: "已关闭", cancelled: "已取消" },
    priority: { urgent: "紧急", high: "高", normal: "普通", low: "低" },
    source: { hotline: "热线", visit: "走访", proactive: "主动服务", video: "视频" },
    visit_result: { resolved: "已解决", follow_up: "需跟进", no_access: "未能入户", referred: "已转交" },
    kind: { voice_note: "语音留言", call_recording: "热线通话" },
    table: { work_orders: "工单", visits: "走访", households: "住户", buildings: "楼栋", stations: "换热站",
             notes: "录音", readings: "室温记录", notices: "通知" },
    conflict_kind: { field: "字段冲突", delete_wins: "删除优先", deleted: "记录已删除",
                     invalid_transition: "状态变更无效",
                     invalid_value: "值无效", forbidden: "无权修改", not_editable: "不可修改", not_assignee: "非指派人",
                     not_owner: "非本人记录", out_of_scope: "超出范围", read_only_field: "只读字段" },
    winner: { device: "设备", server: "服务器" },
    role: { admin: "管理员", supervisor: "督办", steward: "管家" },
    room_state: { open: "进行中", closed: "已结束" },
    close_reason: { closed: "挂断", empty: "无人在线", max_duration: "超过时长", shutdown: "服务重启", lost: "中断" },
    heating: { normal: "正常供暖", suspended: "报停" },
    proactive_kind: { station: "换热站", building: "楼栋", riser: "单元立管", revisit: "敏感户回访" },
    campaign_status: { draft: "未发送", sending: "发送中", completed: "已完成" },
    delivery_status: { queued: "待发送", sent: "已发送", failed: "发送失败", skipped: "已跳过" },
    field: { category: "类别", description: "描述", priority: "优先级", sla_due_at: "时限", status: "状态",
             assignee_id: "管家", indoor_temp_c: "室温", actions: "处理措施", result: "结果", left_at: "离开时间",
             resident_name: "住户姓名", phone: "电话", heating_status: "供暖状态", temp_c: "温度", room: "房间" }
  };
  function label(group, key) { return (L[group] && L[group][key]) || (key == null ? "" : String(key)); }

  /* seq numbers the views as they start: a view still loading when another starts is superseded, and
     checks `my !== state.seq` after every await so that it stops instead of writing into the new one. */
  var state = { me: null, people: {}, view: null, timer: null, urls: [], seq: 0, dashboardError: null };
  window.__console = state;

  var $ = function (id) { return document.getElementById(id); };

  /* el("td", {className: "x"}, "text", childNode, ...): children are text (escaped) or nodes. */
  function el(tag, props) {
    var node = document.createElement(tag);
    if (props) Object.keys(props).forEach(function (k) {
      if (k === "dataset") Object.keys(props.dataset).forEach(function (d) { node.dataset[d] = props.dataset[d]; });
      else node[k] = props[k];
    });
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c == null || c === false) continue;
      node.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  function say(text, kind) {
    var m = $("message"); m.textContent = text || ""; m.className = "message" + (kind ? " " + kind : "");
    m.hidden = !text;
  }

  function HttpError(status, code, message) { this.status = status; this.code = code; this.message = message; }
  // The API's messages are English (for integrators); the console says the common ones in Chinese and keeps
  // the API's text for the rest, after the code.
  var MESSAGES = {
    stale_revision: "别人刚修改过这条记录，请重新加载后再操作。",
    invalid_transition: "当前状态不允许此操作。",
    validation_error: "输入有误，请检查后重试。",
    not_found: "找不到该记录（可能已删除，或您无权查看）。",
    role_required: "您的账号没有此项权限（需要督办或管理员）。",
    forbidden: "您的账号没有此项权限。",
    database_unavailable: "服务暂时不可用，请稍后重试。",
    storage_unavailable: "存储服务暂时不可用，请稍后重试。",
    invalid_query: "搜索词太长或含有不支持的字符。",
    invalid_category: "未知的分类。",
    duplicate_segment: "同一段不能同时修改两次。",
    no_such_segment: "该段已不存在，请重新加载。",
    blob_missing: "录音文件暂不可用。",
    too_many_requests: "操作太频繁，请稍后再试。"
  };

  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  async function request(method, path, body, raw) {
    var headers = { "Accept": raw ? "*/*" : "application/json" };
    var t = token();
    if (t) headers["Authorization"] = "Bearer " + t;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    var r;
    try {
      r = await fetch(path, { method: method, headers: headers, cache: "no-store",
                              body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) { throw new HttpError(0, "network", "网络连接失败，请稍后重试。"); }
    if (r.status === 401) { signOut("登录已失效，请重新登录。"); throw new HttpError(401, "signed_out", "请重新登录。"); }
    if (raw && r.ok) return r.blob();
    var data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      var d = (data && data.detail) || {};
      var code = d.code || "http_" + r.status;
      throw new HttpError(r.status, code, MESSAGES[code] || ((d.message || r.statusText) + "（" + code + "）"));
    }
    return data;
  }
  var api = function (method, path, body) { return request(method, "/api/v1" + path, body, false); };

  /* Audio and snapshots need the token, which media elements cannot send: fetch them into blob: URLs.
     For view `my`; null when a newer view started meanwhile (no URL is made, so none is left unreleased). */
  async function blobUrl(path, my) {
    var blob = await request("GET", "/api/v1" + path, undefined, true);
    if (my !== state.seq) return null;
    var url = URL.createObjectURL(blob);
    state.urls.push(url);
    return url;
  }
  function releaseUrls() { state.urls.forEach(function (u) { URL.revokeObjectURL(u); }); state.urls = []; }

  function query(params) {
    var parts = [];
    Object.keys(params).forEach(function (k) {
      var v = params[k];
      if (v !== "" && v != null) parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(v));
    });
    return parts.length ? "?" + parts.join("&") : "";
  }
  function parseHash() {
    var h = location.hash.replace(/^#\/?/, "");
    var qi = h.indexOf("?");
    var path = qi < 0 ? h : h.slice(0, qi);
    var params = {};
    if (qi >= 0) new URLSearchParams(h.slice(qi + 1)).forEach(function (v, k) { params[k] = v; });
    return { parts: path.split("/").filter(Boolean), params: params };
  }

  // Times in the service's zone (STEWARD_TIMEZONE, from /console/me), the zone its date filters count days
  // in: a fixed Asia/Shanghai disagreed with the filters under any other setting.
  function formatter(zone) {
    return new Intl.DateTimeFormat("zh-CN", { timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
                                              hour: "2-digit", minute: "2-digit", hour12: false });
  }
  var fmt = formatter("Asia/Shanghai");
  var clockFmt = new Intl.DateTimeFormat("zh-CN", { timeZone: "Asia/Shanghai", hour: "2-digit", minute: "2-digit",
                                                    second: "2-digit", hour12: false });
  function when(iso) { return iso ? fmt.format(new Date(iso)) : ""; }
  function clock(seconds) {
    var m = Math.floor(seconds / 60), s = seconds - m * 60;
    return (m < 10 ? "0" : "") + m + ":" + (s < 10 ? "0" : "") + s.toFixed(1);
  }
  // An id's last 8 hex digits: ids are time-ordered UUIDv7, whose first digits are the same for everything
  // made within a minute; the last are random.
  function shortId(id) { return String(id).slice(-8); }
  function person(id) {
    var p = id && state.people[id];
    return p ? (p.full_name || p.username) : (id ? "用户 " + shortId(id) : "系统");
  }
  function orderLink(id, text) { return el("a", { href: "#/wo/" + id }, text || "工单 " + shortId(id)); }

  /* The text around the first hit of q, the hit in <mark>; the start of the text when there is none. */
  function snippet(text, q) {
    var span = el("span", { className: "snippet" });
    var at = q ? text.toLowerCase().indexOf(q.toLowerCase()) : -1;
    if (at < 0) { span.appendChild(document.createTextNode(text.length > 80 ? text.slice(0, 80) + "…" : text)); return span; }
    var from = Math.max(0, at - 30), to = Math.min(text.length, at + q.length + 30);
    span.appendChild(document.createTextNode((from > 0 ? "…" : "") + text.slice(from, at)));
    span.appendChild(el("mark", null, text.slice(at, at + q.length)));
    span.appendChild(document.createTextNode(text.slice(at + q.length, to) + (to < text.length ? "…" : "")));
    return span;
  }

  // --- sign in -------------------------------------------------------------------------------------------

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.me = null;
    state.seq++;  // a view still loading stops there
    stopTimer();
    releaseUrls();
    showView(null);
    $("nav").hidden = true; $("logout").hidden = true; $("who").textContent = "";
    $("login").hidden = false;
    say(message || "请登录。");
  }

  async function loadMe() {
    var me = await api("GET", "/console/me");
    state.me = me;
    try {
      fmt = formatter(me.timezone);
      clockFmt = new Intl.DateTimeFormat("zh-CN", { timeZone: me.timezone, hour: "2-digit", minute: "2-digit",
                                                    second: "2-digit", hour12: false });
    } catch (e) { /* a zone this browser does not know: keep Asia/Shanghai */ }
    state.people = {};
    me.people.forEach(function (p) { state.people[p.id] = p; });
    $("who").textContent = (me.user.full_name || me.user.username) + "（" + label("role", me.user.role) + "）";
    $("nav").hidden = false; $("logout").hidden = false; $("login").hidden = true;
    document.querySelectorAll("[data-review]").forEach(function (n) { n.hidden = !me.can_review; });
    var select = clear($("steward-select"));
    select.appendChild(el("option", { value: "" }, "全部"));
    me.people.filter(function (p) { return p.role === "steward"; }).forEach(function (p) {
      select.appendChild(el("option", { value: p.id }, p.full_name || p.username));
    });
  }

  $("login").addEventListener("submit", async function (ev) {
    ev.preventDefault();
    var r;
    try { r = await fetch("/api/v1/auth/token", { method: "POST", body: new URLSearchParams(new FormData($("login"))) }); }
    catch (e) { say("网络连接失败，请稍后重试。", "error"); return; }
    if (!r.ok) {
      var d = {};
      try { d = (await r.json()).detail || {}; } catch (e) { d = {}; }
      // A lockout (429, also for the right password) and a server error are not a wrong password.
      say(r.status === 429 ? "尝试次数过多，请稍后再试。"
        : d.code === "inactive_user" ? "账号已停用，请联系管理员。"
        : r.status >= 500 ? "服务暂时不可用，请稍后重试。" : "用户名或密码错误。", "error");
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, (await r.json()).access_token);
    $("login").reset();
    await start();
  });
  $("logout").addEventListener("click", function () { signOut("已退出。"); });
  $("goto-order").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var id = new FormData($("goto-order")).get("id").trim();
    if (id) location.hash = "#/wo/" + id;
  });

  // --- views ---------------------------------------------------------------------------------------------

  function stopTimer() { if (state.timer) { clearTimeout(state.timer); state.timer = null; } }

  function showView(name) {
    document.querySelectorAll(".view").forEach(function (v) { v.hidden = v.id !== "view-" + name; });
    document.querySelectorAll("#nav a").forEach(function (a) { a.classList.toggle("active", a.dataset.view === name); });
    state.view = name;
  }

  async function route() {
    if (!state.me) return;
    var h = parseHash();
    var name = h.parts[0] || "queue";
    say("");
    await render(function (my) {
      if (name === "t" && h.parts[1]) { showView("transcript"); return transcriptView(h.parts[1], my); }
      if (name === "wo" && h.parts[1]) { showView("timeline"); return timelineView(h.parts[1], my); }
      if (name === "conflicts") { requireReview(); showView("conflicts"); return conflictsView(h.params, my); }
      if (name === "dashboard") { requireReview(); showView("dashboard"); return dashboardView(my); }
      showView("queue"); return queueView(h.params, my);
    });
  }
  /* Start a view under a new sequence number, superseding any view still loading (and its timer and blob:
     URLs); its errors are shown unless a newer view has started since. */
  async function render(view) {
    var my = ++state.seq;
    stopTimer();
    releaseUrls();
    try { await view(my); }
    catch (e) {
      if (e.status === 401 || my !== state.seq) return;
      say(e.status === 404 ? "找不到该记录（或不在您的网格内）。" :
          e.status === 403 ? "您的账号没有此项权限（需要督办或管理员）。" : "出错了：" + e.message, "error");
    }
  }
  function requireReview() { if (!state.me.can_review) throw new HttpError(403, "role_required", ""); }

  // --- transcript queue ----------------------------------------------------------------------------------

  function fillOptions() {
    document.querySelectorAll("select[data-options]").forEach(function (s) {
      var group = L[s.dataset.options];
      Object.keys(group).forEach(function (k) { s.appendChild(el("option", { value: k }, group[k])); });
    });
  }

  function formParams(form) {
    var out = {};
    new FormData(form).forEach(function (v, k) { out[k] = String(v).trim(); });
    return out;
  }
  function setForm(form, params) {
    Array.prototype.forEach.call(form.elements, function (f) {
      if (f.name) f.value = params[f.name] != null ? params[f.name] : (f.tagName === "SELECT" ? f.options[0].value : "");
    });
  }

  async function queueView(params, my) {
    setForm($("queue-filters"), params);
    var offset = parseInt(params.offset || "0", 10) || 0;
    var filters = formParams($("queue-filters"));
    var page = await api("GET", "/console/transcripts" + query(Object.assign({}, filters, { offset: offset, limit: PAGE })));
    if (my !== state.seq) return;
    var rows = clear($("queue-rows"));
    page.data.forEach(function (t) {
      var tr = el("tr", { className: t.status === "transcribed" ? "pending" : "", dataset: { id: t.id } },
        el("td", null, el("a", { href: "#/t/" + t.id }, when(t.recorded_at))),
        el("td", null, label("kind", t.kind)),
        el("td", null, el("span", { className: "badge " + t.status }, label("transcript_status", t.status))),
        el("td", null, t.categories.map(function (c) { return label("category", c); }).join("、")),
        el("td", null, person(t.owner_id), t.caller_phone ? el("div", { className: "phone" }, t.caller_phone) : null),
        el("td", null, snippet(t.text || (t.failure_reason ? "（" + t.failure_reason + "）" : ""), filters.q)));
      tr.addEventListener("click", function (ev) { if (ev.target.tagName !== "A") location.hash = "#/t/" + t.id; });
      rows.appendChild(tr);
    });
    if (!page.data.length) rows.appendChild(el("tr", null, el("td", { colSpan: 6, className: "empty" }, "没有符合条件的转写。")));
    $("queue-summary").textContent = "共 " + page.count + " 条，其中待审核 " + page.pending + " 条" +
      (filters.q ? "；搜索“" + filters.q + "”" : "") + "。";
    $("queue-page").textContent = page.count ? (offset + 1) + "–" + (offset + page.data.length) + " / " + page.count : "";
    $("queue-prev").disabled = offset <= 0;
    $("queue-next").disabled = offset + PAGE >= page.count;
    state.queue = { params: filters, offset: offset, ids: page.data.map(function (t) { return t.id; }) };
  }
  function goQueue(params, offset) {
    location.hash = "#/queue" + query(Object.assign({}, params, { offset: offset || "" }));
  }
  $("queue-filters").addEventListener("submit", function (ev) { ev.preventDefault(); goQueue(formParams(ev.target), 0); });
  $("queue-filters").addEventListener("reset", function (ev) { ev.preventDefault(); goQueue({}, 0); });
  $("queue-prev").addEventListener("click", function () { goQueue(state.queue.params, Math.max(0, state.queue.offset - PAGE)); });
  $("queue-next").addEventListener("click", function () { goQueue(state.queue.params, state.queue.offset + PAGE); });

  // --- transcript view -----------------------------------------------------------------------------------

  function meta(dl, pairs) {
    clear(dl);
    pairs.forEach(function (p) {
      if (p[1] == null || p[1] === "") return;
      dl.appendChild(el("dt", null, p[0]));
      dl.appendChild(el("dd", null, p[1]));
    });
  }

  async function transcriptView(id, my) {
    var t = await api("GET", "/transcripts/" + id);
    if (my !== state.seq) return;
    var quality = await api("GET", "/console/transcripts/" + id + "/quality");
    if (my !== state.seq) return;
    state.transcript = t;
    var back = state.queue ? "#/queue" + query(Object.assign({}, state.queue.params, { offset: state.queue.offset || "" })) : "#/queue";
    $("back-to-queue").href = back;
    $("t-title").textContent = label("kind", t.kind) + " · " + when(t.recorded_at);
    var order = t.work_order_id || t.draft_work_order_id;
    meta($("t-meta"), [
      ["状态", el("span", { className: "badge " + t.status }, label("transcript_status", t.status))],
      ["录音人", person(t.owner_id)], ["来电号码", t.caller_phone ? el("span", { className: "phone" }, t.caller_phone) : null],
      ["坐席", t.agent], ["时长", t.duration_s != null ? t.duration_s.toFixed(1) + " 秒" : null],
      ["分类", t.categories.map(function (c) { return label("category", c); }).join("、")],
      ["工单", order ? orderLink(order) : null], ["识别引擎", t.engine ? t.engine + " · " + String(t.model || "").split("/").pop() : null],
      ["审核", t.approved_at ? person(t.approved_by_id) + " 于 " + when(t.approved_at) : null],
      ["号码显示", t.redacted ? "已脱敏（您的账号无权查看完整号码）" : null],
      ["失败原因", t.failure_reason]
    ]);
    var audio = $("t-audio");
    audio.removeAttribute("src");
    // said by the player, not in #message: a reload keeps the message that caused it on screen
    var audioError = $("t-audio-error"), src = null;
    audioError.hidden = true; audioError.textContent = "";
    try { src = await blobUrl("/transcripts/" + id + "/audio", my); }
    catch (e) { if (e.status === 401) throw e; audioError.textContent = "录音暂不可用：" + e.message; }
    if (my !== state.seq) return;
    if (src) audio.src = src;
    else if (audioError.textContent) audioError.hidden = false;
    var editable = state.me.can_review && t.status === "transcribed";
    var low = {};
    quality.segments.forEach(function (q) { low[q.index] = q; });
    var list = clear($("t-segments"));
    t.segments.forEach(function (s) {
      var q = low[s.index] || {};
      var li = el("li", { className: "segment" + (q.low ? " low" : ""), dataset: { index: s.index, start: s.start } });
      if (q.low) li.title = "置信度低：平均对数概率 " + q.avg_logprob + "，无语音概率 " + q.no_speech_prob;
      var play = el("button", { type: "button", className: "time", title: "从此处播放" }, clock(s.start));
      var text = el("span", { className: "text" }, s.text);
      li.appendChild(play); li.appendChild(text);
      li.addEventListener("click", function (ev) {
        if (ev.target.closest(".edit-box") || ev.target.classList.contains("edit")) return;
        audio.currentTime = s.start;
        var p = audio.play(); if (p && p.catch) p.catch(function () {});
      });
      if (editable) {
        var edit = el("button", { type: "button", className: "edit secondary" }, "修改");
        edit.addEventListener("click", function () { startEdit(t, s, li, my); });
        li.appendChild(edit);
      }
      list.appendChild(li);
    });
    if (!t.segments.length) list.appendChild(el("li", { className: "empty" }, "暂无转写内容。"));
    var actions = clear($("t-actions"));
    if (editable) {
      var approve = el("button", { type: "button", id: "approve" }, "审核通过");
      approve.addEventListener("click", async function () {
        approve.disabled = true;
        try { await api("POST", "/transcripts/" + id + "/approve", { base_revision: t.revision }); }
        catch (e) {
          if (e.status === 401 || my !== state.seq) return;
          if (e.code === "stale_revision") {  // corrected by someone since it was shown: show that text first
            say("别人刚修改过这条转写，已为您重新加载，请核对后再审核。", "error");
            await reloadTranscript(id);
            return;
          }
          approve.disabled = false; say("审核失败：" + e.message, "error"); return;
        }
        if (my !== state.seq) return;
        say("已审核通过。", "ok");
        await reloadTranscript(id);
      });
      actions.appendChild(approve);
    } else if (t.status === "approved") {
      actions.appendChild(el("span", { className: "badge approved" }, "已审核，不能再修改"));
    }
    var history = await api("GET", "/transcripts/" + id + "/revisions");
    if (my !== state.seq) return;
    var revisions = clear($("t-revisions"));
    history.slice().reverse().forEach(function (r) {
      var li = el("li", null, el("strong", null, "第 " + r.revision + " 版"), " · " + person(r.user_id) + " · " + when(r.at));
      var ul = el("ul");
      r.changes.forEach(function (c) {
        ul.appendChild(el("li", null, "第 " + (c.index + 1) + " 段：", el("del", null, c.before), " → ", el("ins", null, c.after)));
      });
      li.appendChild(ul);
      revisions.appendChild(li);
    });
    if (!history.length) revisions.appendChild(el("li", { className: "empty" }, "尚无修改。"));
  }

  /* Show the transcript again, keeping the message on screen (after a save, an approval, a stale save). */
  function reloadTranscript(id) { return render(function (my) { return transcriptView(id, my); }); }

  function startEdit(t, s, li, my) {
    if (li.querySelector(".edit-box")) return;
    var box = el("span", { className: "edit-box" });
    var input = el("input", { type: "text", value: s.text, maxLength: 2000, className: "segment-input" });
    input.setAttribute("aria-label", "第 " + (s.index + 1) + " 段的文字");
    var save = el("button", { type: "button" }, "保存");
    var cancel = el("button", { type: "button", className: "secondary" }, "取消");
    box.appendChild(input); box.appendChild(save); box.appendChild(cancel);
    li.querySelector(".text").hidden = true;
    li.querySelector(".edit").hidden = true;
    li.appendChild(box);
    input.focus();
    cancel.addEventListener("click", function () { box.remove(); li.querySelector(".text").hidden = false; li.querySelector(".edit").hidden = false; });
    async function commit() {
      save.disabled = true;
      try {
        await api("PATCH", "/transcripts/" + t.id, { segments: [{ index: s.index, text: input.value }],
                                                      base_revision: t.revision });
      } catch (e) {
        if (e.status === 401 || my !== state.seq) return;
        if (e.status !== 409 || e.code !== "stale_revision") { save.disabled = false; say("保存失败：" + e.message, "error"); return; }
        // someone saved in between: show their version (and its revision, for the next save)
        say("别人刚修改过这条转写，已为您重新加载，请再改一次。", "error");
        await reloadTranscript(t.id);
        return;
      }
      if (my !== state.seq) return;
      say("已保存修改。", "ok");
      await reloadTranscript(t.id);
    }
    save.addEventListener("click", commit);
    input.addEventListener("keydown", function (ev) { if (ev.key === "Enter") { ev.preventDefault(); commit(); } });
  }

  // --- work-order timeline -------------------------------------------------------------------------------

  var SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    var n = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { n.setAttribute(k, attrs[k]); });
    if (text != null) n.textContent = text;
    return n;
  }

  /* A small line chart of indoor readings, with the 18 ℃ heating standard as a dashed line. */
  function chart(readings) {
    var box = clear($("wo-chart"));
    if (!readings.length) { box.appendChild(el("p", { className: "empty" }, "这段时间没有室温读数。")); return; }
    var W = 640, H = 200, P = { l: 44, r: 12, t: 12, b: 28 };
    var xs = readings.map(function (r) { return new Date(r.taken_at).getTime(); });
    var ys = readings.map(function (r) { return r.temp_c; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    if (x1 === x0) { x0 -= 3600e3; x1 += 3600e3; }
    var y0 = Math.floor(Math.min(16, Math.min.apply(null, ys)) - 1), y1 = Math.ceil(Math.max(22, Math.max.apply(null, ys)) + 1);
    var X = function (t) { return P.l + (t - x0) / (x1 - x0) * (W - P.l - P.r); };
    var Y = function (v) { return H - P.b - (v - y0) / (y1 - y0) * (H - P.t - P.b); };
    var s = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "室温读数折线图", "class": "readings" });
    s.appendChild(svg("line", { x1: P.l, y1: Y(18), x2: W - P.r, y2: Y(18), "class": "standard" }));
    s.appendChild(svg("text", { x: W - P.r, y: Y(18) - 4, "text-anchor": "end", "class": "axis" }, "18℃ 标准"));
    [y0, y1].forEach(function (v) { s.appendChild(svg("text", { x: P.l - 6, y: Y(v) + 4, "text-anchor": "end", "class": "axis" }, v + "℃")); });
    s.appendChild(svg("text", { x: P.l, y: H - 8, "class": "axis" }, when(readings[0].taken_at)));
    s.appendChild(svg("text", { x: W - P.r, y: H - 8, "text-anchor": "end", "class": "axis" }, when(readings[readings.length - 1].taken_at)));
    s.appendChild(svg("polyline", { points: readings.map(function (r, i) { return X(xs[i]).toFixed(1) + "," + Y(ys[i]).toFixed(1); }).join(" "),
                                    "class": "line" }));
    readings.forEach(function (r, i) {
      var dot = svg("circle", { cx: X(xs[i]).toFixed(1), cy: Y(ys[i]).toFixed(1), r: 3.5, "class": r.temp_c < 18 ? "dot cold" : "dot" });
      dot.appendChild(svg("title", null, when(r.taken_at) + " · " + r.room + " · " + r.temp_c + "℃"));
      s.appendChild(dot);
    });
    box.appendChild(s);
  }

  // An event's note as the server wrote it: what the user typed, after "offline sync" for a change pushed
  // from a handheld; an edit's note lists the fields it changed ("priority, sla_due_at").
  function eventNote(item) {
    var note = item.data.note || "", sync = /^offline sync(; )?/.exec(note);
    if (sync) note = note.slice(sync[0].length);
    if (item.kind === "updated" && note)
      note = "修改了" + note.split(", ").map(function (f) { return label("field", f); }).join("、");
    return (sync ? "离线同步" + (note ? "：" : "") : "") + note;
  }

  function timelineEntry(item, my) {
    var d = item.data, title, body = [];
    switch (item.kind) {
      case "created": title = "工单创建"; break;
      case "assigned": title = "派单给 " + person(d.assignee_id); break;
      case "released": title = "退回待派单（原管家 " + person(d.assignee_id) + "）"; break;
      case "status": title = "状态：" + label("order_status", d.from_status) + " → " + label("order_status", d.to_status); break;
      case "updated": title = "工单信息修改 · " + person(item.actor_id); break;
      case "visit":
        title = "上门走访 · " + person(item.actor_id) + (d.indoor_temp_c != null ? " · 室温 " + d.indoor_temp_c + "℃" : "");
        if (d.result) body.push(el("p", null, "结果：" + label("visit_result", d.result)));
        if (d.actions) body.push(el("p", null, d.actions));
        break;
      case "call": case "note":
        title = (item.kind === "call" ? "热线来电" + (d.caller_phone ? " · " : "") : "语音留言 · " + person(item.actor_id));
        var head = el("span", null, title);
        if (item.kind === "call" && d.caller_phone) head.appendChild(el("span", { className: "phone" }, d.caller_phone));
        title = head;
        body.push(el("p", { className: "transcript-text" }, d.text || "（" + label("transcript_status", d.status) + "）"));
        body.push(el("p", null, el("a", { href: "#/t/" + d.transcript_id }, "收听与审核"), " · " + label("transcript_status", d.status) +
                     (d.opened_order ? " · 由此来电生成工单" : "")));
        break;
      case "video":
        title = "视频查看 · " + label("room_state", d.state) + (d.close_reason ? "（" + label("close_reason", d.close_reason) + "）" : "");
        if (d.snapshots.length) {
          var shots = el("div", { className: "snapshots" });
          d.snapshots.forEach(function (s) {
            var img = el("img", { alt: "视频截图 " + when(s.taken_at), title: when(s.taken_at), width: 160 });
            blobUrl("/video/snapshots/" + s.id + "/image", my).then(function (u) { if (u) img.src = u; },
                                                                     function () { img.alt = "截图不可用"; });
            shots.appendChild(img);
          });
          body.push(shots);
        } else body.push(el("p", { className: "hint" }, "没有截图。"));
        break;
      default: title = item.kind;
    }
    var note = eventNote(item);
    if (note) body.push(el("p", null, note));
    var li = el("li", { className: "item " + item.kind }, el("time", null, when(item.at)), el("div", { className: "title" }, title));
    body.forEach(function (b) { li.appendChild(b); });
    return li;
  }

  async function timelineView(id, my) {
    var tl = await api("GET", "/console/work-orders/" + encodeURIComponent(id) + "/timeline");
    if (my !== state.seq) return;
    var o = tl.work_order, h = tl.household;
    $("wo-title").textContent = "工单时间线 · " + label("category", o.category) + " · " + label("order_status", o.status);
    meta($("wo-meta"), [
      ["工单号", o.id], ["来源", label("source", o.source)], ["优先级", label("priority", o.priority)],
      ["负责管家", o.assignee_id ? person(o.assignee_id) : "未派单"],
      ["时限", el("span", { className: o.sla_breached ? "breach" : "" }, when(o.sla_due_at) + (o.sla_breached ? "（已超时）" : ""))],
      ["住址", h.address],
      ["换热站", h.station], ["住户", h.resident_name],
      ["住户电话", h.phone ? el("span", { className: "phone" }, h.phone) : null],
      ["来电号码", o.caller_phone ? el("span", { className: "phone" }, o.caller_phone) : null],
      ["供暖状态", label("heating", h.heating_status)], ["描述", o.description]
    ]);
    chart(tl.readings);
    var list = clear($("wo-items"));
    tl.items.forEach(function (item) { list.appendChild(timelineEntry(item, my)); });
    if (!tl.items.length) list.appendChild(el("li", { className: "empty" }, "暂无记录。"));
    state.timeline = tl;
  }

  // --- conflict log --------------------------------------------------------------------------------------

  function value(v) {
    if (v === null || v === undefined) return el("span", { className: "hint" }, "（空）");
    return el("code", null, typeof v === "string" ? v : JSON.stringify(v));
  }

  async function conflictsView(params, my) {
    if (params.reviewed === undefined) params.reviewed = "false";
    setForm($("conflict-filters"), params);
    var offset = parseInt(params.offset || "0", 10) || 0;
    var filters = formParams($("conflict-filters"));
    var sent = Object.assign({}, filters, { offset: offset, limit: PAGE });
    if (sent.reviewed === "all") delete sent.reviewed;
    var page = await api("GET", "/sync/conflicts" + query(sent));
    if (my !== state.seq) return;
    var rows = clear($("conflict-rows"));
    page.data.forEach(function (c) {
      var box = el("input", { type: "checkbox", checked: !!c.reviewed_at, title: "标记为已审阅" });
      var who = el("span", { className: "hint" }, c.reviewed_at ? person(c.reviewed_by_id) + " " + when(c.reviewed_at) : "");
      box.addEventListener("change", async function () {
        box.disabled = true;
        try {
          var r = await api("POST", "/sync/conflicts/" + c.id + "/review", { reviewed: box.checked });
          who.textContent = r.reviewed_at ? person(r.reviewed_by_id) + " " + when(r.reviewed_at) : "";
        } catch (e) { box.checked = !box.checked; if (e.status !== 401 && my === state.seq) say("标记失败：" + e.message, "error"); }
        box.disabled = false;
      });
      var record = c.table_name === "work_orders" ? orderLink(c.row_id, "工单 " + shortId(c.row_id)) : label("table", c.table_name) + " " + shortId(c.row_id);
      rows.appendChild(el("tr", { dataset: { id: c.id } },
        el("td", null, when(c.created_at)),
        el("td", null, person(c.user_id), el("div", { className: "hint" }, "设备 " + shortId(c.client_id) + " · 第 " + c.mutation_id + " 次修改")),
        el("td", null, record, c.field ? el("div", { className: "hint" }, "字段 " + label("field", c.field)) : null),
        el("td", null, label("conflict_kind", c.kind)),
        el("td", { className: c.winner === "server" ? "winner" : "" }, value(c.server_value)),
        el("td", { className: c.winner === "device" ? "winner" : "" }, value(c.device_value)),
        el("td", null, label("winner", c.winner)),
        el("td", null, el("label", null, box, " ", who))));
    });
    if (!page.data.length) rows.appendChild(el("tr", null, el("td", { colSpan: 8, className: "empty" }, "没有符合条件的冲突。")));
    $("conflict-summary").textContent = "共 " + page.count + " 条。";
    $("conflict-page").textContent = page.count ? (offset + 1) + "–" + (offset + page.data.length) + " / " + page.count : "";
    $("conflict-prev").disabled = offset <= 0;
    $("conflict-next").disabled = offset + PAGE >= page.count;
    state.conflicts = { params: filters, offset: offset };
  }
  function goConflicts(params, offset) { location.hash = "#/conflicts" + query(Object.assign({}, params, { offset: offset || "" })); }
  $("conflict-filters").addEventListener("submit", function (ev) { ev.preventDefault(); goConflicts(formParams(ev.target), 0); });
  $("conflict-prev").addEventListener("click", function () { goConflicts(state.conflicts.params, Math.max(0, state.conflicts.offset - PAGE)); });
  $("conflict-next").addEventListener("click", function () { goConflicts(state.conflicts.params, state.conflicts.offset + PAGE); });

  // --- dashboard -----------------------------------------------------------------------------------------

  function bars(node, counts, group) {
    clear(node);
    var max = Math.max.apply(null, [1].concat(counts.map(function (c) { return c.count; })));
    counts.forEach(function (c) {
      var bar = el("span", { className: "bar" });
      bar.style.width = Math.max(2, Math.round(c.count / max * 100)) + "%";
      node.appendChild(el("div", { className: "row", dataset: { key: c.key } },
        el("span", { className: "name" }, group ? label(group, c.key) : c.label), el("span", { className: "track" }, bar),
        el("span", { className: "count" }, c.count)));
    });
    if (!counts.length) node.appendChild(el("p", { className: "empty" }, "无"));
  }

  function card(name, value, key, alarm) {
    return el("div", { className: "stat" + (alarm ? " alarm" : ""), dataset: { key: key } },
              el("span", { className: "value" }, value), el("span", { className: "name" }, name));
  }

  async function dashboardView(my) {
    var d = await api("GET", "/console/dashboard");
    if (my !== state.seq) return;
    var cards = clear($("dash-cards"));
    cards.appendChild(card("未结工单", d.open_total, "open_total"));
    cards.appendChild(card("超时工单", d.sla_breached, "sla_breached", d.sla_breached > 0));
    cards.appendChild(card("主动服务工单（未结）", d.proactive_open, "proactive_open"));
    cards.appendChild(card("待审核转写", d.pending_review, "pending_review", d.pending_review > 0));
    cards.appendChild(card("近 1 小时转写", d.transcribed_last_hour, "transcribed_last_hour"));
    cards.appendChild(card("近 24 小时转写 / 审核", d.transcribed_last_day + " / " + d.approved_last_day, "last_day"));
    cards.appendChild(card("进行中的视频通话", d.active_rooms.length, "active_rooms"));
    bars($("dash-category"), d.open_by_category, "category");
    bars($("dash-station"), d.open_by_station.slice(0, 12), null);
    bars($("dash-source"), d.open_by_source, "source");
    bars($("dash-transcripts"), d.transcripts_by_status, "transcript_status");
    var breaches = clear($("dash-breaches"));
    d.breaches.forEach(function (b) {
      breaches.appendChild(el("li", null, orderLink(b.id, label("category", b.category) + " · " + b.station),
        " · " + label("priority", b.priority) + " · 应于 " + when(b.sla_due_at) + " 前完成"));
    });
    if (!d.breaches.length) breaches.appendChild(el("li", { className: "empty" }, "没有超时工单。"));
    var rooms = clear($("dash-rooms"));
    d.active_rooms.forEach(function (r) {
      rooms.appendChild(el("li", null, orderLink(r.work_order_id), " · 开始于 " + when(r.created_at)));
    });
    if (!d.active_rooms.length) rooms.appendChild(el("li", { className: "empty" }, "当前没有视频通话。"));
    proactivePanel(d.proactive);
    $("dash-updated").textContent = "更新于 " + clockFmt.format(new Date(d.at));
    state.dashboard = d;
    // a failed poll's message goes once a poll succeeds again (unless something else was said since)
    if (state.dashboardError !== null && $("message").textContent === state.dashboardError) say("");
    state.dashboardError = null;
    state.dashboardUpdates = (state.dashboardUpdates || 0) + 1;
    schedule(my);
  }
  /* 未诉先办: the proactive service's summary (SLA, open orders by kind, campaigns and deliveries by status)
     and its open cluster and revisit orders, each a link to its work-order timeline. */
  function entries(counts) {
    return Object.keys(counts).map(function (k) { return { key: k, label: k, count: counts[k] }; });
  }
  function proactiveLine(p, what) {
    return el("li", { dataset: { id: p.id, workOrder: p.work_order_id } },
      el("span", { className: "badge" }, label("proactive_kind", p.kind)), " ",
      orderLink(p.work_order_id, p.place), " · " + what + " · " + label("priority", p.priority) + " · " +
      label("order_status", p.status), el("span", { className: "muted" }, " · 开单于 " + when(p.opened_at)));
  }
  function proactivePanel(p) {
    var s = p.summary, days = s.sla_window_days;
    var clusters = Object.keys(s.clusters_open).reduce(function (n, k) { return n + s.clusters_open[k]; }, 0);
    var cards = clear($("dash-proactive-cards"));
    cards.appendChild(card("超时未结工单", s.sla_open_overdue, "proactive_sla_overdue", s.sla_open_overdue > 0));
    cards.appendChild(card("2 小时内到期", s.sla_due_within_2h, "proactive_sla_due_soon", s.sla_due_within_2h > 0));
    cards.appendChild(card("近 " + days + " 天超时解决", s.sla_resolved_late, "proactive_sla_resolved_late"));
    cards.appendChild(card("聚集投诉工单（未结）", clusters, "proactive_clusters_open"));
    cards.appendChild(card("敏感户回访（未结）", s.revisits_open, "proactive_revisits_open"));
    var list = clear($("dash-clusters"));
    p.clusters.forEach(function (c) { list.appendChild(proactiveLine(c, c.members + " 起投诉")); });
    if (!p.clusters.length) list.appendChild(el("li", { className: "empty" }, "没有未结的聚集投诉工单。"));
    else if (clusters > p.clusters.length) list.appendChild(el("li", { className: "empty" }, "另有 " + (clusters - p.clusters.length) + " 件未列出。"));
    var revisits = clear($("dash-revisits"));
    p.revisits.forEach(function (r) { revisits.appendChild(proactiveLine(r, "应于 " + when(r.sla_due_at) + " 前回访")); });
    if (!p.revisits.length) revisits.appendChild(el("li", { className: "empty" }, "没有未结的敏感户回访。"));
    else if (s.revisits_open > p.revisits.length) revisits.appendChild(el("li", { className: "empty" }, "另有 " + (s.revisits_open - p.revisits.length) + " 件未列出。"));
    bars($("dash-cluster-kinds"), entries(s.clusters_open), "proactive_kind");
    bars($("dash-campaigns"), entries(s.campaigns), "campaign_status");
    bars($("dash-deliveries"), entries(s.deliveries), "delivery_status");
  }

  /* Polling rather than server-sent events: EventSource cannot send the Authorization header. Hidden
     tabs do not poll; the next poll starts when the tab shows again. */
  function schedule(my) {
    stopTimer();
    state.timer = setTimeout(function () {
      state.timer = null;
      if (my !== state.seq) return;
      if (document.hidden) { schedule(my); return; }
      dashboardView(my).catch(function (e) {
        if (e.status === 401 || my !== state.seq) return;
        state.dashboardError = "看板刷新失败：" + e.message;
        say(state.dashboardError, "error");
        schedule(my);
      });
    }, state.me.refresh_s * 1000);
  }

  // --- start ---------------------------------------------------------------------------------------------

  async function start() {
    if (!token()) { signOut("请登录。"); return; }
    try { await loadMe(); }
    catch (e) { if (e.status !== 401) say("无法连接服务：" + e.message, "error"); return; }
    say("");
    await route();
  }

  fillOptions();
  window.addEventListener("hashchange", route);
  start();
})();
