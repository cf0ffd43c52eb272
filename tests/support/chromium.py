"""Debian's Chromium as the tests and the render benchmark launch it (through Playwright, no browser download)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, expect

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"  # tests/artifacts/screenshots
# As root, without a sandbox; no background networking (this machine has no internet, Chromium would retry).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def chat_page(browser: Browser, base_url: str) -> Iterator[Page]:
    """The chat page at ``base_url`` in a fresh context (1200×800, en-US, the clipboard allowed). On leaving,
    nothing may have gone wrong in it: no script error, no CSP violation, no failed request."""
    context = browser.new_context(viewport={"width": 1200, "height": 800}, locale="en-US")
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    opened.goto(base_url + "/")
    yield opened
    context.close()
    assert errors == []


def log_in(page: Page, base_url: str, name: str, password: str) -> None:
    """Log in through the login form and wait until the chat page's deferred scripts ran (Enter then sends)."""
    page.goto(base_url + "/login")
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("form button[type=submit]")
    expect(page.locator(".account .user")).to_have_text(name)
    page.wait_for_load_state("domcontentloaded")
