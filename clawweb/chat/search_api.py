"""``GET /api/search``: the caller's conversations searched by title and message text (see search.py)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from ..auth import owner
from ..services import services
from ..validation import query_int
from . import search

bp = Blueprint("search", __name__, url_prefix="/api")

PAGE_DEFAULT, PAGE_MAX = 20, 50
OFFSET_MAX = 10_000  # a deeper page costs a longer sort and is not what anyone scrolls to


@bp.get("/search")
def search_conversations() -> Response:
    words = search.terms(request.args.get("q"))
    limit, offset = query_int("limit", PAGE_DEFAULT, 1, PAGE_MAX), query_int("offset", 0, 0, OFFSET_MAX)
    results, more = search.search(services().store, owner(), words, limit, offset)
    return jsonify(results=results, next_offset=offset + limit if more else None)
