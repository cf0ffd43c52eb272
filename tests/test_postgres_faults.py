"""PostgreSQL under real faults: the server restarted mid-answer, the pool exhausted by a locked table. Every
answer still streams to its end and is stored once the database is back; readers get a 503 JSON error, never a
hang; the pool heals by itself. Run alone with ``pytest -m faults``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
import requests

from clawweb.simulator import answer_tokens

from .support.factories import StartGateway, StartSimulator
from .support.postgres import Databases, PostgresServer
from .support.servers import wait_for
from .support.simproc import SimProcess
from .test_faults import Reader, assert_unavailable, http, start_answer, stored_answer

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "40")


@pytest.fixture
def own_server() -> Iterator[list[PostgresServer]]:
    """A PostgreSQL of this test's own (it gets stopped and started again): the running one is the last."""
    servers = [PostgresServer()]
    yield servers
    servers[-1].remove()


def stored_row(url: str, message_id: int) -> tuple[str, str] | None:
    """The message as the database holds it (not through the gateway: the background retry stored it)."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT status, content FROM messages WHERE id = %s", (message_id,)).fetchone()
    except psycopg.OperationalError:
        return None
    return (row[0], row[1]) if row else None


def test_postgresql_restarted_mid_answer_the_answer_finishes_and_is_stored_when_it_is_back(
    sim: SimProcess, own_server: list[PostgresServer], start_gateway: StartGateway
) -> None:
    server = own_server[0]
    url = server.create_database("restart")
    # A short pool wait: a reader finds out within a second that the database is down.
    gateway = start_gateway(sim.url, database_url=url, heartbeat_s=0.3, db_pool_timeout_s=1, checkpoint_s=0.3)
    generation = start_answer(gateway, {"tokens": 200, "tps": 40})
    conversation_url = f"{gateway.url}/api/conversations/{generation['conversation_id']}"
    reader = Reader(gateway.url + generation["events_url"])
    reader.wait_for_tokens(5)
    assert server.stop() == 0
    down_at = time.monotonic()
    # Readers while it is down: a 503 naming storage, within the pool's wait (never a hang, never a 500).
    for attempt in range(3):
        started = time.monotonic()
        response = http.get(conversation_url, timeout=10)
        assert_unavailable(response, "storage")
        print(f"down, GET {attempt}: 503 in {time.monotonic() - started:.2f} s: {response.json()['error']}")
        if attempt:  # the first may meet a pooled connection the shutdown ended; then the pool cannot connect
            assert (
                f"cannot connect to PostgreSQL at postgresql://***@127.0.0.1:{server.port}/restart"
                in (response.json()["error"])
            )
    late = Reader(gateway.url + generation["events_url"])  # a reader joining now: the log is in memory
    state = http.get(f"{gateway.url}/api/generations/{generation['id']}", timeout=10)
    assert state.status_code == 200 and state.json()["status"] == "streaming"  # in memory: no database needed
    ready = http.get(gateway.url + "/readyz", timeout=10)
    assert ready.status_code == 503, ready.text
    # The answer keeps streaming to its reader and ends, done, with a warning that it is not saved yet.
    reader.join(30)
    final = reader.final
    expected = "".join(answer_tokens(200))
    assert final is not None and final.event == "done", reader.received[-3:]
    assert "".join(reader.tokens) == expected
    assert "not saved yet" in final.json()["warning"]
    late.join(10)
    assert late.final is not None and "".join(late.tokens) == expected
    print(f"answer ended {time.monotonic() - down_at:.2f} s after PostgreSQL stopped")

    server = PostgresServer(directory=server.directory, port=server.port)
    own_server.append(server)
    back_at = time.monotonic()
    assert wait_for(lambda: stored_row(url, generation["message_id"]) == ("done", expected), timeout=15)
    print(f"PostgreSQL back -> the answer stored by the retry in {time.monotonic() - back_at:.2f} s")
    # The pool healed: every request works (eight in a row: no dead connection left to hand out).
    for _ in range(8):
        assert http.get(conversation_url, timeout=10).status_code == 200
    assert stored_answer(gateway, generation["conversation_id"])["content"] == expected
    assert http.get(gateway.url + "/readyz", timeout=10).status_code == 200
    again = Reader(gateway.url + start_answer(gateway, {"tokens": 5}, generation["conversation_id"])["events_url"])
    again.join(10)
    assert again.final is not None and again.final.event == "done"


def test_an_exhausted_pool_answers_503_quickly_and_recovers(
    sim: SimProcess, postgres_databases: Databases, start_gateway: StartGateway
) -> None:
    url = postgres_databases.fresh()
    gateway = start_gateway(sim.url, database_url=url, db_pool_size=1, db_pool_timeout_s=0.5)
    conversation = http.post(gateway.url + "/api/conversations", json={}, timeout=10).json()
    conversation_url = f"{gateway.url}/api/conversations/{conversation['id']}"
    assert http.get(conversation_url, timeout=10).status_code == 200
    # Another client locks the conversations table: the gateway's next read waits for it, holding the worker's
    # only connection.
    with psycopg.connect(url) as locker:
        locker.execute("LOCK TABLE conversations IN ACCESS EXCLUSIVE MODE")
        blocked: list[requests.Response] = []
        holder = threading.Thread(target=lambda: blocked.append(http.get(conversation_url, timeout=30)), daemon=True)
        holder.start()

        def lock_waited() -> bool:
            found = locker.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
            return bool(found and found[0] > 0)

        assert wait_for(lock_waited, timeout=10)
        started = time.monotonic()
        response = http.get(conversation_url, timeout=10)
        took = time.monotonic() - started
        assert_unavailable(response, "storage")
        assert "CLAWWEB_DB_POOL_SIZE" in response.json()["error"]
        print(f"pool of 1 held: 503 in {took:.2f} s (pool timeout 0.5 s): {response.json()['error']}")
        assert not blocked  # still waiting on the lock
    holder.join(10)  # the lock released with the transaction: the held request finishes
    assert blocked and blocked[0].status_code == 200
    for _ in range(3):
        assert http.get(conversation_url, timeout=10).status_code == 200
