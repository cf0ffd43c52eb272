"""The gateway on PostgreSQL for real: a user made with the CLI chats, answers stream, are stored, listed and
continued; ``clawweb doctor`` checks the database; six processes migrate a new database at once (both engines);
and under the gevent worker, queries waiting on PostgreSQL never stall the streams.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from clawweb.storage.engine import is_postgres
from clawweb.storage.migrations import POSTGRES, SQLITE

from .support.factories import StartGateway, StartSimulator
from .support.postgres import Databases
from .support.servers import ROOT, Gateway, free_port, wait_for
from .support.simproc import SimProcess
from .support.sseclient import Event, events
from .test_faults import Reader, http, start_answer

pytestmark = pytest.mark.integration  # every test here starts processes

SSE = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "40")


def follow(gateway: Gateway, generation: dict[str, Any], key: str) -> list[Event]:
    """Every event of an answer up to its final one."""
    headers = {**SSE, "Authorization": f"Bearer {key}"}
    received = []
    with http.get(gateway.url + generation["events_url"], headers=headers, stream=True, timeout=30) as response:
        assert response.status_code == 200, response.text
        for event in events(response):
            received.append(event)
            if event.event in ("done", "stopped", "error"):
                break
    return received


def text(received: list[Event]) -> str:
    return "".join(e.json()["message"]["content"] for e in received if e.event == "token")


def doctor(env: dict[str, str]) -> tuple[int, dict[str, dict[str, Any]]]:
    done = subprocess.run(
        [sys.executable, "-m", "clawweb", "doctor", "--json"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "s3cret" not in done.stdout + done.stderr
    return done.returncode, {check["name"]: check for check in json.loads(done.stdout)["checks"]}


@pytest.mark.postgres
def test_a_cli_user_chats_on_postgresql_and_doctor_passes(
    sim: SimProcess, postgres_databases: Databases, start_gateway: StartGateway
) -> None:
    url = postgres_databases.fresh()
    gateway = start_gateway(sim.url, database_url=url, auth="required")
    key = gateway.new_user("ann")
    api = requests.Session()
    api.headers.update({"Authorization": f"Bearer {key}", "Connection": "close"})
    conversation = api.post(gateway.url + "/api/conversations", json={}, timeout=10).json()
    conversation_url = f"{gateway.url}/api/conversations/{conversation['id']}"
    asked = api.post(conversation_url + "/messages", json={"content": 'hi\n#sim {"tokens": 30}', "think": False})
    assert asked.status_code == 202, asked.text
    received = follow(gateway, asked.json()["generation"], key)
    assert received[-1].event == "done"
    answer = api.get(conversation_url, timeout=10).json()["messages"][-1]
    assert (answer["status"], answer["content"]) == ("done", text(received)) and answer["content"]
    listed = api.get(gateway.url + "/api/conversations", timeout=10).json()["conversations"]
    assert [(c["id"], c["title"]) for c in listed] == [(conversation["id"], 'hi #sim {"tokens": 30}')]
    # Stopped half-way, then continued: the stored answer is the first part and the rest.
    asked = api.post(
        conversation_url + "/messages", json={"content": 'more\n#sim {"tokens": 200, "tps": 200}', "think": False}
    )
    generation = asked.json()["generation"]
    headers = {**SSE, "Authorization": f"Bearer {key}"}
    with http.get(gateway.url + generation["events_url"], headers=headers, stream=True, timeout=30) as response:
        shown = 0
        for event in events(response):
            shown += event.event == "token"
            if shown == 5:
                break
    assert api.delete(f"{gateway.url}/api/generations/{generation['id']}", timeout=10).json()["status"] == "stopped"
    part = api.get(conversation_url, timeout=10).json()["messages"][-1]
    assert part["status"] == "stopped" and part["content"]
    resumed = api.post(conversation_url + "/continue", json={"message_id": part["id"]}, timeout=10)
    assert resumed.status_code == 202, resumed.text
    rest = follow(gateway, resumed.json()["generation"], key)
    assert rest[-1].event == "done"
    whole = api.get(conversation_url, timeout=10).json()["messages"][-1]
    assert whole["id"] == part["id"] and whole["status"] == "done"
    assert whole["content"] == part["content"] + text(rest)
    assert requests.get(conversation_url, timeout=10).status_code == 401  # and nobody else's

    code, checks = doctor(gateway.env)
    postgres = {name: check for name, check in checks.items() if name.startswith("postgresql")}
    assert code == 0 and all(check["ok"] for check in checks.values()), checks
    assert set(postgres) == {
        "postgresql reachable",
        "postgresql schema",
        "postgresql extensions",
        "postgresql writable",
        "postgresql connections",
    }
    assert postgres["postgresql schema"]["figure"] == f"version {len(POSTGRES)} (this clawweb's: {len(POSTGRES)})"
    print("\n".join(f"{name}: {check['figure']}" for name, check in postgres.items()))
    # Nothing written by the doctor: its probe row was rolled back.
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version WHERE version < 0").fetchone() == (0,)


@pytest.mark.postgres
def test_doctor_names_an_unreachable_postgresql_and_a_pool_too_large(
    sim: SimProcess, postgres_databases: Databases
) -> None:
    dead = f"postgresql://clawweb:s3cret@127.0.0.1:{free_port()}/clawweb"
    code, checks = doctor({"CLAWWEB_OLLAMA_URL": sim.url, "CLAWWEB_DATABASE_URL": dead})
    assert code == 1 and not checks["postgresql reachable"]["ok"]
    assert checks["postgresql reachable"]["figure"].startswith("postgresql://***@127.0.0.1:")
    assert "CLAWWEB_DATABASE_URL" in checks["postgresql reachable"]["fix"]
    # A new database: not migrated yet is fine; a pool larger than max_connections (300 here) is not.
    env = {"CLAWWEB_OLLAMA_URL": sim.url, "CLAWWEB_DATABASE_URL": postgres_databases.fresh()}
    code, checks = doctor({**env, "CLAWWEB_DB_POOL_SIZE": "400"})
    assert code == 1 and {name for name, check in checks.items() if not check["ok"]} == {"postgresql connections"}
    assert checks["postgresql schema"]["figure"].startswith("not created yet")
    assert checks["postgresql extensions"]["figure"] == "citext, pg_trgm available"


def test_six_processes_opening_a_new_database_at_once_migrate_it_once(database: str, tmp_path: Path) -> None:
    """Six gunicorn workers (or hosts) start together on a new database: all start, the schema is made once."""
    # A barrier, not a clock: each process says it is ready once its imports are done (slow on a busy machine),
    # then all open the database when the test says go.
    script = (
        "import os, sys, time; from clawweb.storage import Store; "
        "open(sys.argv[2] + str(os.getpid()), 'w').close(); "
        "exec('while not os.path.exists(sys.argv[3]): time.sleep(0.001)'); Store(sys.argv[1]).close()"
    )
    ready, go = str(tmp_path / "ready-"), tmp_path / "go"
    argv = [sys.executable, "-c", script, database, ready, str(go)]
    starts = [subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE) for _ in range(6)]
    assert wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 6, timeout=60)
    go.touch()
    errors = [process.communicate(timeout=60)[1].decode() for process in starts]
    assert [process.returncode for process in starts] == [0] * 6, errors
    if is_postgres(database):
        with psycopg.connect(database) as conn:
            versions = [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, len(POSTGRES) + 1))
    else:
        with sqlite3.connect(database) as conn:
            assert conn.execute("PRAGMA user_version").fetchone() == (len(SQLITE),)
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def largest_gap(readers: list[Reader], start: float, end: float) -> float:
    """The longest silence between two tokens any reader saw that overlaps ``start``..``end``."""
    gaps = []
    for reader in readers:
        times = [event.at for event in reader.received if event.event == "token"]
        gaps += [
            later - earlier for earlier, later in zip(times, times[1:], strict=False) if later > start and earlier < end
        ]
    return max(gaps)


@pytest.mark.postgres
def test_queries_waiting_on_postgresql_do_not_stall_the_streams(
    sim: SimProcess, postgres_databases: Databases, start_gateway: StartGateway
) -> None:
    url = postgres_databases.fresh()
    gateway = start_gateway(sim.url, database_url=url, heartbeat_s=1, max_active=40, max_active_per_client=40)
    conversation = http.post(gateway.url + "/api/conversations", json={}, timeout=10).json()
    conversation_url = f"{gateway.url}/api/conversations/{conversation['id']}"
    streams, tps, held_s = 20, 20, 1.0
    readers = [
        Reader(gateway.url + start_answer(gateway, {"tokens": 100, "tps": tps})["events_url"]) for _ in range(streams)
    ]
    for reader in readers:
        reader.wait_for_tokens(5)
    quiet_from = time.monotonic()
    time.sleep(held_s)  # the streams alone: the gaps to compare with
    answered: list[int] = []
    # Every read of a conversation waits on a lock another client holds: each request's query is in flight at
    # PostgreSQL for ``held_s``, on all of the worker's pooled connections (the rest queue for one). A driver that
    # blocked the event loop would stop every stream for that long.
    with psycopg.connect(url) as locker:
        locker.execute("LOCK TABLE conversations IN ACCESS EXCLUSIVE MODE")
        askers = [
            threading.Thread(target=lambda: answered.append(http.get(conversation_url, timeout=30).status_code))
            for _ in range(30)
        ]
        for asker in askers:
            asker.start()

        def waiting() -> int:
            found = locker.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
            return int(found[0]) if found else 0

        assert wait_for(lambda: waiting() >= 8, timeout=10)  # the pool's 8 connections wait at once
        held_from = time.monotonic()
        time.sleep(held_s)
    held_to = time.monotonic()
    for asker in askers:
        asker.join(30)
    assert answered == [200] * 30
    for reader in readers:
        reader.join(30)
        assert reader.final is not None and reader.final.event == "done"
    quiet, loaded = largest_gap(readers, quiet_from, quiet_from + held_s), largest_gap(readers, held_from, held_to)
    print(
        f"largest gap between tokens: {quiet * 1000:.0f} ms alone, {loaded * 1000:.0f} ms while 30 queries wait "
        f"{held_s:g} s at PostgreSQL ({streams} streams, {tps} tokens/s; load {os.getloadavg()[0]:.2f})"
    )
    # Blocking would add the whole wait to one gap; cooperating adds at most scheduling noise.
    assert loaded < quiet + held_s / 2


def test_a_statement_held_up_too_long_is_cancelled_as_a_503(
    postgres_databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock another client keeps (an operator's open transaction) ends in ``StorageUnavailable``, not a wait as
    long as the lock: the pool's connections carry a statement timeout."""
    from clawweb.storage import StorageUnavailable, Store
    from clawweb.storage import postgres as engine

    monkeypatch.setattr(engine, "STATEMENT_TIMEOUT_MS", 200)
    url = postgres_databases.fresh()
    store = Store(url)
    try:
        made = store.create_conversation(None, "m", "locked")
        with psycopg.connect(url) as operator:  # a transaction left open, holding the row
            operator.execute("UPDATE conversations SET title = 'mine' WHERE id = %s", (made["id"],))
            with pytest.raises(StorageUnavailable, match="statement timeout"):
                store.update_conversation(made["id"], title="theirs")
        assert store.update_conversation(made["id"], title="theirs") is not None  # the lock gone: works again
    finally:
        store.close()
