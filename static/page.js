// clawweb page helpers, shared by chat.js (the conversation) and sidebar.js (the list and menus): the page's
// strings, a selector, a string filler, and the JSON API call carrying the session's CSRF token.
"use strict";

window.ClawwebPage = (() => {
  const T = JSON.parse(document.body.dataset.i18n);
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (selector) => document.querySelector(selector);
  const fmt = (text, vars) => text.replace(/\{(\w+)\}/g, (_, key) => vars[key]);

  // `payload` goes as JSON; `raw` is a body that is JSON already (an import file's text), sent as it is. A
  // refusal throws an Error with the API's own message, its `status` and its Retry-After (`retryAfter`, s).
  async function api(method, url, payload, raw) {
    const headers = { "X-CSRF-Token": csrfToken };
    if (payload !== undefined || raw !== undefined) headers["Content-Type"] = "application/json";
    const body = raw !== undefined ? raw : payload === undefined ? undefined : JSON.stringify(payload);
    const response = await fetch(url, { method, headers, body });
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) {
      const error = new Error(data && data.error ? data.error : `HTTP ${response.status}`);
      error.status = response.status;
      error.retryAfter = Number(response.headers.get("Retry-After")) || null; // seconds
      throw error;
    }
    return data;
  }

  return { T, $, fmt, api };
})();
