"""clawweb: a streaming web gateway and chat page in front of a local Ollama server."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from .config import Settings
    from .services import Services

__version__ = "0.1.0"


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then ``CLAWWEB_*`` from the environment, then ``test_config``.

    Raises ``ConfigError`` (one readable line) when a setting is unusable.
    """
    # Imported here so that ``gunicorn.conf.py`` (in the master, before gevent patches the workers) can import
    # ``clawweb.config`` without pulling in requests and ssl.
    from flask import Flask
    from werkzeug.middleware.proxy_fix import ProxyFix

    from . import (
        account_page,
        api,
        auth,
        edge,
        errors,
        health,
        login,
        metrics,
        openai_api,
        pages,
    )
    from .chat import conversations, events_api, search_api, share_views, transfer_api
    from .config import load_settings, redact_url
    from .drain import DrainBody
    from .services import install

    settings = load_settings(os.environ, test_config)
    app = Flask(__name__, template_folder="../templates", static_folder="../static")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    if settings.trusted_proxies:
        # Trust exactly as many X-Forwarded-* hops as there are proxies we run; more would let clients spoof.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    # Outermost: it must see the body as the server delivers it, and run after everything else is done.
    app.wsgi_app = DrainBody(app.wsgi_app)  # type: ignore[method-assign]
    errors.init_app(app)
    install(app, build_services(settings))
    edge.init_app(app, settings)  # first hook: its Host check runs before auth's _identify, and it wraps ProxyFix
    auth.init_app(app, settings)
    pages.init_app(app)
    blueprints = (
        account_page.bp,
        api.bp,
        conversations.bp,
        events_api.bp,
        health.bp,
        login.bp,
        metrics.bp,
        openai_api.bp,
        pages.bp,
        search_api.bp,
        share_views.bp,
        transfer_api.bp,
    )
    for blueprint in blueprints:
        app.register_blueprint(blueprint)
    log = logging.getLogger(__name__)
    log.info("clawweb %s relaying to %s at %s", __version__, settings.upstream_label, redact_url(settings.ollama_url))
    if settings.auth_required:
        _say_ownerless(app)
    return app


def _say_ownerless(app: Flask) -> None:
    """With accounts on, conversations made in open mode are seen by nobody: say so, and how to give them out."""
    from .chat.adopt import ownerless
    from .services import services

    count = ownerless(services(app).store)
    if count:
        logging.getLogger(__name__).warning(
            "%d conversation(s) made in open mode have no owner and are hidden while accounts are on; "
            "`clawweb conversations adopt --to NAME` gives them to a user",
            count,
        )


def build_services(settings: Settings) -> Services:
    """Each line uses only what the lines above it built."""
    from .chat.generations import Generations
    from .edge import AllowedHosts
    from .guesses import ADDRESS_FACTOR, LOGIN_WINDOW_S
    from .relay.estimates import Estimates
    from .services import Services
    from .state.make import make_state
    from .storage import open_store
    from .upstream.client import OllamaClient

    state = make_state(settings)  # memory, or Redis when CLAWWEB_REDIS_URL is set
    store = open_store(settings, mark_interrupted=not settings.redis_url)  # with Redis, other workers' may be live
    window = state.window
    return Services(
        settings=settings,
        allowed_hosts=AllowedHosts(settings),
        ollama=OllamaClient(settings),
        state=state,
        store=store,
        generations=Generations(
            store, state, settings.generation_ttl_s, settings.cancel_without_readers_s, settings.checkpoint_s
        ),
        answer_rate=window("answers", settings.rate_per_minute, 60.0),
        embed_rate=window("embeddings", settings.embed_rate_per_minute, 60.0),
        conversation_rate=window("conversations", settings.conversations_per_minute, 60.0),
        login_by_name=window("login-name", settings.login_attempts, LOGIN_WINDOW_S),
        login_by_address=window("login-address", settings.login_attempts * ADDRESS_FACTOR, LOGIN_WINDOW_S),
        estimates=Estimates(),
    )
