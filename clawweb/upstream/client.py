"""``OllamaClient``: the one object the gateway talks to Ollama through, over one host or several.

Only the gateway's own headers go upstream. Ollama answers 403 when it sees a browser's ``Host``/``Origin``,
so nothing from the incoming request is ever forwarded except the validated JSON body.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

import gevent
import gevent.event
import requests
from requests.adapters import HTTPAdapter

from ..config import Settings, split_urls
from ..errors import ApiError
from . import gauges
from .affinity import Memory, Result, keys_of
from .checker import CHECK_TIMEOUT_S, HealthChecker, each, monkey_patched
from .errors import OllamaTimeout, OllamaUnreachable, problem, reason
from .failover import Opened, clearest, down_error, missing, open_first
from .hosts import Host, rank
from .wire import json_response, merge_listings, model_key, names_in

log = logging.getLogger(__name__)

USER_AGENT = "clawweb/0.1"
JSON_BODY = {"Content-Type": "application/json"}
MERGED = ("/api/tags", "/api/ps")  # lists of models: with several hosts, the union over those that are up
PASS_THROUGH_TIMEOUT_S = 10.0  # /api/tags, /api/ps, /api/version answer from Ollama's memory: slow means trouble
# A model seen in memory this recently (an answer's line, /api/ps) is taken to be there still: Ollama keeps a model
# loaded for minutes after its last use, and asking /api/ps before every answer would add a round trip to each.
LOADED_FRESH_S = 1.0
PS_REASK_S = 0.25  # and one that was not listed is asked about again after this long (answers waiting for a load)


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
        # Conversation affinity (``affinity``): only where there is a choice to make.
        self.affinity = Memory(settings.affinity_entries if self._several else 0)
        self._affinity_slack = settings.affinity_slack
        self._asking: dict[int, gevent.event.AsyncResult] = {}  # host index -> its /api/ps under way (in_memory)
        # One host needs no health check: there is nowhere else to send a request.
        self.checker = HealthChecker(self.check_round) if self._several else None

    # --- one host ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled connections to every host."""
        self.session.close()

    def _send(
        self, host: Host, method: str, path: str, data: bytes | None, stream: bool, timeout: tuple[float, float]
    ) -> requests.Response:
        """One request to one host; failures become ``OllamaUnreachable`` (502) or ``OllamaTimeout`` (504)."""
        # Prepared here rather than by ``session.request``: its merging of the session's settings into the request's
        # (headers, params, hooks, proxies) checks each against a runtime ``Protocol`` in requests 2.34, which costs
        # more than the rest of preparing (measured: 1.17 against 0.46 ms on the loaded bench machine, on every
        # request of every answer). The session sets only headers and cookies: both go in as they would merged.
        prepared = requests.PreparedRequest()
        headers = self.session.headers if data is None else {**self.session.headers, **JSON_BODY}
        try:
            prepared.prepare(method, host.url + path, headers, data=data, cookies=self.session.cookies)
            return self.session.send(prepared, stream=stream, timeout=timeout)
        except requests.ConnectionError as exc:  # includes ConnectTimeout
            raise OllamaUnreachable(host.label, reason(exc)) from None
        except requests.Timeout:
            raise OllamaTimeout(timeout[1]) from None
        except requests.RequestException as exc:  # e.g. a body cut short: as good as unreachable
            raise OllamaUnreachable(host.label, reason(exc)) from None

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
            gauges.failed(host, problem(exc), exc)
        except Exception as exc:  # a bug, not the host's fault: say so, but keep the greenlet (and the log) clean
            log.warning("checking Ollama at %s: %r", host.label, exc)
            gauges.failed(host, repr(exc), exc)
        else:
            gauges.answered(host, models, running)

    def in_memory(self, host: Host, model: str) -> bool | None:
        """Whether ``host`` has ``model`` loaded now, from a sighting at most ``LOADED_FRESH_S`` old or else its
        ``/api/ps`` (asked at most every ``PS_REASK_S``); None when it does not say (no /api/ps there, an error: the
        answer goes on)."""
        key, now = model_key(model), time.monotonic()
        if now - host.seen_loaded.get(key, float("-inf")) < LOADED_FRESH_S:
            return True
        if now - host.ps_at < PS_REASK_S:
            return False  # not listed a moment ago: every answer waiting for the load shares one question
        asked = self._asking.get(host.index)
        if asked is not None:  # a burst of answers: one question to the host, every one of them waits for it
            running: frozenset[str] | None = asked.get()
        else:
            asked = self._asking[host.index] = gevent.event.AsyncResult()
            running = None  # also for those waiting when this greenlet is killed (its answer ended meanwhile)
            try:
                running = self._fetch_names(host, "/api/ps", CHECK_TIMEOUT_S)
                host.ps_answered(running, now)
            except Exception:  # whatever it is, the chat request itself will say
                pass
            finally:
                del self._asking[host.index]
                asked.set(running)
        return None if running is None else key in running

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

    def unreachable_message(self) -> str:
        """Why no host helps, as ``/readyz`` says it (the same words as a refused request)."""
        return down_error(self.hosts).message

    def models(self) -> frozenset[str]:
        """Every model the hosts that are up list, from a check at most ``CLAWWEB_TAGS_TTL_S`` old."""
        self._start_checker()
        if not self._refresh(only_if_stale=True) and not any(host.up for host in self.hosts):
            self._refresh(only_if_stale=False)
        if not any(host.up for host in self.hosts):
            raise down_error(self.hosts)
        return frozenset().union(*(host.models or () for host in self.hosts if host.up))

    def require_model(self, name: str) -> None:
        """404 when no host lists the model; 502 naming the hosts that list it when they are all down.

        A model that an up host listed at the last check passes at once, and a stale list is refreshed in the
        background: the first request after ``CLAWWEB_TAGS_TTL_S`` must not wait for ``/api/tags``.
        """
        self._start_checker()
        if missing(self.hosts, name) is None and monkey_patched():
            if time.monotonic() - self._checked_at >= self._tags_ttl and not self._refresh_lock.locked():
                gevent.spawn(self._refresh, True)
            return
        refreshed = self._refresh(only_if_stale=True)
        error = missing(self.hosts, name)
        if error is not None and error.status != 404 and not refreshed:
            self._refresh(only_if_stale=False)  # down per a check or a request a moment ago: ask once more
            error = missing(self.hosts, name)
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
        request naming a ``model`` goes where ``open_stream`` would send it (only ``open_stream`` keeps a stream
        counted against its host until it is closed)."""
        self._start_checker()
        if self._several and method == "GET" and path in MERGED:
            return self._merged(path, read_timeout or self._timeout[1])
        opened = self._failover(method, path, body, stream=stream, read_timeout=read_timeout)
        opened.release()
        return opened.response

    def open_stream(
        self,
        path: str,
        body: dict[str, Any],
        sending: Callable[[Host], None] = lambda host: None,
        conversation: str | None = None,
        exclude: Collection[Host] = (),
    ) -> Opened:
        """Start ``POST path`` (``/api/chat``, ``/api/generate``) streaming; returns once a host sent headers (after
        its model load), trying the next host when one fails before that. ``sending(host)`` runs before each
        attempt; ``conversation``: the chat page's conversation id, for affinity; ``exclude``: hosts not to try
        (those that failed this answer midway; at least one must remain). ``close()`` the result when done with it."""
        self._start_checker()
        return self._failover(
            "POST", path, body, stream=True, sending=sending, conversation=conversation, exclude=exclude
        )

    def answer_whole(self, path: str, body: dict[str, Any]) -> Opened:
        """``POST path`` with ``stream: false``: the whole answer (read), from the host ``open_stream`` would pick;
        ``release()`` the result."""
        self._start_checker()
        return self._failover("POST", path, body, stream=False)

    def _failover(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        stream: bool,
        read_timeout: float | None = None,
        sending: Callable[[Host], None] = lambda host: None,
        conversation: str | None = None,
        exclude: Collection[Host] = (),
    ) -> Opened:
        data = None if body is None else json.dumps(body).encode()
        model = body.get("model") if body is not None and isinstance(body.get("model"), str) else None
        timeout = (self._timeout[0], read_timeout or self._timeout[1])
        self._turn += 1

        def send(host: Host) -> requests.Response:
            sending(host)
            return self._send(host, method, path, data, stream, timeout)

        hosts = [host for host in self.hosts if host not in exclude] if exclude else self.hosts
        if not (self.affinity.entries and body is not None and path == "/api/chat"):
            return open_first(rank(hosts, model, self._turn), send, model, self._several)
        lookups, whole = keys_of(body, conversation)
        # A continuation (``exclude``: the answer's host failed midway) goes by load alone, and what the answer is
        # remembered under moves to its new host: the conversation, and the messages the failed host was sent.
        index = None if exclude else self.affinity.lookup(lookups)
        prefer = None if index is None else self.hosts[index]
        opened = open_first(rank(hosts, model, self._turn, prefer, self._affinity_slack), send, model, True)
        if opened.host is not None and opened.response.status_code == 200:
            self.affinity.remember([whole, *lookups[: bool(conversation) + bool(exclude)]], opened.host.index)
            if not exclude:
                result: Result = "none" if prefer is None else "hit" if opened.host is prefer else "miss"
                opened.affinity = result
                gauges.routed(result)
        return opened

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
            return json_response(merge_listings(listings))
        return clearest([(host, answers[host.index]) for host in targets]).response
