"""Conversation affinity: a conversation's turns go to the host that served the previous one (its prompt cache),
unless that host is down or much busier; the simulator's prompt cache; the log line and the metrics saying so."""

from __future__ import annotations

import json
import re
import signal
from typing import Any

import pytest
import requests

from clawweb.simulator_cache import PromptCache
from clawweb.upstream.affinity import Memory, keys_of
from clawweb.upstream.hosts import Host, rank

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway, wait_for
from .support.simproc import SimProcess, sim_line
from .support.sseclient import content_of, events

MODEL = "s:1"
SIM = ("--model", MODEL, "--ttft", "0.02", "--tps", "200", "--tokens", "6", "--cache-prefixes", "4")
SSE = {"Accept": "text/event-stream"}


# --- in process: the keys, the memory, the rule ------------------------------------------------------------------


def body(*contents: str, system: str = "be brief") -> dict[str, Any]:
    roles = ("user", "assistant")
    messages = [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]
    return {"model": MODEL, "messages": [{"role": "system", "content": system}, *messages]}


def test_the_next_turn_finds_the_previous_request_as_its_longest_prefix() -> None:
    memory = Memory(entries=100)
    _, first = keys_of(body("hi"), None)
    memory.remember([first], 1)
    lookups, _ = keys_of(body("hi", "hello!", "and then?"), None)
    assert memory.lookup(lookups) == 1
    assert memory.lookup(keys_of(body("hi"), None)[0]) is None  # a first question is no conversation yet
    memory.remember([keys_of(body("hi", "hello!", "and then?"), None)[1]], 0)
    assert memory.lookup(keys_of(body("hi", "hello!", "and then?"), None)[0]) == 1  # regenerated: the longest
    assert memory.lookup(keys_of(body("bye", "hello!", "and then?"), None)[0]) is None  # another conversation
    assert memory.lookup(keys_of(body("hi", system="other"), None)[0]) is None
    # A system prompt alone is shared by many conversations: it routes nothing.
    alone = keys_of({"model": MODEL, "messages": [{"role": "system", "content": "be brief"}]}, None)
    assert alone == ([], None)


def test_the_conversation_id_comes_first_and_the_memory_is_bounded() -> None:
    memory = Memory(entries=2)
    lookups, whole = keys_of(body("hi"), "c1")
    assert lookups[0] == b"c:c1"
    memory.remember([lookups[0], whole], 0)
    assert memory.lookup(keys_of(body("edited from the start"), "c1")[0]) == 0  # the page: whatever the history
    memory.remember([b"k3"], 1)  # the least recently used key goes
    assert len(memory) == 2 and memory.lookup([b"k3"]) == 1


def hosts(*streams: int) -> list[Host]:
    made = [Host(f"http://h{i}:11434", i) for i in range(len(streams))]
    for host, count in zip(made, streams, strict=True):
        host.models, host.loaded, host.streams = frozenset({MODEL}), frozenset({MODEL}), count
    return made


@pytest.mark.parametrize(
    ("streams", "slack", "first"),
    [
        ((0, 0), 2, 1),  # idle: the remembered host
        ((0, 2), 2, 1),  # busier by the slack: still it
        ((0, 3), 2, 0),  # busier than that: today's ranking
        ((0, 1), 0, 0),  # slack 0: only while no busier at all
        ((4, 1), 0, 1),  # it is the least busy anyway
    ],
)
def test_the_remembered_host_goes_first_within_the_slack(streams: tuple[int, int], slack: int, first: int) -> None:
    both = hosts(*streams)
    assert rank(both, MODEL, 0, both[1], slack)[0] is both[first]


def test_a_remembered_host_that_is_down_or_cold_is_not_taken() -> None:
    both = hosts(0, 0)
    both[1].up = False
    assert rank(both, MODEL, 1, both[1], 2) == [both[0]]
    both = hosts(0, 0)
    both[1].loaded = frozenset()  # its cache went with the model; the other host has the model in memory
    assert rank(both, MODEL, 1, both[1], 2)[0] is both[0]


def test_the_simulators_cache_spares_what_a_slot_read_already() -> None:
    cache, tokens = PromptCache(slots=1), lambda text: len(text.split())

    def read(messages: list[dict[str, str]], answer: str) -> tuple[int, int]:
        cached, read, slot = cache.take(messages, answer, tokens)
        cache.release(slot)
        return cached, read

    first = [{"role": "user", "content": "one two three"}]
    assert read(first, "four five") == (0, 7)  # 3 words + 4 for the template
    second = [*first, {"role": "assistant", "content": "four five"}, {"role": "user", "content": "six"}]
    assert read(second, "seven") == (13, 5)  # the question and its answer were cached
    assert read([{"role": "user", "content": "else"}], "x") == (0, 5)  # the one slot is taken over
    assert read(second, "seven") == (0, 18)


def test_a_slot_in_use_is_not_taken_even_sharing_a_prefix() -> None:
    cache, tokens = PromptCache(slots=2), lambda text: len(text.split())
    system = {"role": "system", "content": "be brief"}
    _, _, running = cache.take([system, {"role": "user", "content": "a"}], "x", tokens)
    cached, _, other = cache.take([system, {"role": "user", "content": "b"}], "y", tokens)
    assert other is not running and cached == 0  # a new slot, not the running answer's
    cache.release(running)
    cache.release(other)
    again = [system, {"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}]
    assert (
        cache.take([*again, {"role": "user", "content": "c"}], "z", tokens)[0] == 16
    )  # a's slot kept its prompt and answer


# --- two real simulators with their prompt cache -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sims(start_module_simulator: StartSimulator) -> tuple[SimProcess, SimProcess]:
    return start_module_simulator(*SIM), start_module_simulator(*SIM)


@pytest.fixture(scope="module")
def gateway(sims: tuple[SimProcess, SimProcess], start_module_gateway: StartGateway) -> Gateway:
    url = ",".join(s.url for s in sims)
    return start_module_gateway(url, default_model=MODEL, heartbeat_s=0.3, affinity_slack=1, max_active=20)


@pytest.fixture(autouse=True)
def fresh(request: pytest.FixtureRequest) -> None:
    if "sims" in request.fixturenames:
        for sim in request.getfixturevalue("sims"):
            sim.reset()


def chat_turn(gateway: Gateway, messages: list[dict[str, str]]) -> str:
    """One /api/chat turn, Ollama-native: the answer's text."""
    response = requests.post(
        gateway.url + "/api/chat", json={"model": MODEL, "messages": messages, "think": False}, timeout=10
    )
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["done"] is True
    return "".join(line["message"]["content"] for line in lines)


def converse(gateway: Gateway, turns: int, first: str = "tell me") -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "be brief"}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"{first} {turn}"})
        messages.append({"role": "assistant", "content": chat_turn(gateway, messages)})
    return messages


def requests_by_host(*sims: SimProcess) -> list[int]:
    return [sim.stats()["requests"] for sim in sims]


def affinity_in_log(gateway: Gateway, since: int) -> list[str]:
    return re.findall(r"stream end=\S+ .* affinity=(\w+)", gateway.log[since:])


def affinity_metrics(gateway: Gateway) -> dict[str, float]:
    text = requests.get(gateway.url + "/metrics", timeout=5).text
    return {m[0]: float(m[1]) for m in re.findall(r'^clawweb_affinity_total\{result="(\w+)"\} (\S+)$', text, re.M)}


def logged(gateway: Gateway, since: int, count: int) -> list[str]:
    assert wait_for(lambda: len(affinity_in_log(gateway, since)) >= count)
    return affinity_in_log(gateway, since)


def test_a_conversations_turns_through_api_chat_stay_on_one_host(
    gateway: Gateway, sims: tuple[SimProcess, SimProcess]
) -> None:
    before, since = affinity_metrics(gateway), len(gateway.log)
    converse(gateway, 4)
    assert sorted(requests_by_host(*sims)) == [0, 4]
    served = max(sims, key=lambda sim: sim.stats()["requests"])
    assert served.stats()["prompt_cached"] > 0  # turns 2-4 found their history in the host's cache
    assert logged(gateway, since, 4) == ["none", "hit", "hit", "hit"]
    after = affinity_metrics(gateway)
    assert after["hit"] - before.get("hit", 0) == 3 and after["none"] - before.get("none", 0) == 1


def test_the_pages_conversation_stays_on_one_host(gateway: Gateway, sims: tuple[SimProcess, SimProcess]) -> None:
    since = len(gateway.log)
    made = requests.post(gateway.url + "/api/conversations", json={"model": MODEL}, timeout=5)
    assert made.status_code == 201
    conversation = made.json()["id"]
    for turn in range(3):
        started = requests.post(
            f"{gateway.url}/api/conversations/{conversation}/messages",
            json={"content": f"question {turn}", "think": False},
            timeout=5,
        )
        assert started.status_code == 202, started.text
        url = gateway.url + started.json()["generation"]["events_url"]
        with requests.get(url, headers=SSE, stream=True, timeout=10) as response:
            assert [e.event for e in events(response) if e.event in ("done", "error")] == ["done"]
    assert sorted(requests_by_host(*sims)) == [0, 3]
    assert logged(gateway, since, 3) == ["none", "hit", "hit"]


def test_a_much_busier_host_loses_the_conversation(gateway: Gateway, sims: tuple[SimProcess, SimProcess]) -> None:
    for sim in sims:  # the model in memory on both (`clawweb warmup`), or today's ranking keeps the loaded host
        assert requests.post(sim.url + "/api/chat", json={"model": MODEL, "messages": []}, timeout=5).ok
        sim.reset()
    requests.get(gateway.url + "/readyz", timeout=5)  # which the gateway learns now
    messages = converse(gateway, 1)
    served = 0 if sims[0].stats()["requests"] else 1
    # Two answers of the same conversation that never end keep its host busy (slack 1: one more is fine). As
    # SSE: the opening comment answers at once, while Ollama-native would wait for a first line that never comes.
    held = {"model": MODEL, "messages": [*messages, {"role": "user", "content": "hold" + sim_line(hang=True)}]}
    opened = [requests.post(gateway.url + "/api/chat", json=held, headers=SSE, stream=True, timeout=10) for _ in "ab"]
    try:
        assert wait_for(lambda: sims[served].stats()["active"] == 2)
        since = len(gateway.log)
        chat_turn(gateway, [*messages, {"role": "user", "content": "next"}])
        assert sims[1 - served].stats()["requests"] == 1  # today's ranking: the idle host
        assert logged(gateway, since, 1) == ["miss"]
    finally:
        for response in opened:
            response.close()


def test_the_conversations_host_down_means_another_host_and_no_error(
    start_simulator: StartSimulator, start_gateway: StartGateway
) -> None:
    first, second = start_simulator(*SIM), start_simulator(*SIM)
    gateway = start_gateway(f"{first.url},{second.url}", default_model=MODEL, heartbeat_s=0.3)
    messages = converse(gateway, 2)
    served, other = (first, second) if first.stats()["requests"] else (second, first)
    assert served.stats()["requests"] == 2
    served.stop()
    since = len(gateway.log)
    chat_turn(gateway, [*messages, {"role": "user", "content": "still there?"}])
    assert other.stats()["requests"] == 1
    assert logged(gateway, since, 1) == ["miss"]


def test_openai_chat_completions_turns_stay_on_one_host_too(
    gateway: Gateway, sims: tuple[SimProcess, SimProcess]
) -> None:
    since = len(gateway.log)
    messages = [{"role": "user", "content": "first question"}]
    for turn in range(3):  # whole answers (stream false): the other way an answer opens on a host
        response = requests.post(
            gateway.url + "/v1/chat/completions", json={"model": MODEL, "messages": messages}, timeout=10
        )
        assert response.status_code == 200, response.text
        messages += [response.json()["choices"][0]["message"], {"role": "user", "content": f"and {turn}?"}]
    assert sorted(requests_by_host(*sims)) == [0, 3]
    assert logged(gateway, since, 3) == ["none", "hit", "hit"]


def test_after_a_host_died_midway_the_conversation_stays_where_its_answer_went_on(
    start_simulator: StartSimulator, start_gateway: StartGateway
) -> None:
    slow = (*SIM, "--tps", "30", "--tokens", "30")  # the later option wins: an answer of a second
    first, second = start_simulator(*slow), start_simulator(*slow)
    gateway = start_gateway(f"{first.url},{second.url}", default_model=MODEL, heartbeat_s=0.3, read_timeout_s=2)
    messages = converse(gateway, 1)
    served, other = (first, second) if first.stats()["requests"] else (second, first)
    messages.append({"role": "user", "content": "a long one"})
    body = {"model": MODEL, "messages": messages, "think": False}
    with requests.post(gateway.url + "/api/chat", json=body, headers=SSE, stream=True, timeout=15) as response:
        received = []
        for event in events(response):
            received.append(event)
            if sum(e.is_line for e in received) == 5:
                served.signal(signal.SIGKILL)  # five tokens in: the rest comes from the other host
    assert [e.event for e in received if e.event == "error"] == []
    messages.append({"role": "assistant", "content": content_of(received)})
    since = len(gateway.log)
    chat_turn(gateway, [*messages, {"role": "user", "content": "and then?"}])
    assert other.stats()["requests"] == 2  # the continuation, then this turn
    assert logged(gateway, since, 1) == ["hit"]
