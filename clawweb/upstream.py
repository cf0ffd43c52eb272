"""The client towards Ollama: one pooled ``requests.Session`` per process, over one host or several.

With several hosts (``CLAWWEB_OLLAMA_URL=http://a:11434,http://b:11434``) the client still looks like one Ollama
to the rest of the gateway: a generation goes to the best host for its model (see ``hosts.rank``) and moves on to
the next one if its host fails before the first token; the model lists (``/api/tags``, ``/api/ps``) are merged
over the hosts that are up; anything else goes to the first host that answers. With one host every request goes
there, exactly as with a single URL.

Only the gateway's own headers go upstream. Ollama answers 403 when it sees a browser's ``Host``/``Origin``,
so nothing from the incoming request is ever forwarded except the validated JSON body.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import gevent
import requests
from flask import Flask, current_app
from requests.adapters import HTTPAdapter

from .config import Settings, redact_url, split_urls
from .errors import ApiError
from .hosts import (
    CHECK_TIMEOUT_S,
    HOST_FAILURES,
    HealthChecker,
    Host,
    each,
    merge_listings,
    model_key,
    monkey_patched,
    names_in,
    rank,
)

__all__ = ["OllamaClient", "OllamaTimeout", "OllamaUnreachable", "Opened", "get_client", "init_app", "model_key"]

log = logging.getLogger("gunicorn.error")

USER_AGENT = "clawweb/0.1"
MERGED = ("/api/tags", "/api/ps")  # lists of models: with several hosts, the union over those that are up


class OllamaUnreachable(ApiError):
    """Ollama refused or dropped the connection: a 502 that names the URL (``Host.label``: without credentials), so
    the operator knows where to look."""

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


def _again(error: Exception | None) -> ApiError:
    """A new exception like a stored one: raising one instance over and over would keep growing its traceback."""
    if isinstance(error, OllamaUnreachable) and not isinstance(error, HostsUnreachable):
        return OllamaUnreachable(error.url, error.reason)
    if isinstance(error, OllamaTimeout) and not isinstance(error, HostsTimedOut):
        return OllamaTimeout(error.seconds)
    if isinstance(error, ApiError):
        return ApiError(error.status, error.message)
    return ApiError(502, f"Ollama failed: {error}")


def _problem(error: Exception) -> str:
    """A host's failure in a few words, for messages that name several hosts."""
    return str(getattr(error, "reason", None) or getattr(error, "message", None) or error)


@dataclass
class Opened:
    """An upstream response and the host whose stream count it holds until ``close`` (None: it holds none)."""

    response: requests.Response
    host: Host | None = None

    def release(self) -> None:
        host, self.host = self.host, None
        if host is not None:
            host.closed()

    def close(self) -> None:
        """Close the response (what makes Ollama stop generating) and free the host's count; safe to repeat."""
        try:
            self.response.close()
        finally:
            self.release()


class OllamaClient:
    def __init__(self, settings: Settings) -> None:
        self.base_url = settings.ollama_url  # as configured: one URL, or several separated by commas
        self.hosts = [Host(url, index) for index, url in enumerate(split_urls(settings.ollama_url))]
        self._several = len(self.hosts) > 1
        self._timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        self.read_timeout_s = settings.read_timeout_s
        self._tags_ttl = settings.tags_ttl_s
        self.session = requests.Session()
        # No proxy variables, .netrc or CA-bundle lookups from the environment: Ollama is a fixed, local URL, and
        # requests would otherwise re-read all of that on every request (a measurable share of time to first token).
        self.session.trust_env = False
        # One connection pool per host. Each keeps up to max_active + 8 connections (the default is 10): every
        # admitted stream needs its own, plus a few for the short pass-through, readiness and health requests.
        adapter = HTTPAdapter(pool_connections=len(self.hosts), pool_maxsize=settings.max_active + 8, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        self._checked_at = float("-inf")  # when a refresh last heard from at least one host
        self._refresh_lock = threading.Lock()  # a gevent lock once gunicorn's worker has monkey-patched
        self._turn = 0
        # One host needs no health check: there is nowhere else to send a request.
        self.checker = HealthChecker(self.check_round) if self._several else None

    # --- one host ----------------------------------------------------------------------------------------------

    def _send(
        self, host: Host, method: str, path: str, data: bytes | None, stream: bool, timeout: tuple[float, float]
    ) -> requests.Response:
        """One request to one host; failures become ``OllamaUnreachable`` (502) or ``OllamaTimeout`` (504)."""
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            return self.session.request(
                method, host.url + path, data=data, headers=headers, stream=stream, timeout=timeout
            )
        except requests.ConnectionError as exc:  # includes ConnectTimeout
            raise OllamaUnreachable(host.label, _reason(exc)) from None
        except requests.Timeout:
            raise OllamaTimeout(timeout[1]) from None
        except requests.RequestException as exc:  # e.g. a body cut short: as good as unreachable
            raise OllamaUnreachable(host.label, _reason(exc)) from None

    def _fetch_names(self, host: Host, path: str, read_timeout: float) -> frozenset[str]:
        """The models ``host`` lists at ``path`` now; ``ApiError`` (502/504) when it cannot say."""
        response = self._send(host, "GET", path, None, False, (min(self._timeout[0], read_timeout), read_timeout))
        if response.status_code != 200:
            raise ApiError(502, f"Ollama answered {path} with HTTP {response.status_code}")
        try:
            return names_in(response.json())
        except ValueError:
            raise ApiError(502, f"Ollama answered {path} with something else than a model list") from None

    def _check(self, host: Host, read_timeout: float, loaded: bool) -> None:
        """Refresh what is known about ``host``: its ``/api/tags`` and, if asked, ``/api/ps`` (what is loaded);
        failing either takes it out. Never raises: it runs in greenlets of its own."""
        try:
            models = self._fetch_names(host, "/api/tags", read_timeout)
            running = self._fetch_names(host, "/api/ps", read_timeout) if loaded else None
        except ApiError as exc:
            host.failed(_problem(exc), exc)
        except Exception as exc:  # a bug, not the host's fault: say so, but keep the greenlet (and the log) clean
            log.warning("checking Ollama at %s: %r", host.label, exc)
            host.failed(repr(exc), exc)
        else:
            host.answered(models, running)

    # --- every host --------------------------------------------------------------------------------------------

    def check(self, read_timeout: float, loaded: bool = True) -> None:
        """Check every host now, at once (``/readyz``, the health checker)."""
        each(self.hosts, lambda host: self._check(host, read_timeout, loaded))
        if any(host.up for host in self.hosts):
            self._checked_at = time.monotonic()

    def check_round(self) -> None:
        """One round of the background health check."""
        self.check(CHECK_TIMEOUT_S)

    def _start_checker(self) -> None:
        if self.checker is not None:
            self.checker.start()

    def _refresh(self, only_if_stale: bool) -> bool:
        """``/api/tags`` of every host unless a check heard from one within ``CLAWWEB_TAGS_TTL_S``; True if it
        asked. One at a time: concurrent requests wait for the refresh under way instead of repeating it."""
        with self._refresh_lock:
            if only_if_stale and time.monotonic() - self._checked_at < self._tags_ttl:
                return False
            self.check(self._timeout[0], loaded=False)
            return True

    def _down_error(self, hosts: Sequence[Host]) -> ApiError:
        """Why ``hosts`` cannot help: one host's own error as it was, or one 502 naming them all."""
        if len(hosts) == 1:
            return _again(hosts[0].error)
        return HostsUnreachable([(h.label, h.problem or "down") for h in hosts])

    def unreachable_message(self) -> str:
        """Why no host helps, as ``/readyz`` says it (the same words as a refused request)."""
        return self._down_error(self.hosts).message

    def _missing(self, name: str) -> ApiError | None:
        key = model_key(name)
        if any(host.up and host.has(key) for host in self.hosts):
            return None
        holders = [host for host in self.hosts if host.has(key)]
        if holders:  # listed, but only by hosts that are down now: their error says more than a 404
            return self._down_error(holders)
        if not any(host.up for host in self.hosts):
            return self._down_error(self.hosts)
        return ApiError(404, f"model '{name}' not found")

    def models(self) -> frozenset[str]:
        """Every model the hosts that are up list, from a check at most ``CLAWWEB_TAGS_TTL_S`` old."""
        self._start_checker()
        if not self._refresh(only_if_stale=True) and not any(host.up for host in self.hosts):
            self._refresh(only_if_stale=False)
        if not any(host.up for host in self.hosts):
            raise self._down_error(self.hosts)
        return frozenset().union(*(host.models or () for host in self.hosts if host.up))

    def require_model(self, name: str) -> None:
        """404 when no host lists the model; 502 naming the hosts that list it when they are all down.

        A model that an up host listed at the last check passes at once, and a stale list is refreshed in the
        background: the first request after ``CLAWWEB_TAGS_TTL_S`` must not wait for ``/api/tags``.
        """
        self._start_checker()
        if self._missing(name) is None and monkey_patched():
            if time.monotonic() - self._checked_at >= self._tags_ttl and not self._refresh_lock.locked():
                gevent.spawn(self._refresh, True)
            return
        refreshed = self._refresh(only_if_stale=True)
        error = self._missing(name)
        if error is not None and error.status != 404 and not refreshed:
            self._refresh(only_if_stale=False)  # down per a check or a request a moment ago: ask once more
            error = self._missing(name)
        if error is not None:
            raise error

    # --- requests with failover --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        stream: bool = False,
        read_timeout: float | None = None,
    ) -> requests.Response:
        """Send one request as if to one Ollama. Failures become ``OllamaUnreachable`` (502) or ``OllamaTimeout``
        (504); an error status is returned as it is. With several hosts, the model lists are merged, and a
        request naming a ``model`` goes where ``open_chat`` would send it (only ``open_chat`` keeps a stream
        counted against its host until it is closed)."""
        self._start_checker()
        if self._several and method == "GET" and path in MERGED:
            return self._merged(path, read_timeout or self._timeout[1])
        opened = self._failover(method, path, body, stream=stream, read_timeout=read_timeout)
        opened.release()
        return opened.response

    def open_chat(self, body: dict[str, Any]) -> Opened:
        """Start ``POST /api/chat`` streaming; returns once a host sent headers (after its model load), trying the
        next host when one fails before that. ``close()`` the result when done with it."""
        self._start_checker()
        return self._failover("POST", "/api/chat", body, stream=True)

    def _failover(
        self, method: str, path: str, body: dict[str, Any] | None, *, stream: bool, read_timeout: float | None = None
    ) -> Opened:
        data = None if body is None else json.dumps(body).encode()
        model = body.get("model") if body is not None and isinstance(body.get("model"), str) else None
        timeout = (self._timeout[0], read_timeout or self._timeout[1])
        self._turn += 1
        failures: list[tuple[Host, requests.Response | ApiError]] = []
        for host in rank(self.hosts, model, self._turn):
            host.opened()  # from the start: a stream waiting for a model load keeps its host busy too
            try:
                response = self._send(host, method, path, data, stream, timeout)
            except ApiError as exc:
                host.closed()
                self._failed(host, exc, model)
                failures.append((host, exc))
                continue
            except BaseException:  # the reader greenlet killed while it waits: nothing holds the host any more
                host.closed()
                raise
            if not _worth_another_host(response.status_code, model):
                if response.status_code == 200 and model and self._several:
                    host.loaded |= {model_key(model)}  # Ollama answers once the model is loaded
                return Opened(response, host)
            failure: requests.Response | ApiError = response
            try:  # failed before the first token: keep the small error body, free the connection, try the next host
                response.content  # noqa: B018 - read now, kept by the response for whoever reports it
            except requests.RequestException as exc:
                failure = OllamaUnreachable(host.label, _reason(exc))
            finally:
                response.close()
                host.closed()
            self._failed(host, failure, model)
            failures.append((host, failure))
        return _clearest(failures)

    def _failed(self, host: Host, failure: requests.Response | ApiError, model: str | None) -> None:
        """Count a failed attempt and, with several hosts, learn from it until the next check says otherwise."""
        kind = getattr(failure, "kind", "status")
        HOST_FAILURES.labels(host.label, kind).inc()
        if not self._several:
            return
        if isinstance(failure, OllamaUnreachable):
            host.failed(failure.reason, failure)
        elif isinstance(failure, requests.Response) and failure.status_code == 404 and model and host.models:
            host.models = host.models - {model_key(model)}

    def _merged(self, path: str, read_timeout: float) -> requests.Response:
        """``/api/tags`` or ``/api/ps`` of every host that is up (of every host when none is), as one list."""
        targets = [host for host in self.hosts if host.up] or self.hosts
        answers: dict[int, requests.Response | ApiError] = {}

        def fetch(host: Host) -> None:
            try:
                answers[host.index] = self._send(host, "GET", path, None, False, (self._timeout[0], read_timeout))
            except ApiError as exc:
                answers[host.index] = exc

        each(targets, fetch)
        listings = []
        for host in targets:
            answer = answers[host.index]
            if isinstance(answer, requests.Response) and answer.status_code == 200:
                try:
                    listings.append(answer.json())
                except ValueError:
                    pass
        if listings:
            return _json_response(merge_listings(listings))
        return _clearest([(host, answers[host.index]) for host in targets]).response


def _worth_another_host(status: int, model: str | None) -> bool:
    """A server error, or "model not found" on this host: another host may do better. A 4xx about the request
    itself (400, 403) would fail the same way everywhere."""
    return status >= 500 or (status == 404 and model is not None)


def _clearest(failures: Sequence[tuple[Host, requests.Response | ApiError]]) -> Opened:
    """What to report when every host failed: the only failure as it is; else an error status from a host that
    was reached and said why (not a 404: another host may have the model); else one error naming every host;
    else (every host said 404) the first 404."""
    if len(failures) == 1:
        only = failures[0][1]
        if isinstance(only, ApiError):
            raise only
        return Opened(only)
    answers = [f for _, f in failures if isinstance(f, requests.Response)]
    told = [response for response in answers if response.status_code != 404]
    if told:
        return Opened(told[0])
    if len(answers) < len(failures):
        timeouts = [f for _, f in failures if isinstance(f, OllamaTimeout)]
        if len(timeouts) == len(failures):
            raise HostsTimedOut(timeouts[0].seconds, [host.label for host, _ in failures])
        raise HostsUnreachable([(host.label, _failure_text(f)) for host, f in failures])
    return Opened(answers[0])


def _failure_text(failure: requests.Response | ApiError) -> str:
    if isinstance(failure, ApiError):
        return _problem(failure)
    try:
        return str(json.loads(failure.content)["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {failure.status_code}"


def _json_response(value: Any) -> requests.Response:
    """A ``requests.Response`` built here (a merged list), so callers treat it like any upstream answer."""
    response = requests.Response()
    response.status_code = 200
    response._content = json.dumps(value, separators=(",", ":")).encode()
    response._content_consumed = True  # type: ignore[attr-defined]  # nothing to read from a socket
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    response.encoding = "utf-8"
    return response


def _reason(exc: requests.RequestException) -> str:
    """The innermost cause, e.g. "Connection refused" rather than urllib3's nested repr."""
    cause: BaseException = exc
    while cause.__context__ is not None or cause.__cause__ is not None:
        cause = cast(BaseException, cause.__cause__ or cause.__context__)
    if isinstance(exc, requests.Timeout):
        return "connection timed out"
    text = str(getattr(cause, "reason", None) or cause)
    return redact_url(text.rsplit("] ", 1)[-1] if "] " in text else text)  # should a library ever name the URL


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["clawweb.ollama"] = OllamaClient(settings)


def get_client() -> OllamaClient:
    return cast(OllamaClient, current_app.extensions["clawweb.ollama"])
