"""Share link routes: make, list and revoke a conversation's links (its owner only), and the page a link opens."""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify, render_template

from ..auth import identity
from ..errors import ApiError
from ..i18n import LANG_TAGS, language, strings
from ..services import services
from . import shares
from .history import optional_body, own_conversation

bp = Blueprint("shares", __name__)

# The token is in the page's URL: no Referer carries it to the sites its links lead to, no search engine lists
# it, no shared cache keeps it after a revocation.
PAGE_HEADERS = {"Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex", "Cache-Control": "private, no-store"}


@bp.post("/api/conversations/<conversation_id>/share")
def share(conversation_id: str) -> tuple[Response, int]:
    app = services()
    if app.settings.share == "off":
        raise ApiError(403, "sharing is turned off on this server (CLAWWEB_SHARE=off)", code="sharing_off")
    expires_in_s = shares.expires_in(optional_body())
    conversation = own_conversation(conversation_id)
    token, row = shares.create(app.store, conversation, identity().name, expires_in_s)
    return jsonify(url=f"/s/{token}", id=row["id"], created_at=row["created_at"], expires_at=row["expires_at"]), 201


@bp.get("/api/conversations/<conversation_id>/share")
def list_shares(conversation_id: str) -> Response:
    own_conversation(conversation_id)
    return jsonify(shares=shares.live(services().store, conversation_id))


@bp.delete("/api/conversations/<conversation_id>/share")
def revoke_shares(conversation_id: str) -> tuple[str, int]:
    own_conversation(conversation_id)  # still allowed with CLAWWEB_SHARE=off: taking links back always is
    shares.revoke_all(services().store, conversation_id)
    return "", 204


@bp.get("/s/<token>")
def shared_page(token: str) -> Response:
    app = services()
    snapshot = None if app.settings.share == "off" else shares.opened(app.store, token)
    lang = language()
    html = render_template(
        "share.html",
        snapshot=snapshot,
        shared_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snapshot["shared_at"])) if snapshot else "",
        lang_tag=LANG_TAGS[lang],
        t=strings(lang),
    )
    return Response(html, 200 if snapshot else 404, PAGE_HEADERS, content_type="text/html; charset=utf-8")
