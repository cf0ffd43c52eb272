"""Faults on the relay path, for real: clients that stop reading (small receive buffers, nothing read), Ollama
killed and restarted, bodies too large for the limit sent by clients that write before they read."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway, metric, wait_for
from .support.simproc import SimProcess, chat
from .support.sseclient import events

pytestmark = pytest.mark.faults


StalledReader = Callable[[Gateway, dict[str, object]], socket.socket]


@pytest.fixture
def stalled_reader() -> Iterator[StalledReader]:
    """Opens SSE requests from clients with a tiny receive buffer that then read nothing at all (closed at the
    end whatever happened)."""
    opened: list[socket.socket] = []

    def open_one(gateway: Gateway, body: dict[str, object]) -> socket.socket:
        opened.append(_stalled(gateway, body))
        return opened[-1]

    yield open_one
    for sock in opened:
        sock.close()


def _stalled(gateway: Gateway, body: dict[str, object]) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    data = json.dumps(body).encode()
    sock.sendall(
        b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
    )
    return sock


@pytest.fixture
def sim(start_simulator: StartSimulator) -> SimProcess:
    return start_simulator("--ttft", "0.01", "--tps", "30000")


def test_a_slot_is_free_once_ollama_is_done_however_slowly_the_client_reads(
    sim: SimProcess, stalled_reader: StalledReader, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(sim.url, max_active=1, heartbeat_s=0.5, queue_timeout_s=30)
    slow = stalled_reader(gateway, chat({"tokens": 30_000}))  # ~4 MB of frames: far beyond the socket buffers
    assert wait_for(lambda: sim.stats()["completed"] == 1, 15)  # Ollama finished the slow client's answer
    # and its slot is free: the gateway read ahead of the client (send_watch notices within about a second and a
    # half that the client's writes wait) without waiting for it to read the ~4 MB
    assert wait_for(lambda: metric(gateway, "clawweb_generations_active") == 0, 5)
    normal = requests.post(gateway.url + "/api/chat", json=chat({"tokens": 5}, stream=False), timeout=20)
    assert normal.status_code == 200 and normal.json()["done"] is True
    slow.close()


def worker_rss(gateway: Gateway) -> int:
    """Resident bytes of the gateway's one worker (the gunicorn master's child)."""
    master = gateway.proc.pid
    (worker,) = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    for line in Path(f"/proc/{worker}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_stream_holds_at_most_its_buffer_for_a_client_that_stops_reading(
    sim: SimProcess, start_gateway: StartGateway
) -> None:
    """Six clients that read nothing of 60000-token answers (~6 MB of lines each). The yardstick first: with the
    bound lifted (what the worker did before it had one) it takes every answer into memory (+43 MB here). Then
    with 50 kB per stream, in the time the yardstick took to read everything, the worker grows by under 8 MB:
    reading from Ollama pauses. (Whether Ollama has finished writing says nothing here: the kernel may take an
    answer whole into the gateway's upstream socket, whose receive buffer grows to tcp_rmem's 32 MB; that is not
    the worker's memory. A clean-clone run saw 1 of 6 finish that way, with the worker at +0.7 MB.)"""

    def six_stalled(buffer_bytes: int, wait_s: float) -> tuple[int, int, float]:
        """(RSS growth, answers Ollama finished, seconds until all six were, or ``wait_s``)."""
        settings = {"stream_buffer_bytes": buffer_bytes, "max_active": 6, "max_active_per_client": 6}
        gateway = start_gateway(sim.url, heartbeat_s=0.5, **settings)
        clients: list[socket.socket] = []
        try:
            requests.post(gateway.url + "/api/chat", json=chat({"tokens": 2}), timeout=10)  # warm the worker up
            before, completed = worker_rss(gateway), sim.stats()["completed"]
            started = time.monotonic()
            clients = [_stalled(gateway, chat({"tokens": 60_000, "tps": 30_000})) for _ in range(6)]
            wait_for(lambda: sim.stats(timeout=30)["completed"] == completed + 6, wait_s)
            finished = sim.stats()["completed"] - completed
            return worker_rss(gateway) - before, finished, time.monotonic() - started
        finally:
            for client in clients:  # first: the worker's graceful stop would wait for their streams
                client.close()
            gateway.stop()

    grown, finished, took = six_stalled(1 << 30, wait_s=60)
    print(f"without a bound: +{grown / 1e6:.1f} MB, {finished} of 6 read whole in {took:.1f} s")
    assert finished == 6 and grown > 24 << 20  # the scenario shows a missing bound
    grown, finished, _ = six_stalled(50_000, wait_s=took * 1.5)
    print(f"with 50 kB per stream: +{grown / 1e6:.1f} MB, {finished} of 6 read whole")
    assert grown < 8 << 20


def test_a_client_that_accepts_nothing_is_cut_and_its_slot_freed(
    sim: SimProcess, stalled_reader: StalledReader, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(sim.url, send_timeout_s=1, stream_buffer_bytes=50_000, heartbeat_s=0.5)
    slow = stalled_reader(gateway, chat({"tokens": 30_000}))
    assert wait_for(lambda: "stream cut" in gateway.log, 15)
    assert wait_for(lambda: sim.stats()["active"] == 0, 10)  # Ollama's request was closed
    assert wait_for(lambda: "end=slow_client" in gateway.log, 5)
    assert metric(gateway, "clawweb_slow_clients_cut_total") == 1
    assert metric(gateway, "clawweb_generations_active") == 0
    slow.settimeout(5)
    while slow.recv(65536):  # what was in flight, then the server's close
        pass
    slow.close()
    # Streams that are read are never cut, however long they last.
    ok = requests.post(gateway.url + "/api/chat", json=chat({"tokens": 30, "tps": 10}), timeout=30)
    assert ok.status_code == 200 and json.loads(ok.text.splitlines()[-1])["done"] is True


def test_a_too_large_body_gets_its_413_even_from_clients_that_write_first(
    sim: SimProcess, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(sim.url)
    body = json.dumps(chat(filler="x" * (8 << 20))).encode()
    request = urllib.request.Request(gateway.url + "/api/chat", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413 and "CLAWWEB_MAX_BODY_BYTES" in json.loads(refused.value.read())["error"]
    response = requests.post(gateway.url + "/api/chat", data=body, timeout=30)
    assert response.status_code == 413 and "CLAWWEB_MAX_BODY_BYTES" in response.json()["error"]
    # A chunked body (no Content-Length) over the limit: the same answer.
    chunked = requests.post(
        gateway.url + "/api/chat", data=iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
    )
    assert chunked.status_code == 413 and chunked.json()["error"]
    assert requests.get(gateway.url + "/healthz", timeout=5).ok


def test_ollama_down_is_a_502_before_any_stream_and_the_first_request_after_it_returns_works(
    start_gateway: StartGateway, start_simulator: StartSimulator
) -> None:
    sim = start_simulator("--ttft", "0.01", "--tps", "500")
    gateway = start_gateway(sim.url, heartbeat_s=0.5)
    sse = {"Accept": "text/event-stream"}
    conversation = requests.post(gateway.url + "/api/conversations", json={}, timeout=5).json()
    messages_url = f"{gateway.url}/api/conversations/{conversation['id']}/messages"
    v1 = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    assert requests.post(gateway.url + "/api/chat", json=chat(), headers=sse, timeout=10).ok  # pooled
    sim.signal(signal.SIGKILL)
    sim.stop()  # reaps it and closes its log
    for url, body, headers in (
        (gateway.url + "/api/chat", chat(), sse),
        (gateway.url + "/api/chat", chat(), {}),
        (gateway.url + "/v1/chat/completions", v1, {}),
        (messages_url, {"content": "hi"}, {}),
    ):
        refused = requests.post(url, json=body, headers=headers, timeout=10)
        assert refused.status_code == 502, (url, refused.text)
        assert "cannot reach Ollama" in json.dumps(refused.json()), url
    assert requests.get(messages_url.rsplit("/", 1)[0], timeout=5).json()["messages"] == []  # nothing stored
    sim = start_simulator("--ttft", "0.01", "--tps", "500", "--port", str(sim.port))
    with requests.post(gateway.url + "/api/chat", json=chat(), headers=sse, stream=True, timeout=10) as back:
        final = [e for e in events(back) if e.is_line][-1]
    assert back.status_code == 200 and final.json()["done"] is True
    assert requests.post(messages_url, json={"content": "hi"}, timeout=10).status_code == 202
