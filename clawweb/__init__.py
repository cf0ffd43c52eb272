"""clawweb: a streaming web gateway and chat page in front of a local Ollama server."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from . import api, errors, upstream
from .config import load_settings

__version__ = "0.1.0"


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then ``CLAWWEB_*`` from the environment, then ``test_config``.

    Raises ``ConfigError`` (one readable line) when a setting is unusable.
    """
    settings = load_settings(os.environ, test_config)
    app = Flask(__name__, template_folder="../templates", static_folder="../static")
    app.extensions["clawweb.settings"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    errors.init_app(app)
    upstream.init_app(app, settings)
    app.register_blueprint(api.bp)
    app.logger.info("clawweb %s relaying to %s at %s", __version__, settings.upstream_label, settings.ollama_url)
    return app
