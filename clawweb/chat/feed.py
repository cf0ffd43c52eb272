"""What changed in an owner's conversations, told to each page the owner has open (``GET /api/events``).

One call per change, where it happens (the conversation routes, an import, an answer's end); the page acts on
each event by its name alone, and every event names its ``conversation_id`` (None when it is about many):

    conversation.created    {conversation}                       a row for the list
    conversation.updated    {conversation, changed: [fields]}    renamed, pinned, model, system prompt, branch shown
    conversation.deleted    {}
    conversations.imported  {count}                              the list is reloaded
    message.created         {conversation, message}              a question sent
    message.deleted         {conversation, message_ids}          conversation.current_id: the branch now shown
    answer.started          {conversation, generation, message_id}   generation: its summary, to follow it
    answer.ended            {generation_id, message_id, status}
"""

from __future__ import annotations

import json
from typing import Any

from ..state.base import Answer, Feeds

SHOWN = ("id", "title", "updated_at", "pinned", "model", "system_prompt", "current_id")  # what a page shows of one


def key(owner: int | None) -> str:
    """An owner's feed: the user id; open mode (no accounts) has one shared feed."""
    return "open" if owner is None else str(owner)


def summary(conversation: dict[str, Any]) -> dict[str, Any]:
    return {name: conversation.get(name) for name in SHOWN}


def publish(feeds: Feeds, owner: int | None, event: str, conversation_id: str | None, **fields: Any) -> None:
    """Tell ``owner``'s pages; ``conversation`` (a stored row) is sent as its ``summary``. Never raises."""
    if "conversation" in fields:
        fields["conversation"] = summary(fields["conversation"])
    payload = {"conversation_id": conversation_id, **fields}
    feeds.publish(key(owner), event, json.dumps(payload, separators=(",", ":")).encode())


def answer_ended(feeds: Feeds, answer: Answer) -> None:
    publish(
        feeds,
        answer.owner,
        "answer.ended",
        answer.conversation_id,
        generation_id=answer.id,
        message_id=answer.message_id,
        status=answer.status,
    )
