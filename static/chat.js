// clawweb chat page. No build step: plain ES2020, vendored marked + DOMPurify + highlight.js via markdown.js.
//
// Streaming: tokens go into a buffer; painting happens at most once per animation frame, and only the block
// still growing is re-rendered (finished blocks are rendered once and kept), so a long answer costs about
// the same per frame as a short one. Model output is Markdown, sanitized by DOMPurify before it touches the
// DOM; raw HTML in it is shown as text.
"use strict";

(() => {
  const body = document.body;
  const { T, $, fmt, plural, api } = ClawwebPage;
  const messagesEl = $("#messages");
  const input = $("#input");
  const sendButton = $("#send");
  const stopButton = $("#stop");
  const queueEl = $("#queue");
  const connectionEl = $("#connection");
  const modelSelect = $("#model");
  const thinkBox = $("#think");
  const FINAL_EVENTS = ["done", "stopped", "error"];
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 30000;

  let conversationId = body.dataset.conversationId || null;
  let current = null; // the Follower of the answer being followed, if any
  let busy = false; // an answer is being asked for or followed: the actions that change the branch wait

  // A copy of the page's markup for a piece chat.js adds (a <template> rendered by the server's own macro).
  const fromTemplate = (id) => document.getElementById(id).content.firstElementChild.cloneNode(true);

  // --- Markdown (static/markdown.js) ---------------------------------------------------------------------

  const toFragment = ClawwebMarkdown.renderer({ copy: T.copy, copied: T.copied });

  // End of the last complete block in text[from:]: a blank line outside a code fence. `from` is a boundary.
  function stableEnd(text, from) {
    let fenced = false;
    let end = from;
    for (let pos = from, newline; (newline = text.indexOf("\n", pos)) !== -1; pos = newline + 1) {
      const line = text.slice(pos, newline);
      if (/^ {0,3}(```|~~~)/.test(line)) fenced = !fenced;
      else if (!fenced && line.trim() === "") end = newline + 1;
    }
    return end;
  }

  // Older Ollama puts the reasoning inside the content as <think>...</think>.
  function splitThink(raw) {
    const start = raw.trimStart();
    if (!start.startsWith("<think>")) return { thinking: "", content: raw };
    const close = start.indexOf("</think>");
    if (close === -1) return { thinking: start.slice(7), content: "" };
    return { thinking: start.slice(7, close).trim(), content: start.slice(close + 8).trimStart() };
  }

  // --- Rendering an answer --------------------------------------------------------------------------------

  class AnswerView {
    constructor(article) {
      this.article = article;
      this.content = article.querySelector(".content");
      this.details = article.querySelector(".thinking");
      this.thinkingText = article.querySelector(".thinking-text");
      this.statusLine = article.querySelector(".status-line");
      this.countdown = 0;
      this.raw = "";
      this.nativeThinking = "";
      this.renderedUpTo = 0; // text before this index is rendered as finished blocks
      this.paintedThinking = 0;
      this.frame = 0;
      this.userToggled = false;
      this.details.addEventListener("toggle", () => (this.userToggled = this.userToggled || this.autoToggled !== true));
      // The log is replayed from its start (a continued answer's begins with the text so far): start empty.
      article.dataset.status = "streaming";
      delete article.dataset.stage;
      this.statusLine.hidden = true;
      this.details.hidden = true;
      this.thinkingText.replaceChildren();
      article.querySelector(".meta").replaceChildren();
      this.content.replaceChildren();
      this.content.classList.add("rendered");
      this.tail = document.createElement("div");
      this.tail.className = "tail";
      this.content.append(this.tail);
    }

    add(content, thinking) {
      this.raw += content;
      this.nativeThinking += thinking;
      if (!this.frame) this.frame = requestAnimationFrame(() => this.paint());
    }

    paint() {
      this.frame = 0;
      const pinned = isAtBottom();
      const { thinking, content } = this.nativeThinking ? { thinking: this.nativeThinking, content: this.raw } : splitThink(this.raw);
      if (thinking.length > this.paintedThinking) {
        if (this.details.hidden) {
          this.details.hidden = false;
          this.setOpen(true);
        }
        this.thinkingText.append(thinking.slice(this.paintedThinking));
        this.paintedThinking = thinking.length;
      }
      if (content && this.details.open && !this.userToggled) this.setOpen(false); // the answer started
      const end = stableEnd(content, this.renderedUpTo);
      if (end > this.renderedUpTo) {
        this.content.insertBefore(toFragment(content.slice(this.renderedUpTo, end)), this.tail);
        this.renderedUpTo = end;
      }
      this.tail.replaceChildren(toFragment(content.slice(this.renderedUpTo)));
      if (pinned) scrollToBottom();
    }

    // What the answer waits for or does now, from an `event: status` (queued, loading, prompt, thinking,
    // writing; continuing: on another host, its own failed midway): one line in the answer's place, its estimate
    // counted down each second; once text flows, the typing indicator (CSS, on data-stage) instead.
    status(stage) {
      this.article.dataset.stage = stage.stage;
      clearInterval(this.countdown);
      if (stage.stage === "writing") {
        this.statusLine.hidden = true;
        return;
      }
      const what = stageText(stage);
      const due = stage.eta_s != null ? Date.now() + stage.eta_s * 1000 : null;
      const show = () => (this.statusLine.textContent = due ? `${what} · ${remaining(due)}` : what);
      show();
      this.statusLine.hidden = false;
      if (due) this.countdown = setInterval(show, 1000);
    }

    setOpen(open) {
      this.autoToggled = true;
      this.details.open = open;
      setTimeout(() => (this.autoToggled = false));
    }

    finish(message, error) {
      cancelAnimationFrame(this.frame);
      this.frame = 0;
      clearInterval(this.countdown);
      this.statusLine.hidden = true;
      delete this.article.dataset.stage;
      // What the stream delivered, kept beside the stored text (data-raw): tests compare the two.
      this.content.dataset.streamed = this.nativeThinking ? this.raw : splitThink(this.raw).content;
      const pinned = isAtBottom();
      renderStored(this.article, message, error);
      if (pinned) scrollToBottom();
    }
  }

  function stageText(stage) {
    switch (stage.stage) {
      case "queued": {
        const place = stage.ahead === 0 ? T.status_next : fmt(plural("status_ahead", stage.ahead), { n: stage.ahead });
        const why = T["status_moved_" + stage.reason]; // the place grew: why (turns, or another lane's share)
        return why ? fmt(why, { place }) : place;
      }
      case "loading":
        return fmt(T.status_loading, { model: stage.model });
      case "prompt":
        return T.status_prompt;
      case "continuing":
        return fmt(T.status_continuing, { host: hostName(stage.continuing_on) });
      default:
        return T.status_thinking;
    }
  }

  // The host an answer moved to, as people name it: "gpu2" for http://gpu2:11434 (Ollama's port goes without saying).
  function hostName(url) {
    try {
      const parsed = new URL(url);
      return parsed.port === "11434" ? parsed.hostname : parsed.host;
    } catch {
      return url || "";
    }
  }

  const duration = (seconds) => (seconds < 60 ? fmt(T.seconds, { n: seconds }) : fmt(T.minutes, { n: Math.round(seconds / 60) }));

  // "about 40 s" until the estimate is reached; after it, say so rather than count below zero.
  function remaining(due) {
    const left = Math.round((due - Date.now()) / 1000);
    return left > 0 ? fmt(T.status_about, { t: duration(left) }) : T.status_late;
  }

  // Render an answer from its stored form: `message` from the API, or null for the server-rendered history
  // (whose text and figures are in data attributes).
  function renderStored(article, message, error) {
    const content = article.querySelector(".content");
    if (message) {
      setData(article, message);
      content.dataset.raw = message.content;
      const thinkingText = article.querySelector(".thinking-text");
      if (thinkingText && message.thinking) {
        thinkingText.textContent = message.thinking;
        article.querySelector(".thinking").hidden = false;
      }
    }
    content.replaceChildren(toFragment(content.dataset.raw || ""));
    content.classList.add("rendered");
    renderMeta(article, message, error || (message && message.error));
  }

  // The figures line: the wait in the queue, a model load, the first token (from admission), the rate and the
  // tokens; and "Thought for N s" on the thoughts. From the API's message, or the server-rendered data attributes.
  function renderMeta(article, message, error) {
    const meta = article.querySelector(".meta");
    if (!meta) return;
    const figure = (name, attribute) => (message ? message[name] : Number(meta.dataset[attribute]) || null);
    const seconds = (ms) => (ms / 1000).toFixed(ms < 10000 ? 2 : 1);
    const parts = article.dataset.model ? [article.dataset.model] : [];
    const waited = figure("queue_ms", "queueMs");
    const load = figure("load_ms", "loadMs");
    const ttft = figure("ttft_ms", "ttftMs");
    const rate = figure("tokens_per_s", "rate");
    const tokens = figure("tokens", "tokens");
    const thought = figure("thinking_ms", "thinkingMs");
    if (waited >= 100) parts.push(fmt(T.waited, { s: seconds(waited) }));
    if (load) parts.push(fmt(T.load, { s: seconds(load) }));
    if (ttft) parts.push(fmt(T.ttft, { s: seconds(ttft) }));
    if (rate) parts.push(fmt(T.rate, { r: rate.toFixed(1) }));
    if (tokens) parts.push(fmt(T.tokens, { n: tokens }));
    meta.replaceChildren(...parts.map((text) => Object.assign(document.createElement("span"), { textContent: text })));
    const summary = article.querySelector(".thinking summary");
    if (summary) summary.textContent = thought ? fmt(T.thought_for, { s: Math.max(1, Math.round(thought / 1000)) }) : T.thought;
    const status = article.dataset.status;
    if (status === "stopped" || status === "error") {
      const label = document.createElement("span");
      label.className = "status";
      label.textContent = status === "stopped" ? T.stopped : `${T.error}: ${error || meta.dataset.error || ""}`;
      meta.prepend(label);
      if (status === "error") {
        const retry = document.createElement("button");
        retry.type = "button";
        retry.className = "retry";
        retry.textContent = T.retry; // the click is the messages' own listener's (regenerate)
        meta.append(retry);
      }
    }
  }

  const isAtBottom = () => messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight < 48;
  const scrollToBottom = () => (messagesEl.scrollTop = messagesEl.scrollHeight);

  function messageArticle(role) {
    $(".empty")?.remove();
    const article = fromTemplate(`message-${role}`);
    messagesEl.append(article);
    scrollToBottom();
    return article;
  }

  // --- Following a generation -----------------------------------------------------------------------------

  // The indicator: green ("open") only while bytes arrive. The server sends a heartbeat event during every
  // silence, so a stream quiet for much longer than that is a connection that died without saying so.
  const LABELS = { idle: "", connecting: T.connecting, open: T.connected, closed: T.reconnecting, stale: T.no_data };
  function setConnection(state) {
    connectionEl.dataset.state = state;
    connectionEl.textContent = LABELS[state];
  }
  const STALE_MS = 2 * Number(body.dataset.heartbeatMs || 15000) + 5000;

  // A screen that stays on while an answer streams (a phone that locks mid-answer stops reading it).
  const wakeLock = {
    sentinel: null,
    async hold() {
      if (this.sentinel || !navigator.wakeLock || document.visibilityState !== "visible") return;
      try {
        this.sentinel = await navigator.wakeLock.request("screen");
        this.sentinel.addEventListener("release", () => (this.sentinel = null));
      } catch (_) {
        // refused (battery saver, no permission): the answer streams anyway
      }
    },
    release() {
      this.sentinel?.release().catch(() => {});
      this.sentinel = null;
    },
  };

  function setBusy(value) {
    busy = value;
    sendButton.disabled = busy;
    stopButton.hidden = !busy;
    syncActions();
    if (!busy && syncPending) syncShown(); // a change another tab made while this one was busy
  }

  // Follows one generation's SSE events into its view. The stream opens at a cursor in the URL; EventSource's
  // own reconnects resume with Last-Event-ID; a close for good asks the API what happened, then ends the answer
  // or opens again later; so does a stream silent for too long. Only the current follower acts: one that was
  // replaced ignores what still arrives.
  class Follower {
    constructor(generation, view, after) {
      this.generation = generation;
      this.view = view;
      this.lastId = after;
      this.retryMs = RETRY_MIN_MS;
      this.es = null;
      this.timer = 0;
      this.watchdog = 0;
    }

    get current() {
      return current === this;
    }

    open() {
      if (!this.current) return;
      this.es?.close();
      setConnection("connecting");
      const es = new EventSource(`${this.generation.events_url}?after=${this.lastId}`);
      this.es = es;
      es.onopen = () => {
        this.heard();
        this.retryMs = RETRY_MIN_MS;
      };
      const on = (type, handle) =>
        es.addEventListener(type, (event) => {
          if (this.es !== es) return; // a stream this follower replaced
          this.heard();
          if (event.lastEventId) this.lastId = event.lastEventId;
          handle(JSON.parse(event.data));
        });
      on("heartbeat", () => {});
      on("queued", () => {}); // the status frame beside it says the same, and more
      on("status", (stage) => this.view.status(stage));
      // A continued answer's log starts with its text so far; the tokens then extend the same message.
      on("continue", (soFar) => this.view.add(soFar.content || "", soFar.thinking || ""));
      on("token", (chunk) => {
        const message = chunk.message || {};
        this.view.add(message.content || "", message.thinking || "");
      });
      on("done", (payload) => this.end(payload.message, payload.error));
      on("stopped", (payload) => this.end(payload.message, payload.error));
      // "error" is two things: the server's final `event: error` (it has data) and EventSource's own report of a
      // connection that broke (it has none). Only the first ends the answer.
      es.addEventListener("error", (event) => {
        if (this.es !== es) return;
        if (event.data === undefined) return this.dropped(es);
        const payload = JSON.parse(event.data);
        this.end(payload.message, payload.error);
      });
    }

    heard() {
      setConnection("open");
      clearTimeout(this.watchdog);
      this.watchdog = setTimeout(() => this.resume("stale"), STALE_MS);
    }

    // Open again from the last event seen: after a silence longer than the heartbeats allow, or when the page
    // comes back (a locked phone, a tab restored from the back/forward cache) and its stream may be gone.
    resume(state = "connecting") {
      if (!this.current) return;
      clearTimeout(this.timer);
      clearTimeout(this.watchdog);
      this.es?.close();
      this.es = null;
      setConnection(state);
      this.open();
    }

    dropped(es) {
      clearTimeout(this.watchdog);
      if (es.readyState === EventSource.CONNECTING) {
        setConnection("closed"); // the browser reconnects by itself, sending Last-Event-ID
        return;
      }
      es.close(); // closed for good (a non-200: 204 when finished, 404 after a restart): find out what happened
      this.es = null;
      setConnection("closed");
      this.recover();
    }

    async recover() {
      if (!this.current) return;
      try {
        const response = await fetch(`/api/generations/${this.generation.id}`);
        const state = response.ok ? await response.json() : null;
        if (!state || FINAL_EVENTS.includes(state.status)) {
          const stored = await loadConversation();
          const message = stored && stored.messages.find((m) => m.id === this.generation.message_id);
          if (message && message.status !== "streaming") return this.end(message, message.error);
        }
      } catch (_) {
        // offline: try again later
      }
      this.timer = setTimeout(() => this.open(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
    }

    // Ask the server to stop the model; the stream's `stopped` event then ends the answer.
    stop() {
      api("DELETE", `/api/generations/${this.generation.id}`).catch(() => {});
    }

    end(message, error) {
      if (!this.current) return;
      this.es?.close();
      clearTimeout(this.timer);
      clearTimeout(this.watchdog);
      current = null;
      this.view.finish(message, error);
      setConnection("idle");
      wakeLock.release();
      setBusy(false);
    }
  }

  function follow(generation, view, after) {
    current = new Follower(generation, view, after);
    setBusy(true);
    wakeLock.hold();
    current.open();
  }

  // A page that comes back (unlocked phone, visible tab, restored from the back/forward cache) may have missed
  // events or lost its stream: resume it from the last event, or look again at what the server has.
  function comeBack() {
    if (document.visibilityState !== "visible") return;
    if (current) {
      wakeLock.hold(); // released by the browser while hidden
      current.resume();
    } else if (conversationId) {
      loadConversation()
        .then((conversation) => conversation && showConversation(conversation))
        .catch(() => {});
    }
  }
  document.addEventListener("visibilitychange", comeBack);
  window.addEventListener("pageshow", (event) => event.persisted && comeBack());

  // --- Actions --------------------------------------------------------------------------------------------

  const loadConversation = () => (conversationId ? api("GET", `/api/conversations/${conversationId}`) : null);

  async function ensureConversation(fields) {
    if (conversationId) return;
    const created = await api("POST", "/api/conversations", { model: modelSelect.value, ...fields });
    conversationId = created.id;
    body.dataset.conversationId = created.id;
    history.replaceState(null, "", `/c/${created.id}`);
  }

  function showTitle(text) {
    const title = text.split(/\s+/).join(" ").slice(0, 60);
    $(".topbar h1").textContent = title;
    document.title = title;
    // sidebar.js adds its row and the conversation menu
    document.dispatchEvent(new CustomEvent("conversation-titled", { detail: { id: conversationId, title } }));
  }

  const knobs = () => ({ think: thinkBox.checked, model: modelSelect.value });
  const showError = (error) => (queueEl.textContent = `${T.error}: ${error.message}`);

  // Ask for an answer (`request` resolves to the API's 202 with a generation), show the branch it is on as the
  // server now has it (a new version's arrows included), then follow the answer in its article. Refused for
  // being busy (429, 503: nothing was stored), it says so in the conversation and asks again by itself.
  async function startAnswer(request, beforeShow = () => {}) {
    if (busy) return;
    refusal.clear();
    setBusy(true);
    let started;
    try {
      started = await request();
    } catch (error) {
      setBusy(false);
      if (error.status === 429 || error.status === 503) refusal.show(error, () => startAnswer(request, beforeShow));
      else showError(error); // refused otherwise (409, 400...): nothing was stored
      return;
    }
    beforeShow();
    try {
      renderMessages(await loadConversation());
    } catch (_) {
      // the answer runs anyway: follow it below what is shown
    }
    let article = messagesEl.querySelector(`.message[data-id="${started.generation.message_id}"]`);
    if (!article) {
      article = messageArticle("assistant");
      article.dataset.id = started.generation.message_id;
    }
    scrollToBottom();
    follow(started.generation, new AnswerView(article), "0");
  }

  // A refusal in the conversation, in plain words (the API's message names settings), counting down to the
  // retry the server's Retry-After allows; Cancel gives up. A wait too long to sit through is only said.
  const AUTO_RETRY_MAX_S = 300;
  const refusal = {
    notice: null,
    timer: 0,
    show(error, retry) {
      this.clear();
      const notice = fromTemplate("refusal");
      const text = notice.querySelector(".refusal-text");
      const countdown = notice.querySelector(".refusal-countdown");
      text.textContent = error.status === 503 ? T.refused_busy : T.refused_many;
      notice.querySelector(".refusal-cancel").addEventListener("click", () => this.clear());
      messagesEl.append(notice);
      this.notice = notice;
      scrollToBottom();
      const wait = error.retryAfter ?? 30;
      if (wait > AUTO_RETRY_MAX_S) {
        countdown.textContent = fmt(T.refused_later, { t: duration(wait) });
        return;
      }
      const due = Date.now() + wait * 1000;
      const tick = () => {
        const left = Math.ceil((due - Date.now()) / 1000);
        if (left > 0) {
          countdown.textContent = fmt(T.retrying_in, { n: left });
          this.timer = setTimeout(tick, 250);
        } else {
          this.clear();
          retry();
        }
      };
      tick();
    },
    clear() {
      clearTimeout(this.timer);
      this.notice?.remove();
      this.notice = null;
    },
  };

  function send(text) {
    const options = knobs();
    return startAnswer(
      async () => {
        const view = { current_id: conversationId ? shownLeaf() : null }; // refused (409) if it moved on meanwhile
        if (queueEl.textContent === `${T.error}: ${T.sync_stale}`) queueEl.textContent = ""; // said; sent again now
        await ensureConversation({});
        try {
          return await postTurn(`/api/conversations/${conversationId}/messages`, { content: text, ...view, ...options });
        } catch (error) {
          if (error.status !== 409) throw error;
          syncShown(); // show it as it is now (once startAnswer is no longer busy); the text stays in the box
          throw new Error(T.sync_stale);
        }
      },
      () => {
        if (!messagesEl.querySelector(".message")) showTitle(text);
        input.value = "";
      },
    );
  }

  // --- Messages: the branch shown, its versions, per-message actions --------------------------------------

  const lang = document.documentElement.lang || undefined;
  const articles = () => [...messagesEl.querySelectorAll(".message")];
  const siblingsOf = (article) => JSON.parse(article.dataset.siblings || "[]");

  // A message's fields from the API onto its article (a final event's message has no siblings: kept as they are).
  function setData(article, message) {
    article.dataset.id = message.id;
    article.dataset.status = message.status;
    if ("parent_id" in message) article.dataset.parentId = message.parent_id ?? "";
    if (message.siblings) article.dataset.siblings = JSON.stringify(message.siblings);
    if ("done_reason" in message) article.dataset.doneReason = message.done_reason || "";
    if (message.created_at) article.dataset.created = message.created_at;
    if (message.model) article.dataset.model = message.model;
    const meta = article.querySelector(".meta");
    if (meta) meta.dataset.error = message.error || "";
  }

  // The article for a message from the API, from the same markup the server renders (a <template>).
  function messageFromData(message) {
    const article = fromTemplate(`message-${message.role}`);
    setData(article, message);
    const content = article.querySelector(".content");
    content.dataset.raw = message.content;
    content.textContent = message.content;
    if (message.role === "assistant" && message.status !== "streaming") renderStored(article, message, message.error);
    renderTime(article);
    return article;
  }

  function renderTime(article) {
    const when = article.querySelector(".when");
    const seconds = Number(article.dataset.created);
    if (!when || !seconds) return;
    const date = new Date(seconds * 1000);
    const today = date.toDateString() === new Date().toDateString();
    const thisYear = date.getFullYear() === new Date().getFullYear();
    const clock = { hour: "2-digit", minute: "2-digit" };
    const day = today ? {} : thisYear ? { month: "short", day: "numeric" } : { year: "numeric", month: "short", day: "numeric" };
    when.dateTime = date.toISOString();
    when.textContent = date.toLocaleString(lang, { ...day, ...clock });
    const full = date.toLocaleString(lang, { dateStyle: "full", timeStyle: "short" });
    when.title = article.dataset.model && article.classList.contains("assistant") ? `${full} · ${article.dataset.model}` : full;
  }

  // Ollama's answer can go on: stopped, cut at num_predict, or interrupted with its text kept.
  function continuable(article) {
    const status = article.dataset.status;
    const error = article.querySelector(".meta")?.dataset.error || "";
    return status === "stopped" || (status === "done" && article.dataset.doneReason === "length") || (status === "error" && error.startsWith("interrupted"));
  }

  // The arrows' position, Continue on the leaf it applies to, and the buttons that change the branch disabled
  // while an answer is asked for or running (the server would answer 409).
  function syncActions() {
    const all = articles();
    all.forEach((article, index) => {
      const versions = article.querySelector(".versions");
      if (!versions) return; // a page without actions
      const siblings = siblingsOf(article);
      const at = siblings.indexOf(Number(article.dataset.id));
      versions.hidden = siblings.length < 2;
      versions.querySelector(".position").textContent = `${at + 1} / ${siblings.length}`;
      versions.querySelector(".prev").disabled = busy || at <= 0;
      versions.querySelector(".next").disabled = busy || at === -1 || at >= siblings.length - 1;
      const more = article.querySelector(".continue");
      if (more) more.hidden = !(index === all.length - 1 && continuable(article));
      for (const button of article.querySelectorAll(".action:not(.copy-message), .save-edit, .retry")) button.disabled = busy;
    });
    hideWhatCannotRun(all);
  }

  // Show the branch in `conversation` (the API's): articles already showing the same message are kept, the
  // rest (from the first that differs) are rendered again, so a switch deep in a long branch redraws only below.
  function renderMessages(conversation) {
    if (!conversation) return;
    const shown = articles();
    let same = 0;
    for (const message of conversation.messages) {
      const article = shown[same];
      const unchanged =
        article &&
        article.dataset.id === String(message.id) &&
        article.dataset.status === message.status &&
        message.status !== "streaming" &&
        article.querySelector(".content").dataset.raw === message.content;
      if (!unchanged) break;
      setData(article, message);
      same += 1;
    }
    for (const article of shown.slice(same)) article.remove();
    for (const message of conversation.messages.slice(same)) messagesEl.append(messageFromData(message));
    $(".empty")?.remove();
    if (!conversation.messages.length) showEmptyState();
    syncActions();
  }

  // After a switch or a delete: the branch, and the answer running in it (another tab's) followed.
  function showConversation(conversation) {
    renderMessages(conversation);
    if (conversation.generation && !current) {
      const article = messagesEl.querySelector(`.message[data-id="${conversation.generation.message_id}"]`);
      if (article) follow(conversation.generation, new AnswerView(article), "0");
    }
  }

  async function switchVersion(article, step) {
    const siblings = siblingsOf(article);
    const target = siblings[siblings.indexOf(Number(article.dataset.id)) + step];
    if (target === undefined || busy) return;
    const index = articles().indexOf(article);
    try {
      showConversation(await api("PUT", `/api/conversations/${conversationId}/current`, { message_id: target }));
    } catch (error) {
      return showError(error);
    }
    // Keyboard users stay on the arrows of the same message (its article was rendered again).
    const versions = articles()[index]?.querySelector(".versions");
    const button = versions?.querySelector(step < 0 ? ".prev" : ".next");
    (button && !button.disabled ? button : versions?.querySelector("button:not(:disabled)"))?.focus();
  }

  function openEdit(article) {
    const content = article.querySelector(".content");
    let form = article.querySelector(".edit-box");
    if (!form) {
      form = fromTemplate("message-edit");
      const textarea = form.querySelector("textarea");
      textarea.value = content.dataset.raw ?? content.textContent;
      textarea.rows = Math.min(12, Math.max(3, textarea.value.split("\n").length + 1));
      content.hidden = true;
      article.querySelector(".actions").hidden = true;
      content.after(form);
      syncActions();
    }
    const textarea = form.querySelector("textarea");
    textarea.focus();
    textarea.setSelectionRange(textarea.value.length, textarea.value.length);
  }

  function closeEdit(article) {
    article.querySelector(".edit-box")?.remove();
    article.querySelector(".content").hidden = false;
    article.querySelector(".actions").hidden = false;
    article.querySelector(".edit")?.focus();
  }

  // Editing = a new version of the message: a sibling under the same parent, the old branch kept.
  function saveEdit(article) {
    const text = article.querySelector(".edit-box textarea").value.trim();
    if (!text || busy) return;
    const parent = article.dataset.parentId;
    const payload = { content: text, parent_id: parent ? Number(parent) : null, ...knobs() };
    return startAnswer(() => postTurn(`/api/conversations/${conversationId}/messages`, payload));
  }

  function regenerate(article) {
    if (!conversationId) return;
    const payload = { message_id: Number(article.dataset.id), ...knobs() };
    return startAnswer(() => postTurn(`/api/conversations/${conversationId}/regenerate`, payload));
  }

  function continueAnswer(article) {
    const payload = { message_id: Number(article.dataset.id) };
    return startAnswer(() => postTurn(`/api/conversations/${conversationId}/continue`, payload));
  }

  async function deleteMessage(article) {
    if (busy || !confirm(T.delete_message_confirm)) return;
    try {
      showConversation(await api("DELETE", `/api/messages/${article.dataset.id}`));
    } catch (error) {
      showError(error);
    }
  }

  // The Markdown source of an answer (what is streaming so far, if it still is), the text of a user message.
  async function copyMessage(article, button) {
    const streaming = current && current.view.article === article;
    const content = article.querySelector(".content");
    await navigator.clipboard.writeText(streaming ? current.view.raw : content.dataset.raw ?? content.textContent);
    button.textContent = T.copied;
    setTimeout(() => (button.textContent = T.copy), 1500);
  }

  // One listener for every message, the server's and those added on the page alike.
  const ACTIONS = {
    prev: (article) => switchVersion(article, -1),
    next: (article) => switchVersion(article, 1),
    edit: openEdit,
    "cancel-edit": closeEdit,
    "copy-message": copyMessage,
    regenerate,
    retry: regenerate,
    continue: continueAnswer,
    "delete-message": deleteMessage,
  };
  messagesEl.addEventListener("click", (event) => {
    const button = event.target.closest(".actions button, .edit-box button[type=button], .meta .retry");
    if (!button || button.disabled) return;
    const name = Object.keys(ACTIONS).find((key) => button.classList.contains(key));
    if (name) ACTIONS[name](button.closest(".message"), button);
  });
  messagesEl.addEventListener("submit", (event) => {
    event.preventDefault();
    saveEdit(event.target.closest(".message"));
  });
  messagesEl.addEventListener("keydown", (event) => {
    const form = event.target.closest(".edit-box");
    if (!form) return;
    if (event.key === "Escape") {
      event.preventDefault();
      closeEdit(form.closest(".message"));
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.target.tagName === "TEXTAREA") {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  $("#composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (text && !busy) send(text);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("#composer").requestSubmit();
    }
  });
  stopButton.addEventListener("click", () => current?.stop());

  $("#save-system").addEventListener("click", async (event) => {
    const system_prompt = $("#system-prompt").value;
    if (conversationId) await api("PATCH", `/api/conversations/${conversationId}`, { system_prompt });
    else await ensureConversation({ system_prompt });
    promptSaved(system_prompt, "");
    event.target.textContent = T.saved;
    setTimeout(() => (event.target.textContent = T.save), 1500);
  });

  modelSelect.addEventListener("change", () => {
    fillEmptyState();
    if (conversationId) api("PATCH", `/api/conversations/${conversationId}`, { model: modelSelect.value }).catch(() => {});
  });

  async function fillModels() {
    try {
      const { models } = await api("GET", "/api/chat-models"); // the listed models less the embedding ones
      const chosen = modelSelect.value;
      const names = [...new Set([chosen, ...models])];
      modelSelect.replaceChildren(...names.map((name) => new Option(name, name, name === chosen, name === chosen)));
    } catch (_) {
      // Ollama unreachable: keep the current model; sending will report the error
    }
  }

  // --- The system prompt's summary: whether one is set, by its first words, as chat.html renders it ----------

  function showSystemPrompt(text) {
    const preview = text.split(/\s+/).filter(Boolean).join(" ");
    $("#system-prompt-state").textContent = preview ? ` · ${preview.length > 80 ? preview.slice(0, 79) + "…" : preview}` : "";
    $("details.system-prompt").toggleAttribute("data-set", Boolean(preview));
  }

  // --- Around the answer (issue 18): the system prompt sent along, Think remembered, Regenerate only where it can
  // run, a scroll-down button, Esc stops, the new chat's empty state -------------------------------------------

  // The system prompt as its box has it goes with every turn that starts an answer, when it differs from the one
  // saved: the server answers with it and saves it in the transaction that starts the answer (a refused turn
  // saves nothing), so an edit is neither lost nor applied to a message that never went.
  const systemBox = $("#system-prompt");
  const systemStatus = $("#system-prompt-status");
  let savedPrompt = systemBox.defaultValue; // the server's; .value may be a draft the browser restored
  const unsavedPrompt = () => (systemBox.value === savedPrompt ? null : systemBox.value);
  const showPromptState = () => (systemStatus.textContent = unsavedPrompt() === null ? "" : T.system_prompt_unsaved);
  systemBox.addEventListener("input", showPromptState);
  showPromptState(); // a draft the browser restored on reload is unsaved too

  function promptSaved(value, note) {
    savedPrompt = value;
    systemStatus.textContent = note;
    showSystemPrompt(value);
  }

  // POST a turn (a message, a regenerate, a continue) with the unsaved system prompt, if any.
  async function postTurn(url, payload) {
    const prompt = unsavedPrompt();
    const started = await api("POST", url, prompt === null ? payload : { ...payload, system_prompt: prompt });
    if (prompt !== null) promptSaved(prompt, T.system_prompt_sent);
    rememberThink();
    return started;
  }

  // Think, remembered in this browser per conversation, and the last choice for a new chat (and a conversation
  // not opened here before). localStorage rather than a column: a per-device preference like the theme, no
  // write per toggle, and it works before the conversation exists.
  const THINK_KEY = "clawweb.think";
  const storage = (() => {
    try {
      return window.localStorage; // null or throwing when storage is off: Think then starts checked, as before
    } catch (_) {
      return null;
    }
  })();

  function rememberThink() {
    const value = thinkBox.checked ? "1" : "0";
    try {
      storage?.setItem(THINK_KEY, value);
      if (conversationId) storage?.setItem(`${THINK_KEY}.${conversationId}`, value);
    } catch (_) {
      // full or refused: the box just starts checked next time
    }
  }
  const rememberedThink = (conversationId && storage?.getItem(`${THINK_KEY}.${conversationId}`)) || storage?.getItem(THINK_KEY);
  if (rememberedThink) thinkBox.checked = rememberedThink === "1";
  thinkBox.addEventListener("change", rememberThink);

  // Regenerate (and Retry) answer the question above an answer again: an answer with none above it (an imported
  // conversation may start with one) has nothing to regenerate, and the server would refuse.
  function hideWhatCannotRun(all) {
    all.forEach((article, index) => {
      if (!article.matches(".assistant")) return;
      const asked = index > 0 && all[index - 1].matches(".user");
      for (const button of article.querySelectorAll(".regenerate, .meta .retry")) button.hidden = !asked;
    });
  }

  // New text below what is shown (the reader scrolled up while an answer streams): a button that goes down.
  const toBottom = $("#to-bottom");
  const grewBelow = (record) => {
    const last = messagesEl.lastElementChild;
    return record.target === messagesEl ? record.addedNodes.length > 0 : !!last && last.contains(record.target);
  };
  new MutationObserver((records) => {
    if (!isAtBottom() && records.some(grewBelow)) toBottom.hidden = false;
  }).observe(messagesEl, { childList: true, subtree: true, characterData: true });
  messagesEl.addEventListener("scroll", () => isAtBottom() && (toBottom.hidden = true), { passive: true });
  // A smooth scroll aims at the bottom as it was at the click: text that arrived meanwhile lies below where it
  // stops, so it goes on (at once) to the bottom as it is now, and the answer is followed from there.
  let chasing = false;
  messagesEl.addEventListener("scrollend", () => {
    if (chasing && !isAtBottom()) messagesEl.scrollTo({ top: messagesEl.scrollHeight });
    chasing = false;
  });
  toBottom.addEventListener("click", () => {
    const smooth = !matchMedia("(prefers-reduced-motion: reduce)").matches;
    chasing = smooth;
    messagesEl.scrollTo({ top: messagesEl.scrollHeight, behavior: smooth ? "smooth" : "auto" });
    input.focus({ preventScroll: true });
  });

  // Esc stops the running answer, unless something focused or open uses Esc itself (an edit box, a menu, a
  // dialog, the sidebar's search or its phone overlay: their own listeners act on it).
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || event.defaultPrevented || event.isComposing || !current) return;
    if (event.target.closest?.(".edit-box, [role=menu], dialog, #sidebar")) return;
    if (document.querySelector("dialog[open], #sidebar.open, .menu-items:not([hidden])")) return;
    event.preventDefault();
    current.stop();
  });

  // A new chat's empty state: examples that send themselves, the model, and the queue right now.
  const QUEUE_EVERY_MS = 10000;

  function showEmptyState() {
    messagesEl.append(fromTemplate("empty-state"));
    fillEmptyState();
  }

  function fillEmptyState() {
    const model = $(".empty .empty-model");
    if (model) model.textContent = fmt(T.empty_model, { model: modelSelect.value });
  }

  async function showQueueNow() {
    const line = $(".empty .empty-queue");
    if (!line || document.visibilityState !== "visible") return;
    try {
      const queue = await api("GET", "/api/queue");
      const free = queue.waiting === 0 && queue.active < queue.slots;
      const parts = [fmt(free ? T.queue_free : T.queue_busy, queue)];
      if (!free && queue.eta_s != null) parts.push(fmt(T.queue_eta, { t: duration(Math.round(queue.eta_s)) }));
      line.textContent = parts.join(" · ");
    } catch (_) {
      line.textContent = ""; // unknown is said by saying nothing
    }
  }

  messagesEl.addEventListener("click", (event) => {
    const example = event.target.closest(".empty .example");
    if (!example || busy) return;
    input.value = example.textContent;
    $("#composer").requestSubmit();
  });
  fillEmptyState();
  showQueueNow();
  setInterval(showQueueNow, QUEUE_EVERY_MS);
  document.addEventListener("visibilitychange", showQueueNow);


  // --- Another tab or device changed the conversation shown (static/sync.js) ------------------------------

  let syncPending = false; // a change arrived while busy (or while loading): shown once idle
  let syncLoading = false;

  function shownLeaf() {
    const last = articles().at(-1);
    return last && last.dataset.id ? Number(last.dataset.id) : null;
  }

  // The conversation reloaded and shown, and the answer another tab started followed (showConversation does).
  // Not while this tab asks for or follows an answer: a redraw would take the streaming article away.
  async function syncShown() {
    if (busy || syncLoading) return void (syncPending = true);
    syncPending = false;
    syncLoading = true;
    try {
      const conversation = await loadConversation();
      if (conversation && conversation.id === conversationId) {
        const pinned = isAtBottom(); // a reader at the end stays there as the other tab's messages arrive
        syncSettings(conversation);
        showConversation(conversation);
        if (pinned) scrollToBottom();
      }
    } catch (_) {
      // offline or deleted: the next event, or the feed's reset on reconnecting, tries again
    } finally {
      syncLoading = false;
      if (syncPending) syncShown();
    }
  }

  // The title as stored; the model and system prompt when they changed, unless the user is editing them here
  // (an unsaved system prompt typed in this tab stays, and goes with its next message).
  function syncSettings(conversation, changed = ["model", "system_prompt"]) {
    $(".topbar h1").textContent = conversation.title || T.new_chat;
    document.title = conversation.title || T.app;
    if (changed.includes("model") && document.activeElement !== modelSelect && conversation.model) {
      if (![...modelSelect.options].some((option) => option.value === conversation.model)) modelSelect.add(new Option(conversation.model, conversation.model));
      modelSelect.value = conversation.model;
    }
    const stored = conversation.system_prompt || "";
    if (changed.includes("system_prompt") && unsavedPrompt() === null && document.activeElement !== systemBox && stored !== savedPrompt) {
      systemBox.value = stored;
      promptSaved(stored, "");
    }
  }

  document.addEventListener("clawweb:conversation-changed", (event) => {
    const { conversation_id: changedId, type, data } = event.detail;
    if (changedId !== conversationId) return;
    if (type === "answer.ended" && current && current.generation.id === data.generation_id) return; // its Follower ends it
    if (type === "conversation.updated") syncSettings(data.conversation, data.changed);
    if (type === "conversation.updated" && !data.changed.includes("current_id")) return;
    syncShown();
  });

  // --- Start: upgrade the server-rendered history, resume a running answer --------------------------------

  // Stored answers arrive as Markdown source. The newest (what the page opens on, scrolled to the bottom) are
  // rendered at once; the older ones in idle time, newest first, so a long branch is usable as soon as its end
  // is drawn instead of after every answer in it (Chromium's scroll anchoring keeps the view still meanwhile).
  const RENDER_AT_ONCE = 6;
  const stored = articles()
    .filter((article) => article.matches(".assistant") && article.dataset.status !== "streaming")
    .reverse();
  for (const article of articles()) renderTime(article);
  stored.slice(0, RENDER_AT_ONCE).forEach((article) => renderStored(article, null, null));
  const later = stored.slice(RENDER_AT_ONCE);
  later.forEach((article) => renderMeta(article, null, null));
  const whenIdle = window.requestIdleCallback || ((work) => setTimeout(() => work({ timeRemaining: () => 8 }), 16));
  const renderOlder = (deadline) => {
    while (later.length && deadline.timeRemaining() > 2) {
      const article = later.shift();
      if (article.isConnected && !article.querySelector(".content.rendered")) renderStored(article, null, null);
    }
    if (later.length) whenIdle(renderOlder);
  };
  if (later.length) whenIdle(renderOlder);
  syncActions();
  const running = body.dataset.generation ? JSON.parse(body.dataset.generation) : null;
  if (running) {
    const article = messagesEl.querySelector(`.message[data-id="${running.message_id}"]`) || messageArticle("assistant");
    follow(running, new AnswerView(article), "0"); // replays the answer so far from the log, then live
  } else {
    setConnection("idle");
  }
  fillModels();
  scrollToBottom();
  input.focus();
})();
