"""Shared fixtures: a Flask app for unit tests (flaskr style); real servers live in ``servers.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from clawweb import create_app

OLLAMA = "http://127.0.0.1:11434"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"ollama_url": OLLAMA, "tags_ttl_s": 60, "db": str(tmp_path / "clawweb.db")})
    yield app
    app.extensions["clawweb.store"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
