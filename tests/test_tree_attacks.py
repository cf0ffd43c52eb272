"""Attacks on the conversation tree's routes from outside: racing requests on one conversation, hostile ids and
bodies, over a real gunicorn and the simulator. Each race is run with the requests released together (a barrier),
several times, and the tree is checked afterwards: one answer at a time, nothing half-written, nothing stuck."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess
from .test_tree import Chat, wait_idle

LONG = 'long\n#sim {"tokens": 400, "tps": 40}'
SLOW = {"tokens": 400, "tps": 40}  # an answer that runs for seconds: the racing requests all find it running


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "50")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, heartbeat_s=0.3, max_active_per_client=50, max_active=50)


def together(calls: list[Callable[[], requests.Response]]) -> list[requests.Response]:
    """The calls made at once, each in its thread, released by one barrier; their responses in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def stop_all(chat: Chat) -> None:
    running = chat.shown()["generation"]
    if running is not None:
        chat.call("DELETE", f"/api/generations/{running['id']}")
    wait_idle(chat)


def assert_sound(chat: Chat) -> None:
    """No answer stuck streaming once idle, every parent in the conversation, current_id one of its messages."""
    wait_idle(chat)
    whole = chat.tree()
    ids = {m["id"] for m in whole["messages"]}
    assert all(m["status"] != "streaming" for m in whole["messages"]), whole
    assert all(m["parent_id"] is None or m["parent_id"] in ids for m in whole["messages"]), whole
    assert whole["current_id"] is None or whole["current_id"] in ids


@pytest.mark.parametrize("route", ["messages", "regenerate", "continue"])
def test_answers_started_at_once_on_one_conversation_one_is_202_the_rest_409(gateway: Gateway, route: str) -> None:
    chat = Chat(gateway)
    chat.ask("one", SLOW, options={"num_predict": 2})  # length-cut: continue has work; a regenerated one is slow
    body = {"content": LONG, "think": False} if route == "messages" else {"think": False}
    for _ in range(3):
        before = len(chat.tree()["messages"])
        responses = together([lambda: chat.call("POST", f"{chat.path}/{route}", json=body) for _ in range(6)])
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [202] + [409] * 5, [r.text for r in responses]
        assert all(r.json().get("error") for r in responses if r.status_code == 409)
        added = len(chat.tree()["messages"]) - before
        assert added == {"messages": 2, "regenerate": 1, "continue": 0}[route]
        stop_all(chat)
        assert_sound(chat)
        if route == "continue":
            chat.ask("again", SLOW, options={"num_predict": 2})


def test_different_starts_at_once_on_one_conversation_one_is_202(gateway: Gateway) -> None:
    chat = Chat(gateway)
    chat.ask("one", SLOW, options={"num_predict": 2})
    for _ in range(3):
        responses = together(
            [
                lambda: chat.call("POST", f"{chat.path}/messages", json={"content": LONG, "think": False}),
                lambda: chat.call("POST", f"{chat.path}/regenerate", json={"think": False}),
                lambda: chat.call("POST", f"{chat.path}/continue", json={}),
            ]
        )
        assert sorted(r.status_code for r in responses).count(202) <= 1, [r.text for r in responses]
        assert all(r.status_code in (202, 409) for r in responses), [r.text for r in responses]
        stop_all(chat)
        assert_sound(chat)
        chat.ask("again", SLOW, options={"num_predict": 2})


@pytest.mark.parametrize("route", ["messages", "regenerate", "continue"])
def test_deleting_a_message_while_an_answer_starts_under_it_is_one_or_the_other(gateway: Gateway, route: str) -> None:
    """Either the answer starts (and the delete is a 409: it runs under it) or the delete wins (and the start is a
    404 or 409): never both, never a 500, never an answer running in a deleted branch."""
    for _ in range(6):
        chat = Chat(gateway)
        question = chat.ask("one", SLOW, options={"num_predict": 2})
        answer = chat.messages()[1]
        body = {
            "messages": {"content": LONG, "think": False, "parent_id": answer["id"]},
            "regenerate": {"message_id": answer["id"], "think": False},
            "continue": {"message_id": answer["id"]},
        }[route]
        started, deleted = together(
            [
                lambda: chat.call("POST", f"{chat.path}/{route}", json=body),  # noqa: B023
                lambda: chat.call("DELETE", f"/api/messages/{question['id']}"),  # noqa: B023
            ]
        )
        outcome = (started.status_code, deleted.status_code)
        assert outcome in ((202, 409), (404, 200), (409, 200)), (started.text, deleted.text)
        if started.status_code == 202:
            generation = started.json()["generation"]
            assert chat.call("GET", f"/api/generations/{generation['id']}").json()["status"] in ("queued", "streaming")
            assert generation["message_id"] in {m["id"] for m in chat.tree()["messages"]}
        stop_all(chat)
        assert_sound(chat)


def test_showing_a_branch_while_it_is_deleted_never_leaves_current_on_a_deleted_message(gateway: Gateway) -> None:
    for _ in range(8):
        chat = Chat(gateway)
        chat.ask("one", {"tokens": 1})
        other = chat.ask("two", {"tokens": 1}, parent_id=None)  # a second root
        shown, deleted = together(
            [
                lambda: chat.call("PUT", chat.path + "/current", json={"message_id": other["id"]}),  # noqa: B023
                lambda: chat.call("DELETE", f"/api/messages/{other['id']}"),  # noqa: B023
            ]
        )
        assert shown.status_code in (200, 404) and deleted.status_code == 200, (shown.text, deleted.text)
        assert_sound(chat)
        # The conversation goes on: the next message has a branch to go under.
        chat.ask("three", {"tokens": 1})
        assert [m["role"] for m in chat.messages()][-2:] == ["user", "assistant"]
