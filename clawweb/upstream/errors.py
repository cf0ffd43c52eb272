"""The exceptions of a failed exchange with Ollama: unreachable (502) or silent (504), for one host or all.

Each names the host as it may be shown (``Host.label``: without credentials), so the operator knows where to look.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import requests

from ..config import redact_url
from ..errors import ApiError


class OllamaUnreachable(ApiError):
    """Ollama refused or dropped the connection: a 502 that names the URL."""

    kind = "unreachable"

    def __init__(self, base_url: str, reason: object) -> None:
        super().__init__(502, f"cannot reach Ollama at {base_url}: {reason}")
        self.url, self.reason = base_url, str(reason)


class OllamaTimeout(ApiError):
    """Ollama accepted the request but sent nothing for ``CLAWWEB_READ_TIMEOUT_S``."""

    kind = "timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(504, f"Ollama sent nothing for {seconds:g} s")
        self.seconds = seconds
        self.reason = f"sent nothing for {seconds:g} s"


class HostsUnreachable(OllamaUnreachable):
    """Every host failed, at least one without answering: a 502 naming each URL with its reason."""

    def __init__(self, reasons: Sequence[tuple[str, str]]) -> None:
        ApiError.__init__(self, 502, "no Ollama host could answer: " + "; ".join(f"{u}: {r}" for u, r in reasons))
        self.url, self.reason = ", ".join(u for u, _ in reasons), "; ".join(r for _, r in reasons)


class HostsTimedOut(OllamaTimeout):
    """Every host accepted the request and then sent nothing: a 504 naming each URL."""

    def __init__(self, seconds: float, urls: Sequence[str]) -> None:
        ApiError.__init__(self, 504, f"no Ollama host sent anything for {seconds:g} s: {', '.join(urls)}")
        self.seconds, self.reason = seconds, f"sent nothing for {seconds:g} s"


def again(error: Exception | None) -> ApiError:
    """A new exception like a stored one: raising one instance over and over would keep growing its traceback."""
    if isinstance(error, OllamaUnreachable) and not isinstance(error, HostsUnreachable):
        return OllamaUnreachable(error.url, error.reason)
    if isinstance(error, OllamaTimeout) and not isinstance(error, HostsTimedOut):
        return OllamaTimeout(error.seconds)
    if isinstance(error, ApiError):
        return ApiError(error.status, error.message)
    return ApiError(502, f"Ollama failed: {error}")


def problem(error: Exception) -> str:
    """A host's failure in a few words, for messages that name several hosts."""
    return str(getattr(error, "reason", None) or getattr(error, "message", None) or error)


def reason(exc: requests.RequestException) -> str:
    """The innermost cause, e.g. "Connection refused" rather than urllib3's nested repr."""
    cause: BaseException = exc
    while cause.__context__ is not None or cause.__cause__ is not None:
        cause = cast(BaseException, cause.__cause__ or cause.__context__)
    if isinstance(exc, requests.Timeout):
        return "connection timed out"
    text = str(getattr(cause, "reason", None) or cause)
    return redact_url(text.rsplit("] ", 1)[-1] if "] " in text else text)  # should a library ever name the URL
