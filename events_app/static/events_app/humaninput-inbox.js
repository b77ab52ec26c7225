/*
 * humaninput inbox widget: keeps [data-humaninput-inbox] sections live.
 *
 * The server renders the pending requests; this script follows the inbox
 * stream (Server-Sent Events; the browser reconnects by itself and every
 * connection starts with a snapshot, which is the resume), adds cards for
 * human_input_required, removes them on completed/cancelled/expired, and
 * posts answers to the REST API with the page's CSRF token and session.
 * All user text goes through textContent: nothing from a request is parsed
 * as HTML.
 */
(function () {
  "use strict";

  var FINAL = { human_input_completed: 1, human_input_cancelled: 1, human_input_expired: 1 };

  function age(iso) {
    var seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 60) return "just now";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
    return Math.floor(seconds / 86400) + " d ago";
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function Inbox(root) {
    this.root = root;
    this.list = root.querySelector("[data-hi-list]");
    this.empty = root.querySelector("[data-hi-empty]");
    this.status = root.querySelector("[data-hi-status]");
    this.streamUrl = root.getAttribute("data-stream-url");
    this.respondTemplate = root.getAttribute("data-respond-url-template");
    this.csrfToken = root.getAttribute("data-csrf-token");
    var self = this;
    Array.prototype.forEach.call(this.list.children, function (card) { self.wire(card); });
    this.refreshAges();
    setInterval(function () { self.refreshAges(); }, 30000);
    this.connect();
  }

  Inbox.prototype.connect = function () {
    var self = this;
    var source = new EventSource(this.streamUrl, { withCredentials: true });
    source.onopen = function () { self.setStatus("live", true); };
    source.onerror = function () { self.setStatus("reconnecting…", false); };
    source.onmessage = function (message) {
      var data;
      try { data = JSON.parse(message.data); } catch (error) { return; }
      self.handle(data);
    };
    this.source = source;
  };

  Inbox.prototype.setStatus = function (text, live) {
    this.status.textContent = text;
    this.status.classList.toggle("hi-live", !!live);
    this.root.setAttribute("data-hi-connected", live ? "true" : "false");
  };

  Inbox.prototype.handle = function (data) {
    if (data.type === "snapshot") {
      var keep = {};
      var self = this;
      data.pending.forEach(function (item) { keep[item.request_id] = item; });
      Array.prototype.slice.call(this.list.children).forEach(function (card) {
        var id = card.getAttribute("data-request-id");
        if (keep[id]) { delete keep[id]; } else { card.remove(); }
      });
      data.pending.slice().reverse().forEach(function (item) {
        if (keep[item.request_id]) self.add(item);
      });
    } else if (data.type === "human_input_required") {
      this.add({
        request_id: data.request_id, execution_id: data.execution_id, agent_id: data.agent_id,
        prompt: data.prompt, context: data.context, reason_flags: data.reason_flags,
        created_at: data.timestamp
      });
    } else if (FINAL[data.type]) {
      this.remove(data.request_id);
    }
    this.empty.hidden = this.list.children.length > 0;
  };

  Inbox.prototype.find = function (requestId) {
    var cards = this.list.children;
    for (var i = 0; i < cards.length; i++) {
      if (cards[i].getAttribute("data-request-id") === requestId) return cards[i];
    }
    return null;
  };

  Inbox.prototype.add = function (item) {
    if (this.find(item.request_id)) return;
    var card = element("li", "hi-card");
    card.setAttribute("data-request-id", item.request_id);
    card.setAttribute("data-created-at", item.created_at);
    var meta = element("div", "hi-meta");
    meta.appendChild(element("span", "hi-execution", item.execution_id));
    if (item.agent_id) meta.appendChild(element("span", "hi-agent", item.agent_id));
    var time = element("time", "hi-age", age(item.created_at));
    time.setAttribute("datetime", item.created_at);
    meta.appendChild(time);
    card.appendChild(meta);
    card.appendChild(element("p", "hi-prompt", item.prompt));
    if (item.context) card.appendChild(element("pre", "hi-context", item.context));
    var flags = element("ul", "hi-flags");
    Object.keys(item.reason_flags || {}).forEach(function (name) {
      if (item.reason_flags[name]) flags.appendChild(element("li", null, name));
    });
    card.appendChild(flags);
    var form = element("form", "hi-answer");
    var label = element("label", null, "Answer ");
    var box = element("textarea");
    box.name = "response";
    box.rows = 2;
    box.required = true;
    label.appendChild(box);
    form.appendChild(label);
    var button = element("button", null, "Send");
    button.type = "submit";
    form.appendChild(button);
    var error = element("span", "hi-error");
    error.setAttribute("role", "alert");
    form.appendChild(error);
    card.appendChild(form);
    this.list.insertBefore(card, this.list.firstChild);
    this.wire(card);
  };

  Inbox.prototype.remove = function (requestId) {
    var card = this.find(requestId);
    if (card) card.remove();
  };

  Inbox.prototype.wire = function (card) {
    var self = this;
    var form = card.querySelector("form.hi-answer");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      self.answer(card, form);
    });
  };

  Inbox.prototype.answer = function (card, form) {
    var self = this;
    var requestId = card.getAttribute("data-request-id");
    var url = this.respondTemplate.replace("00000000-0000-0000-0000-000000000000", requestId);
    var button = form.querySelector("button");
    var error = form.querySelector(".hi-error");
    button.disabled = true;
    error.textContent = "";
    fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": this.csrfToken },
      body: JSON.stringify({ response: form.elements.response.value })
    }).then(function (response) {
      if (response.ok) { self.remove(requestId); self.handle({ type: "noop" }); return; }
      return response.json().then(function (body) {
        button.disabled = false;
        if (response.status === 409) {
          error.textContent = "Already " + ((body.request && body.request.status) || "resolved") + ".";
          setTimeout(function () { self.remove(requestId); self.handle({ type: "noop" }); }, 2000);
        } else {
          var field = body.errors && body.errors.response;
          error.textContent = (field && field[0]) || body.detail || ("Error " + response.status);
        }
      });
    }).catch(function () {
      button.disabled = false;
      error.textContent = "Network error; try again.";
    });
  };

  Inbox.prototype.refreshAges = function () {
    Array.prototype.forEach.call(this.root.querySelectorAll("time.hi-age"), function (node) {
      node.textContent = age(node.getAttribute("datetime"));
    });
  };

  function start() {
    Array.prototype.forEach.call(document.querySelectorAll("[data-humaninput-inbox]"), function (root) {
      if (!root.humaninputInbox) root.humaninputInbox = new Inbox(root);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
