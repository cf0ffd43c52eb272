"""Debian's Chromium as the tests and the render benchmark launch it (through Playwright, no browser download)."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
# As root, without a sandbox; no background networking (this machine has no internet, Chromium would retry).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
