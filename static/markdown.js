// clawweb's Markdown rendering, shared by the chat page and the shared (read-only) page.
//
// Model output is Markdown: marked turns it into HTML, raw HTML in it is shown as text, DOMPurify sanitizes
// the result before it touches the DOM, links open in a new tab without a referrer, and code blocks are
// highlighted under a header bar (their language, a copy button). No DOM state of its own: a page creates one
// renderer with its labels.
"use strict";

window.ClawwebMarkdown = (() => {
  const escapeHtml = (text) =>
    text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  marked.use({ gfm: true, renderer: { html: (token) => escapeHtml(token.text) } });
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });

  // A code block gets a header bar above it (the fence's language, a Copy button) and scrolls under it on its
  // own: a button floating over the <pre> covered the ends of long lines.
  function decorateCode(code, labels) {
    const pre = code.parentElement;
    const language = (/(?:^|\s)language-(\S+)/.exec(code.className) || [])[1] || "";
    hljs.highlightElement(code);
    const block = document.createElement("div");
    block.className = "code-block";
    const head = document.createElement("div");
    head.className = "code-head";
    const label = document.createElement("span");
    label.className = "code-language";
    label.textContent = language;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = labels.copy;
    button.addEventListener("click", async () => {
      await navigator.clipboard.writeText(code.textContent);
      button.textContent = labels.copied;
      setTimeout(() => (button.textContent = labels.copy), 1500);
    });
    head.append(label, button);
    pre.tabIndex = 0; // a region that scrolls sideways must be reachable by keyboard to be scrolled
    pre.replaceWith(block);
    block.append(head, pre);
  }

  // toFragment(markdown) -> a DocumentFragment, safe to insert; `labels` = {copy, copied} for the code button.
  function renderer(labels) {
    return function toFragment(markdown) {
      const template = document.createElement("template");
      template.innerHTML = DOMPurify.sanitize(marked.parse(markdown));
      for (const code of template.content.querySelectorAll("pre > code")) decorateCode(code, labels);
      for (const table of template.content.querySelectorAll("table")) table.tabIndex = 0; // scrolls when wide
      return template.content;
    };
  }

  return { renderer };
})();
