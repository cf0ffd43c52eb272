"""The stateful chat API: conversations, their messages, and the generations that answer them."""

from __future__ import annotations

import time
from typing import Any, Literal

from flask import Blueprint, Response, jsonify, request

from .. import quotas
from ..auth import owner
from ..config import Settings
from ..errors import ApiError, InvalidField
from ..relay import sse
from ..relay.admit import client_id
from ..relay.responses import streaming_response
from ..services import services
from ..state.base import START, valid_cursor
from ..validation import query_int
from . import feed, tree, turns
from .generations import AnyGeneration
from .history import optional_body, own_conversation, whole_tree, with_answers

bp = Blueprint("conversations", __name__, url_prefix="/api")

MAX_TITLE = 200
PAGE_DEFAULT, PAGE_MAX = 50, 200
OFFSET_MAX = 1_000_000_000  # far beyond anyone's conversations; SQLite's integers are 64-bit


def _text_field(body: dict[str, Any], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidField(name, "must be a string")
    if len(value) > limit:
        raise InvalidField(name, f"is longer than {limit} characters")
    return value


def _conversation_fields(body: dict[str, Any], settings: Settings) -> dict[str, str]:
    fields = {
        "title": _text_field(body, "title", MAX_TITLE),
        "model": _text_field(body, "model", MAX_TITLE),
        "system_prompt": _text_field(body, "system_prompt", settings.max_chars),
    }
    if fields["model"] is not None and not fields["model"].strip():
        raise InvalidField("model", "must be a non-empty string")
    return {name: value for name, value in fields.items() if value is not None}


def _tell(event: str, conversation_id: str | None, **fields: Any) -> None:
    """The owner's other pages learn of the change (``feed``)."""
    feed.publish(services().state.feeds, owner(), event, conversation_id, **fields)


def _generation_or_404(generation_id: str) -> AnyGeneration:
    generation = services().generations.get(generation_id)
    if generation is None or generation.owner != owner():
        raise ApiError(404, f"no generation '{generation_id}' (finished answers are kept for a few minutes)")
    return generation


@bp.post("/conversations")
def create_conversation() -> tuple[Response, int]:
    settings = services().settings
    fields = _conversation_fields(optional_body(), settings)
    fields.setdefault("model", settings.default_model)
    quotas.check_new_conversation(owner(), client_id(), quotas.stored_size(fields))
    created = services().store.create_conversation(owner(), **fields)
    _tell("conversation.created", created["id"], conversation=created)
    return jsonify(created), 201


@bp.get("/conversations")
def list_conversations() -> Response:
    limit, offset = query_int("limit", PAGE_DEFAULT, 1, PAGE_MAX), query_int("offset", 0, 0, OFFSET_MAX)
    page = services().store.conversations(owner(), limit, offset)
    return jsonify(conversations=page, next_offset=offset + limit if len(page) == limit else None)


@bp.get("/conversations/<conversation_id>")
def show_conversation(conversation_id: str) -> Response:
    conversation = with_answers(own_conversation(conversation_id))
    return jsonify(conversation)


@bp.patch("/conversations/<conversation_id>")
def update_conversation(conversation_id: str) -> Response:
    conversation = own_conversation(conversation_id)
    body = optional_body()
    fields = _conversation_fields(body, services().settings)
    pinned = body.get("pinned")
    if pinned is not None and not isinstance(pinned, bool):
        raise InvalidField("pinned", "must be true or false")
    added = quotas.stored_size({**conversation, **fields}) - quotas.stored_size(conversation)
    if added > 0:  # making things smaller is always allowed, even over the quota
        quotas.check_storing(owner(), added)
    store = services().store
    if pinned is not None:
        store.pin(conversation_id, pinned)
    # Only pinned: the conversation did not change (its place in the list stays).
    if fields:
        updated = store.update_conversation(conversation_id, **fields)
    else:
        updated = store.conversation(conversation_id, owner())
    changed = sorted([*fields, *(["pinned"] if pinned is not None else [])])
    if updated is not None and changed:
        _tell("conversation.updated", conversation_id, conversation=updated, changed=changed)
    return jsonify(updated)


@bp.delete("/conversations/<conversation_id>")
def delete_conversation(conversation_id: str) -> tuple[str, int]:
    own_conversation(conversation_id)
    running = services().generations.running_for(conversation_id)
    if running is not None:
        running.stop()
    services().store.delete_conversation(conversation_id)
    _tell("conversation.deleted", conversation_id)
    return "", 204


def _answer_options(body: dict[str, Any]) -> dict[str, Any]:
    """The per-message knobs a chat page may set; everything else about the request comes from the history."""
    return {key: body[key] for key in ("model", "think", "options") if body.get(key) is not None}


def _system_prompt(body: dict[str, Any]) -> str | None:
    """The conversation's system prompt as the page had it when the user sent (edited, perhaps not saved yet):
    the answer uses it and it is saved with the message in one transaction, so an edit is never lost or half
    applied (a PATCH first could save it for a message that is then refused)."""
    return _text_field(body, "system_prompt", services().settings.max_chars)


MESSAGE_ID_MAX = 2**63 - 1  # SQLite's integers: a larger one would fail in sqlite3, not be "not found"


def _message_id(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MESSAGE_ID_MAX):
        raise InvalidField(name, "must be a message id (a positive integer)")
    return value


def _check_view(conversation: dict[str, Any], body: dict[str, Any]) -> None:
    """``current_id``, when sent, is the leaf of the branch the page shows (null: none): a 409 if the conversation
    moved on meanwhile (another tab or device sent, deleted, switched branch), rather than answering under a
    history the user has not seen. The page then reloads the conversation, the typed text kept."""
    if "current_id" in body and _message_id(body, "current_id") != conversation["current_id"]:
        raise ApiError(
            409,
            "this conversation changed in another tab or on another device since you loaded it; "
            "look at it again and resend",
        )


def _stored(conversation: dict[str, Any]) -> dict[str, Any]:
    """The conversation read again after a turn changed it (its place in the list, a system prompt sent along)."""
    return services().store.conversation(conversation["id"], owner()) or conversation


def _started(stored: dict[str, Any], generation: AnyGeneration) -> None:
    """An answer started: its summary, to follow it, and the conversation as it now is."""
    _tell(
        "answer.started",
        stored["id"],
        conversation=stored,
        generation=generation.summary(),
        message_id=generation.message_id,
    )


def _shown(conversation_id: str) -> Response:
    """The conversation as GET shows it (read again: the request changed it)."""
    return jsonify(with_answers(own_conversation(conversation_id)))


@bp.get("/conversations/<conversation_id>/tree")
def show_tree(conversation_id: str) -> Response:
    return jsonify(whole_tree(own_conversation(conversation_id)))


@bp.post("/conversations/<conversation_id>/messages")
def post_message(conversation_id: str) -> tuple[Response, int]:
    conversation = own_conversation(conversation_id)
    body = optional_body()
    content = body.get("content")
    if not isinstance(content, str) or not content.strip():
        raise InvalidField("content", "must be a non-empty string")
    parent: int | None | Literal["leaf"] = "leaf"
    if "parent_id" in body:  # null: a new first message (the first one edited)
        parent = _message_id(body, "parent_id")
    _check_view(conversation, body)
    user, generation = turns.ask(conversation, content, parent, _answer_options(body), _system_prompt(body))
    store = services().store
    if not conversation["title"]:
        store.update_conversation(conversation_id, title=" ".join(content.split())[:60])
    stored = _stored(conversation)
    _tell("message.created", conversation_id, conversation=stored, message=user)
    _started(stored, generation)
    return jsonify(message=user, generation=generation.summary()), 202


@bp.post("/conversations/<conversation_id>/regenerate")
def regenerate(conversation_id: str) -> tuple[Response, int]:
    conversation = own_conversation(conversation_id)
    body = optional_body()
    _check_view(conversation, body)
    answer, generation = turns.regenerate(
        conversation, _message_id(body, "message_id"), _answer_options(body), _system_prompt(body)
    )
    _started(_stored(conversation), generation)
    return jsonify(message=answer, generation=generation.summary()), 202


@bp.post("/conversations/<conversation_id>/continue")
def continue_answer(conversation_id: str) -> tuple[Response, int]:
    conversation = own_conversation(conversation_id)
    body = optional_body()
    knobs = {key: value for key, value in _answer_options(body).items() if key != "model"}  # it keeps its model
    _check_view(conversation, body)
    answer, generation = turns.resume(conversation, _message_id(body, "message_id"), knobs, _system_prompt(body))
    _started(_stored(conversation), generation)
    return jsonify(message=answer, generation=generation.summary()), 202


@bp.put("/conversations/<conversation_id>/current")
def show_branch(conversation_id: str) -> Response:
    conversation = own_conversation(conversation_id)
    message_id = _message_id(optional_body(), "message_id")
    if message_id is None:
        raise InvalidField("message_id", "is required")
    current_id = tree.show(services().store, conversation_id, turns.message_of(conversation, message_id)["id"])
    if current_id is None:
        raise ApiError(404, f"no message {message_id} in this conversation")
    if current_id != conversation["current_id"]:
        shown = {**conversation, "current_id": current_id}
        _tell("conversation.updated", conversation_id, conversation=shown, changed=["current_id"])
    return _shown(conversation_id)


@bp.delete("/messages/<message_id>")
def delete_message(message_id: str) -> Response:
    """The message and everything under it; the conversation afterwards, as GET shows it."""
    store = services().store
    digits = message_id.isascii() and message_id.isdigit() and 0 < int(message_id) <= MESSAGE_ID_MAX
    found = tree.message(store, owner(), int(message_id)) if digits else None
    if found is None:
        raise ApiError(404, f"no message '{message_id}'")
    conversation_id = found["conversation_id"]
    generations = services().generations
    running = generations.running_for(conversation_id)
    if running is not None and running.message_id in tree.subtree(store, conversation_id, found["id"]):
        raise ApiError(409, "an answer under this message is still being generated; stop it first")
    if running is None:  # what a dead process left streaming is interrupted (as opening it does), not running
        store.mark_interrupted(conversation_id, time.time() - generations.lease_s)
    gone = tree.remove(store, conversation_id, found["id"], streaming_too=False)  # a 409 if an answer started since
    after = store.conversation(conversation_id, owner())
    if gone and after is not None:
        _tell("message.deleted", conversation_id, conversation=after, message_ids=gone)
    return _shown(conversation_id)


@bp.get("/generations/<generation_id>")
def show_generation(generation_id: str) -> Response:
    return jsonify(_generation_or_404(generation_id).summary())


@bp.get("/generations/<generation_id>/events")
def follow_generation(generation_id: str) -> Response:
    generation = _generation_or_404(generation_id)
    after = request.headers.get("Last-Event-ID") or request.args.get("after") or START
    if not valid_cursor(after):
        raise ApiError(400, "'Last-Event-ID' / 'after' must be an event id such as 12 or 1732700000000-0")
    if generation.log.caught_up(after):
        return Response(status=204)  # nothing more, ever: 204 tells EventSource to stop reconnecting
    return streaming_response(generation.follow(after, services().settings.heartbeat_s), headers=sse.HEADERS)


@bp.delete("/generations/<generation_id>")
def stop_generation(generation_id: str) -> Response:
    generation = _generation_or_404(generation_id)
    generation.stop()
    return jsonify(generation.summary())
