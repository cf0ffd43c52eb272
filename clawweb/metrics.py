"""Prometheus metrics, and the one log line per finished stream.

With several gunicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` (set by ``gunicorn.conf.py``) makes
``prometheus_client`` keep per-process files that ``/metrics`` aggregates; gauges then sum over live processes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger(__name__)

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_GAP = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
_DURATION = (1, 5, 10, 30, 60, 120, 300, 600)

OPEN_STREAMS = Gauge("clawweb_open_streams", "Streams open to clients", multiprocess_mode="livesum")
ACTIVE = Gauge("clawweb_generations_active", "Generations holding an upstream slot", multiprocess_mode="livesum")
QUEUED = Gauge("clawweb_generations_queued", "Generations waiting for a slot", multiprocess_mode="livesum")
EMBED_ACTIVE = Gauge("clawweb_embeddings_active", "Embedding requests at Ollama", multiprocess_mode="livesum")
EMBED_QUEUED = Gauge("clawweb_embeddings_queued", "Embedding requests waiting for a slot", multiprocess_mode="livesum")
# Admission's pools of slots, each with its gauges (active, queued): answers, and embeddings beside them.
POOL_GAUGES = {"answers": (ACTIVE, QUEUED), "embeddings": (EMBED_ACTIVE, EMBED_QUEUED)}
LANE_ACTIVE = Gauge("clawweb_lane_active", "Generations holding a slot", ["lane"], multiprocess_mode="livesum")
LANE_QUEUED = Gauge("clawweb_lane_queued", "Generations waiting for a slot", ["lane"], multiprocess_mode="livesum")
LANE_QUEUE_WAIT = Histogram(
    "clawweb_lane_queue_wait_seconds", "Time spent waiting for an upstream slot, by lane", ["lane"], buckets=_LATENCY
)
TTFT = Histogram("clawweb_time_to_first_token_seconds", "Request accepted to first token relayed", buckets=_LATENCY)
MAX_GAP = Histogram(
    "clawweb_stream_max_token_gap_seconds", "Longest pause between two tokens of a stream", buckets=_GAP
)
QUEUE_WAIT = Histogram("clawweb_queue_wait_seconds", "Time spent waiting for an upstream slot", buckets=_LATENCY)
DURATION = Histogram("clawweb_generation_duration_seconds", "Whole stream duration", buckets=_DURATION)
STAGE_SECONDS = Histogram(
    "clawweb_stage_seconds",
    "Time answers spent in each stage (queued, loading, prompt, thinking, writing)",
    ["stage"],
    buckets=_LATENCY + (300,),
)
ESTIMATE_ERROR = Histogram(
    "clawweb_estimate_error_seconds",
    "Measured minus estimated time of a stage (eta_s), once known: positive when it took longer",
    ["stage"],
    buckets=(-60, -30, -10, -5, -2, -1, -0.5, -0.1, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
)
TOKENS = Counter("clawweb_tokens_relayed", "Upstream lines relayed to clients")
UPSTREAM_ERRORS = Counter("clawweb_upstream_errors", "Upstream failures by kind", ["kind"])
DISCONNECTS = Counter("clawweb_client_disconnects", "Clients that left before the end of their stream")
REFUSALS = Counter("clawweb_refusals", "Requests refused by admission control", ["reason"])
STREAMS = Counter("clawweb_streams", "Finished streams by outcome", ["outcome"])
ROUTE_REQUESTS = Counter(
    "clawweb_route_requests", "Finished generation and embedding requests by route and outcome", ["route", "outcome"]
)
EMBED_INPUTS = Counter("clawweb_embed_inputs", "Texts embedded (one /api/embed request may hold many)")
EMBED_SECONDS = Histogram("clawweb_embed_seconds", "Embedding request accepted to answered", buckets=_LATENCY)
FAILOVERS = Counter(
    "clawweb_failovers",
    "Answers whose host failed midway: continued on another host, or no_host left could continue them",
    ["when", "result"],
)
SLOW_CLIENTS = Counter("clawweb_slow_clients_cut", "Streams cut because the client accepted nothing for too long")


LANES = ("interactive", "api", "batch")  # as state/lanes.py names them
_LANE_GAUGES = {lane: (LANE_ACTIVE.labels(lane), LANE_QUEUED.labels(lane)) for lane in LANES}


def publish_lanes(held: Mapping[str, int], waiting: Mapping[str, int]) -> None:
    """The answers' pool's gauges by lane, from its counts per lane (this process's share, as for the pool's own
    gauges). Called on every admission and release: the labelled gauges are looked up once, not per call."""
    for lane, (active, queued) in _LANE_GAUGES.items():
        active.set(held.get(lane, 0))
        queued.set(waiting.get(lane, 0))


UPSTREAM_FAILURES = frozenset({"unreachable", "status", "error_line", "timeout", "closed"})
PUBLISH_TOKENS_EVERY_S = 1.0  # the token counter lags by at most this much; per-token updates cost ~10% CPU


@dataclass
class StreamStats:
    """What one stream did; ``finish`` records it in the metrics and writes its log line."""

    model: str
    client: str  # the admission key: the user, or the address in open mode
    address: str
    route: str = "/api/chat"
    started: float = field(default_factory=time.monotonic)
    queue_wait_s: float = 0.0
    first_token_at: float | None = None
    last_token_at: float = 0.0
    max_gap_s: float = 0.0
    tokens: int = 0
    host: str = "-"  # the Ollama host that answered
    affinity: str = "none"  # hit, miss or none: see upstream.affinity
    failovers: int = 0  # hosts that failed midway, the answer continued on another
    _published_tokens: int = 0
    _published_at: float = 0.0

    def __post_init__(self) -> None:
        OPEN_STREAMS.inc()

    def admitted(self, queue_wait_s: float, lane: str) -> None:
        self.queue_wait_s = queue_wait_s
        QUEUE_WAIT.observe(queue_wait_s)
        LANE_QUEUE_WAIT.labels(lane).observe(queue_wait_s)

    def routed(self, host: str, affinity: str) -> None:
        self.host, self.affinity = host, affinity

    def token(self) -> None:
        """Called once per relayed token: plain arithmetic only, Prometheus is updated about once a second."""
        now = time.monotonic()
        if self.first_token_at is None:
            self.first_token_at = self._published_at = now
            TTFT.observe(now - self.started)
        elif now - self.last_token_at > self.max_gap_s:
            self.max_gap_s = now - self.last_token_at
        self.last_token_at = now
        self.tokens += 1
        if now - self._published_at >= PUBLISH_TOKENS_EVERY_S:
            self._publish_tokens(now)

    def _publish_tokens(self, now: float) -> None:
        TOKENS.inc(self.tokens - self._published_tokens)
        self._published_tokens, self._published_at = self.tokens, now

    def tokens_per_s(self) -> float | None:
        """Generation speed from first to last token (the first one's wait is time to first token)."""
        generating = self.last_token_at - (self.first_token_at or self.last_token_at)
        return (self.tokens - 1) / generating if self.tokens > 1 and generating > 0 else None

    def finish(self, outcome: str) -> None:
        """``outcome``: done, client_left, shutdown, queue_timeout, or an upstream failure kind."""
        OPEN_STREAMS.dec()
        now = time.monotonic()
        duration = now - self.started
        DURATION.observe(duration)
        self._publish_tokens(now)
        if self.tokens > 1:
            MAX_GAP.observe(self.max_gap_s)
        STREAMS.labels(outcome).inc()
        ROUTE_REQUESTS.labels(self.route, outcome).inc()
        if outcome == "client_left":
            DISCONNECTS.inc()
        elif outcome in UPSTREAM_FAILURES:
            UPSTREAM_ERRORS.labels(outcome).inc()
        ttft = "-" if self.first_token_at is None else f"{self.first_token_at - self.started:.3f}"
        tokens_per_s = self.tokens_per_s()
        rate = "-" if tokens_per_s is None else f"{tokens_per_s:.1f}"
        log.info(
            "stream end=%s route=%s model=%s client=%s addr=%s queue_wait=%.3fs ttft=%ss tokens=%d tokens_per_s=%s "
            "max_gap=%.3fs duration=%.3fs failovers=%d host=%s affinity=%s",
            outcome,
            self.route,
            self.model,
            self.client,
            self.address,
            self.queue_wait_s,
            ttft,
            self.tokens,
            rate,
            self.max_gap_s,
            duration,
            self.failovers,
            self.host,
            self.affinity,
        )


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def exposition() -> Response:
    registry: CollectorRegistry = DEFAULT_REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
