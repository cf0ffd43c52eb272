"""Failover over several Ollama hosts: try the ranked hosts in turn until one answers, learn from each failure,
and say clearly what went wrong when every host failed.

Here a host is left for the next one before the first token; from then on the relay continues the answer on another
host itself (relay/continuation.py: the client has text already, which the next host must be sent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import requests

from ..errors import ApiError
from . import gauges
from .errors import HostsTimedOut, HostsUnreachable, OllamaTimeout, OllamaUnreachable, again, problem, reason
from .hosts import Host
from .wire import model_key, ollama_error_text

# What one attempt on one host came to: an answer (an error status included), or no answer at all.
Attempt = requests.Response | OllamaUnreachable | OllamaTimeout


@dataclass
class Opened:
    """An upstream response and the host whose stream count it holds until ``close`` (None: it holds none)."""

    response: requests.Response
    host: Host | None = None

    def release(self) -> None:
        host, self.host = self.host, None
        if host is not None:
            gauges.closed(host)

    def close(self) -> None:
        """Close the response (what makes Ollama stop generating) and free the host's count; safe to repeat."""
        try:
            self.response.close()
        finally:
            self.release()


def open_first(
    ranked: Sequence[Host], send: Callable[[Host], requests.Response], model: str | None, several: bool
) -> Opened:
    """The first answer worth keeping from ``ranked`` (best first), counted against its host until closed.

    ``send`` makes one request to one host and raises ``OllamaUnreachable`` or ``OllamaTimeout`` when it gets no
    answer. An error status that another host may not give (``worth_another_host``) moves on to the next host."""
    failures: list[tuple[Host, Attempt]] = []
    for host in ranked:
        gauges.opened(host)  # from the start: a stream waiting for a model load keeps its host busy too
        try:
            response = send(host)
        except (OllamaUnreachable, OllamaTimeout) as exc:
            gauges.closed(host)
            learn(host, exc, model, several)
            failures.append((host, exc))
            continue
        except BaseException:  # the reader greenlet killed while it waits: nothing holds the host any more
            gauges.closed(host)
            raise
        if not worth_another_host(response.status_code, model):
            if response.status_code == 200 and model and several:
                host.loaded |= {model_key(model)}  # Ollama answers once the model is loaded
            return Opened(response, host)
        failure: Attempt = response
        try:  # failed before the first token: keep the small error body, free the connection, try the next host
            response.content  # noqa: B018 - read now, kept by the response for whoever reports it
        except requests.RequestException as exc:
            failure = OllamaUnreachable(host.label, reason(exc))
        finally:
            response.close()
            gauges.closed(host)
        learn(host, failure, model, several)
        failures.append((host, failure))
    return clearest(failures)


def learn(host: Host, failure: Attempt, model: str | None, several: bool) -> None:
    """Count a failed attempt and, with several hosts, learn from it until the next check says otherwise."""
    gauges.attempt_failed(host, "status" if isinstance(failure, requests.Response) else failure.kind)
    if not several:
        return
    if isinstance(failure, OllamaUnreachable):
        gauges.failed(host, failure.reason, failure)
    elif isinstance(failure, requests.Response) and failure.status_code == 404 and model and host.models:
        host.models = host.models - {model_key(model)}


def worth_another_host(status: int, model: str | None) -> bool:
    """A server error, or "model not found" on this host: another host may do better. A 4xx about the request
    itself (400, 403) would fail the same way everywhere."""
    return status >= 500 or (status == 404 and model is not None)


def clearest(failures: Sequence[tuple[Host, requests.Response | ApiError]]) -> Opened:
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
        return problem(failure)
    text = ollama_error_text(failure.content)
    return f"HTTP {failure.status_code}" if text is None else text


def down_error(hosts: Sequence[Host]) -> ApiError:
    """Why ``hosts`` cannot help: one host's own error as it was, or one 502 naming them all."""
    if len(hosts) == 1:
        return again(hosts[0].error)
    return HostsUnreachable([(h.label, h.problem or "down") for h in hosts])


def missing(hosts: Sequence[Host], name: str) -> ApiError | None:
    """Why no host can serve model ``name`` now (None: one that is up lists it)."""
    key = model_key(name)
    if any(host.up and host.has(key) for host in hosts):
        return None
    holders = [host for host in hosts if host.has(key)]
    if holders:  # listed, but only by hosts that are down now: their error says more than a 404
        return down_error(holders)
    if not any(host.up for host in hosts):
        return down_error(hosts)
    return ApiError(404, f"model '{name}' not found")
