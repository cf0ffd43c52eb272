"""The HTML error page a browser gets (404, 403, 500...): the app's stylesheet and header, in the reader's language.

errors.py decides between it and JSON by the path and ``Accept``; this module only draws the page. A 404 says the
same for a conversation that is someone else's as for one that does not exist: the page must not tell them apart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flask import Response, render_template

from .i18n import LANG_TAGS, language, strings

log = logging.getLogger(__name__)


def error_page(status: int, detail: str | None = None, headers: Mapping[str, str] | None = None) -> Response:
    """``detail``: the refusal's own message (an ``ApiError``'s), shown under the page's sentence."""
    try:
        lang = language()
        t = strings(lang)
        html = render_template(
            "error.html",
            status=status,
            heading=t.get(f"error_{status}", t["error_other"]),
            detail=detail,
            lang_tag=LANG_TAGS[lang],
            t=t,
        )
        content_type = "text/html; charset=utf-8"
    except Exception:  # noqa: BLE001 - an error page that fails must still answer, plainly
        log.exception("the error page for %s failed", status)
        html, content_type = f"error {status}\n", "text/plain; charset=utf-8"
    response = Response(html, status, content_type=content_type)
    response.headers.update(headers or {})
    response.headers["Cache-Control"] = "no-store"
    return response
