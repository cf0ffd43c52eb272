"""What the conftest factories start for one test or one module: stopped at its end, newest first, and then every
gateway's log held to one rule (no traceback, no Python warning)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from .servers import Gateway, RedisServer, ServerProcess
from .simproc import SimProcess

# A traceback (wherever a log line puts it), or a line as ``warnings`` prints one (``file.py:12: DeprecationWarning:
# ...``): gevent's MonkeyPatchWarning is one, and a warning on a worker's stderr fails no test unless someone looks.
LOG_PROBLEM = re.compile(r"Traceback|^\S.*:\d+: \w*Warning: ", re.MULTILINE)
EXCERPT = 6_000  # characters of the log from the first problem on: the traceback, not the whole day
S = TypeVar("S", bound=ServerProcess)


class StartSimulator(Protocol):
    def __call__(self, *args: str) -> SimProcess:
        """The simulator with these command-line arguments (``--port 0`` unless given)."""
        ...


class StartGateway(Protocol):
    def __call__(self, ollama_url: str, **settings: object) -> Gateway:
        """clawweb under gunicorn, logging into ``gunicorn.log`` in a fresh directory (which holds its database
        too, unless ``db`` is among ``settings``)."""
        ...


class StartRedis(Protocol):
    def __call__(self, directory: Path | None = None, port: int | None = None) -> RedisServer:
        """redis-server; ``port``: a restarted server takes its predecessor's (clients reconnect to the URL)."""
        ...


def log_problem(log: str) -> str | None:
    """The log from its first traceback or warning on (cut short), or None when it holds neither."""
    found = LOG_PROBLEM.search(log)
    return None if found is None else log[found.start() : found.start() + EXCERPT]


class Started:
    """The servers of one scope. ``directory(name)`` gives a new empty directory for each server's files."""

    def __init__(self, directory: Callable[[str], Path]) -> None:
        self._directory = directory
        self._servers: list[ServerProcess] = []

    def simulator(self, *args: str) -> SimProcess:
        return self._keep(SimProcess(*args))

    def gateway(self, ollama_url: str, **settings: object) -> Gateway:
        return self._keep(Gateway(self._directory("gw") / "gunicorn.log", ollama_url, **settings))

    def redis(self, directory: Path | None = None, port: int | None = None) -> RedisServer:
        return self._keep(RedisServer(directory or self._directory("redis"), port))

    def _keep(self, server: S) -> S:
        self._servers.append(server)
        return server

    def close(self) -> list[str]:
        """Stop everything (a server a test stopped already stays stopped); the gateways' log problems."""
        for server in reversed(self._servers):
            server.stop()
        return [
            f"{server.log_path}:\n{problem}"
            for server in self._servers
            if isinstance(server, Gateway) and (problem := log_problem(server.log)) is not None
        ]
