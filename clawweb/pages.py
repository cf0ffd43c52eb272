"""The server-rendered chat page, and the security headers every response carries."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, Flask, Response, abort, render_template, request

from .auth import identity, ollama_probe, owner
from .chat import feed, tree
from .chat.history import with_answers
from .i18n import LANG_TAGS, language, strings
from .services import services

bp = Blueprint("pages", __name__)

SIDEBAR_PAGE = 50  # rows rendered with the page; sidebar.js loads the rest as the list scrolls
_MESSAGE_ID = re.compile(r"[0-9]{1,18}")

# No inline script or style anywhere: the page's own files and vendored libraries only. Model output is
# sanitized before it reaches the DOM; this is the second line of defence if that ever fails.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def _events_after() -> str:
    """The owner's feed cursor, taken before the page reads anything: a change made meanwhile reaches the page as
    an event (sync.js), never lost. Empty when Redis cannot say: the page then reloads its lists once connected."""
    return services().state.feeds.cursor(feed.key(owner())) or ""


def _page(conversation: dict[str, Any] | None, events_after: str) -> str:
    settings, lang = services().settings, language()
    rows = services().store.conversations(owner(), SIDEBAR_PAGE, 0)
    return render_template(
        "chat.html",
        conversation=conversation,
        conversations=rows,
        next_offset=SIDEBAR_PAGE if len(rows) == SIDEBAR_PAGE else None,
        user=identity().name,
        generation=conversation["generation"] if conversation else None,
        model=conversation["model"] if conversation else settings.default_model,
        simulated=settings.simulator,
        events_after=events_after,
        heartbeat_ms=round(settings.heartbeat_s * 1000),  # the page takes a longer silence for a dead stream
        lang=lang,
        lang_tag=LANG_TAGS[lang],
        t=strings(lang),
        t_json=json.dumps(strings(lang), ensure_ascii=False),
    )


@bp.get("/")
def index() -> Response:
    if ollama_probe():  # a program checking that "Ollama is running" here, as Ollama answers it
        response = Response("Ollama is running", content_type="text/plain; charset=utf-8")
    else:
        response = Response(_page(None, _events_after()), content_type="text/html; charset=utf-8")
    response.vary.add("Accept")  # one URL, two answers: a cache must keep them apart
    return response


@bp.get("/c/<conversation_id>")
def conversation(conversation_id: str) -> str:
    store = services().store
    events_after = _events_after()
    found = store.conversation(conversation_id, owner())
    if found is None:
        abort(404)
    if _show_requested_branch(found):
        found = store.conversation(conversation_id, owner()) or found
    return _page(with_answers(found), events_after)


def _show_requested_branch(conversation: dict[str, Any]) -> bool:
    """``?m=<message id>`` (a search hit) shows that message's branch; True if the branch shown changed.

    Ignored unless the message is in this conversation, when it is already on the branch shown (moving to
    its newest leaf would hide the branch the user chose under it), and while an answer is running."""
    raw = request.args.get("m", "")
    if not _MESSAGE_ID.fullmatch(raw):
        return False
    store = services().store
    found = tree.in_conversation(store, conversation["id"], int(raw))
    if found is None:
        return False
    if services().generations.running_for(conversation["id"]) is not None:
        return False
    if found["id"] in {m["id"] for m in tree.branch(store, conversation)}:
        return False
    tree.show(store, conversation["id"], found["id"])
    return True


def _secure(response: Response) -> Response:
    """Headers only: touching the body here would buffer every stream."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def init_app(app: Flask) -> None:
    app.after_request(_secure)
