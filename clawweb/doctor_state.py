"""``clawweb doctor``'s checks of what the gateway keeps: Redis, the database (SQLite's file here, PostgreSQL in
doctor_postgres.py), the admission queue.

Each is a ``Check`` with the figure measured and, when it fails, what to do. They read (never change) the same
Redis and database file the gateway uses, so they run beside a live gateway.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import redis

from .config import Settings, redact_url
from .doctor_postgres import postgres_checks
from .state.redis_admission import ADMISSION
from .storage.engine import is_postgres

MIN_FREE_BYTES = 512 << 20  # below this a long answer or a checkpoint may meet a full disk
SLOW_REDIS_MS = 20.0  # a round trip on loopback or a LAN is well under a millisecond

Report = Callable[[str, bool, str, str], bool]  # Doctor.check: name, ok, figure, fix


def redis_checks(settings: Settings, report: Report) -> None:
    """Reachable, how fast, and what dead workers left behind (places in the queue nobody renews)."""
    if not settings.redis_url:
        return
    shown = redact_url(settings.redis_url)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()  # connects: not part of the round trip
        rtt_ms = statistics.median(_ping_ms(client) for _ in range(5))  # one late ping is a busy host, not Redis
    except redis.RedisError as exc:
        report(
            "redis reachable",
            False,
            f"{shown}: {exc}",
            "start redis-server (systemctl start redis-server) or fix CLAWWEB_REDIS_URL",
        )
        return
    report(
        "redis round trip",
        rtt_ms < SLOW_REDIS_MS,
        f"{rtt_ms:.1f} ms to {shown}",
        "Redis is slow to answer: is it swapping, saving a large RDB, or far away? every token waits on it",
    )
    now = time.time()
    stale = int(client.zcount(ADMISSION + "leases", "-inf", now))
    report(
        "redis stale leases",
        stale == 0,
        f"{stale} admission place(s) whose worker stopped renewing them",
        "they free themselves at the next admission; if the count stays, a worker's clock is far off",
    )
    queue_checks(
        int(client.zcard(ADMISSION + "active")),
        int(client.zcard(ADMISSION + "queue")),
        [(str(who, "utf-8"), int(count)) for who, count in _hash(client, ADMISSION + "clients").items()],
        settings,
        report,
    )


def _ping_ms(client: redis.Redis) -> float:
    started = time.monotonic()
    client.ping()
    return (time.monotonic() - started) * 1000


def _hash(client: redis.Redis, key: str) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]  # bytes: no decode_responses
    return found


def queue_checks(active: int, queued: int, holders: list[tuple[str, int]], settings: Settings, report: Report) -> None:
    """Slots held (and by whom), and the queue's length against its limit."""
    top = ", ".join(f"{who}: {count}" for who, count in sorted(holders, key=lambda h: -h[1])[:5]) or "nobody"
    report(
        "queue",
        queued < settings.max_queue,
        f"{active} of {settings.max_active} slots held, {queued} of {settings.max_queue} waiting; holding: {top}",
        "the queue is full: raise CLAWWEB_MAX_ACTIVE (and OLLAMA_NUM_PARALLEL) or lower per-client limits",
    )


def database_checks(settings: Settings, report: Report) -> None:
    """PostgreSQL's checks (doctor_postgres.py) when ``CLAWWEB_DATABASE_URL`` names one; else SQLite's file."""
    if is_postgres(settings.database):
        postgres_checks(settings, report)
    else:
        _sqlite_checks(settings, report)


def _sqlite_checks(settings: Settings, report: Report) -> None:
    """The file is there and writable, the disk has room, and SQLite's quick check passes. Before the gateway's
    first start there is no file yet: that is fine where its directory can be made."""
    path = Path(settings.db)
    if not path.is_file():
        existing = next(parent for parent in path.absolute().parents if parent.exists())
        creatable = os.access(existing, os.W_OK)
        report(
            "database",
            creatable,
            f"{path}: not created yet (the gateway creates it at its first start)",
            f"{existing} must be writable by the service's user, or fix CLAWWEB_DB",
        )
        return
    free = shutil.disk_usage(path.parent).free
    report(
        "database disk space",
        free >= MIN_FREE_BYTES,
        f"{free / (1 << 30):.1f} GiB free beside {path}",
        "free space on that filesystem: answers that cannot be stored end with an error",
    )
    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5)
    except sqlite3.Error as exc:
        report("database writable", False, f"{path}: {exc}", f"the service's user must own {path} and its directory")
        return
    try:
        started = time.monotonic()
        db.execute("BEGIN IMMEDIATE")  # takes the write lock, as a write would; rolled back, changes nothing
        db.execute("ROLLBACK")
        took_ms = (time.monotonic() - started) * 1000
        report("database writable", True, f"{path}: write lock in {took_ms:.1f} ms", "")
        result = db.execute("PRAGMA quick_check").fetchone()[0]
        report(
            "database integrity",
            result == "ok",
            f"quick_check: {result}",
            "stop clawweb, back up the file, then `sqlite3 FILE .recover`",
        )
    except sqlite3.Error as exc:
        report("database writable", False, f"{path}: {exc}", f"the service's user must own {path} and its directory")
    finally:
        db.close()
