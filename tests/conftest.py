"""Shared fixtures: a Flask app for in-process tests (flaskr style), and factories that start real servers for a
test (``start_simulator``, ``start_gateway``, ``start_redis``) or for a whole module (``start_module_*``, for
modules that share their servers: ``pytest -n 2 --dist loadfile`` keeps a module in one process). The factory
stops what it started and then fails the test if a gateway's log holds a traceback or a Python warning.

Markers follow from the fixtures: a test using a factory is ``integration``, one using ``start_*redis`` is
``redis`` too, one using ``browser`` is ``browser``; ``make unit`` runs the others, and those may start no
process at all (a test that does must say ``integration`` itself).

Both engines: a test taking ``store`` (or ``database``, the location of a fresh empty database) runs once on
SQLite and once on PostgreSQL (marked ``postgres`` and ``integration``: a real server, one per test process,
started when first needed). That is the store's contract suite: the same tests, the same expectations."""

from __future__ import annotations

import gc
import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import Browser, sync_playwright

from clawweb import create_app
from clawweb.services import services
from clawweb.storage import Store

from .support.chromium import CHROMIUM, CHROMIUM_ARGS
from .support.factories import Started, StartGateway, StartRedis, StartSimulator
from .support.postgres import Databases, PostgresServer
from .support.servers import require

OLLAMA = "http://127.0.0.1:11434"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"ollama_url": OLLAMA, "tags_ttl_s": 60, "db": str(tmp_path / "clawweb.db")})
    yield app
    services(app).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, through Playwright (no browser download)."""
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


# --- both engines ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[Databases]:
    """Debian's PostgreSQL, one server for this test process (tests/support/postgres.py)."""
    server = PostgresServer()
    yield Databases(server)
    server.remove()


@pytest.fixture
def database(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Where a fresh, empty database is: a SQLite file, or a new database on the test process's PostgreSQL."""
    if engine == "sqlite":
        return str(tmp_path / "clawweb.db")
    databases: Databases = request.getfixturevalue("postgres_databases")
    return databases.fresh()


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    opened = Store(database)
    yield opened
    opened.close()


@pytest.fixture(scope="module", autouse=True)
def _collect_after_module() -> Iterator[None]:
    """A socket a module left open is reported in that module, as its last test's teardown error.

    An unclosed socket caught in a reference cycle (a response whose connection holds a traceback, say) is only
    freed by the cyclic collector, whenever that next runs: its ResourceWarning (an error under
    ``filterwarnings = ["error"]``) then fails whichever later test of the same worker happens to be running.
    Collecting here makes that deterministic; ``PYTHONTRACEMALLOC=20`` shows where the socket was opened."""
    yield
    gc.collect()


# --- real servers ------------------------------------------------------------------------------------------------

SERVER_FACTORIES = {
    "start_simulator",
    "start_gateway",
    "start_redis",
    "start_module_simulator",
    "start_module_gateway",
    "start_module_redis",
}
REDIS_FACTORIES = {"start_redis", "start_module_redis"}


ENGINES = ["sqlite", "postgresql"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", ENGINES, scope="function")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("engine") == "postgresql"
        if on_postgres or "postgres_databases" in names:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.postgres)
        if names & SERVER_FACTORIES or "browser" in names:
            item.add_marker(pytest.mark.integration)
        if names & REDIS_FACTORIES:
            item.add_marker(pytest.mark.redis)
        if "browser" in names:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(autouse=True)
def _in_process_only(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not marked ``integration`` starts no process: ``make unit`` stays in-process (and fast)."""
    if request.node.get_closest_marker("integration") is not None:
        return

    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it `integration`")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(os, "fork", refuse)  # multiprocessing's fork context, say


def _servers(directory: Callable[[str], Path]) -> Iterator[Started]:
    started = Started(directory)
    yield started
    problems = started.close()
    assert not problems, "\n\n".join(problems)


@pytest.fixture
def _started(tmp_path: Path) -> Iterator[Started]:
    counter = itertools.count(1)

    def directory(name: str) -> Path:
        made = tmp_path / f"{name}{next(counter)}"
        made.mkdir()
        return made

    yield from _servers(directory)


@pytest.fixture(scope="module")
def _module_started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    yield from _servers(tmp_path_factory.mktemp)


@pytest.fixture
def start_simulator(_started: Started) -> StartSimulator:
    return _started.simulator


@pytest.fixture
def start_gateway(_started: Started) -> StartGateway:
    return _started.gateway


@pytest.fixture
def start_redis(_started: Started) -> StartRedis:
    require("redis-server")
    return _started.redis


@pytest.fixture(scope="module")
def start_module_simulator(_module_started: Started) -> StartSimulator:
    return _module_started.simulator


@pytest.fixture(scope="module")
def start_module_gateway(_module_started: Started) -> StartGateway:
    return _module_started.gateway


@pytest.fixture(scope="module")
def start_module_redis(_module_started: Started) -> StartRedis:
    require("redis-server")
    return _module_started.redis
