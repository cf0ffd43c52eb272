"""Admission lanes under a real gunicorn gevent with one slot: the page's question goes before a user's twenty
queued API calls, an api key before a batch key, and the status frames say where each waits and why it moved."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway, wait_for
from .support.simproc import SimProcess, chat, sim_line
from .support.sseclient import Event, events
from .test_admission_live import metrics
from .test_auth import log_in, page_token

SSE = {"Accept": "text/event-stream"}
HOLD = {"ttft": 3.0, "tokens": 2}  # the answer holding the one slot while the others queue behind it


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.01", "--tps", "500")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(
        sim.url, auth="required", heartbeat_s=0.3, max_active=1, max_queue=64, max_active_per_client=25
    )


class Caller(threading.Thread):
    """One streamed /api/chat with an API key: its frames, and when its first token came."""

    def __init__(self, gateway: Gateway, key: str, directive: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.directive = gateway.url, key, directive
        self.received: list[Event] = []
        self.first_token = float("inf")

    def run(self) -> None:
        headers = {**SSE, "Authorization": f"Bearer {self.key}"}
        with requests.post(
            self.url + "/api/chat", json=chat(self.directive), headers=headers, stream=True, timeout=60
        ) as r:
            for event in events(r):
                if event.is_line and self.first_token == float("inf"):
                    self.first_token = time.monotonic()
                self.received.append(event)

    def queued(self) -> list[dict[str, Any]]:
        return [s for e in self.received if e.event == "status" and (s := e.json())["stage"] == "queued"]


def queue(gateway: Gateway, key: str) -> dict[str, Any]:
    return dict(requests.get(gateway.url + "/api/queue", headers={"Authorization": f"Bearer {key}"}, timeout=5).json())


def started(gateway: Gateway, key: str, directive: dict[str, Any], holds: bool = False) -> Caller:
    """A call under way: holding the slot (``holds``), or in the queue (a defined arrival order)."""
    caller = Caller(gateway, key, directive)
    before = queue(gateway, key)
    caller.start()
    field = "active" if holds else "waiting"
    assert wait_for(lambda: queue(gateway, key)[field] > before[field], timeout=10)
    return caller


def test_a_page_question_goes_before_twenty_queued_api_calls(gateway: Gateway) -> None:
    ann = gateway.new_user("ann")  # an API key, lane api
    gateway.new_user("bob")  # bob uses the page
    browser = log_in(gateway, "bob", "correct horse battery")
    token = {"X-CSRF-Token": page_token(browser, gateway)}
    holder = started(gateway, ann, HOLD, holds=True)
    queued = [started(gateway, ann, {"tokens": 2}) for _ in range(20)]
    assert queue(gateway, ann)["waiting"] == 20

    conversation = browser.post(gateway.url + "/api/conversations", json={}, headers=token, timeout=5).json()
    body = {"content": "hello" + sim_line(tokens=2), "think": False}
    url = f"{gateway.url}/api/conversations/{conversation['id']}/messages"
    answer = browser.post(url, json=body, headers=token, timeout=10)
    assert answer.status_code == 202, answer.text
    with browser.get(
        gateway.url + answer.json()["generation"]["events_url"], headers=SSE, stream=True, timeout=60
    ) as r:
        page: list[Event] = []
        for event in events(r):
            page.append(event)
            if event.event in ("done", "stopped", "error"):
                break
    for caller in (holder, *queued):
        caller.join(60)

    statuses = [e.json() for e in page if e.event == "status"]
    assert statuses[0]["stage"] == "queued" and statuses[0]["position"] == 1  # next, in front of ann's twenty
    assert page[-1].event == "done"
    page_first = next(e.at for e in page if e.event == "token")
    firsts = [caller.first_token for caller in queued]
    assert holder.first_token < page_first < min(firsts)  # the page's question was next
    # (ann's own go in the order she sent them: the state contract tests prove it on both backends; her threads'
    # read times here can swap two neighbours, whose slot passes on at the done line, before the read.)
    # Each of ann's was told its place when it arrived, then one more when the page's question went in front.
    assert [c.queued()[0]["position"] for c in queued] == list(range(1, 21))
    grown = [s for s in queued[0].queued() if s.get("reason")]
    assert grown and grown[0]["position"] == 2 and grown[0]["reason"] == "interactive"
    waits = metrics(gateway)
    assert waits['clawweb_lane_queue_wait_seconds_count{lane="interactive"}'] >= 1
    assert waits['clawweb_lane_queue_wait_seconds_count{lane="api"}'] >= 20


def test_a_batch_key_waits_behind_an_api_key(gateway: Gateway) -> None:
    api = gateway.new_user("carol")
    gateway.cli("users", "add", "dan", "--password-stdin", stdin="correct horse battery\n")
    batch = gateway.cli("keys", "create", "dan", "--lane", "batch", "--name", "indexer").split()[-1]
    assert "lane batch" in [line for line in gateway.cli("keys", "list").splitlines() if "indexer" in line][0]
    holder = started(gateway, api, HOLD, holds=True)
    behind = started(gateway, batch, {"tokens": 2})
    ahead = started(gateway, api, {"tokens": 2})
    for caller in (holder, behind, ahead):
        caller.join(60)
    assert ahead.first_token < behind.first_token
    assert [(s["position"], s.get("reason")) for s in behind.queued()] == [(1, None), (2, "api"), (1, None)]
    assert [s["position"] for s in ahead.queued()] == [1]
