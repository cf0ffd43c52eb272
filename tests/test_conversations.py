"""Conversations and resumable generations, under a real gunicorn gevent in front of the simulator."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import pytest
import requests

from clawweb.simulator import answer_tokens, thinking_tokens

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess
from .support.sseclient import Event, events


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "50")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(
        sim.url,
        heartbeat_s=0.3,
        max_active_per_client=50,
        max_active=50,
    )


@pytest.fixture(autouse=True)
def fresh_counters(sim: SimProcess) -> None:
    sim.reset()


def new_conversation(gateway: Gateway, **fields: Any) -> dict[str, Any]:
    response = requests.post(gateway.url + "/api/conversations", json=fields, timeout=5)
    assert response.status_code == 201
    return dict(response.json())


def ask(gateway: Gateway, conversation_id: str, directive: dict[str, Any], **knobs: Any) -> dict[str, Any]:
    content = f"hello\n#sim {json.dumps(directive)}"
    response = requests.post(
        f"{gateway.url}/api/conversations/{conversation_id}/messages",
        json={"content": content, "think": False, **knobs},
        timeout=5,
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


def follow(
    gateway: Gateway,
    generation: dict[str, Any],
    after: int | None = None,
    header: bool = True,
    limit: int | None = None,
) -> list[Event]:
    """Read events (data-bearing ones) until the stream ends or ``limit`` events were received."""
    url, headers = gateway.url + generation["events_url"], {"Accept": "text/event-stream"}
    if after is not None and header:
        headers["Last-Event-ID"] = str(after)
    elif after is not None:
        url += f"?after={after}"
    received: list[Event] = []
    with requests.get(url, headers=headers, stream=True, timeout=30) as response:
        assert response.status_code == 200
        for event in events(response):
            if event.data_lines:
                received.append(event)
                if limit is not None and len(received) == limit:
                    break
    return received


def text_of(received: list[Event]) -> str:
    return "".join(e.json()["message"]["content"] for e in received if e.event == "token")


def test_answer_streams_then_is_stored(gateway: Gateway) -> None:
    conversation = new_conversation(gateway, system_prompt="Be brief.")
    started = ask(gateway, conversation["id"], {"tokens": 12})
    assert started["message"]["role"] == "user"
    received = follow(gateway, started["generation"])
    assert [int(e.id or 0) for e in received] == list(range(1, len(received) + 1))
    assert text_of(received) == "".join(answer_tokens(12))
    done = received[-1]
    assert done.event == "done"
    stored = done.json()["message"]
    assert stored["status"] == "done" and stored["content"] == "".join(answer_tokens(12))
    assert stored["tokens"] == 12 and stored["ttft_ms"] > 0 and stored["tokens_per_s"] > 0
    full = requests.get(f"{gateway.url}/api/conversations/{conversation['id']}", timeout=5).json()
    assert [m["role"] for m in full["messages"]] == ["user", "assistant"]
    assert full["title"].startswith("hello")
    assert full["generation"] is None


def test_second_turn_sends_the_history(gateway: Gateway, sim: SimProcess) -> None:
    conversation = new_conversation(gateway, system_prompt="Be brief.")
    follow(gateway, ask(gateway, conversation["id"], {"tokens": 3})["generation"])
    follow(gateway, ask(gateway, conversation["id"], {"tokens": 2})["generation"])
    sent = sim.stats()["last_request"]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["messages"][2]["content"] == "".join(answer_tokens(3))


def test_a_system_prompt_sent_with_a_message_is_used_and_saved_with_it_or_not_at_all(
    gateway: Gateway, sim: SimProcess
) -> None:
    """The page sends the system prompt as it is in its box (edited, perhaps not saved): a message that starts
    saves it in the same transaction; one that is refused leaves the stored prompt as it was."""
    conversation = new_conversation(gateway, system_prompt="Be brief.")
    cid = conversation["id"]

    def stored_prompt() -> str:
        return str(requests.get(f"{gateway.url}/api/conversations/{cid}", timeout=5).json()["system_prompt"])

    running = ask(gateway, cid, {"tokens": 400, "tps": 40}, system_prompt="Answer in French.")
    assert sim.stats()["last_request"]["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert stored_prompt() == "Answer in French."
    refused = requests.post(
        f"{gateway.url}/api/conversations/{cid}/messages",
        json={"content": "again", "system_prompt": "Answer in German."},
        timeout=5,
    )
    assert refused.status_code == 409  # one answer at a time: nothing of it is stored, the prompt neither
    assert stored_prompt() == "Answer in French."
    requests.delete(f"{gateway.url}/api/generations/{running['generation']['id']}", timeout=5)
    follow(gateway, running["generation"])

    wrong = requests.post(
        f"{gateway.url}/api/conversations/{cid}/messages", json={"content": "x", "system_prompt": 3}, timeout=5
    )
    assert wrong.status_code == 400 and "system_prompt" in wrong.json()["error"]
    regenerated = requests.post(
        f"{gateway.url}/api/conversations/{cid}/regenerate", json={"system_prompt": ""}, timeout=5
    )
    assert regenerated.status_code == 202, regenerated.text
    follow(gateway, regenerated.json()["generation"])
    assert [m["role"] for m in sim.stats()["last_request"]["messages"]] == ["user"]  # "" is no system prompt
    assert stored_prompt() == ""


@pytest.mark.parametrize("header", [True, False], ids=["Last-Event-ID", "after"])
def test_reconnect_resumes_exactly(gateway: Gateway, header: bool) -> None:
    conversation = new_conversation(gateway)
    generation = ask(gateway, conversation["id"], {"tokens": 60, "tps": 40})["generation"]
    first = follow(gateway, generation, limit=7)
    rest = follow(gateway, generation, after=int(first[-1].id or 0), header=header)
    assert text_of(first + rest) == "".join(answer_tokens(60))
    assert rest[-1].event == "done"


def test_two_readers_at_different_offsets(gateway: Gateway) -> None:
    conversation = new_conversation(gateway)
    generation = ask(gateway, conversation["id"], {"tokens": 40, "tps": 40})["generation"]
    results: dict[str, list[Event]] = {}

    def read(name: str, after: int | None) -> None:
        results[name] = follow(gateway, generation, after=after)

    # The log begins with two status entries (prompt, writing), then the tokens: after entry 7, the 6th token on.
    late = threading.Thread(target=read, args=("late", 7))
    early = threading.Thread(target=read, args=("early", None))
    early.start()
    time.sleep(0.3)
    late.start()
    early.join(10)
    late.join(10)
    expected = "".join(answer_tokens(40))
    assert text_of(results["early"]) == expected
    assert text_of(results["late"]) == expected[len("".join(answer_tokens(5))) :]


def test_stop_closes_upstream_and_stores_the_partial_answer(gateway: Gateway, sim: SimProcess) -> None:
    conversation = new_conversation(gateway)
    generation = ask(gateway, conversation["id"], {"tokens": 500, "tps": 20})["generation"]
    follow(gateway, generation, limit=5)
    stopped_at = time.monotonic()
    stop = requests.delete(gateway.url + f"/api/generations/{generation['id']}", timeout=5)
    assert stop.status_code == 200 and stop.json()["status"] == "stopped"
    while sim.stats()["disconnects"] < 1 and time.monotonic() - stopped_at < 1:
        time.sleep(0.02)
    assert sim.stats()["disconnects"] == 1  # the simulator saw its request closed within a second
    rest = follow(gateway, generation, after=5)
    assert rest[-1].event == "stopped"
    stored = rest[-1].json()["message"]
    assert stored["status"] == "stopped"
    assert "".join(answer_tokens(500)).startswith(stored["content"]) and len(stored["content"]) > 0
    assert text_of(follow(gateway, generation)) == stored["content"]  # the log and the store agree


def test_answer_finishes_without_any_reader(gateway: Gateway, sim: SimProcess) -> None:
    conversation = new_conversation(gateway)
    ask(gateway, conversation["id"], {"tokens": 10})  # the tab closed at once and never came back
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        messages = requests.get(f"{gateway.url}/api/conversations/{conversation['id']}", timeout=5).json()["messages"]
        if messages[-1]["status"] == "done":
            break
        time.sleep(0.05)
    assert messages[-1]["content"] == "".join(answer_tokens(10))
    assert sim.stats()["disconnects"] == 0


def test_regenerate_keeps_the_old_answer_beside_the_new(gateway: Gateway) -> None:
    conversation = new_conversation(gateway)
    follow(gateway, ask(gateway, conversation["id"], {"tokens": 3})["generation"])
    old = requests.get(f"{gateway.url}/api/conversations/{conversation['id']}", timeout=5).json()["messages"][-1]
    response = requests.post(f"{gateway.url}/api/conversations/{conversation['id']}/regenerate", json={}, timeout=5)
    assert response.status_code == 202
    follow(gateway, response.json()["generation"])
    messages = requests.get(f"{gateway.url}/api/conversations/{conversation['id']}", timeout=5).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[-1]["content"] == "".join(answer_tokens(3))
    assert messages[-1]["siblings"] == [old["id"], response.json()["message"]["id"]]


def test_thinking_is_stored_apart(gateway: Gateway) -> None:
    conversation = new_conversation(gateway)
    received = follow(
        gateway, ask(gateway, conversation["id"], {"tokens": 3, "think_tokens": 4}, think=True)["generation"]
    )
    stored = received[-1].json()["message"]
    assert stored["thinking"] == "".join(thinking_tokens(4))
    assert stored["content"] == "".join(answer_tokens(3))


def test_conversation_crud_and_pagination(gateway: Gateway) -> None:
    made = [new_conversation(gateway, title=f"t{i}") for i in range(3)]
    page = requests.get(gateway.url + "/api/conversations?limit=2", timeout=5).json()
    assert [c["id"] for c in page["conversations"]] == [made[2]["id"], made[1]["id"]]  # newest first
    assert page["next_offset"] == 2
    renamed = requests.patch(
        f"{gateway.url}/api/conversations/{made[0]['id']}",
        json={"title": "Renamed", "system_prompt": "Answer in French."},
        timeout=5,
    ).json()
    assert renamed["title"] == "Renamed" and renamed["system_prompt"] == "Answer in French."
    assert requests.delete(f"{gateway.url}/api/conversations/{made[0]['id']}", timeout=5).status_code == 204
    assert requests.get(f"{gateway.url}/api/conversations/{made[0]['id']}", timeout=5).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/api/conversations/nope", None, 404),
        ("PATCH", "/api/conversations/nope", {"title": "x"}, 404),
        ("DELETE", "/api/conversations/nope", None, 404),
        ("POST", "/api/conversations/nope/messages", {"content": "x"}, 404),
        ("GET", "/api/generations/nope", None, 404),
        ("GET", "/api/generations/nope/events", None, 404),
        ("DELETE", "/api/generations/nope", None, 404),
        ("POST", "/api/conversations", {"title": 5}, 400),
        ("POST", "/api/conversations", {"model": ""}, 400),
        ("GET", "/api/conversations?limit=0", None, 400),
        ("GET", "/api/conversations?limit=x", None, 400),
    ],
)
def test_bad_ids_and_bodies(gateway: Gateway, method: str, path: str, body: Any, status: int) -> None:
    response = requests.request(method, gateway.url + path, json=body, timeout=5)
    assert response.status_code == status
    assert isinstance(response.json()["error"], str)


def test_malformed_message_requests(gateway: Gateway) -> None:
    conversation = new_conversation(gateway)
    url = f"{gateway.url}/api/conversations/{conversation['id']}/messages"
    for body, status in [
        (b"{", 400),
        (b'{"content": ""}', 400),
        (b'{"content": 3}', 400),
        (b'{"content": "x", "think": "maybe"}', 400),
        (b'{"content": "x", "model": "nope:1b"}', 404),
        (b'{"content": "x", "options": {"temperature": "hot"}}', 400),
    ]:
        response = requests.post(url, data=body, timeout=5)
        assert (response.status_code, "error" in response.json()) == (status, True), body
    assert requests.get(f"{gateway.url}/api/conversations/{conversation['id']}", timeout=5).json()["messages"] == []
    running = ask(gateway, conversation["id"], {"tokens": 100, "tps": 20})
    busy = requests.post(url, json={"content": "again"}, timeout=5)
    assert busy.status_code == 409
    requests.delete(gateway.url + f"/api/generations/{running['generation']['id']}", timeout=5)
    bad_cursor = requests.get(gateway.url + running["generation"]["events_url"] + "?after=x", timeout=5)
    assert bad_cursor.status_code == 400


def test_finished_generation_with_nothing_left_is_204(gateway: Gateway) -> None:
    conversation = new_conversation(gateway)
    generation = ask(gateway, conversation["id"], {"tokens": 2})["generation"]
    last = int(follow(gateway, generation)[-1].id or 0)
    response = requests.get(gateway.url + generation["events_url"], headers={"Last-Event-ID": str(last)}, timeout=5)
    assert response.status_code == 204  # EventSource stops reconnecting


def test_worker_restart_mid_answer_ends_cleanly_and_keeps_the_partial_text(
    sim: SimProcess, start_gateway: StartGateway
) -> None:
    server = start_gateway(sim.url, heartbeat_s=0.3)
    conversation = new_conversation(server)
    generation = ask(server, conversation["id"], {"tokens": 1000, "tps": 20})["generation"]
    with requests.get(server.url + generation["events_url"], stream=True, timeout=10) as response:
        reader = events(response)
        next(e for e in reader if e.event == "token")
        server.signal(signal.SIGHUP)
        rest = [e for e in reader if e.data_lines]
    assert rest[-1].event == "error"
    assert rest[-1].json()["error"] == "the gateway is restarting; please retry"
    partial = rest[-1].json()["message"]
    assert partial["status"] == "error" and partial["content"]
    assert "".join(answer_tokens(1000)).startswith(partial["content"])

    def stored() -> dict[str, Any]:
        return dict(requests.get(f"{server.url}/api/conversations/{conversation['id']}", timeout=5).json())

    deadline = time.monotonic() + 5  # the new worker serves the same conversation from the database
    while time.monotonic() < deadline:
        try:
            if stored()["messages"][-1]["content"] == partial["content"]:
                break
        except (requests.RequestException, KeyError):
            pass
        time.sleep(0.1)
    assert stored()["messages"][-1]["status"] == "error"


def test_cancel_without_readers_when_configured(sim: SimProcess, start_gateway: StartGateway) -> None:
    server = start_gateway(sim.url, cancel_without_readers_s=0.5)
    conversation = new_conversation(server)
    ask(server, conversation["id"], {"tokens": 1000, "tps": 20})
    deadline = time.monotonic() + 5
    while sim.stats()["disconnects"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.stats()["disconnects"] == 1
    messages = requests.get(f"{server.url}/api/conversations/{conversation['id']}", timeout=5).json()["messages"]
    assert messages[-1]["status"] == "stopped"
