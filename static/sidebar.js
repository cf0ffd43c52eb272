// clawweb sidebar: the conversation list (paged as it scrolls, pinned first, grouped by day in the browser's
// local time), search, import and export, and the open conversation's menu (export, share). chat.js is the
// conversation view; it tells this file about a conversation it created with one DOM event,
// "conversation-titled" {id, title}. sync.js (other tabs and devices) uses `window.ClawwebSidebar`. Server text
// only ever reaches the DOM as text (textContent, text nodes).
"use strict";

(() => {
  const body = document.body;
  const { T, $, fmt, api } = ClawwebPage;
  const PAGE = 50;
  const OVERLAP = 5; // each page repeats the end of the one before: a row deleted elsewhere leaves no gap
  const SEARCH_DELAY_MS = 250;
  const SEARCH_PAGE = 20;
  const SEARCH_KEY = "clawweb.search"; // the query, kept while following hits from page to page

  const sidebarEl = $("#sidebar");
  const scroller = $("#sidebar-scroll");
  const list = $("#conversation-list");
  const listEnd = $("#list-end");
  let conversationId = body.dataset.conversationId || null;
  let nextOffset = list.dataset.nextOffset === "" ? null : Number(list.dataset.nextOffset); // null: all loaded

  // --- Rows: kept in the server's order (pinned first, then newest), one per conversation -------------------

  const rows = () => list.querySelectorAll("li[data-id]");
  const rowOf = (id) => list.querySelector(`li[data-id="${CSS.escape(id)}"]`);

  function compare(a, b) {
    const pinned = Number(b.dataset.pinned) - Number(a.dataset.pinned);
    if (pinned) return pinned;
    const updated = Number(b.dataset.updated) - Number(a.dataset.updated);
    if (updated) return updated;
    return a.dataset.id < b.dataset.id ? -1 : a.dataset.id > b.dataset.id ? 1 : 0;
  }

  function fill(row, c) {
    row.dataset.id = c.id;
    row.dataset.updated = c.updated_at;
    row.dataset.pinned = c.pinned ? "1" : "0";
    const link = row.querySelector("a");
    link.setAttribute("href", `/c/${c.id}`);
    link.textContent = c.title || T.untitled;
    const pin = row.querySelector(".pin");
    const label = c.pinned ? T.unpin : T.pin;
    pin.title = label;
    pin.setAttribute("aria-label", label);
    pin.setAttribute("aria-pressed", c.pinned ? "true" : "false");
    markCurrent(row);
    return row;
  }

  function markCurrent(row) {
    const current = row.dataset.id === conversationId;
    row.classList.toggle("current", current);
    if (current) row.querySelector("a").setAttribute("aria-current", "page");
    else row.querySelector("a").removeAttribute("aria-current");
  }

  function newRow(c) {
    const row = document.getElementById("conversation-row").content.firstElementChild.cloneNode(true);
    return fill(row, c);
  }

  // Insert (or move) the row to its place; most rows of a page go last, so look from the end.
  // Into its place in the order. A row moved in the DOM loses the focus it held (a pin button just pressed, and
  // then perhaps the same change again from another tab's event): a row already in place stays untouched, and
  // one that moves takes its focus along.
  function insertSorted(row) {
    const shown = [...rows()];
    const all = shown.filter((other) => other !== row);
    let index = all.length;
    while (index > 0 && compare(row, all[index - 1]) < 0) index -= 1;
    if (shown.indexOf(row) === index) return; // in its place already (the rows before it are all[0..index))
    const focused = row.contains(document.activeElement) ? document.activeElement : null;
    if (index === all.length) list.append(row);
    else all[index].before(row);
    focused?.focus({ preventScroll: true });
  }

  // A row whose place changed here (pinned, unpinned, renamed). One that now sorts after every row loaded,
  // while more pages exist, is dropped: the server's later page brings it back in its place.
  function move(row) {
    const all = [...rows()].filter((other) => other !== row);
    const last = all[all.length - 1];
    if (nextOffset !== null && last && compare(row, last) > 0) {
      row.remove();
      nextOffset -= 1;
    } else {
      insertSorted(row);
    }
  }

  function upsert(c) {
    const row = rowOf(c.id);
    if (row) fill(row, c);
    insertSorted(row || newRow(c));
  }

  function groupOf(row, bounds) {
    if (row.dataset.pinned === "1") return "pinned";
    const at = Number(row.dataset.updated) * 1000;
    if (at >= bounds.today) return "today";
    if (at >= bounds.yesterday) return "yesterday";
    if (at >= bounds.week) return "week";
    return "older";
  }

  // Day boundaries in local time (a Date built from y/m/d is local midnight, DST included).
  function dayBounds() {
    const now = new Date();
    const day = (back) => new Date(now.getFullYear(), now.getMonth(), now.getDate() - back).getTime();
    return { today: day(0), yesterday: day(1), week: day(7) };
  }

  // Group labels go before the first row of each group; rebuilt after every change (rows are only moved).
  function relabel() {
    list.dataset.nextOffset = nextOffset ?? ""; // for a look in the inspector (and the tests)
    for (const label of list.querySelectorAll("li.group-label")) label.remove();
    const bounds = dayBounds();
    let previous = null;
    for (const row of rows()) {
      const group = groupOf(row, bounds);
      if (group !== previous) {
        const label = document.createElement("li");
        label.className = "group-label";
        label.dataset.group = group;
        label.textContent = T[`group_${group}`];
        row.before(label);
        previous = group;
      }
    }
  }

  // --- Paging: the end marker coming into view loads the next page --------------------------------------

  let loading = false;
  const observer = new IntersectionObserver((entries) => entries.some((e) => e.isIntersecting) && loadMore(), {
    root: scroller,
    rootMargin: "0px 0px 400px 0px",
  });

  // The observer reports changes only: after a page, observe afresh so a marker still in view loads the next.
  function rearm() {
    observer.unobserve(listEnd);
    if (nextOffset !== null) observer.observe(listEnd);
  }

  async function loadMore() {
    if (loading || nextOffset === null) return;
    loading = true;
    const offset = Math.max(0, nextOffset - OVERLAP);
    try {
      const page = await api("GET", `/api/conversations?limit=${PAGE + OVERLAP}&offset=${offset}`);
      nextOffset = page.next_offset;
      for (const c of page.conversations) upsert(c);
      relabel();
      listEnd.textContent = "";
      loading = false;
      rearm();
    } catch (error) {
      listEnd.textContent = fmt(T.load_failed, { error: error.message });
      setTimeout(() => {
        loading = false;
        rearm();
      }, 5000);
    }
  }

  async function reloadList() {
    const page = await api("GET", `/api/conversations?limit=${PAGE}&offset=0`);
    for (const row of rows()) row.remove();
    nextOffset = page.next_offset;
    for (const c of page.conversations) upsert(c);
    relabel();
    rearm();
  }

  // --- Row actions --------------------------------------------------------------------------------------

  async function rename(row) {
    const id = row.dataset.id;
    const title = prompt(T.rename_prompt, row.querySelector("a").textContent);
    if (title === null || !title.trim()) return;
    const updated = await api("PATCH", `/api/conversations/${id}`, { title: title.trim() });
    fill(row, updated);
    move(row);
    relabel();
    if (id === conversationId) {
      $(".topbar h1").textContent = updated.title;
      document.title = updated.title;
    }
  }

  async function remove(row) {
    const id = row.dataset.id;
    if (!confirm(T.delete_confirm)) return;
    await api("DELETE", `/api/conversations/${id}`);
    if (id === conversationId) return location.assign("/");
    row.remove();
    if (nextOffset !== null) nextOffset -= 1;
    relabel();
  }

  async function togglePin(row) {
    const updated = await api("PATCH", `/api/conversations/${row.dataset.id}`, { pinned: row.dataset.pinned !== "1" });
    fill(row, updated);
    move(row);
    relabel();
    if (row.isConnected) row.scrollIntoView({ block: "nearest" }); // it kept its focus (insertSorted)
  }

  // One listener for the whole list: rows the server rendered and rows added here alike.
  list.addEventListener("click", (event) => {
    const button = event.target.closest("button.pin, button.rename, button.delete");
    if (!button) return;
    const row = button.closest("li[data-id]");
    const action = button.classList.contains("pin") ? togglePin : button.classList.contains("rename") ? rename : remove;
    action(row).catch((error) => alert(`${T.error}: ${error.message}`));
  });

  // A conversation's full row (link, pin, rename, delete: the same <template> as the server's rows), made or
  // brought up to date from a conversation object as the API gives it ({id, title, updated_at, pinned}), in its
  // place, the day labels redone; the row. For the conversations this page creates and those other tabs report.
  function showRow(c) {
    if (!rowOf(c.id) && nextOffset !== null) nextOffset += 1; // one more row before the next page on the server
    upsert(c);
    relabel();
    return rowOf(c.id);
  }

  // A conversation chat.js just created (its first message sent): a new row at the top, and the menu.
  document.addEventListener("conversation-titled", (event) => {
    const { id, title } = event.detail;
    const known = rowOf(id);
    setConversation(id);
    showRow({ id, title, updated_at: Date.now() / 1000, pinned: known ? known.dataset.pinned === "1" : false });
  });

  function setConversation(id) {
    conversationId = id;
    for (const row of rows()) markCurrent(row);
    $("#conversation-menu").hidden = !id;
    $("#export-md").setAttribute("href", `/api/conversations/${id}/export?format=md`);
    $("#export-json").setAttribute("href", `/api/conversations/${id}/export?format=json`);
  }

  // --- Changes made in another tab or on another device (static/sync.js) ----------------------------------

  window.ClawwebSidebar = {
    showRow,
    // A conversation created or changed elsewhere: its row, in its place (a new one counts as one more row on
    // the server before the next page; one that sorts after every row loaded waits for its page).
    synced(c) {
      const row = rowOf(c.id);
      if (!row && nextOffset !== null) nextOffset += 1;
      move(row ? fill(row, c) : newRow(c));
      relabel();
    },
    removed(id) {
      const row = rowOf(id);
      if (!row) return;
      row.remove();
      if (nextOffset !== null) nextOffset -= 1;
      relabel();
    },
    reload: () => reloadList(),
  };

  // --- Phone: the sidebar is an overlay ------------------------------------------------------------------

  // It opens below the topbar (whose height chat.css reads from --topbar-h), so its own button stays there to
  // close it; a tap on the backdrop or Escape closes it too, and the focus goes back to that button.
  const backdrop = $("#backdrop");
  const menuToggle = $("#menu");
  function openSidebar(open) {
    const wasOpen = sidebarEl.classList.contains("open");
    sidebarEl.classList.toggle("open", open);
    backdrop.hidden = !open;
    menuToggle.setAttribute("aria-expanded", open ? "true" : "false");
    if (open && !wasOpen) $(".new-chat").focus({ preventScroll: true });
    if (!open && wasOpen && sidebarEl.contains(document.activeElement)) menuToggle.focus();
  }
  menuToggle.addEventListener("click", () => openSidebar(!sidebarEl.classList.contains("open")));
  backdrop.addEventListener("click", () => openSidebar(false));
  const topbar = $(".topbar");
  const measureTopbar = () => document.documentElement.style.setProperty("--topbar-h", `${topbar.offsetHeight}px`);
  new ResizeObserver(measureTopbar).observe(topbar);
  measureTopbar();

  // --- Search -------------------------------------------------------------------------------------------

  const searchInput = $("#search");
  const results = $("#search-results");
  const hits = $("#hits");
  const searchStatus = $("#search-status");
  const moreHits = $("#more-hits");
  let searchTimer = 0;
  let searchSeq = 0; // answers to an older query are dropped
  let hitsOffset = null;

  function showResults(on) {
    results.hidden = !on;
    list.hidden = on;
    listEnd.hidden = on;
  }

  // The snippet as text nodes, with the highlighted ranges in <mark>. Offsets are UTF-16 code units, as the API
  // documents them: what String.prototype.slice counts.
  function markedSnippet(snippet, highlights) {
    const ranges = (highlights || [])
      .map(([start, end]) => [Math.max(0, start), Math.min(snippet.length, end)])
      .filter(([start, end]) => start < end)
      .sort((a, b) => a[0] - b[0]);
    const parts = [];
    let at = 0;
    for (const [start, end] of ranges) {
      if (end <= at) continue;
      const from = Math.max(start, at);
      if (from > at) parts.push(document.createTextNode(snippet.slice(at, from)));
      const mark = document.createElement("mark");
      mark.textContent = snippet.slice(from, end);
      parts.push(mark);
      at = end;
    }
    if (at < snippet.length) parts.push(document.createTextNode(snippet.slice(at)));
    return parts;
  }

  function hitRow(hit) {
    const item = document.createElement("li");
    item.className = "hit";
    const link = document.createElement("a");
    const message = hit.message_id == null ? "" : `?m=${encodeURIComponent(hit.message_id)}`;
    link.setAttribute("href", `/c/${encodeURIComponent(hit.conversation_id)}${message}`);
    link.dataset.conversation = hit.conversation_id;
    const title = document.createElement("span");
    title.className = "hit-title";
    const snippet = document.createElement("span");
    snippet.className = "hit-snippet";
    if (hit.message_id == null) {
      title.append(...markedSnippet(hit.snippet || hit.title || T.untitled, hit.highlights));
    } else {
      title.textContent = hit.title || T.untitled;
      snippet.append(...markedSnippet(hit.snippet || "", hit.highlights));
    }
    link.append(title);
    if (snippet.childNodes.length) link.append(snippet);
    item.append(link);
    return item;
  }

  async function runSearch(query, more) {
    const seq = ++searchSeq;
    sessionStorage.setItem(SEARCH_KEY, query);
    showResults(true);
    if (!more) searchStatus.textContent = T.searching;
    const offset = more ? hitsOffset : 0;
    let found;
    try {
      found = await api("GET", `/api/search?q=${encodeURIComponent(query)}&limit=${SEARCH_PAGE}&offset=${offset}`);
    } catch (error) {
      if (seq === searchSeq) searchStatus.textContent = `${T.error}: ${error.message}`;
      return;
    }
    if (seq !== searchSeq) return;
    if (!more) hits.replaceChildren();
    hits.append(...found.results.map(hitRow));
    hitsOffset = found.next_offset;
    moreHits.hidden = hitsOffset == null;
    searchStatus.textContent = hits.childElementCount ? "" : T.no_results;
  }

  function endSearch() {
    clearTimeout(searchTimer);
    searchSeq += 1;
    sessionStorage.removeItem(SEARCH_KEY);
    hits.replaceChildren();
    searchStatus.textContent = "";
    moreHits.hidden = true;
    showResults(false);
    rearm();
  }

  searchInput.addEventListener("input", () => {
    clearTimeout(searchTimer);
    const query = searchInput.value.trim();
    if (!query) return endSearch();
    searchTimer = setTimeout(() => runSearch(query, false), SEARCH_DELAY_MS);
  });
  searchInput.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && searchInput.value) {
      event.preventDefault();
      event.stopPropagation(); // the phone overlay stays open: Escape here only clears the search
      searchInput.value = "";
      endSearch();
    } else if (event.key === "Enter" && searchInput.value.trim()) {
      clearTimeout(searchTimer);
      runSearch(searchInput.value.trim(), false);
    }
  });
  moreHits.addEventListener("click", () => searchInput.value.trim() && runSearch(searchInput.value.trim(), true));

  // --- Import and export all ----------------------------------------------------------------------------

  const importFile = $("#import-file");
  const importStatus = $("#import-status");
  importFile.addEventListener("change", async () => {
    const file = importFile.files[0];
    if (!file) return;
    importStatus.dataset.state = "busy";
    importStatus.textContent = T.importing;
    try {
      const counts = await api("POST", "/api/import", undefined, await file.text());
      importStatus.dataset.state = "done";
      importStatus.textContent = fmt(T.imported, counts);
      await reloadList();
    } catch (error) {
      importStatus.dataset.state = "error";
      importStatus.textContent = fmt(T.import_failed, { error: error.message });
    } finally {
      importFile.value = ""; // the same file again is a new change
    }
  });

  // --- The conversation menu (topbar) and sharing -------------------------------------------------------

  const menuButton = $("#conversation-menu-button");
  const menuItems = $("#conversation-menu-items");
  const items = () => [...menuItems.querySelectorAll("[role=menuitem]")];

  function openMenu(open, focusFirst) {
    menuItems.hidden = !open;
    menuButton.setAttribute("aria-expanded", open ? "true" : "false");
    if (open && focusFirst) items()[0].focus();
  }
  menuButton.addEventListener("click", () => openMenu(menuItems.hidden, false));
  menuButton.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown") {
      event.preventDefault();
      openMenu(true, true);
    }
  });
  menuItems.addEventListener("keydown", (event) => {
    const all = items();
    const at = all.indexOf(document.activeElement);
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      all[(at + (event.key === "ArrowDown" ? 1 : all.length - 1)) % all.length].focus();
    } else if (event.key === "Escape" || event.key === "Tab") {
      openMenu(false);
      if (event.key === "Escape") menuButton.focus();
    }
  });
  menuItems.addEventListener("click", () => openMenu(false));
  document.addEventListener("click", (event) => {
    if (!menuItems.hidden && !event.target.closest("#conversation-menu")) openMenu(false);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && sidebarEl.classList.contains("open")) openSidebar(false);
  });

  const shareDialog = $("#share-dialog");
  const shareUrl = $("#share-url");
  const shareStatus = $("#share-status");
  const shareCopy = $("#share-copy");
  const shareRevoke = $("#share-revoke");
  const shareExpires = $("#share-expires");

  function shareState(state, text) {
    shareDialog.dataset.state = state; // creating | ready | revoked | error
    shareStatus.textContent = text || "";
    const ready = state === "ready";
    shareUrl.disabled = shareCopy.disabled = !ready;
    shareRevoke.disabled = !(ready || state === "error");
  }

  $("#share").addEventListener("click", async () => {
    const id = conversationId;
    shareUrl.value = "";
    shareExpires.textContent = "";
    shareState("creating", T.share_creating);
    shareDialog.showModal();
    try {
      const share = await api("POST", `/api/conversations/${id}/share`, {});
      shareUrl.value = new URL(share.url, location.origin).href;
      if (share.expires_at) shareExpires.textContent = fmt(T.share_expires, { date: new Date(share.expires_at * 1000).toLocaleString() });
      shareState("ready");
      shareUrl.select();
    } catch (error) {
      shareState("error", `${T.error}: ${error.message}`);
    }
  });

  shareCopy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(shareUrl.value);
    } catch (_) {
      shareUrl.select(); // no clipboard API (plain http on a LAN address): the old way
      document.execCommand("copy");
    }
    shareCopy.textContent = T.copied;
    setTimeout(() => (shareCopy.textContent = T.copy), 1500);
  });

  shareRevoke.addEventListener("click", async () => {
    try {
      await api("DELETE", `/api/conversations/${conversationId}/share`);
      shareUrl.value = "";
      shareExpires.textContent = "";
      shareState("revoked", T.share_revoked);
    } catch (error) {
      shareState("error", `${T.error}: ${error.message}`);
    }
  });
  $("#share-close").addEventListener("click", () => shareDialog.close());

  // --- Start ----------------------------------------------------------------------------------------------

  relabel();
  rearm();

  // A search hit: /c/<id>?m=<message id>. The server shows that message's branch; scroll to it, flash it,
  // and drop the parameter (a reload shows the conversation as it then is).
  const wanted = new URLSearchParams(location.search).get("m");
  if (wanted) {
    const article = document.querySelector(`#messages article[data-id="${CSS.escape(wanted)}"]`);
    if (article) {
      article.scrollIntoView({ block: "center" });
      article.classList.add("found");
    }
    history.replaceState(history.state, "", location.pathname);
  }

  const kept = sessionStorage.getItem(SEARCH_KEY);
  if (kept) {
    searchInput.value = kept;
    runSearch(kept, false);
  }
})();
