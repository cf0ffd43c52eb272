"""Services: what one app holds (settings, the Ollama client, shared state, the store, the running answers,
the rate windows), built once by ``create_app`` in dependency order and reached through one typed accessor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from flask import Flask, current_app

if TYPE_CHECKING:  # types only: these modules use ``services()`` themselves
    from .chat.generations import Generations
    from .config import Settings
    from .edge import AllowedHosts
    from .relay.estimates import Estimates
    from .state.base import State, Window
    from .storage import Store
    from .upstream.client import OllamaClient

KEY = "clawweb"


@dataclass(frozen=True)
class Services:
    settings: Settings
    allowed_hosts: AllowedHosts
    ollama: OllamaClient
    state: State  # memory or Redis, chosen once (state.make)
    store: Store  # conversations, users, keys, sessions, quotas
    generations: Generations
    answer_rate: Window  # CLAWWEB_RATE_PER_MINUTE, by client
    embed_rate: Window  # CLAWWEB_EMBED_RATE_PER_MINUTE, by client: indexing does not use up a user's answers
    conversation_rate: Window  # CLAWWEB_CONVERSATIONS_PER_MINUTE, by client
    login_by_name: Window  # guesses per name
    login_by_address: Window  # guesses per address
    estimates: Estimates  # how long the stages of answers took here: the eta_s of status frames

    def close(self) -> None:
        """Let go of what the app holds open: Ollama's connections, the store, the shared state (for tests and
        tools that build an app and throw it away; a worker's end closes them with the process)."""
        self.ollama.close()
        self.store.close()
        self.state.close()


def install(app: Flask, built: Services) -> None:
    app.extensions[KEY] = built


def services(app: Flask | None = None) -> Services:
    """The services of ``app``, or of the current app (inside a request or an app context)."""
    return cast(Services, (app or current_app).extensions[KEY])
