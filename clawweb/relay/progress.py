"""What an admitted answer waits for before its first token: the model to load, or its prompt to be read.

Ollama says nothing until the first token (not even headers), so the gateway finds out itself: before the request
goes to a host, is the model in that host's memory (``/api/ps``, or an answer from it a moment ago)? If not, the
answer is ``loading`` (with the last measured load of that model there), and ``/api/ps`` is asked about four times
a second until the model is in; then, or at once, ``prompt`` (the tokens to read, and the time at that host's measured
prompt rate). The first token ends it all: from then on the tokens themselves say thinking or writing (``stages``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent

from ..upstream.client import PS_REASK_S, OllamaClient
from ..upstream.hosts import Host
from ..upstream.wire import model_key
from .estimates import Estimates, prompt_tokens
from .events import Status

Say = Callable[[Status], bool]  # hands a status to the stream; False once tokens flow (nothing more to say)


class Progress:
    def __init__(self, client: OllamaClient, body: dict[str, Any], estimates: Estimates) -> None:
        self._client = client
        self._model = str(body["model"])
        self._key = model_key(self._model)
        # A chat's messages; a generate's system, prompt and suffix read as the messages they become.
        texts = [{"content": body[key]} for key in ("system", "prompt", "suffix") if body.get(key)]
        self._tokens = prompt_tokens(body.get("messages") or texts)
        self._estimates = estimates
        self._poller: gevent.Greenlet | None = None

    def sending(self, host: Host, say: Say) -> None:
        """The request is about to go to ``host`` (again, on failover): say what it will wait for there."""
        self.stop()
        if self._client.in_memory(host, self._model) is False:
            eta_s = self._estimates.load_s(host.label, self._key)
            say(Status("loading", eta_s, (("model", self._model),)))
            self._poller = gevent.spawn(self._until_loaded, host, say)
        else:
            say(self._reading(host))

    def _reading(self, host: Host) -> Status:
        eta_s = self._estimates.prompt_s(host.label, self._key, self._tokens)
        return Status("prompt", eta_s, (("prompt_tokens", self._tokens),))

    def _until_loaded(self, host: Host, say: Say) -> None:
        while True:
            gevent.sleep(PS_REASK_S)
            if self._client.in_memory(host, self._model):
                say(self._reading(host))
                return

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.kill(block=False)
            self._poller = None
