"""``clawweb backup`` and ``clawweb restore`` on both engines: a backup taken mid-answer through a real gateway
restores every conversation finished before it, whole, and the answer in flight as it was checkpointed; ``--keep``
prunes only clawweb's own backups; a restore over a database that holds anything is refused unless ``--force``;
a backup from an older schema is migrated on the first open; a missing or failing pg_dump is a clear error."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clawweb import backups, cli
from clawweb.simulator import answer_tokens
from clawweb.storage import INTERRUPTED, Store, pg_tools
from clawweb.storage.migrations import SQLITE
from clawweb.storage.short_terms import spaced
from clawweb.storage.sqlite import SqliteDatabase

from .support.factories import StartGateway, StartSimulator
from .support.postgres import Databases
from .support.servers import ROOT
from .support.simproc import SimProcess, sim_line
from .test_tree import Chat, wait_idle

SLOW = {"tokens": 400, "tps": 20}  # twenty seconds: the backup is taken well inside it, then the answer stopped


def clawweb(location: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m clawweb ...`` on the database at ``location`` (a SQLite file or a PostgreSQL URL)."""
    setting = "CLAWWEB_DATABASE_URL" if location.startswith("postgresql://") else "CLAWWEB_DB"
    env = {k: v for k, v in os.environ.items() if k not in ("CLAWWEB_DB", "CLAWWEB_DATABASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "clawweb", *args],
        cwd=ROOT,
        env={**env, setting: location},
        capture_output=True,
        text=True,
        timeout=60,
    )


def another(engine: str, tmp_path: Path, request: pytest.FixtureRequest, name: str) -> str:
    """A second fresh database on the same engine: what a backup is restored into."""
    if engine == "sqlite":
        return str(tmp_path / f"{name}.db")
    databases: Databases = request.getfixturevalue("postgres_databases")
    return databases.fresh()


def users(location: str) -> list[str]:
    store = Store(location, mark_interrupted=False)
    try:
        return [user["name"] for user in store.users()]
    finally:
        store.close()


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "200")


def test_a_backup_taken_mid_answer_restores_every_finished_conversation(
    engine: str,
    database: str,
    sim: SimProcess,
    start_gateway: StartGateway,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    where = {"db": database} if engine == "sqlite" else {"database_url": database}
    gateway = start_gateway(sim.url, checkpoint_s=0.1, **where)
    finished = []
    for number in range(3):
        chat = Chat(gateway)
        chat.ask(f"question {number}", {"tokens": 4 + number})
        chat.ask(f"and then {number}", {"tokens": 3})
        finished.append(chat)
    shown = {chat.id: chat.messages() for chat in finished}
    flying = Chat(gateway)
    started = flying.start("messages", {"content": "a long one" + sim_line(**SLOW), "think": False})
    answer_id = started["generation"]["message_id"]
    live = Store(database, mark_interrupted=False)
    try:
        deadline = time.monotonic() + 10
        while not live.execute("SELECT content FROM messages WHERE id = ?", (answer_id,))[0]["content"]:
            assert time.monotonic() < deadline, "no checkpoint of the answer"
            time.sleep(0.05)
    finally:
        live.close()

    made = clawweb(database, "backup", str(tmp_path / "backups"))
    assert made.returncode == 0, made.stderr
    path = re.fullmatch(r"backed up .* to (\S+)\n", made.stdout)
    assert path is not None, made.stdout
    assert flying.shown()["generation"] is not None, "the answer ended before the backup: not mid-answer"
    assert flying.call("DELETE", started["generation"]["events_url"].removesuffix("/events")).ok  # no need to wait
    wait_idle(flying)
    whole = "".join(answer_tokens(SLOW["tokens"]))
    shown_last = flying.messages()[-1]
    assert shown_last["status"] == "stopped" and whole.startswith(shown_last["content"])

    target = another(engine, tmp_path, request, "restored")
    restored = clawweb(target, "restore", path[1])
    assert restored.returncode == 0, restored.stderr
    assert "4 conversation(s)" in restored.stdout
    store = Store(target, mark_interrupted=False)
    try:
        for chat in finished:
            rows = store.execute(
                "SELECT id, role, content, status, parent_id FROM messages WHERE conversation_id = ? ORDER BY id",
                (chat.id,),
            )
            expected = [{k: m[k] for k in ("id", "role", "content", "status", "parent_id")} for m in shown[chat.id]]
            assert rows == sorted(expected, key=lambda m: m["id"])
            conversation = store.execute("SELECT current_id FROM conversations WHERE id = ?", (chat.id,))
            assert conversation == [{"current_id": shown[chat.id][-1]["id"]}]
        [flown] = store.execute("SELECT status, error, content FROM messages WHERE id = ?", (answer_id,))
        # As checkpointed: a beginning of the answer, never garbled, and interrupted (nothing runs it here).
        assert flown["status"] == "error" and flown["error"] == INTERRUPTED
        assert flown["content"] and shown_last["content"].startswith(flown["content"])
    finally:
        store.close()
    if engine == "sqlite":
        with sqlite3.connect(target) as check:
            assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_keep_prunes_only_clawwebs_own_backups_of_the_engine(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "backups"
    folder.mkdir()
    suffix = backups.SUFFIXES[store.engine]
    other = ".pgdump" if suffix == ".db" else ".db"
    old = [folder / f"clawweb-2020010{day}-030000{suffix}" for day in (1, 2, 3)]
    foreign = [folder / "notes.txt", folder / f"clawweb-20190101-030000{other}", folder / f"clawweb-latest{suffix}"]
    for path in old + foreign:
        path.write_text("x")
    made, removed = backups.backup(store.db, str(folder), keep=2)
    assert sorted(removed) == old[:2]
    assert sorted(folder.iterdir()) == sorted([made, old[2], *foreign])
    assert made.stat().st_mode & 0o777 == 0o600
    with pytest.raises(backups.BackupError, match="never replaces"):
        backups.backup(store.db, str(made))


def test_restore_refuses_a_database_that_holds_anything_unless_forced(
    engine: str, store: Store, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store.add_user("ann", "not a real hash")
    made, _ = backups.backup(store.db, str(tmp_path))
    target = another(engine, tmp_path, request, "target")
    held = Store(target)
    held.add_user("bob", "not a real hash")
    held.close()
    with pytest.raises(backups.BackupError, match=r"1 user\(s\).*Stop the gateway first.*--force"):
        backups.restore(str(made), target)
    assert users(target) == ["bob"]
    assert backups.restore(str(made), target, force=True) == {"conversations": 0, "users": 1}
    assert users(target) == ["ann"]


def test_a_backup_from_an_older_schema_is_migrated_when_opened(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as db:
        db.create_function("clawweb_spaced", 1, spaced, deterministic=True)
        for script in SQLITE[:-1]:
            db.executescript(script)
        db.execute(f"PRAGMA user_version = {len(SQLITE) - 1}")
    target = str(tmp_path / "clawweb.db")
    backups.restore(str(old), target)
    opened = SqliteDatabase(target)
    assert opened.execute("PRAGMA user_version") == [{"user_version": len(SQLITE)}]
    opened.close()


def test_a_backup_is_refused_on_the_other_engine_or_not_a_backup(tmp_path: Path) -> None:
    (tmp_path / "dump").write_bytes(b"PGDMP\x01\x0f")
    with pytest.raises(backups.BackupError, match="postgresql backup and the configured database is sqlite"):
        backups.restore(str(tmp_path / "dump"), str(tmp_path / "clawweb.db"))
    (tmp_path / "notes").write_text("hello")
    with pytest.raises(backups.BackupError, match="not a clawweb backup"):
        backups.restore(str(tmp_path / "notes"), str(tmp_path / "clawweb.db"))


@pytest.mark.integration
@pytest.mark.postgres
def test_a_missing_or_failing_pg_dump_is_a_clear_error(
    postgres_databases: Databases,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = postgres_databases.fresh()
    monkeypatch.setenv("CLAWWEB_DATABASE_URL", url)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(pg_tools, "DEBIAN_BIN", str(tmp_path / "none"))
    folder = tmp_path / "backups"
    folder.mkdir()
    assert cli.main(["backup", str(folder)]) == 1
    assert "pg_dump is not installed" in capsys.readouterr().err
    assert list(folder.iterdir()) == []  # no partial backup left behind

    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump: error: server version: 99.0; pg_dump version: 15.0' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert cli.main(["backup", str(folder)]) == 1
    error = capsys.readouterr().err
    assert "pg_dump failed on postgresql://" in error and "server version: 99.0" in error
    assert list(folder.iterdir()) == []


def test_the_password_reaches_pg_dump_in_the_environment_not_its_arguments() -> None:
    conninfo, env = pg_tools.connection("postgresql://ann:s3cret%2F@db.example:6543/chat?sslmode=require")
    assert "s3cret" not in conninfo and env["PGPASSWORD"] == "s3cret/"
    assert "host=db.example" in conninfo and "port=6543" in conninfo and "sslmode=require" in conninfo
