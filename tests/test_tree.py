"""Conversations as trees: edit (a sibling user message), regenerate (a sibling answer), continue (in place), the
branch shown, subtree deletion, owners, and the migration from linear conversations. Over a real gunicorn and
the simulator, which records what it was sent (``last_request``); the pure parts in-process."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from clawweb.chat import tree
from clawweb.chat.generations import _added, text_of
from clawweb.simulator import _after, answer_tokens
from clawweb.storage import FIGURES, Store
from clawweb.storage.migrations import SQLITE as MIGRATIONS

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess, sim_line
from .support.sseclient import Event, events


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "50")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, heartbeat_s=0.3, max_active_per_client=50, max_active=50)


class Chat:
    """One conversation of one user (``headers``: an API key in accounts mode), through the API."""

    def __init__(self, gateway: Gateway, headers: dict[str, str] | None = None) -> None:
        self.url, self.headers = gateway.url, headers or {}
        made = self.call("POST", "/api/conversations", json={})
        assert made.status_code == 201, made.text
        self.id = made.json()["id"]
        self.path = f"/api/conversations/{self.id}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url + path, headers=self.headers, timeout=10, **kwargs)

    def start(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.call("POST", f"{self.path}/{route}", json=body)
        assert response.status_code == 202, response.text
        return dict(response.json())

    def ask(self, text: str, directive: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
        """Post a user message, follow its answer to the end; the user message."""
        content = text + sim_line(**(directive or {}))
        started = self.start("messages", {"content": content, "think": False, **body})
        self.follow(started)
        return dict(started["message"])

    def follow(self, started: dict[str, Any], limit: int | None = None) -> list[Event]:
        url = self.url + started["generation"]["events_url"]
        received: list[Event] = []
        with requests.get(url, headers=self.headers, stream=True, timeout=30) as response:
            assert response.status_code == 200
            for event in events(response):
                if event.data_lines:
                    received.append(event)
                    if len(received) == limit:
                        break
        return received

    def shown(self) -> dict[str, Any]:
        return dict(self.call("GET", self.path).json())

    def messages(self) -> list[dict[str, Any]]:
        return list(self.shown()["messages"])

    def tree(self) -> dict[str, Any]:
        return dict(self.call("GET", self.path + "/tree").json())


def sent(sim: SimProcess) -> list[tuple[str, str]]:
    """What the last answer's request to Ollama held: (role, content) of each message."""
    return [(m["role"], m["content"]) for m in sim.stats()["last_request"]["messages"]]


def wait_idle(chat: Chat) -> None:
    deadline = time.monotonic() + 5
    while chat.shown()["generation"] is not None and time.monotonic() < deadline:
        time.sleep(0.05)


# --- edit, regenerate, the branch shown --------------------------------------------------------------------------


def test_edit_adds_a_sibling_and_only_its_path_is_sent(gateway: Gateway, sim: SimProcess) -> None:
    chat = Chat(gateway)
    q1 = chat.ask("one", {"tokens": 3})
    q2 = chat.ask("two", {"tokens": 2})
    a1 = chat.messages()[1]
    edited = chat.ask("two, edited", {"tokens": 4}, parent_id=a1["id"])
    assert edited["parent_id"] == a1["id"]
    a1_text = "".join(answer_tokens(3))
    assert sent(sim) == [("user", q1["content"]), ("assistant", a1_text), ("user", edited["content"])]
    shown = chat.messages()
    assert [m["id"] for m in shown[:3]] == [q1["id"], a1["id"], edited["id"]]
    assert shown[2]["siblings"] == [q2["id"], edited["id"]] and shown[0]["siblings"] == [q1["id"]]
    assert shown[3]["content"] == "".join(answer_tokens(4)) and shown[3]["parent_id"] == edited["id"]

    # Back to the first version: its newest leaf is shown, and the next message goes under it, with its history.
    back = chat.call("PUT", chat.path + "/current", json={"message_id": q2["id"]})
    assert back.status_code == 200
    assert [m["id"] for m in back.json()["messages"]][2] == q2["id"]
    assert back.json()["current_id"] == back.json()["messages"][-1]["id"]
    assert back.json() == chat.shown()
    chat.ask("three", {"tokens": 1})
    assert [role for role, _ in sent(sim)] == ["user", "assistant", "user", "assistant", "user"]
    assert sent(sim)[2] == ("user", q2["content"]) and edited["content"] not in json.dumps(sent(sim))

    # Editing the first message: a new root, sent alone.
    root = chat.ask("zero", {"tokens": 1}, parent_id=None)
    assert root["parent_id"] is None and sent(sim) == [("user", root["content"])]
    assert chat.messages()[0]["siblings"] == [q1["id"], root["id"]]
    whole = chat.tree()
    assert whole["current_id"] == chat.shown()["current_id"]
    assert [m["id"] for m in whole["messages"]] == sorted(m["id"] for m in whole["messages"])
    assert len(whole["messages"]) == 10 and "siblings" not in whole["messages"][0]


def test_regenerate_adds_a_sibling_answer_and_keeps_the_old_one(gateway: Gateway, sim: SimProcess) -> None:
    chat = Chat(gateway)
    question = chat.ask("one", {"tokens": 3})
    first = chat.messages()[1]
    started = chat.start("regenerate", {"think": False})
    answer = started["message"]
    assert (answer["role"], answer["status"], answer["parent_id"]) == ("assistant", "streaming", question["id"])
    assert started["generation"]["message_id"] == answer["id"]
    chat.follow(started)
    assert sent(sim) == [("user", question["content"])]  # the old answer is not in the history
    shown = chat.messages()
    assert [m["id"] for m in shown] == [question["id"], answer["id"]]
    assert shown[1]["siblings"] == [first["id"], answer["id"]] and shown[1]["status"] == "done"
    # An older answer named: one more sibling. A user message named: a new answer to it.
    chat.follow(chat.start("regenerate", {"message_id": first["id"], "think": False}))
    chat.follow(chat.start("regenerate", {"message_id": question["id"], "think": False}))
    assert len(chat.messages()[1]["siblings"]) == 4
    assert [m["content"] for m in chat.tree()["messages"][1:]] == ["".join(answer_tokens(3))] * 4


def test_a_question_left_without_answer_gets_one_as_its_child(gateway: Gateway) -> None:
    chat = Chat(gateway)
    question = chat.ask("one", {"tokens": 2})
    answer = chat.messages()[1]
    after = chat.call("DELETE", f"/api/messages/{answer['id']}")
    assert after.status_code == 200
    assert after.json()["current_id"] == question["id"] and [m["id"] for m in after.json()["messages"]] == [
        question["id"]
    ]
    started = chat.start("regenerate", {"think": False})
    assert started["message"]["parent_id"] == question["id"]
    chat.follow(started)
    assert [m["role"] for m in chat.messages()] == ["user", "assistant"]


# --- continue ---------------------------------------------------------------------------------------------------


def test_continue_a_stopped_answer_appends_to_the_same_message(gateway: Gateway, sim: SimProcess) -> None:
    chat = Chat(gateway)
    started = chat.start("messages", {"content": 'go\n#sim {"tokens": 200, "tps": 50}', "think": False})
    chat.follow(started, limit=5)
    stop = chat.call("DELETE", f"/api/generations/{started['generation']['id']}")
    assert stop.status_code == 200
    stopped = chat.messages()[1]
    assert stopped["status"] == "stopped" and stopped["content"] and stopped["done_reason"] is None
    resumed = chat.start("continue", {})
    assert resumed["message"]["id"] == stopped["id"] and resumed["message"]["status"] == "streaming"
    received = chat.follow(resumed)
    assert received[0].event == "continue"
    assert received[0].json() == {"content": stopped["content"], "thinking": ""}
    assert sent(sim)[-1] == ("assistant", stopped["content"])
    whole = "".join(answer_tokens(200))
    tokens = "".join(e.json()["message"]["content"] for e in received if e.event == "token")
    assert stopped["content"] + tokens == whole
    final = received[-1].json()["message"]
    assert received[-1].event == "done" and final["content"] == whole and final["done_reason"] == "stop"
    assert final["tokens"] == 200 and final["ttft_ms"] == stopped["ttft_ms"] and final["tokens_per_s"] > 0
    shown = chat.messages()
    assert len(shown) == 2 and shown[1]["id"] == stopped["id"] and shown[1]["content"] == whole
    assert chat.call("POST", chat.path + "/continue", json={}).status_code == 409  # complete now


def test_continue_a_length_cut_answer(gateway: Gateway, sim: SimProcess) -> None:
    chat = Chat(gateway)
    chat.ask("go", {"tokens": 10}, options={"num_predict": 4})
    cut = chat.messages()[1]
    assert (cut["done_reason"], cut["content"], cut["tokens"]) == ("length", "".join(answer_tokens(4)), 4)
    received = chat.follow(chat.start("continue", {"message_id": cut["id"]}))
    final = received[-1].json()["message"]
    assert (final["content"], final["tokens"], final["done_reason"]) == ("".join(answer_tokens(10)), 10, "stop")
    assert sim.stats()["last_request"]["messages"][-1] == {"role": "assistant", "content": cut["content"]}


def test_continue_an_interrupted_answer(gateway: Gateway) -> None:
    chat = Chat(gateway)
    chat.ask("go", {"tokens": 8, "error_after": 3})
    failed = chat.messages()[1]
    assert failed["status"] == "error" and failed["content"] == "".join(answer_tokens(3))
    # The directive holds for every request: the continuation fails after 3 more tokens, and can be continued too.
    again = chat.follow(chat.start("continue", {}))[-1].json()["message"]
    assert again["status"] == "error" and again["content"] == "".join(answer_tokens(6))
    final = chat.follow(chat.start("continue", {}))[-1].json()["message"]
    assert final["status"] == "done" and final["error"] is None and final["content"] == "".join(answer_tokens(8))


def test_what_cannot_be_continued_is_409_and_changes_nothing(gateway: Gateway) -> None:
    chat = Chat(gateway)
    assert chat.call("POST", chat.path + "/continue", json={}).status_code == 409  # no messages yet
    question = chat.ask("one", {"tokens": 2}, options={"num_predict": 1})
    cut = chat.messages()[1]
    chat.ask("two", {"tokens": 2})
    before = chat.tree()
    for body in ({}, {"message_id": question["id"]}, {"message_id": cut["id"]}):  # complete; a question; has children
        refused = chat.call("POST", chat.path + "/continue", json=body)
        assert refused.status_code == 409 and refused.json()["error"], body
    running = chat.start("messages", {"content": 'long\n#sim {"tokens": 500, "tps": 20}', "think": False})
    assert chat.call("POST", chat.path + "/continue", json={}).status_code == 409
    chat.call("DELETE", f"/api/generations/{running['generation']['id']}")
    after = chat.tree()
    assert after["messages"][: len(before["messages"])] == before["messages"]


@pytest.mark.parametrize(
    ("method", "route", "body", "status"),
    [
        ("POST", "/continue", {"message_id": "1"}, 400),
        ("POST", "/continue", {"message_id": True}, 400),
        ("POST", "/continue", {"message_id": 10**9}, 404),
        ("POST", "/continue", {"message_id": 2**64}, 400),
        ("POST", "/continue", {"message_id": 0}, 400),
        ("POST", "/regenerate", {"message_id": 10**9}, 404),
        ("POST", "/regenerate", {"model": "nope:1b"}, 404),
        ("POST", "/messages", {"content": "x", "parent_id": 10**9}, 404),
        ("POST", "/messages", {"content": "x", "parent_id": 1.5}, 400),
        ("PUT", "/current", {}, 400),
        ("PUT", "/current", {"message_id": 10**9}, 404),
    ],
)
def test_bad_message_ids_change_nothing(
    gateway: Gateway, sim: SimProcess, method: str, route: str, body: dict[str, Any], status: int
) -> None:
    chat = Chat(gateway)
    chat.ask("one", {"tokens": 1})
    before, requests_before = chat.tree(), sim.stats()["requests"]
    response = chat.call(method, chat.path + route, json=body)
    assert response.status_code == status and isinstance(response.json()["error"], str)
    assert chat.tree() == before and sim.stats()["requests"] == requests_before


# --- delete ----------------------------------------------------------------------------------------------------


def test_delete_removes_the_subtree_but_not_while_an_answer_in_it_runs(gateway: Gateway) -> None:
    chat = Chat(gateway)
    q1 = chat.ask("one", {"tokens": 1})
    q2 = chat.ask("two", {"tokens": 1})
    a1 = chat.messages()[1]
    other = chat.ask("two bis", {"tokens": 1}, parent_id=a1["id"])
    running = chat.start("messages", {"content": 'long\n#sim {"tokens": 500, "tps": 20}', "think": False})
    for busy in (running["message"]["id"], q1["id"], a1["id"], other["id"]):  # the running answer is under each
        refused = chat.call("DELETE", f"/api/messages/{busy}")
        assert refused.status_code == 409 and refused.json()["error"]
    gone = chat.call("DELETE", f"/api/messages/{q2['id']}")  # another branch: allowed while it runs
    assert gone.status_code == 200 and gone.json()["messages"][2]["siblings"] == [other["id"]]
    chat.call("DELETE", f"/api/generations/{running['generation']['id']}")
    wait_idle(chat)
    after = chat.call("DELETE", f"/api/messages/{other['id']}")
    assert after.status_code == 200
    assert [m["id"] for m in after.json()["messages"]] == [q1["id"], a1["id"]]
    assert after.json()["current_id"] == a1["id"] and after.json() == chat.shown()
    assert [m["id"] for m in chat.tree()["messages"]] == [q1["id"], a1["id"]]
    assert chat.call("DELETE", f"/api/messages/{q1['id']}").json()["messages"] == []
    assert chat.call("DELETE", f"/api/messages/{q1['id']}").status_code == 404
    for bad in ("x", "0", "9" * 30, "١"):
        assert chat.call("DELETE", f"/api/messages/{bad}").status_code == 404


# --- owners -----------------------------------------------------------------------------------------------------


def test_another_users_messages_are_404_everywhere(sim: SimProcess, start_gateway: StartGateway) -> None:
    server = start_gateway(sim.url, auth="required")
    alice = Chat(server, {"Authorization": f"Bearer {server.new_user('alice')}"})
    bob = Chat(server, {"Authorization": f"Bearer {server.new_user('bob')}"})
    question = alice.ask("mine", {"tokens": 2}, options={"num_predict": 1})
    answer = alice.messages()[1]
    before = alice.tree()
    for method, path, body in [
        ("GET", alice.path + "/tree", None),
        ("PUT", alice.path + "/current", {"message_id": question["id"]}),
        ("POST", alice.path + "/continue", {}),
        ("POST", alice.path + "/regenerate", {}),
        ("POST", alice.path + "/messages", {"content": "x", "parent_id": answer["id"]}),
        ("DELETE", f"/api/messages/{answer['id']}", None),
        ("DELETE", f"/api/messages/{question['id']}", None),
        # Bob's own conversation, naming Alice's messages:
        ("POST", bob.path + "/messages", {"content": "x", "parent_id": answer["id"]}),
        ("POST", bob.path + "/continue", {"message_id": answer["id"]}),
        ("POST", bob.path + "/regenerate", {"message_id": question["id"]}),
        ("PUT", bob.path + "/current", {"message_id": question["id"]}),
    ]:
        response = bob.call(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
    assert alice.tree() == before and bob.tree() == {"current_id": None, "messages": []}
    assert alice.call("DELETE", f"/api/messages/{answer['id']}").status_code == 200


# --- migration ----------------------------------------------------------------------------------------------------


LINEAR = ["量子计算是什么", "An answer about qubits", "And then?", "More"]


def linear_database(path: Path) -> None:
    """A database as the release before trees wrote it (schema 4): two linear conversations."""
    db = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:4], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    for conversation, texts in (
        ("c1", ["量子计算是什么", "An answer about qubits", "And then?", "More"]),
        ("c2", ["x"]),
    ):
        db.execute(
            "INSERT INTO conversations (id, title, model, created_at, updated_at) VALUES (?, ?, 'qwen3:32b', 1, 1)",
            (conversation, f"title {conversation}"),
        )
        for index, text in enumerate(texts):
            db.execute(
                "INSERT INTO messages (conversation_id, role, content, created_at) VALUES (?, ?, ?, ?)",
                (conversation, "user" if index % 2 == 0 else "assistant", text, index),
            )
    db.close()


def test_a_linear_database_migrates_to_chains(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    linear_database(path)
    store = Store(str(path))
    try:
        messages = tree.everything(store, "c1")
        assert [m["parent_id"] for m in messages] == [None] + [m["id"] for m in messages[:-1]]
        assert store.conversation("c1", None)["current_id"] == messages[-1]["id"]  # type: ignore[index]
        assert [m["content"] for m in tree.branch(store, store.conversation("c1", None) or {})] == [
            m["content"] for m in messages
        ]
        hits = store.execute("SELECT rowid FROM messages_search WHERE messages_search MATCH '量子计'")
        assert [hit["rowid"] for hit in hits] == [messages[0]["id"]]
        titles = store.execute("SELECT conversation_id FROM titles_search WHERE titles_search MATCH ?", ('"le c2"',))
        assert [hit["conversation_id"] for hit in titles] == ["c2"]
    finally:
        store.close()


def test_a_migrated_conversation_is_shown_and_goes_on(
    tmp_path: Path, sim: SimProcess, start_gateway: StartGateway
) -> None:
    path = tmp_path / "old.db"
    linear_database(path)
    server = start_gateway(sim.url, db=str(path))
    shown = requests.get(server.url + "/api/conversations/c1", timeout=5).json()
    assert [m["content"] for m in shown["messages"]] == [
        "量子计算是什么",
        "An answer about qubits",
        "And then?",
        "More",
    ]
    assert all(m["siblings"] == [m["id"]] for m in shown["messages"])
    assert shown["current_id"] == shown["messages"][-1]["id"]
    chat = Chat(server)
    chat.id, chat.path = "c1", "/api/conversations/c1"
    chat.ask("next", {"tokens": 1})
    assert [role for role, _ in sent(sim)] == ["user", "assistant", "user", "assistant", "user"]


# --- in-process: the tree queries, the figures, the log, the simulator ---------------------------------------------


def test_tree_queries(store: Store) -> None:
    conversation = store.create_conversation(None, "qwen3:32b")
    cid = conversation["id"]
    q = store.add_message(cid, "user", "q", parent_id=None)
    a = store.add_message(cid, "assistant", "a")
    b = store.add_message(cid, "assistant", "b", parent_id=q["id"])
    q2 = store.add_message(cid, "user", "q2", parent_id=a["id"])
    assert [m["id"] for m in tree.path(store, cid, q2["id"])] == [q["id"], a["id"], q2["id"]]
    assert tree.show(store, cid, b["id"]) == b["id"]  # a leaf: itself
    assert tree.show(store, cid, a["id"]) == q2["id"]  # the newest leaf under it
    assert tree.show(store, cid, q["id"]) == q2["id"]
    shown = tree.branch(store, store.conversation(cid, None) or {})
    assert [(m["id"], m["siblings"]) for m in shown] == [
        (q["id"], [q["id"]]),
        (a["id"], [a["id"], b["id"]]),
        (q2["id"], [q2["id"]]),
    ]
    assert sorted(tree.remove(store, cid, a["id"])) == [a["id"], q2["id"]]
    assert (store.conversation(cid, None) or {})["current_id"] == b["id"]  # the branch left beside it
    assert tree.in_conversation(store, cid, a["id"]) is None and tree.in_conversation(store, "other", b["id"]) is None


def test_a_continued_answers_figures_add_up() -> None:
    none = dict.fromkeys(FIGURES)
    before = {**none, "queue_ms": 900.0, "ttft_ms": 120.0, "tokens": 10, "tokens_per_s": 20.0}  # 0.5 s
    after = {**none, "queue_ms": 5.0, "load_ms": 3000.0, "ttft_ms": 80.0, "tokens": 30, "tokens_per_s": 10.0}  # 3 s
    added = _added(before, after)
    assert added["queue_ms"] == 900.0 and added["ttft_ms"] == 120.0 and added["tokens"] == 40
    assert added["load_ms"] == 3000.0  # the first part had none: the continuation's wait is the one there was
    assert added["tokens_per_s"] == pytest.approx(40 / 3.5, abs=0.01)
    stopped = _added(before, {**after, "tokens": 0, "tokens_per_s": None})  # stopped before a new token
    assert (stopped["tokens"], stopped["tokens_per_s"]) == (10, 20.0)
    fresh = _added(none, after)
    assert (fresh["ttft_ms"], fresh["tokens"], fresh["tokens_per_s"]) == (80.0, 30, 10.0)


def test_text_of_a_continued_log_starts_with_its_prefix() -> None:
    entries = [
        ("1", "continue", json.dumps({"content": "Hello", "thinking": "hm"}).encode()),
        ("2", "token", b'{"message":{"role":"assistant","content":" world"},"done":false}'),
    ]
    assert text_of(entries) == ("Hello world", "hm")


def test_the_simulator_continues_from_a_token_boundary_only() -> None:
    tokens = answer_tokens(6)
    assert _after(tokens, "".join(tokens[:2])) == tokens[2:]
    assert _after(tokens, "".join(tokens)) == []
    assert _after(tokens, "") == tokens
    assert _after(tokens, "something else") == tokens
    assert _after(tokens, "".join(tokens[:2])[:-1]) == tokens  # mid-token: not this answer's beginning
