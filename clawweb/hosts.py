"""Several Ollama hosts behind one gateway: what is known about each, which one a request goes to, and the
background health check that keeps that knowledge fresh.

The choice is plain logic over a few facts per host (does it list the model, is the model loaded, how many
streams this process has open to it), so it lives here, apart from the HTTP in ``upstream``, and is tested
without sockets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent
from prometheus_client import Counter, Gauge

from . import lifecycle
from .config import redact_url

log = logging.getLogger("gunicorn.error")

HEALTH_INTERVAL_S = 2.0  # a host that went down or came back is noticed within this (plus one check)
CHECK_TIMEOUT_S = 2.0  # /api/tags and /api/ps answer from memory: slower than this is as good as down

HOST_STREAMS = Gauge(
    "clawweb_upstream_host_streams", "Requests open to each Ollama host", ["host"], multiprocess_mode="livesum"
)
HOST_UP = Gauge(
    "clawweb_upstream_host_up",
    "1 while the health check reaches the Ollama host",
    ["host"],
    multiprocess_mode="livemax",
)
HOST_FAILURES = Counter(
    "clawweb_upstream_host_failures", "Attempts that failed before the first token, by host", ["host", "kind"]
)


def model_key(name: str) -> str:
    """Ollama's name for a model: ``qwen3`` means ``qwen3:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def names_in(listing: Any) -> frozenset[str]:
    """The model names of an ``/api/tags`` or ``/api/ps`` answer, as ``model_key``s."""
    if not isinstance(listing, dict) or not isinstance(models := listing.get("models") or [], list):
        raise ValueError("not a model list")
    return frozenset(
        model_key(m[k]) for m in models if isinstance(m, dict) for k in ("name", "model") if isinstance(m.get(k), str)
    )


@dataclass(eq=False)
class Host:
    """One Ollama server as this process sees it. Plain attributes: greenlets of one thread update them."""

    url: str  # as configured, credentials included: for requests only
    index: int = 0
    up: bool = True  # until a check or a request says otherwise
    models: frozenset[str] | None = None  # /api/tags as model_keys; None until the host first answered
    loaded: frozenset[str] = frozenset()  # /api/ps as model_keys
    streams: int = 0  # requests this process has open to it; a stream counts from its start until it is closed
    problem: str = ""  # why it is down, short ("Connection refused"), for messages and /readyz
    error: Exception | None = field(default=None, repr=False)  # the full error of the last failure
    label: str = field(init=False)  # the URL as it may be shown: in messages, /readyz, metrics, logs

    def __post_init__(self) -> None:
        self.label = redact_url(self.url)

    def has(self, key: str) -> bool:
        """Listed for sure (a host that never answered lists nothing yet)."""
        return self.models is not None and key in self.models

    def opened(self) -> None:
        self.streams += 1
        HOST_STREAMS.labels(self.label).inc()

    def closed(self) -> None:
        self.streams -= 1
        HOST_STREAMS.labels(self.label).dec()

    def answered(self, models: frozenset[str], loaded: frozenset[str] | None = None) -> None:
        self.up, self.models, self.problem, self.error = True, models, "", None
        if loaded is not None:
            self.loaded = loaded
        HOST_UP.labels(self.label).set(1)

    def failed(self, problem: str, error: Exception) -> None:
        self.up, self.problem, self.error = False, problem, error
        HOST_UP.labels(self.label).set(0)

    def state(self, model: str) -> dict[str, Any]:
        """What ``/readyz`` shows: health, load, and the default model only (never the whole model list)."""
        key = model_key(model)
        return {
            "url": self.label,
            "up": self.up,
            "error": self.problem or None,
            "streams": self.streams,
            "has_model": self.has(key),
            "model_loaded": key in self.loaded,
        }


def rank(hosts: Sequence[Host], model: str | None, turn: int) -> list[Host]:
    """The hosts to try for ``model``, best first.

    Eligible: up and listing the model (a host whose list is not known yet counts as listing it). Among those,
    the model already loaded first (a load takes seconds to minutes), then the fewest open streams, then round
    robin from ``turn`` so equal hosts take turns. When no host is eligible, the hosts that list the model although
    they are down (the last check may be behind), then every host: the caller still gets a real answer or error.
    """
    key = model_key(model) if model else None

    def listed(host: Host) -> bool:
        return key is None or host.models is None or key in host.models

    usable = (
        [h for h in hosts if h.up and listed(h)]
        or [h for h in hosts if listed(h)]
        or [h for h in hosts if h.up]
        or list(hosts)
    )
    count = len(hosts)
    return sorted(usable, key=lambda h: (key is not None and key not in h.loaded, h.streams, (h.index - turn) % count))


def merge_listings(listings: Iterable[Any]) -> dict[str, Any]:
    """``/api/tags`` or ``/api/ps`` answers of several hosts as one: every model once, by name, first host wins."""
    seen: set[str] = set()
    merged: list[Any] = []
    for listing in listings:
        for entry in listing.get("models") or []:
            name = entry.get("name") or entry.get("model")
            if name not in seen:
                seen.add(name)
                merged.append(entry)
    return {"models": merged}


def each(hosts: Sequence[Host], work: Callable[[Host], None]) -> None:
    """``work`` on every host at once (one greenlet each), so one slow host costs no more than its own timeout.

    ``work`` must not raise: a greenlet that dies prints a traceback into gunicorn's log.
    """
    if len(hosts) == 1:
        work(hosts[0])
        return
    gevent.joinall([gevent.spawn(work, host) for host in hosts])


def monkey_patched() -> bool:
    """True in a gunicorn gevent worker. Elsewhere (the master, in-process test apps) a greenlet doing blocking
    requests would run inside whatever the main thread happens to be doing, so no checker is started there."""
    from gevent import monkey

    return bool(monkey.is_module_patched("socket"))


class HealthChecker:
    """One greenlet per process re-checking every host every ``interval`` seconds, started on first use.

    Started lazily (by the client, on its first request) rather than in ``create_app``: gunicorn's master never
    serves, and a greenlet started at import would outlive in-process test apps. It only waits on sockets with
    short timeouts (``CHECK_TIMEOUT_S``), so it never holds up the event loop; it ends when the worker stops.
    """

    def __init__(self, check_round: Callable[[], None], interval: float = HEALTH_INTERVAL_S) -> None:
        self._check_round = check_round
        self._interval = interval
        self._greenlet: gevent.Greenlet | None = None

    @property
    def running(self) -> bool:
        return self._greenlet is not None and not self._greenlet.dead

    def start(self) -> None:
        if self._greenlet is None and monkey_patched():
            self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while not lifecycle.stopping():
            try:
                self._check_round()
            except Exception as exc:  # never let the checker die: it is the only way back for a failed host
                log.warning("Ollama health check failed: %r", exc)
            gevent.sleep(self._interval)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
