"""The events the relay hands its consumers, typed so that every consumer handles every kind.

A token is the upstream line itself, plain ``bytes``: no wrapper object per token on the hot path. Everything
else is rare (a queue move, a heartbeat, one final failure) and carries its own type. Consumers test
``isinstance(event, bytes)`` first and ``match`` the rest, ending with ``case _: assert_never(event)``, so mypy
says where a new kind of event is not handled. (Why not ``case bytes():`` too: a class pattern costs twice an
``isinstance`` in CPython 3.11, measured, and it would run once per token in every loop a token passes.)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

# Why Ollama did not deliver, or why the wait for it ended.
FailureKind = Literal[
    "unreachable",  # no connection, or it broke before the headers
    "status",  # an HTTP error status
    "error_line",  # an ``{"error": ...}`` line in the stream
    "timeout",  # nothing for CLAWWEB_READ_TIMEOUT_S
    "closed",  # the stream ended before the done line
    "shutdown",  # the worker is stopping
    "queue_timeout",  # no slot within CLAWWEB_QUEUE_TIMEOUT_S
    "shared_state",  # Redis, holding the queue, went away
]
# How a relayed request ended, as the metrics and the log line record it.
Outcome = Literal["done", "client_left", "slow_client"] | FailureKind


@dataclass(frozen=True)
class Queued:
    """The request's place in the admission queue changed (1 = next)."""

    position: int
    active: int


# ``continuing``: the answer's host failed midway and another is about to continue it (``continuing_on``: its URL).
Stage = Literal["queued", "loading", "prompt", "thinking", "writing", "continuing"]


@dataclass(frozen=True)
class Status:
    """What the answer waits for or does now, as the client is told it: ``info`` holds the stage's own fields
    (``position``, ``ahead``, ``model``, ``prompt_tokens``...) and ``eta_s`` only when it is measured
    (``estimates``)."""

    stage: Stage
    eta_s: float | None = None
    info: tuple[tuple[str, object], ...] = ()

    def payload(self) -> dict[str, object]:
        fields: dict[str, object] = {"stage": self.stage, **dict(self.info)}
        if self.eta_s is not None:
            fields["eta_s"] = round(self.eta_s, 1)
        return fields


@dataclass(frozen=True)
class Failure:
    """Ollama did not deliver, or the wait for it ended: ``status``/``body`` are set when it answered with an HTTP
    error. Always the last event."""

    message: str
    kind: FailureKind
    status: int | None = None
    body: bytes = b""


class Heartbeat(Enum):
    """The relay waited one heartbeat interval without a line: consumers write a keep-alive, or nothing."""

    BEAT = "heartbeat"


UpstreamEvent = bytes | Status | Heartbeat | Failure  # what one upstream stream yields
RelayEvent = bytes | Queued | Status | Heartbeat | Failure  # what a relay yields: the queue, then the stream
