// A share link's page: the answers' Markdown rendered as on the chat page (markdown.js), the date localized.
"use strict";

(() => {
  const labels = { copy: document.body.dataset.copy, copied: document.body.dataset.copied };
  const toFragment = ClawwebMarkdown.renderer(labels);
  for (const content of document.querySelectorAll(".message .content.markdown")) {
    content.replaceChildren(toFragment(content.dataset.raw || ""));
    content.classList.add("rendered");
  }
  for (const time of document.querySelectorAll(".share-note time")) {
    const date = new Date(time.dateTime);
    if (!Number.isNaN(date.getTime())) time.textContent = date.toLocaleDateString(document.documentElement.lang, { dateStyle: "long" });
  }
})();
