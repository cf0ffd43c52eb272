"""The server-rendered chat page, and the security headers every response carries."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Flask, Response, abort, render_template

from .auth import identity, owner
from .chat.history import with_answers
from .i18n import LANG_TAGS, language, strings
from .services import services

bp = Blueprint("pages", __name__)

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


def _page(conversation: dict[str, Any] | None) -> str:
    settings, lang = services().settings, language()
    return render_template(
        "chat.html",
        conversation=conversation,
        conversations=services().store.conversations(owner(), 100, 0),
        user=identity().name,
        generation=conversation["generation"] if conversation else None,
        model=conversation["model"] if conversation else settings.default_model,
        simulated=settings.simulator,
        lang=lang,
        lang_tag=LANG_TAGS[lang],
        t=strings(lang),
        t_json=json.dumps(strings(lang), ensure_ascii=False),
    )


@bp.get("/")
def index() -> str:
    return _page(None)


@bp.get("/c/<conversation_id>")
def conversation(conversation_id: str) -> str:
    found = services().store.conversation(conversation_id, owner())
    if found is None:
        abort(404)
    return _page(with_answers(found))


def _secure(response: Response) -> Response:
    """Headers only: touching the body here would buffer every stream."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def init_app(app: Flask) -> None:
    app.after_request(_secure)
