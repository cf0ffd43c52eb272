"""Debian's PostgreSQL for the tests: a cluster of its own (``initdb`` in a temporary directory), on a free
loopback port, fsync off (a test's data need not survive a power cut). One server per test process, started
when a test first needs it; every test gets a database of its own (``fresh_database``).

PostgreSQL refuses to run as root: as root (CI, this machine) the server runs as the ``postgres`` user that
Debian's package creates, through ``setpriv`` (which execs: signals reach the server itself)."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from .servers import ServerProcess, free_port

USER = "clawweb"  # the cluster's superuser; trust authentication on loopback only


def postgres_bin() -> Path:
    """Where Debian keeps the server programs (not on PATH): the newest version installed. Missing, the test
    fails under CI=true and is skipped elsewhere."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not found:
        message = "PostgreSQL is missing: `make test` installs Debian's postgresql"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return Path(found[-1]).parent


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--", *argv]


class PostgresServer(ServerProcess):
    """``postgres`` on 127.0.0.1:``port`` over a data directory made by ``initdb`` (kept if it exists: a
    restarted server finds its databases)."""

    stop_signal = signal.SIGINT  # fast shutdown: open sessions end (SIGTERM would wait for every client to leave)

    def __init__(self, directory: Path | None = None, port: int | None = None, durable: bool = False) -> None:
        """``durable``: PostgreSQL's own defaults (fsync, synchronous commits), for the benchmark's comparison with
        SQLite; the tests' server skips them (its data need not survive a power cut)."""
        bin_dir = postgres_bin()
        # Not under pytest's tmp_path: as root that is private to root, and the server runs as postgres.
        self.directory = directory or Path(tempfile.mkdtemp(prefix="clawweb-pg-"))
        self.data = self.directory / "data"
        self.port = port or free_port()
        self.url = f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            server_user = pwd.getpwnam("postgres")
            os.chown(self.directory, server_user.pw_uid, server_user.pw_gid)
        if not self.data.exists():
            subprocess.run(
                _as_server_user(
                    [str(bin_dir / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8"]
                    + ["--locale=C.UTF-8", "--no-sync"]
                ),
                check=True,
                capture_output=True,
            )
        argv = [str(bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.data)]
        settings = {"listen_addresses": "127.0.0.1", "max_connections": "300"}
        if not durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        log = self.directory / "postgres.log"
        log.touch()
        super().__init__(_as_server_user(argv), log)
        self.wait_until(self._answers)

    def _answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=1) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:  # not listening yet, or still starting up
            return False
        return True

    def url_of(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class Databases:
    """Fresh databases on one server, named in order (``test1``, ``test2``, ...)."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self._numbers = itertools.count(1)

    def fresh(self) -> str:
        return self.server.create_database(f"test{next(self._numbers)}")
