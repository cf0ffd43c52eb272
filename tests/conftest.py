"""Shared fixtures: a Flask app for unit tests (flaskr style); real servers live in ``servers.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from clawweb import create_app

OLLAMA = "http://127.0.0.1:11434"


@pytest.fixture
def app() -> Iterator[Flask]:
    yield create_app({"ollama_url": OLLAMA, "tags_ttl_s": 60})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
