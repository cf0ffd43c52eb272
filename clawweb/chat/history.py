"""The stateful chat's services: the conversation store, the answers running for it, and a conversation as the
API and the page show it. The conversation routes and the page both use these; neither imports the other."""

from __future__ import annotations

import time
from typing import Any

from ..services import services


def with_answers(conversation: dict[str, Any]) -> dict[str, Any]:
    """The conversation with its messages and its running generation's summary (or None).

    An answer still marked ``streaming`` with nothing running for it (the process running it was killed; a
    restart marks them itself, but with Redis a starting worker cannot tell) is marked interrupted first, once
    it is older than the lease in which a live answer registers as running.
    """
    store, generations = services().store, services().generations
    running = generations.running_for(conversation["id"])
    if running is None:
        store.mark_interrupted(conversation["id"], time.time() - generations.lease_s)
    conversation = {**conversation, "messages": store.messages(conversation["id"])}
    conversation["generation"] = running.summary() if running else None
    return conversation
