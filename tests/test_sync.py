"""Every tab and device in sync, the API half: ``GET /api/events`` through real gunicorn, in one worker's memory
and across two gateways sharing one real redis-server (published on one, followed on the other); resuming
with ``Last-Event-ID`` and ``?after=``; a reset for a cursor whose events are gone; two users kept apart; a send
on a stale view refused with 409; the stream ending when the worker stops."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from .support.factories import StartGateway, StartRedis, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess
from .support.sseclient import Event, events

HEARTBEAT_S = 0.3


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "100")


class Users:
    """Two accounts on the gateways (one database): their API keys, and where each sends and reads."""

    def __init__(self, writer: Gateway, reader: Gateway) -> None:
        self.writer, self.reader = writer, reader
        self.keys = {name: writer.new_user(name) for name in ("ann", "bob")}

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def call(self, name: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.writer.url + path, headers=self.auth(name), timeout=10, **kwargs)

    def new_conversation(self, name: str, title: str = "") -> str:
        response = self.call(name, "POST", "/api/conversations", json={"title": title} if title else {})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


@pytest.fixture(scope="module", params=["memory", pytest.param("redis", marks=[pytest.mark.redis])])
def users(
    request: pytest.FixtureRequest,
    sim: SimProcess,
    tmp_path_factory: pytest.TempPathFactory,
    start_module_gateway: StartGateway,
) -> Users:
    """One gateway (memory), or two on one Redis and one database file, as on two hosts: changes made on the
    first are followed on the second."""
    settings: dict[str, Any] = {"auth": "required", "heartbeat_s": HEARTBEAT_S}
    if request.param == "memory":
        gateway = start_module_gateway(sim.url, **settings)
        return Users(gateway, gateway)
    db = tmp_path_factory.mktemp("sync") / "clawweb.db"
    start_module_redis: StartRedis = request.getfixturevalue("start_module_redis")
    shared = {**settings, "redis_url": start_module_redis().url, "db": str(db)}
    first, second = (start_module_gateway(sim.url, **shared) for _ in (1, 2))
    return Users(first, second)


class Feed:
    """One reader of ``/api/events`` in a thread: every event with data, as it arrives."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.response = requests.get(url, headers=headers, stream=True, timeout=30)
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["Content-Type"] == "text/event-stream"
        self.received: list[Event] = []
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in events(self.response):
                if event.data_lines:
                    self.received.append(event)
        except (requests.RequestException, AttributeError):  # closed by the test
            pass
        finally:
            self.ended.set()

    def until(self, count: int, timeout: float = 10.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline and not self.ended.is_set():
            time.sleep(0.02)
        assert len(self.received) >= count, [(e.event, e.data) for e in self.received]
        return self.received[:count]

    def close(self) -> None:
        self.response.close()


@pytest.fixture
def feeds() -> Iterator[list[Feed]]:
    opened: list[Feed] = []
    yield opened
    for feed in opened:
        feed.close()


def follow(users: Users, name: str, feeds: list[Feed], after: str | None = None, in_url: bool = False) -> Feed:
    headers = users.auth(name)
    url = users.reader.url + "/api/events"
    if after is not None and in_url:
        url += f"?after={after}"
    elif after is not None:
        headers["Last-Event-ID"] = after
    feeds.append(Feed(url, headers))
    return feeds[-1]


def quiet(feed: Feed, seconds: float = 1.0) -> None:
    """Heartbeats pass; no event: what was followed before is all there is."""
    count = len(feed.received)
    time.sleep(seconds)
    assert len(feed.received) == count, [(e.event, e.data) for e in feed.received[count:]]


def test_events_need_a_login(users: Users) -> None:
    response = requests.get(users.reader.url + "/api/events", timeout=5)
    assert response.status_code == 401
    assert "log in" in response.json()["error"]


def test_a_conversations_life_reaches_the_owners_other_pages(users: Users, feeds: list[Feed]) -> None:
    feed = follow(users, "ann", feeds)
    quiet(feed, 0.2)  # the stream is open (and says nothing of the past)
    cid = users.new_conversation("ann", "first title")
    assert users.call("ann", "PATCH", f"/api/conversations/{cid}", json={"title": "renamed"}).status_code == 200
    assert users.call("ann", "PATCH", f"/api/conversations/{cid}", json={"pinned": True}).status_code == 200
    sent = users.call("ann", "POST", f"/api/conversations/{cid}/messages", json={"content": 'hi\n#sim {"tokens": 3}'})
    assert sent.status_code == 202, sent.text
    got = feed.until(6)
    assert [e.event for e in got] == [
        "conversation.created",
        "conversation.updated",
        "conversation.updated",
        "message.created",
        "answer.started",
        "answer.ended",
    ]
    data = [e.json() for e in got]
    assert {d["conversation_id"] for d in data} == {cid}
    assert data[0]["conversation"]["title"] == "first title"
    assert data[1]["changed"] == ["title"] and data[1]["conversation"]["title"] == "renamed"
    assert data[2]["changed"] == ["pinned"] and data[2]["conversation"]["pinned"] is True
    assert data[3]["message"]["id"] == sent.json()["message"]["id"]
    generation = sent.json()["generation"]
    assert data[4]["generation"]["id"] == generation["id"] and data[4]["message_id"] == generation["message_id"]
    assert data[4]["generation"]["events_url"] == generation["events_url"]  # enough to follow the answer
    assert data[5] == {
        "conversation_id": cid,
        "generation_id": generation["id"],
        "message_id": generation["message_id"],
        "status": "done",
    }
    ids = [e.id for e in got]
    assert all(ids) and len(set(ids)) == 6
    message_id = sent.json()["message"]["id"]
    assert users.call("ann", "DELETE", f"/api/messages/{message_id}").status_code == 200
    assert users.call("ann", "DELETE", f"/api/conversations/{cid}").status_code == 204
    deleted, gone = feed.until(8)[6:]
    assert deleted.event == "message.deleted"
    assert sorted(deleted.json()["message_ids"]) == [message_id, generation["message_id"]]
    assert deleted.json()["conversation"]["current_id"] is None
    assert gone.event == "conversation.deleted" and gone.json() == {"conversation_id": cid}


@pytest.mark.parametrize("in_url", [False, True], ids=["Last-Event-ID", "after"])
def test_a_reader_resumes_exactly_after_the_last_event_it_had(users: Users, feeds: list[Feed], in_url: bool) -> None:
    first = follow(users, "ann", feeds)
    quiet(first, 0.2)
    made = [users.new_conversation("ann", f"resume {n}") for n in range(5)]
    head = first.until(2)
    first.close()  # the connection drops after two events; three more happen meanwhile
    rest = follow(users, "ann", feeds, after=head[-1].id, in_url=in_url).until(3)
    assert [e.json()["conversation_id"] for e in head + rest] == made  # no loss, no duplicate, in order


@pytest.mark.parametrize("cursor", ["1-0", "99999999999999-0"], ids=["too old", "unknown"])
def test_a_cursor_whose_events_are_gone_gets_a_reset(users: Users, feeds: list[Feed], cursor: str) -> None:
    feed = follow(users, "ann", feeds, after=cursor)
    reset = feed.until(1)[0]
    assert reset.event == "reset" and reset.json()["reason"]
    cid = users.new_conversation("ann")  # and the stream goes on from the newest
    after = feed.until(2)[1]
    assert after.event == "conversation.created" and after.json()["conversation_id"] == cid
    resumed = follow(users, "ann", feeds, after=reset.id).until(1)[0]  # the reset's id is a cursor like any
    assert resumed.id == after.id


def test_a_malformed_cursor_is_refused(users: Users) -> None:
    response = requests.get(users.reader.url + "/api/events?after=yesterday", headers=users.auth("ann"), timeout=5)
    assert response.status_code == 400 and "after" in response.json()["error"]


def test_another_user_never_sees_my_events(users: Users, feeds: list[Feed]) -> None:
    anns, bobs = follow(users, "ann", feeds), follow(users, "bob", feeds)
    quiet(anns, 0.2)
    mine = users.new_conversation("ann", "ann's secret")
    theirs = users.new_conversation("bob", "bob's")
    assert [e.json()["conversation_id"] for e in anns.until(1)] == [mine]
    assert [e.json()["conversation_id"] for e in bobs.until(1)] == [theirs]
    quiet(anns, 0.5)
    assert "ann's secret" not in "".join(e.data for e in bobs.received)
    # Nor by naming my conversation: a change to it by another user is a 404, and tells nobody anything.
    assert users.call("bob", "PATCH", f"/api/conversations/{mine}", json={"title": "x"}).status_code == 404
    quiet(anns, 0.5)


def test_a_send_on_a_stale_view_is_refused(users: Users, sim: SimProcess) -> None:
    cid = users.new_conversation("ann")
    path = f"/api/conversations/{cid}/messages"
    first = users.call("ann", "POST", path, json={"content": 'one\n#sim {"tokens": 2}', "current_id": None})
    assert first.status_code == 202, first.text
    answer_id = first.json()["generation"]["message_id"]
    wait_done(users, first.json()["generation"]["id"])
    # Tab A still shows the empty conversation; tab B sent meanwhile: A's send would answer a history A never saw.
    stale = users.call("ann", "POST", path, json={"content": "two", "current_id": None})
    assert stale.status_code == 409 and "another tab" in stale.json()["error"]
    again = users.call("ann", "POST", f"/api/conversations/{cid}/regenerate", json={"current_id": answer_id - 1})
    assert again.status_code == 409
    fresh = users.call("ann", "POST", path, json={"content": 'two\n#sim {"tokens": 2}', "current_id": answer_id})
    assert fresh.status_code == 202, fresh.text  # the view it shows is the conversation's: sent
    wait_done(users, fresh.json()["generation"]["id"])
    shown = users.call("ann", "GET", f"/api/conversations/{cid}").json()
    assert [m["content"].split("\n")[0] for m in shown["messages"] if m["role"] == "user"] == ["one", "two"]


def wait_done(users: Users, generation_id: str) -> None:
    deadline = time.monotonic() + 20
    while users.call("ann", "GET", f"/api/generations/{generation_id}").json()["status"] in ("queued", "streaming"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_stream_ends_when_the_worker_stops_and_resumes_on_the_next(
    sim: SimProcess, start_gateway: StartGateway, feeds: list[Feed]
) -> None:
    gateway = start_gateway(sim.url, heartbeat_s=HEARTBEAT_S)  # open mode: one shared feed
    feed = Feed(gateway.url + "/api/events", {})
    feeds.append(feed)
    requests.post(gateway.url + "/api/conversations", json={}, timeout=5)
    first = feed.until(1)[0]
    gateway.signal(signal.SIGHUP)  # the worker is replaced: its open streams end, cleanly
    assert feed.ended.wait(10)
    assert feed.response.raw.isclosed()
    # The new worker has a new memory: the old cursor is unknown there, and the page is told to reload. (A
    # connection the stopping worker still accepts ends at once, empty: EventSource would simply come again.)
    deadline = time.monotonic() + 10
    while True:
        assert time.monotonic() < deadline
        try:
            resumed = Feed(gateway.url + "/api/events", {"Last-Event-ID": str(first.id)})
        except (requests.ConnectionError, AssertionError):
            time.sleep(0.1)
            continue
        feeds.append(resumed)
        while not resumed.received and not resumed.ended.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        if resumed.received:
            break
    assert resumed.received[0].event == "reset"
    assert json.loads(first.data)["conversation"]["title"] == ""
