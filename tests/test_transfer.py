"""Export and import: ChatGPT's mapping tree and clawweb's format in-process, the routes under the real gunicorn
with two users (owner only, round trip, re-import), limits in-process, and ``clawweb conversations adopt``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from clawweb import create_app
from clawweb.chat import transfer
from clawweb.errors import ApiError
from clawweb.services import services

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway


def node(key: str, parent: str | None, children: list[str], role: str | None, text: Any = None, **extra: Any) -> Any:
    message = None
    if role is not None:
        content = {
            "content_type": extra.pop("content_type", "text"),
            "parts": text if isinstance(text, list) else [text],
        }
        message = {"id": key, "author": {"role": role}, "content": content, "create_time": extra.pop("t", None)}
        message["metadata"] = extra
    return {"id": key, "parent": parent, "children": children, "message": message}


def chatgpt_export() -> list[dict[str, Any]]:
    """root → system (hidden) → user q1 → {answer a1, edited: user q1b → tool call → answer a2 (current)}."""
    mapping = {
        "root": node("root", None, ["sys"], None),
        "sys": node("sys", "root", ["q1"], "system", "", is_visually_hidden_from_conversation=True),
        "q1": node("q1", "sys", ["a1", "q1b"], "user", "What is 中文?", t=10.0),
        "a1": node("a1", "q1", [], "assistant", "Chinese.", t=11.0, model_slug="gpt-4o"),
        "q1b": node(
            "q1b",
            "q1",
            ["tool"],
            "user",
            ["Look it up ", {"asset_pointer": "file"}, "please"],
            t=12.0,
            content_type="multimodal_text",
        ),
        "tool": node("tool", "q1b", ["a2"], "tool", "search results"),
        "a2": node("a2", "tool", ["code"], "assistant", "It means Chinese.", t=13.0, model_slug="o3"),
        "code": node("code", "a2", [], "assistant", "print(1)", content_type="code"),
    }
    conversation = {
        "id": "c-1",
        "title": "Chinese / 中文 <script>",
        "create_time": 9.0,
        "update_time": 14.0,
        "mapping": mapping,
        "current_node": "code",
    }
    return [conversation, {**conversation, "id": "c-2", "title": "second"}]


def test_chatgpt_mapping_keeps_the_chat_and_moves_children_up_past_what_is_left_out() -> None:
    first = transfer.parse(chatgpt_export(), 1000)[0]
    assert first["source"] == "chatgpt:c-1" and first["title"] == "Chinese / 中文 <script>"
    shape = [(m["role"], m["content"], m["parent"], m["model"]) for m in first["messages"]]
    assert shape == [
        ("user", "What is 中文?", None, None),  # the hidden system node and the root are left out
        ("assistant", "Chinese.", 0, "gpt-4o"),
        ("user", "Look it up please", 0, None),  # multimodal: its strings
        ("assistant", "It means Chinese.", 2, "o3"),  # under the user message: the tool node is left out
    ]
    assert first["current"] == 3  # current_node was the code node: the answer it hangs under


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"format": "clawweb", "version": 2, "conversations": []}, "version"),
        ({"format": "clawweb", "version": 1, "conversations": {}}, "conversations must be a list"),
        (
            {"format": "clawweb", "version": 1, "conversations": [{"id": "a", "messages": [{"role": "x"}]}]},
            "conversations[0].messages[0].role",
        ),
        (
            {
                "format": "clawweb",
                "version": 1,
                "conversations": [{"id": "a", "messages": [{"id": 1, "parent_id": 7, "role": "user"}]}],
            },
            "messages[0].parent_id",
        ),
        ({"format": "clawweb", "version": 1, "conversations": [{"id": "a", "title": 5}]}, "conversations[0].title"),
        ({"format": "clawweb", "version": 1, "conversations": [{"messages": []}]}, "conversations[0].id"),
        ([{"title": "no mapping"}], "[0] must be a ChatGPT conversation"),
        ([{"mapping": {}}], "[0].id"),
        ({"something": "else"}, "expected clawweb's export"),
    ],
)
def test_malformed_files_are_a_400_naming_what_is_wrong(data: Any, where: str) -> None:
    with pytest.raises(ApiError) as refused:
        transfer.parse(data, 1000)
    assert refused.value.status == 400 and where in refused.value.message


@pytest.mark.parametrize("title", ['a"b\r\nX-Evil: 1', "../../etc/passwd", "", "中文 标题", "\x00;filename=x"])
def test_attachment_names_are_safe_whatever_the_title(title: str) -> None:
    value = transfer.attachment(title, "md")
    ascii_part = value.split(";")[1]
    assert value.isascii() and "\r" not in value and "\n" not in value and "/" not in value
    assert ascii_part.count('"') == 2 and value.count(";") == 2


# --- limits, in-process ------------------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"db": str(tmp_path / "c.db"), "quota_conversations": 2, "max_import_bytes": 100_000})
    yield app
    services(app).close()


def test_an_import_over_a_quota_imports_nothing_and_names_the_quota(small: Flask) -> None:
    client: FlaskClient = small.test_client()
    client.post("/api/conversations", json={"title": "kept"})
    refused = client.post("/api/import", json=chatgpt_export())
    assert refused.status_code == 403 and "CLAWWEB_QUOTA_CONVERSATIONS" in refused.get_json()["error"]
    assert len(client.get("/api/conversations").get_json()["conversations"]) == 1
    too_big = client.post("/api/import", data=b"[" + b" " * 100_000 + b"]")
    assert too_big.status_code == 413 and "CLAWWEB_MAX_IMPORT_BYTES" in too_big.get_json()["error"]
    assert client.post("/api/import", data=b"[{").status_code == 400


# --- over HTTP ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(start_module_simulator: StartSimulator, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(start_module_simulator().url, auth="required")


class User:
    def __init__(self, gateway: Gateway, name: str) -> None:
        self.url, self.headers = gateway.url, {"Authorization": f"Bearer {gateway.new_user(name)}"}

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url + path, headers=self.headers, timeout=20, **kwargs)

    def ids(self) -> list[str]:
        return [c["id"] for c in self.call("GET", "/api/conversations").json()["conversations"]]


def shape(export: dict[str, Any]) -> list[Any]:
    """A conversation's tree without the ids of the database it came from."""
    out = []
    for conversation in export["conversations"]:
        index = {m["id"]: n for n, m in enumerate(conversation["messages"])}
        messages = [(index.get(m["parent_id"]), m["role"], m["content"], m["model"]) for m in conversation["messages"]]
        out.append((conversation["title"], index[conversation["current_id"]], messages))
    return sorted(out)


def test_import_export_round_trip_between_two_users(gateway: Gateway) -> None:
    alice, bob = User(gateway, "alice"), User(gateway, "bob")
    first = alice.call("POST", "/api/import", json=chatgpt_export())
    assert first.json() == {"imported": 2, "skipped": 0, "messages": 8}
    assert alice.call("POST", "/api/import", json=chatgpt_export()).json() == {
        "imported": 0,
        "skipped": 2,
        "messages": 0,
    }
    conversation_id = alice.ids()[0]
    shown = alice.call("GET", f"/api/conversations/{conversation_id}").json()
    assert shown["current_id"] == max(m["id"] for m in shown["messages"])

    markdown = alice.call("GET", f"/api/conversations/{conversation_id}/export", params={"format": "md"})
    assert markdown.headers["Content-Type"].startswith("text/markdown")
    assert markdown.headers["Content-Disposition"].startswith('attachment; filename="clawweb-')
    text = markdown.text
    assert "## User\n\nLook it up please" in text and "## Assistant (o3)\n\nIt means Chinese." in text
    assert "Chinese.\n" in text and "## Assistant (gpt-4o)" not in text  # the branch shown only
    for path in (f"/api/conversations/{conversation_id}/export", f"/api/conversations/{conversation_id}"):
        assert bob.call("GET", path).status_code == 404
    assert alice.call("GET", f"/api/conversations/{conversation_id}/export?format=pdf").status_code == 400

    everything = alice.call("GET", "/api/export")
    assert everything.status_code == 200 and "attachment" in everything.headers["Content-Disposition"]
    exported = everything.json()
    assert exported["format"] == "clawweb" and exported["version"] == 1 and len(exported["conversations"]) == 2
    moved = bob.call("POST", "/api/import", data=everything.content)
    assert moved.json() == {"imported": 2, "skipped": 0, "messages": 8}
    assert shape(bob.call("GET", "/api/export").json()) == shape(exported)
    assert bob.call("POST", "/api/import", data=everything.content).json()["skipped"] == 2
    # alice's own file sent back imports nothing twice either
    assert alice.call("POST", "/api/import", data=everything.content).json()["imported"] == 0
    one = alice.call("GET", f"/api/conversations/{conversation_id}/export", params={"format": "json"}).json()
    assert len(one["conversations"]) == 1 and len(one["conversations"][0]["messages"]) == 4


def test_thinking_is_a_collapsed_details_block(gateway: Gateway) -> None:
    carol = User(gateway, "carol")
    messages = [
        {"id": 1, "parent_id": None, "role": "user", "content": "hi"},
        {"id": 2, "parent_id": 1, "role": "assistant", "content": "hello", "thinking": "greet </details> back"},
    ]
    body = {"format": "clawweb", "version": 1, "conversations": [{"id": "x", "title": "t", "messages": messages}]}
    assert carol.call("POST", "/api/import", data=json.dumps(body)).json()["imported"] == 1
    text = carol.call("GET", f"/api/conversations/{carol.ids()[0]}/export").text
    assert "<details>\n<summary>Thinking</summary>\n\ngreet &lt;/details> back\n\n</details>\n\nhello" in text


# --- adopting ----------------------------------------------------------------------------------------------------


def test_open_modes_conversations_are_adopted_and_the_start_up_log_says_how(
    start_simulator: StartSimulator, start_gateway: StartGateway, tmp_path: Path
) -> None:
    sim, db = start_simulator(), tmp_path / "shared.db"
    open_mode = start_gateway(sim.url, db=db)
    made = [requests.post(open_mode.url + "/api/conversations", json={"title": t}, timeout=5).json() for t in "ab"]
    teams = start_gateway(sim.url, db=db, auth="required")
    assert "2 conversation(s) made in open mode have no owner" in teams.log
    assert "clawweb conversations adopt --to NAME" in teams.log
    ann = {"Authorization": f"Bearer {teams.new_user('ann')}"}
    assert requests.get(teams.url + "/api/conversations", headers=ann, timeout=5).json()["conversations"] == []
    assert "adopted 1 conversation(s)" in teams.cli("conversations", "adopt", "--to", "ann", "--id", made[0]["id"])
    assert "adopted 1 conversation(s)" in teams.cli("conversations", "adopt", "--to", "ann")
    seen = requests.get(teams.url + "/api/conversations", headers=ann, timeout=5).json()["conversations"]
    assert sorted(c["id"] for c in seen) == sorted(c["id"] for c in made)
    usage = teams.cli("users", "usage", "ann")
    assert "2 of 10000" in usage  # the quota figures moved with them
    with pytest.raises(RuntimeError, match="no user 'nobody'"):
        teams.cli("conversations", "adopt", "--to", "nobody")


def long_chatgpt_chain(nodes: int) -> list[dict[str, Any]]:
    """One ChatGPT conversation of ``nodes`` messages in a chain: seconds of decoding and converting."""
    keys = [f"n{i}" for i in range(nodes)]
    mapping = {
        key: node(
            key,
            keys[i - 1] if i else None,
            [keys[i + 1]] if i + 1 < nodes else [],
            "user" if i % 2 == 0 else "assistant",
            f"message {i}",
        )
        for i, key in enumerate(keys)
    }
    return [{"id": "long", "title": "long", "create_time": 1.0, "mapping": mapping, "current_node": keys[-1]}]


def test_a_large_import_does_not_stop_the_worker_serving_others(gateway: Gateway) -> None:
    """The import is decoded off the event loop: requests to the same (single) worker are answered meanwhile.

    Measured, not timed: the longest wait for /healthz during the import against the import's own duration. On
    the event loop, one wait lasts as long as the whole decoding (most of the import); in a thread, the loop
    runs between bytecodes."""
    dave = User(gateway, "dave")
    body = json.dumps(long_chatgpt_chain(30_000)).encode()
    waits: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with requests.Session() as session:
            while not done.is_set():
                started = time.monotonic()
                assert session.get(gateway.url + "/healthz", timeout=60).status_code == 200
                waits.append(time.monotonic() - started)
                time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        started = time.monotonic()
        response = dave.call("POST", "/api/import", data=body)
        took = time.monotonic() - started
    finally:
        done.set()
        poller.join()
    assert response.status_code == 200, response.text
    assert response.json()["messages"] == 30_000
    assert len(waits) > 5  # the poller ran all along
    assert max(waits) < took / 3, (max(waits), took)
