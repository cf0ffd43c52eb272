"""The per-host metrics, updated beside the pure state changes of ``hosts.Host`` (which keeps no metrics itself)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from .hosts import Host

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
AFFINITY = Counter(
    "clawweb_affinity",
    "Answers by conversation affinity: hit (the previous turn's host), miss (another host), none (nothing known)",
    ["result"],
)


def opened(host: Host) -> None:
    """A request to ``host`` starts; it counts against the host until ``closed``."""
    host.opened()
    HOST_STREAMS.labels(host.label).inc()


def closed(host: Host) -> None:
    host.closed()
    HOST_STREAMS.labels(host.label).dec()


def answered(host: Host, models: frozenset[str], loaded: frozenset[str] | None = None) -> None:
    host.answered(models, loaded)
    HOST_UP.labels(host.label).set(1)


def failed(host: Host, problem: str, error: Exception) -> None:
    host.failed(problem, error)
    HOST_UP.labels(host.label).set(0)


def routed(result: str) -> None:
    """An answer opened on a host; ``result``: what conversation affinity made of it (``affinity.Result``)."""
    AFFINITY.labels(result).inc()


def attempt_failed(host: Host, kind: str) -> None:
    """An attempt on ``host`` failed before the first token (``kind``: unreachable, timeout, status)."""
    HOST_FAILURES.labels(host.label, kind).inc()
