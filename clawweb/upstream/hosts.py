"""Several Ollama hosts behind one gateway: what is known about each, and which one a request goes to.

Plain logic over a few facts per host (does it list the model, is the model loaded, how many streams this process
has open to it). Pure: no I/O, no metrics, no module state. The client feeds it what requests and health checks
found out (``answered``, ``failed``, ``opened``, ``closed``) and asks ``rank`` where to go; tested without sockets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import redact_url
from .wire import model_key


@dataclass(eq=False)
class Host:
    """One Ollama server as this process sees it. Plain attributes: greenlets of one thread update them."""

    url: str  # as configured, credentials included: for requests only
    index: int = 0
    up: bool = True  # until a check or a request says otherwise
    models: frozenset[str] | None = None  # /api/tags as model_keys; None until the host first answered
    loaded: frozenset[str] = frozenset()  # /api/ps as model_keys
    seen_loaded: dict[str, float] = field(default_factory=dict)  # model_key -> when last seen in memory (monotonic)
    ps_at: float = float("-inf")  # when /api/ps last answered (monotonic)
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

    def closed(self) -> None:
        self.streams -= 1

    def answered(self, models: frozenset[str], loaded: frozenset[str] | None = None) -> None:
        self.up, self.models, self.problem, self.error = True, models, "", None
        if loaded is not None:
            self.loaded = loaded

    def ps_answered(self, running: frozenset[str], now: float) -> None:
        """``/api/ps`` said at ``now`` which models are in memory. (``loaded``, which ranks the hosts, stays the
        health check's: all hosts are compared as of the same round.)"""
        self.seen_loaded, self.ps_at = dict.fromkeys(running, now), now

    def in_use(self, key: str, now: float) -> None:
        """The model answered on this host at ``now``: it is in memory."""
        self.seen_loaded[key] = now

    def failed(self, problem: str, error: Exception) -> None:
        self.up, self.problem, self.error = False, problem, error

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


def rank(hosts: Sequence[Host], model: str | None, turn: int, prefer: Host | None = None, slack: int = 0) -> list[Host]:
    """The hosts to try for ``model``, best first.

    Eligible: up and listing the model (a host whose list is not known yet counts as listing it). Among those,
    the model already loaded first (a load takes seconds to minutes), then the fewest open streams, then round
    robin from ``turn`` so equal hosts take turns. When no host is eligible, the hosts that list the model although
    they are down (the last check may be behind), then every host: the caller still gets a real answer or error.

    ``prefer`` (the host that served the conversation's previous turn: its prompt cache holds the history) goes
    first while it is eligible, up, holds the model loaded if another eligible host does, and has at most ``slack``
    more streams open than the least busy eligible host.
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
    ranked = sorted(
        usable, key=lambda h: (key is not None and key not in h.loaded, h.streams, (h.index - turn) % count)
    )
    if prefer is not None and ranked and prefer is not ranked[0] and prefer.up and prefer in ranked:
        cold = key is not None and key not in prefer.loaded and key in ranked[0].loaded
        if not cold and prefer.streams <= min(h.streams for h in ranked) + slack:
            ranked.remove(prefer)
            ranked.insert(0, prefer)
    return ranked
