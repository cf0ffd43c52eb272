"""Per-user quotas under the real gunicorn: conversations kept, bytes stored, answers a day, conversations a
minute. Each refusal names its setting, stores nothing and leaves other users alone; the CLI shows the figures."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import requests

from clawweb.chat import tree
from clawweb.storage import Store
from clawweb.storage.migrations import SQLITE as MIGRATIONS
from clawweb.storage.sqlite import SqliteDatabase

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess, chat
from .support.sseclient import events

QUOTA_BYTES = 20_000


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.02", "--tps", "100")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(
        sim.url,
        auth="required",
        heartbeat_s=0.3,
        quota_conversations=3,
        quota_bytes=QUOTA_BYTES,
        quota_answers_per_day=3,
    )


class Client:
    """One user of a gateway, by API key."""

    def __init__(self, gateway: Gateway, name: str) -> None:
        self.url = gateway.url
        self.name = name
        self.headers = {"Authorization": f"Bearer {gateway.new_user(name)}"}

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url + path, headers=self.headers, timeout=10, **kwargs)

    def create(self, **fields: Any) -> requests.Response:
        return self.call("POST", "/api/conversations", json=fields)

    def conversations(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/api/conversations").json()["conversations"])

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/conversations/{conversation_id}").json())

    def post(self, conversation_id: str, content: str, **knobs: Any) -> requests.Response:
        body = {"content": content, "think": False, **knobs}
        return self.call("POST", f"/api/conversations/{conversation_id}/messages", json=body)

    def finish(self, started: requests.Response) -> dict[str, Any]:
        """Follow the answer ``started`` began to its end; the stored answer."""
        assert started.status_code == 202, started.text
        url, headers = self.url + started.json()["generation"]["events_url"], {"Accept": "text/event-stream"}
        with requests.get(url, headers={**self.headers, **headers}, stream=True, timeout=30) as response:
            final = [e for e in events(response) if e.event in ("done", "stopped", "error")]
        assert final and final[-1].event == "done", final
        return dict(final[-1].json()["message"])


def refused(response: requests.Response, status: int, setting: str) -> str:
    """Assert the refusal's status and that its JSON error names ``setting``; the message."""
    assert response.status_code == status, response.text
    message = str(response.json()["error"])
    assert setting in message, message
    return message


def usage(gateway: Gateway, name: str) -> dict[str, tuple[int, int]]:
    """``clawweb users usage NAME``: each figure and its limit (0: no limit)."""
    line = gateway.cli("users", "usage", name).splitlines()[1]
    assert line.split()[0] == name, line
    pairs = re.findall(r"(\d+) of (\d+|no limit)", line)
    figures = [(int(value), 0 if limit == "no limit" else int(limit)) for value, limit in pairs]
    return dict(zip(("conversations", "bytes", "answers_today"), figures, strict=True))


def utf8(*texts: str) -> int:
    return sum(len(text.encode()) for text in texts)


def test_the_conversation_quota_is_403_and_stores_nothing(gateway: Gateway) -> None:
    alice, bob = Client(gateway, "count-alice"), Client(gateway, "count-bob")
    made = [alice.create(title=f"c{i}") for i in range(3)]
    assert [r.status_code for r in made] == [201, 201, 201]
    over = alice.create(title="one too many")
    refused(over, 403, "CLAWWEB_QUOTA_CONVERSATIONS")
    assert "Retry-After" not in over.headers  # a quota, not a rate: waiting does not help, deleting does
    assert sorted(c["title"] for c in alice.conversations()) == ["c0", "c1", "c2"]
    assert bob.create().status_code == 201
    assert usage(gateway, alice.name)["conversations"] == (3, 3)
    assert alice.call("DELETE", f"/api/conversations/{made[0].json()['id']}").status_code == 204
    assert alice.create(title="room again").status_code == 201


def test_the_byte_quota_is_413_for_every_way_of_storing(gateway: Gateway, sim: SimProcess) -> None:
    alice, bob = Client(gateway, "bytes-alice"), Client(gateway, "bytes-bob")
    prompt = "é" * 5000  # 5000 characters, 10000 bytes: the quota counts UTF-8 bytes
    first = alice.create(system_prompt=prompt)
    assert first.status_code == 201
    conversation_id = first.json()["id"]
    assert usage(gateway, alice.name)["bytes"] == (10_000, QUOTA_BYTES)

    path = f"/api/conversations/{conversation_id}"
    refused(alice.create(system_prompt="x" * 10_001), 413, "CLAWWEB_QUOTA_BYTES")
    assert len(alice.conversations()) == 1
    grown = prompt + "x" * 10_001  # 10001 bytes more than now
    refused(alice.call("PATCH", path, json={"system_prompt": grown}), 413, "CLAWWEB_QUOTA_BYTES")
    assert alice.conversation(conversation_id)["system_prompt"] == prompt
    sim.reset()
    refused(alice.post(conversation_id, "x" * 10_001), 413, "CLAWWEB_QUOTA_BYTES")
    assert alice.conversation(conversation_id)["messages"] == []
    assert sim.stats()["requests"] == 0  # refused before admission: Ollama never saw it
    assert usage(gateway, alice.name)["bytes"] == (10_000, QUOTA_BYTES)
    assert usage(gateway, alice.name)["answers_today"][0] == 0
    assert bob.create(system_prompt="é" * 9000).status_code == 201  # another user has their own room

    # A message that fits is taken; its answer is stored as it comes and may go past the quota...
    content = "x" * 9_500 + "\n#sim " + json.dumps({"tokens": 300, "think_tokens": 20})
    answer = alice.finish(alice.post(conversation_id, content, think=True))
    assert answer["thinking"] and answer["content"]
    stored = alice.conversation(conversation_id)
    expected = utf8(stored["title"], stored["system_prompt"])
    expected += sum(utf8(m["content"], m["thinking"]) for m in stored["messages"])
    assert usage(gateway, alice.name)["bytes"] == (expected, QUOTA_BYTES)  # the counter matches what is stored
    assert expected > QUOTA_BYTES
    # ...and then nothing more is stored: no new message, no regenerated answer.
    refused(alice.post(conversation_id, "hi"), 413, "CLAWWEB_QUOTA_BYTES")
    refused(alice.call("POST", path + "/regenerate", json={}), 413, "CLAWWEB_QUOTA_BYTES")
    assert alice.conversation(conversation_id)["messages"] == stored["messages"]
    # Making room is always allowed, over the quota too, and gives the bytes back at once.
    assert alice.call("PATCH", path, json={"system_prompt": ""}).status_code == 200
    assert usage(gateway, alice.name)["bytes"][0] == expected - 10_000
    alice.finish(alice.call("POST", path + "/regenerate", json={}))


def test_answers_a_day_are_429_until_midnight_on_every_route(gateway: Gateway, sim: SimProcess) -> None:
    alice, bob = Client(gateway, "answers-alice"), Client(gateway, "answers-bob")
    conversation_id = alice.create().json()["id"]
    sim.reset()
    alice.finish(alice.post(conversation_id, "one"))
    alice.finish(alice.call("POST", f"/api/conversations/{conversation_id}/regenerate", json={}))
    assert alice.call("POST", "/api/chat", json=chat(stream=False)).status_code == 200  # the relay counts too
    before = alice.conversation(conversation_id)["messages"]

    over = alice.call("POST", f"/api/conversations/{conversation_id}/regenerate", json={})
    refused(over, 429, "CLAWWEB_QUOTA_ANSWERS_PER_DAY")
    assert 0 < int(over.headers["Retry-After"]) <= 25 * 3600
    assert alice.conversation(conversation_id)["messages"] == before  # no answer added beside it
    refused(alice.post(conversation_id, "two"), 429, "CLAWWEB_QUOTA_ANSWERS_PER_DAY")
    refused(alice.call("POST", "/api/chat", json=chat(stream=False)), 429, "CLAWWEB_QUOTA_ANSWERS_PER_DAY")
    openai_body = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hi"}]}
    refused(alice.call("POST", "/v1/chat/completions", json=openai_body), 429, "CLAWWEB_QUOTA_ANSWERS_PER_DAY")
    assert alice.conversation(conversation_id)["messages"] == before
    assert sim.stats()["requests"] == 3
    # Deleting conversations does not give answers back: they are counted, not looked up.
    assert alice.call("DELETE", f"/api/conversations/{conversation_id}").status_code == 204
    refused(alice.post(alice.create().json()["id"], "three"), 429, "CLAWWEB_QUOTA_ANSWERS_PER_DAY")
    assert usage(gateway, alice.name)["answers_today"] == (3, 3)
    bob.finish(bob.post(bob.create().json()["id"], "mine"))
    assert usage(gateway, bob.name)["answers_today"] == (1, 3)


def test_creating_conversations_is_rate_limited_and_refused_answers_are_given_back(
    sim: SimProcess, start_gateway: StartGateway
) -> None:
    server = start_gateway(
        sim.url,
        auth="required",
        conversations_per_minute=2,
        quota_answers_per_day=2,
        max_active_per_client=1,
    )
    alice, bob = Client(server, "rate-alice"), Client(server, "rate-bob")
    assert [alice.create(title=t).status_code for t in ("a", "b")] == [201, 201]
    over = alice.create(title="c")
    refused(over, 429, "CLAWWEB_CONVERSATIONS_PER_MINUTE")
    assert 0 < int(over.headers["Retry-After"]) <= 60
    assert sorted(c["title"] for c in alice.conversations()) == ["a", "b"]
    assert bob.create().status_code == 201

    # An answer refused a place in the admission queue (her one at a time is running) is not counted.
    first, second = (c["id"] for c in alice.conversations())
    running = alice.post(first, "long\n#sim " + json.dumps({"tokens": 2000}))
    assert running.status_code == 202
    refused(alice.post(second, "meanwhile"), 429, "CLAWWEB_MAX_ACTIVE_PER_CLIENT")
    assert usage(server, alice.name)["answers_today"] == (1, 2)
    assert alice.conversation(second)["messages"] == []
    alice.call("DELETE", running.json()["generation"]["events_url"].removesuffix("/events"))
    alice.finish(alice.post(second, "now"))
    assert usage(server, alice.name)["answers_today"] == (2, 2)


def test_open_mode_counts_as_one_user(sim: SimProcess, start_gateway: StartGateway) -> None:
    server = start_gateway(sim.url, quota_conversations=2)  # loopback: open mode
    made = [requests.post(server.url + "/api/conversations", json={}, timeout=10) for _ in range(3)]
    assert [r.status_code for r in made[:2]] == [201, 201]
    refused(made[2], 403, "CLAWWEB_QUOTA_CONVERSATIONS")
    report = server.cli("users", "usage")
    assert re.search(r"^\(open mode\)\s+2 of 2\s+0 of 500000000\s+0 of no limit$", report, re.M), report


# --- the bookkeeping, on the store itself ----------------------------------------------------------------------


def brute_force(path: Path, owner: int | None) -> dict[str, int]:
    """What the quota figures must equal: counted from the rows themselves."""
    db = sqlite3.connect(path)
    try:
        conversations, own = db.execute(
            "SELECT count(*), ifnull(sum(length(CAST(title AS BLOB)) + length(CAST(system_prompt AS BLOB))), 0) "
            "FROM conversations WHERE user_id IS ?",
            (owner,),
        ).fetchone()
        (messages,) = db.execute(
            "SELECT ifnull(sum(length(CAST(content AS BLOB)) + length(CAST(thinking AS BLOB))), 0) FROM messages "
            "JOIN conversations ON conversations.id = conversation_id WHERE user_id IS ?",
            (owner,),
        ).fetchone()
    finally:
        db.close()
    return {"conversations": conversations, "bytes": own + messages}


def stored(store: Store, owner: int | None) -> dict[str, int]:
    figures = store.usage(owner, "2024-01-01")
    return {"conversations": figures["conversations"], "bytes": figures["bytes"]}


def test_every_write_keeps_the_figures_and_a_migrated_database_starts_right(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:2], start=1):  # a database from before the quotas
        old.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    old.execute("INSERT INTO conversations VALUES ('c1', 'tïtle', 'm', 'sÿstem', 1, 1, NULL)")
    old.execute("INSERT INTO messages (conversation_id, role, content, created_at) VALUES ('c1', 'user', '量子', 1)")
    old.close()
    store = Store(str(path))
    try:
        assert stored(store, None) == brute_force(path, None) == {"conversations": 1, "bytes": 6 + 7 + 6}
        user = store.add_user("kim", "x")["id"]
        for owner in (None, user):
            kept = store.create_conversation(owner, "m", "t", "prompt")
            gone = store.create_conversation(owner, "m", "", "é" * 100)
            asked = store.add_message(kept["id"], "user", "héllo")
            answer = store.add_message(kept["id"], "assistant", status="streaming")
            store.finish_message(answer["id"], content="an answer", thinking="thoughts")
            store.add_message(gone["id"], "user", "x" * 50)
            store.update_conversation(kept["id"], title="a longer title", system_prompt="")
            tree.remove(store, kept["id"], asked["id"])  # and its answer below it
            store.delete_conversation(gone["id"])  # its messages go with it, and their bytes
            assert stored(store, owner) == brute_force(path, owner)
        assert stored(store, user) == {"conversations": 1, "bytes": len("a longer title")}
        store.execute("DELETE FROM users WHERE id = ?", (user,))  # cascades to the conversations
        assert stored(store, user) == {"conversations": 0, "bytes": 0}
    finally:
        store.close()


def test_the_quota_check_costs_the_same_however_much_is_stored(tmp_path: Path) -> None:
    """The check runs before every write and answer: it must not read what the user stores."""
    store = Store(str(tmp_path / "c.db"))
    try:
        owner = store.add_user("kim", "x")["id"]

        def steps() -> int:
            """SQLite virtual-machine instructions one usage lookup takes."""
            counted = [0]

            def count() -> int:
                counted[0] += 1
                return 0

            db = store.db
            assert isinstance(db, SqliteDatabase)

            def measure() -> None:
                assert db._db is not None
                db._db.set_progress_handler(count, 1)

            db._call(measure)
            store.usage(owner, "2024-01-01")
            db._call(lambda: db._db.set_progress_handler(None, 0) if db._db else None)
            return counted[0]

        def add(n: int) -> None:
            for _ in range(n):
                conversation = store.create_conversation(owner, "m", "title", "p" * 1000)
                store.add_message(conversation["id"], "user", "q" * 2000)

        add(10)
        few = steps()
        add(990)
        assert stored(store, owner)["conversations"] == 1000
        assert steps() == few
    finally:
        store.close()
