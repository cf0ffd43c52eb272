// clawweb sync: every tab and device of one user shows the same conversations. Follows the user's feed of
// changes (GET /api/events, SSE) from the cursor the page was rendered with; EventSource's own reconnects resume
// with Last-Event-ID, and a new EventSource after a close for good resumes from the last id seen (in the URL).
// The list is sidebar.js's (window.ClawwebSidebar); the conversation shown is chat.js's, told with one DOM event,
// "clawweb:conversation-changed" {conversation_id, type, data}. Events are idempotent: this tab's own changes
// come back too, and showing them again changes nothing.
"use strict";

(() => {
  const body = document.body;
  const { T, $ } = ClawwebPage;
  const sidebar = window.ClawwebSidebar;
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 30000;
  const CHANGES = ["message.created", "message.deleted", "answer.started", "answer.ended"];

  let lastId = body.dataset.eventsAfter || "";
  let resync = !lastId; // no cursor (the shared state could not say): reload once connected
  let retryMs = RETRY_MIN_MS;
  let timer = 0;

  const shown = () => body.dataset.conversationId || null;
  const changed = (conversationId, type, data) =>
    document.dispatchEvent(new CustomEvent("clawweb:conversation-changed", { detail: { conversation_id: conversationId, type, data } }));

  // Something may have been missed (a reset, the shared state failed): the list and the conversation afresh.
  function everything() {
    sidebar.reload().catch(() => {});
    if (shown()) changed(shown(), "reset", {});
  }

  const HANDLERS = {
    "conversation.created": (data) => sidebar.synced(data.conversation),
    "conversation.updated": (data) => {
      sidebar.synced(data.conversation);
      if (data.conversation_id === shown()) changed(data.conversation_id, "conversation.updated", data);
    },
    "conversation.deleted": (data) => {
      sidebar.removed(data.conversation_id);
      if (data.conversation_id === shown()) {
        $("#queue").textContent = T.sync_deleted;
        location.assign("/");
      }
    },
    "conversations.imported": () => sidebar.reload().catch(() => {}),
    reset: everything,
  };
  for (const type of CHANGES) {
    HANDLERS[type] = (data) => {
      if (data.conversation) sidebar.synced(data.conversation);
      if (data.conversation_id === shown()) changed(data.conversation_id, type, data);
    };
  }

  function open() {
    const es = new EventSource(lastId ? `/api/events?after=${encodeURIComponent(lastId)}` : "/api/events");
    es.onopen = () => {
      retryMs = RETRY_MIN_MS;
      if (resync) {
        resync = false;
        everything();
      }
    };
    for (const [type, handle] of Object.entries(HANDLERS)) {
      es.addEventListener(type, (event) => {
        lastId = event.lastEventId || lastId;
        handle(JSON.parse(event.data));
      });
    }
    // The server could not go on (its shared state failed): what it published meanwhile may be lost.
    es.addEventListener("unavailable", () => (resync = true));
    es.onerror = () => {
      if (es.readyState === EventSource.CONNECTING) return; // the browser reconnects by itself, with Last-Event-ID
      es.close(); // closed for good (a 401 after a logout elsewhere, a 503): again later, from the last id seen
      clearTimeout(timer);
      timer = setTimeout(open, retryMs);
      retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
    };
  }

  open();
})();
