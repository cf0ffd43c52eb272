"""Share tokens out of access logs: ``/s/<token>`` is a password in a URL, and the database keeps only its digest
(so that a copy of it opens no link); a log line in clear would undo that for whoever reads the journal."""

from __future__ import annotations

import logging
import re

# The path itself and the login redirect's ``next=%2Fs%2F<token>`` (CLAWWEB_SHARE=users, not logged in).
SHARE_TOKEN = re.compile(r"((?:/|%2[Ff])s(?:/|%2[Ff]))[A-Za-z0-9_-]+")
REDACTED = "REDACTED"  # the same word nginx's site writes (deploy/nginx/clawweb.conf, $clawweb_logged_request)


def redacted(line: str) -> str:
    return SHARE_TOKEN.sub(rf"\g<1>{REDACTED}", line)


class ShareTokens(logging.Filter):
    """For gunicorn's access log (gunicorn.conf.py): the line as formatted, its share tokens replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redacted(record.getMessage()), None
        return True
