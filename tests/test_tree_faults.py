"""Faults under the conversation tree's routes, done for real: the disk fills up during an import, a regenerate, a
continue, a delete, a change of branch; a gateway SIGKILLed while it continues an answer; answers started at once
on two gunicorn workers sharing Redis. Each ends with the right 503 JSON (or the answer's "not saved yet"
warning, as for new answers), and once the disk has room again the database is consistent: both search indexes,
the quota figures, no answer left ``streaming``, ``current_id`` and every parent in their conversation."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from clawweb.storage import Store

from .support.exports import chatgpt_file
from .support.factories import StartGateway, StartRedis, StartSimulator
from .support.servers import Gateway, wait_for
from .support.simproc import SimProcess
from .test_faults import Reader, assert_unavailable, fill, http
from .test_faults import tmpfs as tmpfs  # the fixture: a 1 MiB tmpfs
from .test_quotas import brute_force, stored
from .test_search import index_is_consistent
from .test_tree import Chat, wait_idle
from .test_tree_attacks import assert_sound, stop_all, together

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SLOW = {"tokens": 400, "tps": 40}
FAST = {"tokens": 1500, "tps": 500}  # seconds of tokens, quickly: the disk fills while it streams


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "50")


def cut_answer(chat: Chat, directive: dict[str, Any]) -> dict[str, Any]:
    """A question and its answer cut by ``num_predict`` (so it can be continued); the answer."""
    chat.ask("question", directive, options={"num_predict": 2})
    answer = chat.messages()[-1]
    assert answer["done_reason"] == "length", answer
    return answer


def assert_consistent(path: Path) -> None:
    """The database file after a fault: both message indexes as built afresh, the quota figures as counted, nothing
    ``streaming``, every conversation's ``current_id`` one of its messages, every parent in its conversation."""
    store = Store(str(path), mark_interrupted=False)
    try:
        index_is_consistent(store)
        assert stored(store, None) == brute_force(path, None)
        assert store.execute("SELECT id, status FROM messages WHERE status = 'streaming'") == []
        assert (
            store.execute(
                "SELECT c.id, c.current_id FROM conversations AS c WHERE c.current_id IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM messages AS m WHERE m.id = c.current_id AND m.conversation_id = c.id)"
            )
            == []
        )
        assert (
            store.execute(
                "SELECT c.id FROM conversations AS c WHERE c.current_id IS NULL "
                "AND EXISTS (SELECT 1 FROM messages AS m WHERE m.conversation_id = c.id)"
            )
            == []
        )
        assert (
            store.execute(
                "SELECT m.id FROM messages AS m WHERE m.parent_id IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM messages AS p WHERE p.id = m.parent_id AND p.conversation_id = m.conversation_id)"
            )
            == []
        )
    finally:
        store.close()


def settled(path: Path) -> bool:
    """Nothing left ``streaming`` in the file (the background retry stored what a full disk refused)."""
    with sqlite3.connect(path) as db:
        return bool(db.execute("SELECT count(*) FROM messages WHERE status = 'streaming'").fetchone() == (0,))


# --- 1: the disk fills up ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["import", "regenerate", "continue", "delete", "current"])
def test_a_full_disk_is_a_503_for_every_tree_route_and_leaves_the_database_consistent(
    sim: SimProcess, tmpfs: Path, start_gateway: StartGateway, route: str
) -> None:
    db = tmpfs / "clawweb.db"
    gateway = start_gateway(sim.url, db=str(db), heartbeat_s=0.3)
    chat = Chat(gateway)
    answer = cut_answer(chat, SLOW)
    question = chat.messages()[0]
    other = chat.start("regenerate", {"think": False, "options": {"num_predict": 2}})["message"]
    wait_idle(chat)
    before = chat.tree()
    filler = fill(tmpfs)
    calls: dict[str, Callable[[], requests.Response]] = {
        "import": lambda: http.post(gateway.url + "/api/import", data=chatgpt_file(20_000, 4), timeout=10),
        "regenerate": lambda: http.post(
            gateway.url + chat.path + "/regenerate", json={"message_id": answer["id"], "think": False}, timeout=10
        ),
        "continue": lambda: http.post(
            gateway.url + chat.path + "/continue", json={"message_id": other["id"]}, timeout=10
        ),
        "delete": lambda: http.delete(f"{gateway.url}/api/messages/{question['id']}", timeout=10),
        "current": lambda: http.put(
            gateway.url + chat.path + "/current", json={"message_id": answer["id"]}, timeout=10
        ),
    }
    call = calls[route]
    assert_unavailable(call(), "storage")
    assert chat.tree() == before  # nothing written, nothing half-written
    filler.unlink()
    assert wait_for(lambda: settled(db), timeout=15)
    assert_consistent(db)
    # And the route works now that there is room.
    done = call()
    assert done.status_code in (200, 202), done.text
    stop_all(chat)
    assert_sound(chat)
    assert_consistent(db)


@pytest.mark.parametrize("route", ["regenerate", "continue"])
def test_an_answer_regenerated_or_continued_as_the_disk_fills_ends_not_saved_yet_and_is_stored_later(
    sim: SimProcess, tmpfs: Path, start_gateway: StartGateway, route: str
) -> None:
    db = tmpfs / "clawweb.db"
    gateway = start_gateway(sim.url, db=str(db), heartbeat_s=0.3)
    chat = Chat(gateway)
    answer = cut_answer(chat, FAST)
    started = chat.start(route, {"think": False} if route == "regenerate" else {})
    generation = started["generation"]
    reader = Reader(gateway.url + generation["events_url"])
    reader.wait_for_tokens(5)
    filler = fill(tmpfs)
    reader.join(30)
    final = reader.final
    assert final is not None and final.event == "done", reader.received[-3:]
    prefix = "".join(e.json()["content"] for e in reader.received if e.event == "continue")
    assert prefix == (answer["content"] if route == "continue" else "")
    shown = prefix + "".join(reader.tokens)
    assert final.json()["message"]["content"] == shown and "not saved yet" in final.json()["warning"]
    filler.unlink()

    def kept() -> bool:  # by the background retry: read the file itself
        with sqlite3.connect(db) as file:
            row = file.execute("SELECT status, content FROM messages WHERE id = ?", (generation["message_id"],))
            return bool(row.fetchone() == ("done", shown))

    assert wait_for(kept, timeout=15)
    assert_sound(chat)
    assert_consistent(db)
    chat.ask("more", {"tokens": 3})  # the conversation goes on
    assert chat.messages()[-1]["content"]


# --- 2: a gateway killed while it continues an answer -----------------------------------------------------------


def test_a_gateway_killed_while_continuing_leaves_the_answer_interrupted_with_exactly_what_was_shown(
    sim: SimProcess, tmp_path: Path, start_gateway: StartGateway, start_redis: StartRedis
) -> None:
    redis_server = start_redis()
    shared = {"redis_url": redis_server.url, "db": str(tmp_path / "clawweb.db"), "heartbeat_s": 0.2}
    doomed, survivor = start_gateway(sim.url, **shared), start_gateway(sim.url, **shared)
    chat = Chat(survivor)
    answer = cut_answer(chat, {"tokens": 400, "tps": 20})
    started = http.post(f"{doomed.url}{chat.path}/continue", json={"message_id": answer["id"]}, timeout=10)
    assert started.status_code == 202, started.text
    generation = started.json()["generation"]
    reader = Reader(survivor.url + generation["events_url"])
    reader.wait_for_tokens(10)
    os.killpg(doomed.proc.pid, signal.SIGKILL)
    reader.join(30)
    final = reader.final
    assert final is not None and final.event == "error", reader.received[-3:]
    assert "the gateway process running this answer stopped" in final.json()["error"]
    (opening,) = [e.json() for e in reader.received if e.event == "continue"]
    assert opening["content"] == answer["content"]
    shown = answer["content"] + "".join(reader.tokens)
    assert final.json()["message"]["content"] == shown
    with sqlite3.connect(tmp_path / "clawweb.db") as db:
        row = db.execute("SELECT status, content FROM messages WHERE id = ?", (answer["id"],)).fetchone()
    assert row == ("error", shown)
    print(f"continued answer: prefix {len(answer['content'])} characters, shown {len(shown)}, stored {len(row[1])}")
    continued = chat.messages()[-1]
    assert (continued["id"], continued["status"], continued["content"]) == (answer["id"], "error", shown)
    assert chat.shown()["generation"] is None
    chat.ask("after the kill", {"tokens": 3})  # no 409: the conversation takes a new message
    assert chat.messages()[-2]["content"].startswith("after the kill")
    assert_sound(chat)


# --- 3: answers started at once on two workers sharing Redis ----------------------------------------------------


@pytest.fixture
def two_workers(sim: SimProcess, start_redis: StartRedis, start_gateway: StartGateway) -> Gateway:
    redis_server = start_redis()
    return start_gateway(
        sim.url, workers=2, redis_url=redis_server.url, heartbeat_s=0.3, max_active_per_client=50, max_active=50
    )


def test_messages_posted_at_once_on_two_workers_start_one_answer(two_workers: Gateway) -> None:
    chat = Chat(two_workers)
    chat.ask("one", {"tokens": 2})
    body = {"content": "long\n#sim " + json.dumps(SLOW), "think": False}
    for _ in range(4):
        before = chat.tree()["messages"]
        responses: list[requests.Response] = together(
            [lambda: chat.call("POST", f"{chat.path}/messages", json=body) for _ in range(6)]
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [202] + [409] * 5, [r.text for r in responses]
        assert all(r.json().get("error") for r in responses if r.status_code == 409)
        (won,) = [r.json() for r in responses if r.status_code == 202]
        after = chat.tree()["messages"]
        assert len(after) == len(before) + 2  # one question, one answer: nothing from the refused five
        assert [m["id"] for m in after[-2:]] == [won["message"]["id"], won["generation"]["message_id"]]
        assert chat.shown()["generation"]["id"] == won["generation"]["id"]
        stop_all(chat)
        assert_sound(chat)


# --- 4: a continued answer is old: nothing may take it for one a dead process left ---------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_continued_answer_opened_as_it_starts_is_not_taken_for_one_a_dead_process_left(
    sim: SimProcess, start_redis: StartRedis, start_gateway: StartGateway, workers: int
) -> None:
    """A continued answer keeps its ``created_at``: older than the lease, it looks like one a dead process left
    ``streaming`` to whoever opens the conversation before the continue is listed as running."""
    heartbeat_s = 0.1  # a lease of 0.3 s: the answer continued is older than that
    settings: dict[str, object] = {"heartbeat_s": heartbeat_s, "max_active_per_client": 50, "max_active": 50}
    if workers == 2:
        settings.update(workers=2, redis_url=start_redis().url)
    gateway = start_gateway(sim.url, **settings)
    for _ in range(5):
        chat = Chat(gateway)
        answer = cut_answer(chat, SLOW)
        wait_for(lambda: False, timeout=3 * heartbeat_s + 0.2)  # the answer is older than the lease
        done = threading.Event()

        def opening(chat: Chat, done: threading.Event) -> None:
            while not done.is_set():
                chat.call("GET", chat.path)

        openers = [threading.Thread(target=opening, args=(chat, done)) for _ in range(4)]
        for opener in openers:
            opener.start()
        try:
            started = chat.call("POST", f"{chat.path}/continue", json={"message_id": answer["id"]})
        finally:
            done.set()
            for opener in openers:
                opener.join(10)
        assert started.status_code == 202, started.text
        running = chat.shown()["generation"]
        assert running is not None and running["message_id"] == answer["id"]
        stored = {m["id"]: m for m in chat.tree()["messages"]}[answer["id"]]
        assert (stored["status"], stored["error"]) == ("streaming", None)  # not "interrupted" while it runs
        refused = chat.call("POST", f"{chat.path}/messages", json={"content": "more", "think": False})
        assert refused.status_code == 409, refused.text
        stop_all(chat)
        assert_sound(chat)
        assert chat.messages()[-1]["status"] == "stopped"
