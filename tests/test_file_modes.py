"""Data files are private whatever the umask: the database (password hashes inside), its -wal and -shm, the
migration lock and the session key, made by the CLI, by the gateway under gunicorn, or by the deploy kit's
``clawweb`` command."""

from __future__ import annotations

import os
import pwd
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from .support.factories import StartGateway, StartSimulator
from .support.servers import ROOT, render_deploy, wait_for

pytestmark = pytest.mark.integration  # the CLI, gunicorn and the deploy kit's command, run for real

PASSWORD = "a file modes password"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """Debian's default (022) for what this process starts: files readable by every local user."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def companions(db: Path) -> list[Path]:
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), db.with_name(db.name + ".migrate-lock")]


def test_the_cli_creates_a_private_database_under_umask_022(tmp_path: Path) -> None:
    db = tmp_path / "data" / "clawweb.db"  # the directory does not exist yet either
    env = {**os.environ, "CLAWWEB_DB": str(db)}
    command = [sys.executable, "-m", "clawweb", "users", "add", "ann", "--password-stdin"]
    with subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.PIPE, text=True, umask=0o022) as cli:
        assert cli.stdin is not None
        # The store is open (migrated: -wal and -shm exist) while the command waits for the password.
        assert wait_for(lambda: all(path.exists() for path in companions(db)), timeout=20)
        assert {path.name: mode(path) for path in companions(db)} == {path.name: 0o600 for path in companions(db)}
        cli.stdin.write(PASSWORD + "\n")
        cli.stdin.close()
        assert cli.wait(30) == 0
    assert mode(db) == 0o600 and mode(db.parent) == 0o700


def test_the_gateway_creates_private_files_under_umask_022(
    tmp_path: Path, start_simulator: StartSimulator, start_gateway: StartGateway
) -> None:
    sim = start_simulator()
    data = tmp_path / "data"
    with umask(0o022):
        server = start_gateway(sim.url, auth="required", db=data / "clawweb.db", secret_key_file=data / "secret_key")
    assert requests.get(server.url + "/login", timeout=5).status_code == 200
    files = [*companions(data / "clawweb.db"), data / "secret_key"]
    assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}
    assert mode(data) == 0o700


def test_a_world_readable_database_from_before_is_made_private(tmp_path: Path) -> None:
    db = tmp_path / "clawweb.db"
    with umask(0o022):
        sqlite3.connect(db).close()
        db.touch()
    assert mode(db) == 0o644
    done = subprocess.run(
        [sys.executable, "-m", "clawweb", "users", "list"],
        cwd=ROOT,
        env={**os.environ, "CLAWWEB_DB": str(db)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert mode(db) == 0o640  # others lose their bits; the owner's group keeps what the operator gave it
    assert "readable by every local user" in done.stderr


def test_the_installed_clawweb_command_sets_umask_077(tmp_path: Path) -> None:
    env_file = tmp_path / "clawweb.env"
    db = tmp_path / "state" / "clawweb.db"
    env_file.write_text(f"CLAWWEB_DB={db}\n")
    values = {
        "APP_DIR": str(ROOT),
        "VENV": str(Path(sys.executable).parent.parent),
        "ENV_FILE": str(env_file),
        "CLAWWEB_USER": pwd.getpwuid(os.geteuid()).pw_name,  # as root the command switches to this user
    }
    wrapper = tmp_path / "clawweb"
    wrapper.write_text(render_deploy("bin/clawweb", **values))
    script = wrapper.read_text()
    assert "\numask 077\n" in script and script.index("umask 077") < script.index("python -m clawweb")
    done = subprocess.run(
        ["sh", str(wrapper), "users", "add", "bea", "--password-stdin"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        umask=0o022,
        env={k: v for k, v in os.environ.items() if not k.startswith("CLAWWEB_")},
    )
    assert done.returncode == 0, done.stderr
    assert "added user bea" in done.stdout
    assert mode(db) == 0o600 and mode(db.parent) == 0o700
