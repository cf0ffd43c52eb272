"""The relay under a real ``gunicorn -k gevent`` in front of the real Ollama simulator (a subprocess)."""

from __future__ import annotations

import json
import signal
import socket
import time
from typing import Any

import ollama
import pytest
import requests

from clawweb.simulator import answer_tokens

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway, free_port, wait_for
from .support.simproc import SimProcess, chat
from .support.sseclient import Event, content_of, events

HEARTBEAT_S = 0.3
READ_TIMEOUT_S = 2.5
SSE = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "50", "--tokens", "12")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, heartbeat_s=HEARTBEAT_S, read_timeout_s=READ_TIMEOUT_S)


@pytest.fixture(autouse=True)
def fresh_counters(sim: SimProcess) -> None:
    sim.reset()


def stream(gateway: Gateway, body: dict[str, Any]) -> tuple[requests.Response, list[Event]]:
    response = requests.post(gateway.url + "/api/chat", json=body, headers=SSE, stream=True, timeout=10)
    return response, list(events(response))


# --- the happy path ------------------------------------------------------------------------------------------


def test_sse_headers_and_every_line_as_one_frame(gateway: Gateway) -> None:
    response, received = stream(gateway, chat({"tokens": 6}))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in response.headers
    assert received[0].is_comment and received[0].comments == ["ok"]
    frames = [e for e in received if e.is_line]
    assert [f.id for f in frames] == [str(i) for i in range(1, 8)]  # 6 tokens + the done line
    assert content_of(frames) == "".join(answer_tokens(6))
    final = frames[-1].json()
    assert final["done"] is True and final["eval_count"] == 6


def test_frames_arrive_spaced_out_not_in_one_burst(gateway: Gateway) -> None:
    _, received = stream(gateway, chat({"tokens": 8, "tps": 10}))
    token_times = [e.at for e in received if e.is_line][:8]
    gaps = [b - a for a, b in zip(token_times, token_times[1:], strict=False)]
    # The simulator emits one token every 100 ms; a buffering relay would deliver them all within a few ms. On a
    # loaded machine one stalled hop can deliver two frames together, so the median gap is what must show the pace.
    assert sorted(gaps)[len(gaps) // 2] > 0.05, gaps
    assert token_times[-1] - token_times[0] > 0.6


def test_upstream_bytes_are_relayed_unchanged(gateway: Gateway, sim: SimProcess) -> None:
    text = "a<b & c\u2028d"
    _, received = stream(gateway, chat({"text": text}))
    raw = "".join(e.data for e in received)
    assert "\\u003c" in raw and "\\u0026" in raw and "\\u2028" in raw  # Go's escaping kept as sent
    assert content_of(received) == text


def test_opening_comment_and_heartbeats_while_the_model_loads(gateway: Gateway) -> None:
    start = time.monotonic()
    _, received = stream(gateway, chat({"ttft": 1.5, "tokens": 2}))
    assert received[0].comments == ["ok"] and received[0].at - start < 0.5  # headers did not wait for the model
    first_data = next(i for i, e in enumerate(received) if e.is_line)
    heartbeats = [e for e in received[1:first_data] if e.comments == ["keep-alive"]]
    assert len(heartbeats) >= 3  # 1.5 s of silence / 0.3 s heartbeat
    assert content_of(received) == "".join(answer_tokens(2))


def test_thinking_lines_pass_through(gateway: Gateway) -> None:
    _, received = stream(gateway, chat({"tokens": 3, "think_tokens": 4}, think=True))
    thinking = "".join(e.json()["message"].get("thinking", "") for e in received if e.is_line)
    assert thinking and content_of(received) == "".join(answer_tokens(3))


# --- errors before the stream: real HTTP statuses ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"messages": "hi"}', 400, "'messages'"),
        (b"not json", 400, "not valid JSON"),
        (b"\xff\xfe{}", 400, "UTF-8"),
        (json.dumps(chat(stream="true")).encode(), 400, "'stream'"),
        (json.dumps(chat(model="nope:1b")).encode(), 404, "model 'nope:1b' not found"),
        (b'{"messages": [{"role": "user", "content": "' + b"x" * (1 << 20) + b'"}]}', 413, "larger than"),
    ],
)
def test_rejected_before_any_stream(gateway: Gateway, sim: SimProcess, body: bytes, status: int, fragment: str) -> None:
    response = requests.post(gateway.url + "/api/chat", data=body, headers=SSE, timeout=10)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert fragment in response.json()["error"]
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("directive", "status", "message"),
    [
        ({"status": 500}, 500, "simulated error"),
        ({"status": 503}, 503, "simulated error"),
        ({"close_after": 0}, 502, "Remote end closed connection without response"),
    ],
)
def test_what_ollama_says_at_once_is_a_status_before_the_stream(
    gateway: Gateway, sim: SimProcess, directive: dict[str, Any], status: int, message: str
) -> None:
    """An error status (or a close) that comes before the first token, while the request waits for Ollama to
    answer, is the request's own status: an SSE client sees it as it would from Ollama."""
    response = requests.post(gateway.url + "/api/chat", json=chat(directive), headers=SSE, timeout=10)
    assert response.status_code == status and response.headers["Content-Type"] == "application/json"
    assert message in response.json()["error"]
    assert wait_for(lambda: sim.stats()["active"] == 0)


def test_unreachable_ollama_is_a_502_naming_the_url(start_gateway: StartGateway) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    server = start_gateway(dead)
    response = requests.post(server.url + "/api/chat", json=chat(), headers=SSE, timeout=10)
    assert response.status_code == 502
    assert response.json()["error"] == f"cannot reach Ollama at {dead}: Connection refused"
    assert requests.get(server.url + "/api/tags", timeout=10).status_code == 502


# --- errors after the stream started: an `event: error` frame, then a clean end ------------------------------


@pytest.mark.parametrize(
    ("directive", "frames_before", "message"),
    [
        ({"status": 500, "ttft": 1.5}, 0, "simulated error"),  # after the wait for Ollama: in-band
        ({"error_after": 3}, 3, "simulated failure after 3 tokens"),
        ({"close_after": 2}, 2, "Ollama closed the stream before the answer was done"),
        ({"hang": True}, 0, f"Ollama sent nothing for {READ_TIMEOUT_S:g} s"),
        # silent midway: the relay reads those lines itself, and its silence watch ends the read
        ({"hang_after": 3}, 3, f"Ollama sent nothing for {READ_TIMEOUT_S:g} s"),
    ],
)
def test_upstream_failures_become_an_error_event(
    gateway: Gateway, sim: SimProcess, directive: dict[str, Any], frames_before: int, message: str
) -> None:
    response, received = stream(gateway, chat(directive))
    assert response.status_code == 200
    data = [e for e in received if e.is_line or e.event == "error"]
    assert len(data) == frames_before + 1
    assert data[-1].event == "error"
    assert data[-1].json() == {"error": message}
    assert wait_for(lambda: sim.stats()["active"] == 0)


def test_close_after_is_seen_as_broken_connection_or_early_close(gateway: Gateway) -> None:
    # The message differs by how the socket dies; either way it is an error frame, never a silent end.
    _, received = stream(gateway, chat({"close_after": 0, "ttft": 1.5}))
    assert received[-1].event == "error"


# --- the client leaves ---------------------------------------------------------------------------------------


def raw_sse_request(gateway: Gateway, body: dict[str, Any]) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(
        b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(payload), payload)
    )
    received = b""
    while b": ok" not in received:  # headers and opening comment (gunicorn writes them separately)
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    return sock


def test_disconnect_while_the_model_is_silent_closes_upstream(gateway: Gateway, sim: SimProcess) -> None:
    sock = raw_sse_request(gateway, chat({"ttft": 30}))
    assert wait_for(lambda: sim.stats()["active"] == 1)
    sock.close()
    # Noticed at the next heartbeat write; then the reader is killed, which closes the upstream socket.
    assert wait_for(lambda: sim.stats()["disconnects"] == 1, timeout=HEARTBEAT_S * 2 + 1)
    assert sim.stats()["active"] == 0


def test_disconnect_mid_answer_closes_upstream(gateway: Gateway, sim: SimProcess) -> None:
    sock = raw_sse_request(gateway, chat({"tokens": 500, "tps": 20}))
    time.sleep(0.3)
    assert b"data: " in sock.recv(65536)
    sock.close()
    assert wait_for(lambda: sim.stats()["disconnects"] == 1, timeout=2)
    assert sim.stats()["completed"] == 0


# --- worker stop ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_worker_stop_ends_open_streams_with_a_final_frame(
    sim: SimProcess, signum: int, start_gateway: StartGateway
) -> None:
    server = start_gateway(sim.url, heartbeat_s=HEARTBEAT_S)
    streams = [
        requests.post(
            server.url + "/api/chat", json=chat({"tokens": 1000, "tps": 10}), headers=SSE, stream=True, timeout=10
        )
        for _ in range(3)
    ]
    readers = [events(r) for r in streams]
    for reader in readers:
        next(e for e in reader if e.is_line)  # each stream is relaying tokens
    started = time.monotonic()
    server.signal(signum)
    for reader in readers:
        rest = list(reader)  # ends: the worker closed the stream itself
        assert rest[-1].event == "error"
        assert rest[-1].json() == {"error": "the gateway is restarting; please retry"}
    assert time.monotonic() - started < 3  # far inside graceful_timeout: nothing waits for SIGKILL
    assert wait_for(lambda: sim.stats()["disconnects"] == 3)  # the upstream requests were closed
    if signum == signal.SIGHUP:
        # A new worker serves the reconnect. Until the old worker closes its listener (within a second)
        # it may still accept one; that stream ends at once with the same "restarting" frame.
        def served() -> bool:
            _, received = stream(server, chat({"tokens": 2}))
            return content_of(received) == "".join(answer_tokens(2))

        assert wait_for(served, timeout=5)
    assert server.stop() == 0
    assert "graceful timeout" not in server.log.lower()


# --- Ollama-native clients -----------------------------------------------------------------------------------


def test_native_ndjson_passes_lines_through(gateway: Gateway) -> None:
    response = requests.post(gateway.url + "/api/chat", json=chat({"tokens": 4}), stream=True, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.iter_lines()]
    assert "".join(line["message"]["content"] for line in lines) == "".join(answer_tokens(4))
    assert lines[-1]["done"] is True


def test_native_error_status_and_error_line_pass_through(gateway: Gateway) -> None:
    failed = requests.post(gateway.url + "/api/chat", json=chat({"status": 500}), timeout=10)
    assert failed.status_code == 500 and failed.json() == {"error": "simulated error"}
    response = requests.post(gateway.url + "/api/chat", json=chat({"error_after": 2}), timeout=10)
    lines = [json.loads(line) for line in response.iter_lines()]
    assert lines[-1] == {"error": "simulated failure after 2 tokens"} and len(lines) == 3


def test_browser_host_and_origin_never_reach_ollama(gateway: Gateway, sim: SimProcess) -> None:
    # What the page's own request carries (its origin, as the browser sends it), plus a cookie.
    headers = {**SSE, "Origin": gateway.url, "Referer": gateway.url + "/c/1", "Cookie": "clawweb=x"}
    _, received = stream_with_headers(gateway, chat({"tokens": 2}), headers)
    assert content_of(received) == "".join(answer_tokens(2))  # the simulator 403s any Origin, as Ollama does
    sent = {k.lower() for k in sim.stats()["last_headers"]}
    assert "origin" not in sent and "referer" not in sent and "cookie" not in sent


def stream_with_headers(gateway: Gateway, body: dict[str, Any], headers: dict[str, str]) -> tuple[Any, list[Event]]:
    response = requests.post(gateway.url + "/api/chat", json=body, headers=headers, stream=True, timeout=10)
    return response, list(events(response))


def test_official_ollama_client_works_unchanged(gateway: Gateway) -> None:
    messages = chat({"tokens": 5})["messages"]
    with ollama.Client(host=gateway.url) as client:
        parts = list(client.chat(model="qwen3:32b", messages=messages, stream=True, think=False))
        assert "".join(p.message.content or "" for p in parts) == "".join(answer_tokens(5))
        assert parts[-1].done
        whole = client.chat(model="qwen3:32b", messages=messages, think=False)
        assert whole.message.content == "".join(answer_tokens(5))
        with pytest.raises(ollama.ResponseError) as info:
            client.chat(model="missing:7b", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 404
        assert [m.model for m in client.list().models] == ["qwen3:32b", "nomic-embed-text:latest"]
