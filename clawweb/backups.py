"""``clawweb backup`` and ``clawweb restore``: a consistent copy of the database taken while the gateway runs, and
that copy put back in place of the configured database (with the gateway stopped).

Each engine copies itself (``Database.backup``): SQLite with its online backup API, PostgreSQL with ``pg_dump
--format=custom``. A backup is written under a hidden partial name and linked to its own once complete, so a
backup that dies midway never looks like one (nor is counted by ``--keep``), and a backup never replaces another.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
import urllib.parse
from pathlib import Path

import psycopg

from .config import redact_url
from .storage import Store
from .storage.engine import Database, Engine, is_postgres, sqlite_path
from .storage.migrations import SQLITE
from .storage.pg_tools import run
from .storage.sqlite import copy_database

SUFFIXES: dict[Engine, str] = {"sqlite": ".db", "postgresql": ".pgdump"}
# clawweb's own backups in a directory (UTC, so the names sort in time across summer time): only these are pruned.
NAME = re.compile(r"clawweb-\d{8}-\d{6}(\.db|\.pgdump)")
SQLITE_MAGIC = b"SQLite format 3\x00"
PGDUMP_MAGIC = b"PGDMP"  # pg_dump's custom format


class BackupError(Exception):
    """Why a backup or a restore was not made, said for the operator."""


def backup(db: Database, dest: str, keep: int | None = None) -> tuple[Path, list[Path]]:
    """A new backup of ``db`` at ``dest`` (a directory: a timestamped file in it, and with ``keep`` the oldest of
    clawweb's backups there beyond ``keep`` removed); the backup's path and the ones removed."""
    target = Path(dest)
    suffix = SUFFIXES[db.engine]
    if keep is not None or dest.endswith("/"):
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
    if target.is_dir():
        target = target / f"clawweb-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}{suffix}"
    elif keep is not None:
        raise BackupError(f"--keep needs a directory to keep backups in, and {dest} is a file")
    if os.path.lexists(target):
        raise BackupError(f"{target} exists: a backup never replaces another")
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)  # left by a backup that was killed
    try:
        db.backup(str(partial))
        _fsync(partial)
        try:
            os.link(partial, target)  # atomic, and fails rather than replace a backup made meanwhile
        except FileExistsError:
            raise BackupError(f"{target} exists: a backup never replaces another") from None
    finally:
        partial.unlink(missing_ok=True)
    _fsync(target.parent)
    return target, prune(target.parent, keep, suffix) if keep is not None else []


def prune(directory: Path, keep: int, suffix: str) -> list[Path]:
    """The oldest of clawweb's backups of this engine in ``directory`` beyond the newest ``keep``, removed. Other
    files (an operator's copy, the other engine's backups from before a move) are never touched."""
    ours = sorted(p for p in directory.iterdir() if NAME.fullmatch(p.name) and p.suffix == suffix and p.is_file())
    removed = ours[: max(len(ours) - keep, 0)]
    for path in removed:
        path.unlink()
    return removed


def contents(location: str) -> dict[str, int]:
    """How many conversations and users the database at ``location`` holds (0 where it has no tables yet), read
    without creating or migrating it."""
    tables = ("conversations", "users")
    if is_postgres(location):
        try:
            with psycopg.connect(location, connect_timeout=5) as conn:
                found = {}
                for table in tables:
                    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
                    count = conn.execute(f"SELECT count(*) FROM {table}").fetchone() if exists and exists[0] else None
                    found[table] = int(count[0]) if count else 0
                return found
        except psycopg.OperationalError as exc:
            raise BackupError(f"cannot reach {redact_url(location)}: {str(exc).strip()}") from exc
    path = sqlite_path(location)
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return dict.fromkeys(tables, 0)
    db = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro", uri=True)
    try:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] if t in names else 0 for t in tables}
    finally:
        db.close()


def restore(source: str, location: str, force: bool = False) -> dict[str, int]:
    """The backup ``source`` in place of the database at ``location``; what it holds (conversations, users).
    Refused where the target holds anything, unless ``force``."""
    kind = _kind(source)
    engine: Engine = "postgresql" if is_postgres(location) else "sqlite"
    if kind != engine:
        raise BackupError(
            f"{source} is a {kind} backup and the configured database is {engine} ({redact_url(location)}): restore "
            f"it into a {kind} database, then move that over with `clawweb db copy`"
        )
    held = contents(location)
    if any(held.values()) and not force:
        raise BackupError(
            f"{redact_url(location)} holds {held['conversations']} conversation(s) and {held['users']} user(s), "
            "which restoring replaces. Stop the gateway first (systemctl stop clawweb), then run again with --force"
        )
    if engine == "sqlite":
        _restore_sqlite(source, sqlite_path(location))
    else:
        # One transaction: a restore that fails midway leaves the database as it was. Objects are owned by the
        # restoring role and the source's grants are left out: its roles need not exist on this server.
        options = ["--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction", source]
        run("pg_restore", location, options)
    # Opened once: migrations run (a backup from an older clawweb), and answers that were streaming when the backup
    # was taken are marked interrupted (their checkpointed text kept): no process is running them here.
    Store(location, mark_interrupted=True, pool_size=1).close()
    return contents(location)


def _kind(source: str) -> Engine:
    try:
        with open(source, "rb") as file:
            head = file.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise BackupError(f"cannot read {source}: {exc.strerror}") from exc
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(PGDUMP_MAGIC):
        return "postgresql"
    raise BackupError(f"{source} is not a clawweb backup (neither a SQLite database nor pg_dump's custom format)")


def _restore_sqlite(source: str, path: str) -> None:
    """A copy of ``source`` written beside ``path`` and renamed over it: the database is the old one or the new
    one, whenever this is interrupted."""
    src = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(source))}?mode=ro", uri=True)
    try:
        check = src.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise BackupError(f"{source} is damaged (quick_check: {check})")
        tables = {row[0] for row in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "conversations" not in tables:
            raise BackupError(f"{source} is a SQLite database, but not clawweb's")
        version = src.execute("PRAGMA user_version").fetchone()[0]
        if version > len(SQLITE):
            raise BackupError(f"{source} is from a newer clawweb (schema {version}, this one knows {len(SQLITE)})")
        Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = f"{path}.restoring"
        Path(temp).unlink(missing_ok=True)  # left by a restore that was killed
        copy_database(src, temp)
    finally:
        src.close()
    _fsync(Path(temp))
    # The replaced database's companions go first: SQLite would replay an old WAL (or journal) into the new file.
    for companion in (f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        Path(companion).unlink(missing_ok=True)
    os.replace(temp, path)
    _fsync(Path(path).parent)


def _fsync(path: Path) -> None:
    """``path`` (a file, or a directory: the names in it) on disk, so a backup reported made survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
