"""Redis as the shared engine: two gateway processes (and two workers of one) on one real redis-server.

A reader that reconnects to the other process resumes exactly; a stop sent to one process stops the answer
the other runs; the admission limits hold across both; and without Redis, gunicorn refuses a second worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, expect

from clawweb.simulator import answer_tokens

from .support.factories import StartGateway, StartRedis, StartSimulator
from .support.servers import BIN, ROOT, Gateway, RedisServer, wait_for
from .support.simproc import SimProcess, chat
from .support.sseclient import Event, content_of, events

SSE = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def redis_server(start_module_redis: StartRedis) -> RedisServer:
    return start_module_redis()


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "40")


@pytest.fixture(scope="module")
def pair(
    redis_server: RedisServer,
    sim: SimProcess,
    tmp_path_factory: pytest.TempPathFactory,
    start_module_gateway: StartGateway,
) -> list[Gateway]:
    """Two gateways, as on two hosts: one database file (as a shared volume would be), one Redis."""
    db = tmp_path_factory.mktemp("pair") / "clawweb.db"
    shared = {"redis_url": redis_server.url, "db": str(db), "heartbeat_s": 0.3}
    limits = {"max_active": 1, "max_queue": 4, "max_active_per_client": 2, "trusted_proxies": 1, "auth": "off"}
    return [start_module_gateway(sim.url, **shared, **limits) for _ in (1, 2)]


def start_answer(gateway: Gateway, directive: dict[str, Any]) -> dict[str, Any]:
    conversation = requests.post(gateway.url + "/api/conversations", json={}, timeout=5).json()
    content = f"hello\n#sim {json.dumps(directive)}"
    response = requests.post(
        f"{gateway.url}/api/conversations/{conversation['id']}/messages",
        json={"content": content, "think": False},
        timeout=5,
    )
    assert response.status_code == 202, response.text
    return dict(response.json()["generation"])


def read_events(
    gateway: Gateway, generation: dict[str, Any], after: str | None, limit: int = 10_000, in_url: bool = False
) -> list[Event]:
    """Events after ``after``: sent as ``Last-Event-ID`` (an EventSource reconnecting), or ``in_url`` as ``?after=``
    (the page opening a new EventSource after a reload)."""
    headers = {"Last-Event-ID": after} if after and not in_url else {}
    url = gateway.url + generation["events_url"] + (f"?after={after}" if after and in_url else "")
    received: list[Event] = []
    with requests.get(url, headers=headers, stream=True, timeout=30) as response:
        if response.status_code == 204:
            return received
        for event in events(response):
            if event.data_lines:
                received.append(event)
                if len(received) >= limit or event.event in ("done", "stopped", "error"):
                    break
    return received


def tokens_of(received: list[Event]) -> str:
    return "".join(json.loads(e.data)["message"].get("content", "") for e in received if e.event == "token")


@pytest.mark.parametrize("in_url", [False, True], ids=["Last-Event-ID", "after"])
def test_a_reader_resumes_exactly_on_the_other_process(pair: list[Gateway], in_url: bool) -> None:
    first, second = pair
    generation = start_answer(first, {"tokens": 40, "tps": 40})
    head = read_events(first, generation, None, limit=10)
    cursor = head[-1].id
    assert cursor and "-" in cursor  # Redis stream entry ids
    rest = read_events(second, generation, cursor, in_url=in_url)
    assert rest[-1].event == "done"
    ids = [e.id for e in head + rest]
    assert len(ids) == len(set(ids))  # no duplicates
    assert tokens_of(head + rest) == "".join(answer_tokens(40))  # no loss
    summary = requests.get(f"{second.url}/api/generations/{generation['id']}", timeout=5).json()
    assert summary["status"] == "done" and summary["last_event_id"] == rest[-1].id
    finished = requests.get(second.url + generation["events_url"], headers={"Last-Event-ID": rest[-1].id}, timeout=5)
    assert finished.status_code == 204  # nothing more, ever, wherever you ask


def test_a_stop_sent_to_one_process_stops_the_answer_on_the_other(pair: list[Gateway], sim: SimProcess) -> None:
    first, second = pair
    sim.reset()
    generation = start_answer(first, {"tokens": 400, "tps": 20})
    head = read_events(second, generation, None, limit=3)  # it is streaming, seen from the other process
    assert tokens_of(head)
    stopped = requests.delete(f"{second.url}/api/generations/{generation['id']}", timeout=10)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    deadline = time.monotonic() + 5
    while sim.stats()["disconnects"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.stats()["disconnects"] == 1  # Ollama was told: the upstream request was closed
    conversation = requests.get(f"{first.url}/api/conversations/{generation['conversation_id']}", timeout=5).json()
    assert conversation["messages"][-1]["status"] == "stopped"


def open_stream(gateway: Gateway, client: str, directive: dict[str, Any]) -> requests.Response:
    headers = {**SSE, "X-Forwarded-For": client}
    return requests.post(gateway.url + "/api/chat", json=chat(directive), headers=headers, stream=True, timeout=30)


def test_admission_limits_hold_across_both_processes(pair: list[Gateway]) -> None:
    first, second = pair
    holder = open_stream(first, "10.9.0.1", {"tokens": 30, "tps": 30})  # the only slot (max_active=1)
    holder_events = events(holder)
    next(e for e in holder_events if e.is_line)
    waiter_result: list[Event] = []

    def wait_on_second() -> None:
        waiter_result.extend(events(open_stream(second, "10.9.0.2", {"tokens": 3})))

    waiter = threading.Thread(target=wait_on_second)
    waiter.start()
    time.sleep(0.5)
    queued = [json.loads(e.data) for e in waiter_result if e.event == "queued"]
    assert queued and queued[0]["position"] == 1 and queued[0]["active"] == 1  # the other process's slot counts
    list(holder_events)  # the holder finishes: its slot frees, the waiter on the other process gets it
    waiter.join(30)
    assert content_of(waiter_result) == "".join(answer_tokens(3))
    # One client's limit (2) counts its streams on both processes.
    mine = [open_stream(gateway, "10.9.0.3", {"tokens": 100, "tps": 10}) for gateway in pair]
    third = requests.post(
        second.url + "/api/chat", json=chat({"tokens": 2}), headers={**SSE, "X-Forwarded-For": "10.9.0.3"}
    )
    assert third.status_code == 429
    for response in mine:
        response.close()


def test_two_workers_share_resume(redis_server: RedisServer, sim: SimProcess, start_gateway: StartGateway) -> None:
    gateway = start_gateway(sim.url, workers=2, redis_url=redis_server.url, heartbeat_s=0.3)
    generation = start_answer(gateway, {"tokens": 60, "tps": 60})
    received: list[Event] = []
    while not received or received[-1].event != "done":  # a new connection each time: either worker
        received += read_events(gateway, generation, received[-1].id if received else None, limit=5)
    assert tokens_of(received) == "".join(answer_tokens(60))
    assert len({e.id for e in received}) == len(received)
    gateway.stop()
    assert gateway.log.count("Booting worker") == 2


@pytest.mark.integration  # gunicorn itself, refusing to start
def test_several_workers_without_redis_are_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env={"PATH": str(BIN), "CLAWWEB_WORKERS": "2", "CLAWWEB_DB": str(tmp_path / "db")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "CLAWWEB_WORKERS=2 needs CLAWWEB_REDIS_URL" in result.stderr


def test_the_page_continues_an_answer_on_the_other_host(browser: Browser, pair: list[Gateway]) -> None:
    """A reader moves host mid-answer (a load balancer's choice): the page there picks the answer up from
    Redis and ends with exactly the text, nothing repeated."""
    first, second = pair
    # Ten seconds of answer: still running when the second page opens, even on a busy machine (a page that opens
    # on a finished answer renders it whole and streams nothing, which would test nothing here).
    generation = start_answer(first, {"tokens": 200, "tps": 20})
    context = browser.new_context(locale="en-US")
    try:
        page = context.new_page()
        page.goto(f"{first.url}/c/{generation['conversation_id']}")
        content = page.locator(".message.assistant").last.locator(".content")
        expect(content).not_to_be_empty(timeout=5000)
        page.goto(f"{second.url}/c/{generation['conversation_id']}")  # the same conversation, the other host
        expect(page.locator(".message.assistant").last).to_have_attribute("data-status", "done", timeout=40_000)
        expected = "".join(answer_tokens(200))
        assert content.get_attribute("data-streamed") == expected
        assert content.get_attribute("data-raw") == expected
    finally:
        context.close()


def test_an_answer_whose_worker_was_killed_is_known_dead_elsewhere(
    redis_server: RedisServer, sim: SimProcess, tmp_path: Path, start_gateway: StartGateway
) -> None:
    """The process running an answer is SIGKILLed: within its lease (3 heartbeats) the other process says the
    answer ended, marks it interrupted, and the conversation takes new messages again."""
    shared = {"redis_url": redis_server.url, "db": str(tmp_path / "clawweb.db"), "heartbeat_s": 0.3}
    doomed, survivor = start_gateway(sim.url, **shared), start_gateway(sim.url, **shared)
    generation = start_answer(doomed, {"tokens": 400, "tps": 20})
    assert tokens_of(read_events(survivor, generation, None, limit=3))
    os.killpg(doomed.proc.pid, signal.SIGKILL)  # the master and its worker, no chance to clean up
    state = f"{survivor.url}/api/generations/{generation['id']}"
    # The lease is 0.9 s; a machine busy with the other test process may take a few times that.
    assert wait_for(lambda: requests.get(state, timeout=5).json()["status"] == "error", timeout=15)
    replay = read_events(survivor, generation, None)  # the log now ends with the error, for every reader
    assert replay[-1].event == "error" and "interrupted" in replay[-1].json()["error"]
    after_end = {"Last-Event-ID": replay[-1].id or ""}
    assert requests.get(survivor.url + generation["events_url"], headers=after_end, timeout=5).status_code == 204
    conversation_url = f"{survivor.url}/api/conversations/{generation['conversation_id']}"
    answer = requests.get(conversation_url, timeout=5).json()["messages"][-1]
    assert answer["status"] == "error" and "interrupted" in answer["error"]
    message = {"content": 'hello\n#sim {"tokens": 3}'}
    again = requests.post(conversation_url + "/messages", json=message, timeout=5)
    assert again.status_code == 202, again.text
    assert tokens_of(read_events(survivor, again.json()["generation"], None)) == "".join(answer_tokens(3))


def test_an_installation_sharing_the_redis_leaves_the_others_answers_alone(
    redis_server: RedisServer, sim: SimProcess, tmp_path: Path, start_gateway: StartGateway
) -> None:
    """Two installations on one Redis, each with its own database (a staging and a production gateway on the
    same redis-server, say): when one's worker dies, the other must not end its answer. It cannot see that
    database, and ending it would write the text into its own message of the same id."""
    foreign = start_gateway(sim.url, redis_url=redis_server.url, heartbeat_s=0.3)  # a database of its own
    shared = {"redis_url": redis_server.url, "db": str(tmp_path / "ours.db"), "heartbeat_s": 0.3}
    doomed = start_gateway(sim.url, **shared)
    theirs = start_answer(foreign, {"tokens": 2})  # message ids 1 and 2 there: the same as ours below
    assert tokens_of(read_events(foreign, theirs, None)) == "".join(answer_tokens(2))
    conversation_url = f"{foreign.url}/api/conversations/{theirs['conversation_id']}"
    before = requests.get(conversation_url, timeout=5).json()["messages"]
    ours = start_answer(doomed, {"tokens": 400, "tps": 20})
    assert ours["message_id"] == theirs["message_id"]
    assert tokens_of(read_events(foreign, ours, None, limit=3))  # the foreign one follows it: it knows of it
    os.killpg(doomed.proc.pid, signal.SIGKILL)
    time.sleep(3)  # ten rounds of the foreign lease loop
    assert requests.get(f"{foreign.url}/api/generations/{ours['id']}", timeout=5).json()["status"] == "streaming"
    assert requests.get(conversation_url, timeout=5).json()["messages"] == before
    survivor = start_gateway(sim.url, **shared)  # one of its own: it ends it
    state = f"{survivor.url}/api/generations/{ours['id']}"
    assert wait_for(lambda: requests.get(state, timeout=5).json()["status"] == "error", timeout=15)
