"""Export and import routes: a conversation as Markdown or JSON, all of the caller's as JSON, an import."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from .. import quotas
from ..auth import owner
from ..errors import ApiError
from ..offload import in_thread
from ..relay.responses import streaming_response
from ..services import services
from ..validation import parse_json_object, request_body
from . import feed, transfer
from .history import own_conversation

bp = Blueprint("transfer", __name__, url_prefix="/api")


@bp.get("/conversations/<conversation_id>/export")
def export_conversation(conversation_id: str) -> Response:
    kind = request.args.get("format", "md")
    if kind not in ("md", "json"):
        raise ApiError(400, "'format' must be md or json")
    conversation = own_conversation(conversation_id)
    store = services().store
    disposition = {"Content-Disposition": transfer.attachment(conversation["title"], kind)}
    if kind == "md":
        return Response(transfer.markdown(store, conversation), mimetype="text/markdown", headers=disposition)
    body = json.dumps(transfer.envelope([transfer.exported(store, conversation)]), ensure_ascii=False)
    return Response(body, mimetype="application/json", headers=disposition)


@bp.get("/export")
def export_all() -> Response:
    # Streamed a conversation at a time: an owner's data may be hundreds of MB (the byte quota's default).
    return streaming_response(
        transfer.stream_all(services().store, owner()),
        mimetype="application/json",
        headers={"Content-Disposition": transfer.attachment("all", "json")},
    )


def _import_body() -> bytes:
    """The body, under its own limit (an export is larger than any chat request)."""
    limit = services().settings.max_import_bytes
    request.max_content_length = limit
    try:
        return request_body(limit)
    except RequestEntityTooLarge:
        raise ApiError(413, f"the file is larger than the limit of {limit} bytes (CLAWWEB_MAX_IMPORT_BYTES)") from None


def _decoded(raw: bytes, max_chars: int) -> list[dict[str, Any]]:
    """The file's conversations, decoded, checked and converted: seconds of CPU for a large ChatGPT export."""
    if raw.lstrip().startswith(b"["):  # ChatGPT's conversations.json is a list: checked as the value of an object
        return transfer.parse(parse_json_object(b'{"list":' + raw + b"}")["list"], max_chars)
    return transfer.parse(parse_json_object(raw), max_chars)


def _check_quotas(who: int | None, conversations: list[dict[str, Any]]) -> None:
    """All of it fits (conversations kept, bytes stored) or nothing is imported."""
    settings = services().settings
    kept = services().store.usage(who, quotas.today())["conversations"]
    if settings.quota_conversations and kept + len(conversations) > settings.quota_conversations:
        raise ApiError(
            403,
            f"you keep {kept} conversations and this file adds {len(conversations)}, more than the "
            f"{settings.quota_conversations} allowed (CLAWWEB_QUOTA_CONVERSATIONS); delete some, or import fewer",
        )
    quotas.check_storing(who, sum(transfer.size(c) for c in conversations))


@bp.post("/import")
def import_conversations() -> Response:
    settings, store, who = services().settings, services().store, owner()
    # Off the event loop: this worker's streams go on while a large file is decoded.
    found = in_thread(_decoded, _import_body(), settings.max_chars)
    known = transfer.known_sources(store, who)
    new: list[dict[str, Any]] = []
    for conversation in found:
        if conversation["source"] not in known:
            known.add(conversation["source"])  # twice in one file: once
            new.append(conversation)
    _check_quotas(who, new)
    # One transaction per conversation: the storage thread serves every request, and one transaction for a
    # whole ChatGPT export would stall them all. Sending the file again completes an import cut short.
    imported = [c for c in new if transfer.store_one(store, who, c, settings.default_model)]
    if imported:
        feed.publish(services().state.feeds, who, "conversations.imported", None, count=len(imported))
    return jsonify(
        imported=len(imported),
        skipped=len(found) - len(imported),
        messages=sum(len(c["messages"]) for c in imported),
    )
