"""Shared fixtures: a Flask app for unit tests (flaskr style); real servers live in ``support/servers.py``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import Browser, sync_playwright

from clawweb import create_app

from .support.chromium import CHROMIUM, CHROMIUM_ARGS

OLLAMA = "http://127.0.0.1:11434"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"ollama_url": OLLAMA, "tags_ttl_s": 60, "db": str(tmp_path / "clawweb.db")})
    yield app
    app.extensions["clawweb.store"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, through Playwright (no browser download)."""
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
