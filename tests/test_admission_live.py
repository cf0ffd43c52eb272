"""Admission, queue feedback, health and metrics under a real gunicorn gevent, against the simulator with
2 parallel slots (as ``OLLAMA_NUM_PARALLEL=2``)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from clawweb.simulator import answer_tokens

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess, chat
from .support.sseclient import Event, content_of, events

SSE = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--parallel", "2", "--ttft", "0.05", "--tps", "40")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(
        sim.url,
        heartbeat_s=0.3,
        max_active=2,
        max_queue=8,
        max_active_per_client=2,
        trusted_proxies=1,
        auth="off",  # clients told apart by address (X-Forwarded-For), as behind a proxy that authenticates
    )


@pytest.fixture(autouse=True)
def fresh_counters(sim: SimProcess) -> None:
    sim.reset()


def open_stream(gateway: Gateway, body: dict[str, Any], client: str) -> requests.Response:
    headers = {**SSE, "X-Forwarded-For": client}
    return requests.post(gateway.url + "/api/chat", json=body, headers=headers, stream=True, timeout=30)


def metrics(gateway: Gateway) -> dict[str, float]:
    """Samples by name and labels, e.g. ``clawweb_refusals_total{reason="queue_full"}``."""
    text = requests.get(gateway.url + "/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_ten_streams_two_slots_positions_decrease_all_complete(gateway: Gateway, sim: SimProcess) -> None:
    results: dict[int, list[Event]] = {}

    def run(i: int) -> None:
        results[i] = list(events(open_stream(gateway, chat({"tokens": 10}), f"10.0.0.{i}")))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)  # a defined arrival order
    for thread in threads:
        thread.join(60)

    assert sim.stats()["max_active"] <= 2  # the simulator counted concurrent generations
    assert sim.stats()["completed"] == 10
    waited = 0
    for received in results.values():
        assert content_of(received) == "".join(answer_tokens(10))
        positions = [e.json()["position"] for e in received if e.event == "queued"]
        assert positions == sorted(positions, reverse=True) and len(set(positions)) == len(positions)
        waited += bool(positions)
        if positions:
            # Next, or second when both slots freed at once (the two finishing together on a busy machine).
            assert positions[-1] <= 2
            assert all("active" in e.json() for e in received if e.event == "queued")
    assert waited >= 7  # only the first two (or three, by timing) started at once


def test_queue_full_and_per_client_limits_refuse_before_streaming(gateway: Gateway) -> None:
    slow = chat({"tokens": 400, "tps": 20})
    held = [open_stream(gateway, slow, f"10.1.0.{i}") for i in range(10)]  # 2 active + 8 queued
    try:
        full = requests.post(gateway.url + "/api/chat", json=slow, headers={**SSE, "X-Forwarded-For": "10.1.1.1"})
        assert full.status_code == 503
        assert int(full.headers["Retry-After"]) > 0
        assert "capacity" in full.json()["error"]
    finally:
        for response in held:
            response.close()
    time.sleep(1)  # the heartbeat notices the departed clients

    mine = [open_stream(gateway, slow, "10.2.0.1") for _ in range(2)]
    try:
        third = requests.post(gateway.url + "/api/chat", json=slow, headers={**SSE, "X-Forwarded-For": "10.2.0.1"})
        assert third.status_code == 429
        assert int(third.headers["Retry-After"]) > 0
        assert "too many requests from this client" in third.json()["error"]
        other = requests.post(
            gateway.url + "/api/chat", json=chat({"tokens": 2}), headers={"X-Forwarded-For": "10.2.0.2"}
        )
        assert other.status_code == 200  # another client (NDJSON, it waits silently) is still served
    finally:
        for response in mine:
            response.close()
    samples = metrics(gateway)
    assert samples['clawweb_refusals_total{reason="queue_full"}'] >= 1
    assert samples['clawweb_refusals_total{reason="client_limit"}'] >= 1


def test_a_queued_client_that_leaves_frees_its_place(gateway: Gateway, sim: SimProcess) -> None:
    time.sleep(1)
    slow = chat({"tokens": 400, "tps": 20})
    active = [open_stream(gateway, slow, f"10.3.0.{i}") for i in range(2)]
    leaver = open_stream(gateway, slow, "10.3.1.1")
    behind = open_stream(gateway, chat({"tokens": 3}), "10.3.1.2")
    behind_events = events(behind)
    try:
        queued = [e.json()["position"] for e in (next(behind_events) for _ in range(2)) if e.event == "queued"]
        assert queued == [2]
        leaver.close()
        moved = next(e for e in behind_events if e.event == "queued")
        assert moved.json()["position"] == 1  # moved up once the leaver's heartbeat write failed
        assert sim.stats()["max_active"] <= 2
    finally:
        for response in [*active, behind]:
            response.close()


def test_readyz_follows_the_simulator(start_simulator: StartSimulator, start_gateway: StartGateway) -> None:
    simulator = start_simulator()
    server = start_gateway(simulator.url)
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(server.url + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["model"] == "qwen3:32b"
    simulator.stop()
    down = requests.get(server.url + "/readyz", timeout=5)
    assert down.status_code == 503
    assert f"cannot reach Ollama at {simulator.url}" in down.json()["error"]
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200  # alive, just not ready
    start_simulator("--port", str(simulator.port))
    assert requests.get(server.url + "/readyz", timeout=5).status_code == 200
    missing = start_simulator("--model", "llama3:8b")
    wrong = requests.get(start_gateway(missing.url).url + "/readyz", timeout=5)
    assert wrong.status_code == 503 and "qwen3:32b" in wrong.json()["error"]


def test_metrics_move_as_streams_run_and_each_stream_logs_one_line(gateway: Gateway) -> None:
    time.sleep(1)
    before = metrics(gateway)
    response = open_stream(gateway, chat({"tokens": 200, "tps": 40}), "10.4.0.1")
    reader = events(response)
    next(e for e in reader if e.is_line)
    during = metrics(gateway)
    assert during["clawweb_open_streams"] == before["clawweb_open_streams"] + 1
    assert during["clawweb_generations_active"] >= 1
    response.close()
    time.sleep(1)
    list(events(open_stream(gateway, chat({"tokens": 5}), "10.4.0.2")))
    after = metrics(gateway)
    assert after["clawweb_open_streams"] == before["clawweb_open_streams"]
    assert after["clawweb_tokens_relayed_total"] >= before["clawweb_tokens_relayed_total"] + 5
    assert after["clawweb_time_to_first_token_seconds_count"] >= before["clawweb_time_to_first_token_seconds_count"] + 2
    assert after["clawweb_stream_max_token_gap_seconds_count"] > before["clawweb_stream_max_token_gap_seconds_count"]
    assert after["clawweb_queue_wait_seconds_count"] >= before["clawweb_queue_wait_seconds_count"] + 2
    assert after['clawweb_streams_total{outcome="done"}'] >= 1
    assert after["clawweb_client_disconnects_total"] >= before.get("clawweb_client_disconnects_total", 0) + 1
    lines = [line for line in gateway.log.splitlines() if "stream end=" in line]
    assert any("end=client_left" in line and "client=10.4.0.1" in line for line in lines)
    done = next(line for line in lines if "client=10.4.0.2" in line)
    assert "end=done route=/api/chat model=qwen3:32b" in done and "tokens=5" in done and "tokens_per_s=" in done
