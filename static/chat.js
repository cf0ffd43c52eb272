// clawweb chat page. No build step: plain ES2020, vendored marked + DOMPurify + highlight.js via markdown.js.
//
// Streaming: tokens go into a buffer; painting happens at most once per animation frame, and only the block
// still growing is re-rendered (finished blocks are rendered once and kept), so a long answer costs about
// the same per frame as a short one. Model output is Markdown, sanitized by DOMPurify before it touches the
// DOM; raw HTML in it is shown as text.
"use strict";

(() => {
  const body = document.body;
  const T = JSON.parse(body.dataset.i18n);
  const $ = (selector) => document.querySelector(selector);
  const fmt = (text, vars) => text.replace(/\{(\w+)\}/g, (_, key) => vars[key]);
  const messagesEl = $("#messages");
  const input = $("#input");
  const sendButton = $("#send");
  const stopButton = $("#stop");
  const regenerateButton = $("#regenerate");
  const queueEl = $("#queue");
  const connectionEl = $("#connection");
  const modelSelect = $("#model");
  const thinkBox = $("#think");
  const FINAL_EVENTS = ["done", "stopped", "error"];
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 30000;

  let conversationId = body.dataset.conversationId || null;
  let current = null; // the Follower of the answer being followed, if any

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
      this.raw = "";
      this.nativeThinking = "";
      this.renderedUpTo = 0; // text before this index is rendered as finished blocks
      this.paintedThinking = 0;
      this.frame = 0;
      this.userToggled = false;
      this.details.addEventListener("toggle", () => (this.userToggled = this.userToggled || this.autoToggled !== true));
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

    setOpen(open) {
      this.autoToggled = true;
      this.details.open = open;
      setTimeout(() => (this.autoToggled = false));
    }

    finish(message, error) {
      cancelAnimationFrame(this.frame);
      this.frame = 0;
      // What the stream delivered, kept beside the stored text (data-raw): tests compare the two.
      this.content.dataset.streamed = this.nativeThinking ? this.raw : splitThink(this.raw).content;
      const pinned = isAtBottom();
      renderStored(this.article, message, error);
      if (pinned) scrollToBottom();
    }
  }

  // Render an answer from its stored form: `message` from the API, or null for the server-rendered history
  // (whose text and figures are in data attributes).
  function renderStored(article, message, error) {
    const content = article.querySelector(".content");
    if (message) {
      article.dataset.id = message.id;
      article.dataset.status = message.status;
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

  function renderMeta(article, message, error) {
    const meta = article.querySelector(".meta");
    if (!meta) return;
    const parts = [];
    const ttft = message ? message.ttft_ms : Number(meta.dataset.ttftMs) || null;
    const rate = message ? message.tokens_per_s : Number(meta.dataset.rate) || null;
    const tokens = message ? message.tokens : Number(meta.dataset.tokens) || null;
    if (ttft) parts.push(fmt(T.ttft, { s: (ttft / 1000).toFixed(2) }));
    if (rate) parts.push(fmt(T.rate, { r: rate.toFixed(1) }));
    if (tokens) parts.push(fmt(T.tokens, { n: tokens }));
    meta.replaceChildren(...parts.map((text) => Object.assign(document.createElement("span"), { textContent: text })));
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
        retry.textContent = T.retry;
        retry.addEventListener("click", regenerate);
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

  function setConnection(state) {
    connectionEl.dataset.state = state;
    connectionEl.textContent = { idle: "", connecting: T.connecting, open: T.connected, closed: T.reconnecting }[state];
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    regenerateButton.disabled = busy;
    stopButton.hidden = !busy;
  }

  function showQueue(position) {
    queueEl.textContent = position == null ? "" : position <= 1 ? T.queued_next : fmt(T.queued_ahead, { n: position - 1 });
  }

  // Follows one generation's SSE events into its view. The stream opens at a cursor in the URL; EventSource's
  // own reconnects resume with Last-Event-ID; a close for good asks the API what happened, then ends the answer
  // or opens again later. Only the current follower acts: one that was replaced ignores what still arrives.
  class Follower {
    constructor(generation, view, after) {
      this.generation = generation;
      this.view = view;
      this.lastId = after;
      this.retryMs = RETRY_MIN_MS;
      this.es = null;
      this.timer = 0;
    }

    get current() {
      return current === this;
    }

    open() {
      if (!this.current) return;
      setConnection("connecting");
      const es = new EventSource(`${this.generation.events_url}?after=${this.lastId}`);
      this.es = es;
      es.onopen = () => {
        setConnection("open");
        this.retryMs = RETRY_MIN_MS;
      };
      es.addEventListener("queued", (event) => {
        this.lastId = event.lastEventId;
        showQueue(JSON.parse(event.data).position);
      });
      es.addEventListener("token", (event) => {
        this.lastId = event.lastEventId;
        showQueue(null);
        const message = JSON.parse(event.data).message || {};
        this.view.add(message.content || "", message.thinking || "");
      });
      for (const type of FINAL_EVENTS) {
        es.addEventListener(type, (event) => {
          const payload = JSON.parse(event.data);
          this.end(payload.message, payload.error);
        });
      }
      es.onerror = () => this.error(es);
    }

    error(es) {
      if (es.readyState === EventSource.CONNECTING) {
        setConnection("closed"); // the browser reconnects by itself, sending Last-Event-ID
        return;
      }
      es.close(); // closed for good (a non-200: 204 when finished, 404 after a restart): find out what happened
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
      current = null;
      this.view.finish(message, error);
      showQueue(null);
      setConnection("idle");
      setBusy(false);
    }
  }

  function follow(generation, view, after) {
    current = new Follower(generation, view, after);
    setBusy(true);
    current.open();
  }

  // --- Actions --------------------------------------------------------------------------------------------

  // The server checks this token on every state-changing request made with the session cookie (CSRF).
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;

  async function api(method, url, payload) {
    const headers = { "X-CSRF-Token": csrfToken };
    if (payload !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {
      method,
      headers,
      body: payload === undefined ? undefined : JSON.stringify(payload),
    });
    const data = response.status === 204 ? null : await response.json();
    if (!response.ok) throw new Error(data && data.error ? data.error : `HTTP ${response.status}`);
    return data;
  }

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

  // Ask for an answer (`request` resolves to the API's reply with a generation), then follow it in a new view.
  async function startAnswer(request, beforeFollow) {
    setBusy(true);
    showQueue(null);
    try {
      const started = await request();
      beforeFollow();
      const article = messageArticle("assistant");
      article.dataset.id = started.generation.message_id;
      follow(started.generation, new AnswerView(article), "0");
    } catch (error) {
      queueEl.textContent = `${T.error}: ${error.message}`; // refused (429/503/409...): nothing was stored
      setBusy(false);
    }
  }

  function send(text) {
    const knobs = { think: thinkBox.checked, model: modelSelect.value };
    return startAnswer(
      async () => {
        await ensureConversation({});
        return api("POST", `/api/conversations/${conversationId}/messages`, { content: text, ...knobs });
      },
      () => {
        if (!messagesEl.querySelector(".message")) showTitle(text);
        messageArticle("user").querySelector(".content").textContent = text;
        input.value = "";
      },
    );
  }

  function regenerate() {
    if (!conversationId || current) return;
    const knobs = { think: thinkBox.checked, model: modelSelect.value };
    return startAnswer(
      () => api("POST", `/api/conversations/${conversationId}/regenerate`, knobs),
      () => [...messagesEl.querySelectorAll(".message.assistant")].pop()?.remove(),
    );
  }

  $("#composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (text && !current) send(text);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("#composer").requestSubmit();
    }
  });
  stopButton.addEventListener("click", () => current?.stop());
  regenerateButton.addEventListener("click", regenerate);

  $("#save-system").addEventListener("click", async (event) => {
    const system_prompt = $("#system-prompt").value;
    if (conversationId) await api("PATCH", `/api/conversations/${conversationId}`, { system_prompt });
    else await ensureConversation({ system_prompt });
    event.target.textContent = T.saved;
    setTimeout(() => (event.target.textContent = T.save), 1500);
  });

  modelSelect.addEventListener("change", () => {
    if (conversationId) api("PATCH", `/api/conversations/${conversationId}`, { model: modelSelect.value }).catch(() => {});
  });

  async function fillModels() {
    try {
      const { models } = await api("GET", "/api/tags");
      const chosen = modelSelect.value;
      const names = [...new Set([chosen, ...models.map((m) => m.name)])];
      modelSelect.replaceChildren(...names.map((name) => new Option(name, name, name === chosen, name === chosen)));
    } catch (_) {
      // Ollama unreachable: keep the current model; sending will report the error
    }
  }

  // --- Start: upgrade the server-rendered history, resume a running answer --------------------------------

  for (const article of messagesEl.querySelectorAll(".message.assistant")) {
    if (article.dataset.status !== "streaming") renderStored(article, null, null);
  }
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
