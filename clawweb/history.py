"""The stateful chat's services: the conversation store, the answers running for it, and a conversation as the
API and the page show it. The conversation routes and the page both use these; neither imports the other."""

from __future__ import annotations

import time
from typing import Any, cast

from flask import Flask, current_app

from . import quotas
from .config import Settings
from .generations import Generations
from .state.base import State
from .storage import Store


def init_app(app: Flask, settings: Settings, state: State) -> None:
    store = Store(settings.db, mark_interrupted=not settings.redis_url)
    app.extensions["clawweb.store"] = store
    quotas.init_app(app, settings, state)
    app.extensions["clawweb.generations"] = Generations(
        store, state, settings.generation_ttl_s, settings.cancel_without_readers_s, settings.checkpoint_s
    )


def get_store() -> Store:
    return cast(Store, current_app.extensions["clawweb.store"])


def get_generations() -> Generations:
    return cast(Generations, current_app.extensions["clawweb.generations"])


def with_answers(conversation: dict[str, Any]) -> dict[str, Any]:
    """The conversation with its messages and its running generation's summary (or None).

    An answer still marked ``streaming`` with nothing running for it (the process running it was killed; a
    restart marks them itself, but with Redis a starting worker cannot tell) is marked interrupted first, once
    it is older than the lease in which a live answer registers as running.
    """
    store, generations = get_store(), get_generations()
    running = generations.running_for(conversation["id"])
    if running is None:
        store.mark_interrupted(conversation["id"], time.time() - generations.lease_s)
    conversation = {**conversation, "messages": store.messages(conversation["id"])}
    conversation["generation"] = running.summary() if running else None
    return conversation
