"""``clawweb doctor``'s checks of a PostgreSQL database (``CLAWWEB_DATABASE_URL``): reachable, its schema current,
the extensions the schema needs, writable, and room for every worker's pool under ``max_connections``.

They change nothing (the write is rolled back), so they run beside a live gateway; the URL is shown without its
credentials.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psycopg

from .config import Settings, redact_url
from .storage.migrations import POSTGRES
from .worker_count import WorkerCountError, host_cores, worker_count

Report = Callable[[str, bool, str, str], bool]  # Doctor.check: name, ok, figure, fix
EXTENSIONS = ("citext", "pg_trgm")  # what the schema creates (migrations.POSTGRES)


def postgres_checks(settings: Settings, report: Report) -> None:
    shown = redact_url(settings.database_url)
    try:
        started = time.monotonic()
        conn = psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        report(
            "postgresql reachable",
            False,
            f"{shown}: {redact_url(str(exc).strip())}",
            "start PostgreSQL (systemctl start postgresql), or fix CLAWWEB_DATABASE_URL (host, port, user, "
            "password, database) and pg_hba.conf",
        )
        return
    with conn:
        took_ms = (time.monotonic() - started) * 1000
        version = conn.execute("SHOW server_version").fetchone()
        report(
            "postgresql reachable", True, f"{shown}, PostgreSQL {version[0] if version else '?'}, {took_ms:.0f} ms", ""
        )
        migrated = _schema(conn, report)
        _extensions(conn, report, migrated)
        _writable(conn, report, migrated)
        _connections(conn, settings, report)


def _schema(conn: psycopg.Connection[tuple[object, ...]], report: Report) -> bool:
    """The schema's version against this clawweb's; True when the tables exist."""
    exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    current = len(POSTGRES)
    if not (exists and exists[0]):
        report("postgresql schema", True, "not created yet (the gateway creates it at its first start)", "")
        return False
    found = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    version = int(found[0]) if found else 0  # type: ignore[call-overload]
    fix = (
        "start the gateway: it migrates the schema at start-up"
        if version < current
        else "this clawweb is older than the schema: run the release that migrated it"
    )
    report("postgresql schema", version == current, f"version {version} (this clawweb's: {current})", fix)
    return True


def _extensions(conn: psycopg.Connection[tuple[object, ...]], report: Report, migrated: bool) -> None:
    """Installed, or (before the first start) available to the migration: Debian's postgresql-contrib has both."""
    installed = {str(row[0]) for row in conn.execute("SELECT extname FROM pg_extension")}
    available = {str(row[0]) for row in conn.execute("SELECT name FROM pg_available_extensions")}
    missing = [name for name in EXTENSIONS if name not in (installed if migrated else available)]
    state = "installed" if migrated else "available"
    report(
        "postgresql extensions",
        not missing,
        f"{', '.join(EXTENSIONS)} {state}" if not missing else f"missing: {', '.join(missing)}",
        "install the server's contrib package (postgresql-contrib) and, as a superuser in the database, "
        + "; ".join(f"CREATE EXTENSION {name}" for name in missing),
    )


def _writable(conn: psycopg.Connection[tuple[object, ...]], report: Report, migrated: bool) -> None:
    """A real write, rolled back: a read-only standby, a read-only user or a full disk's refusal shows here."""
    # Before the first start, what the migration needs (creating a table); after, what every answer does (a row).
    write = (
        "INSERT INTO schema_version (version) VALUES (-1)"
        if migrated
        else "CREATE TABLE clawweb_doctor_probe (id integer)"
    )
    started = time.monotonic()
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(write)
    except psycopg.Error as exc:
        report(
            "postgresql writable",
            False,
            redact_url(str(exc).strip()),
            "point CLAWWEB_DATABASE_URL at the primary (not a standby), as a user that owns clawweb's database",
        )
        return
    report("postgresql writable", True, f"a write rolled back in {(time.monotonic() - started) * 1000:.1f} ms", "")


def _connections(conn: psycopg.Connection[tuple[object, ...]], settings: Settings, report: Report) -> None:
    """Every worker's pool, full, must fit under max_connections (less the superusers' reserve)."""
    found = conn.execute(
        "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int, "
        "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
    ).fetchone()
    limit, reserved, open_now = (int(value) for value in found) if found else (0, 0, 0)  # type: ignore[call-overload]
    try:
        workers = worker_count(os.environ.get("CLAWWEB_WORKERS", "1"), settings.redis_url, host_cores())
    except WorkerCountError:
        workers = 1  # the gateway refuses to start then; doctor's other checks say why
    needed = workers * settings.db_pool_size
    room = limit - reserved
    report(
        "postgresql connections",
        needed <= room,
        f"{workers} worker(s) x CLAWWEB_DB_POOL_SIZE {settings.db_pool_size} = {needed} of max_connections {limit} "
        f"({reserved} reserved; {open_now} open now)",
        "raise max_connections in postgresql.conf (and restart PostgreSQL) or lower CLAWWEB_DB_POOL_SIZE; with "
        "several hosts, every host's workers count",
    )
