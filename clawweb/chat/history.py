"""The stateful chat's services: the conversation store, the answers running for it, and a conversation as the
API and the page show it. The conversation routes and the page both use these; neither imports the other."""

from __future__ import annotations

import time
from typing import Any

from ..auth import owner
from ..errors import ApiError
from ..services import services
from ..validation import parse_json_object, request_body
from . import tree
from .generations import AnyGeneration


def own_conversation(conversation_id: str) -> dict[str, Any]:
    """The caller's conversation, or a 404: a conversation is only ever found by its owner, so a guessed id of
    somebody else's is "not found", never "forbidden"."""
    conversation = services().store.conversation(conversation_id, owner())
    if conversation is None:
        raise ApiError(404, f"no conversation '{conversation_id}'")
    return conversation


def optional_body() -> dict[str, Any]:
    """A request's JSON object body, or {} when it sent none (the chat routes' fields are all optional)."""
    raw = request_body(services().settings.max_body_bytes)
    return parse_json_object(raw) if raw.strip() else {}


def with_answers(conversation: dict[str, Any]) -> dict[str, Any]:
    """The conversation with its messages and its running generation's summary (or None).

    An answer still marked ``streaming`` with nothing running for it (the process running it was killed; a
    restart marks them itself, but with Redis a starting worker cannot tell) is marked interrupted first, once
    it is older than the lease in which a live answer registers as running.
    """
    running = _settled(conversation["id"])
    conversation = {**conversation, "messages": tree.branch(services().store, conversation)}
    conversation["generation"] = running.summary() if running else None
    return conversation


def whole_tree(conversation: dict[str, Any]) -> dict[str, Any]:
    """``current_id`` and every message of every branch, oldest first (stale answers marked as above)."""
    _settled(conversation["id"])
    return {"current_id": conversation["current_id"], "messages": tree.everything(services().store, conversation["id"])}


def _settled(conversation_id: str) -> AnyGeneration | None:
    """The answer running in the conversation; when none is, stale ``streaming`` answers are marked interrupted."""
    store, generations = services().store, services().generations
    running = generations.running_for(conversation_id)
    if running is None:
        store.mark_interrupted(conversation_id, time.time() - generations.lease_s)
    return running
