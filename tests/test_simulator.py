"""The Ollama simulator follows OLLAMA_WIRE.md: tested as a real subprocess over real sockets."""

from __future__ import annotations

import json
import re
import resource
import socket
import time
from typing import Any

import pytest
import requests

from clawweb.simulator import SimConfig, answer_tokens, default_tokens, go_json, rfc3339, thinking_tokens, tokenize

from .support.factories import StartSimulator
from .support.simproc import SimProcess


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "50", "--parallel", "2", "--max-queue", "1")


def body(directive: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    content = "hi" + (f"\n#sim {json.dumps(directive)}" if directive else "")
    return {"model": "qwen3:32b", "messages": [{"role": "user", "content": content}], **fields}


def lines(response: requests.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.iter_lines()]


def test_pure_helpers() -> None:
    assert SimConfig().tokens == default_tokens()
    text = "Hello, 世界!\n\n```py\nx = 1\n```  "
    assert "".join(tokenize(text)) == text
    assert tokenize("a 世界") == ["a", " ", "世", "界"]
    assert answer_tokens(3, "one two") == ["one", " two", "one"]
    assert go_json("<a & b>\u2028") == b'"\\u003ca \\u0026 b\\u003e\\u2028"'
    assert go_json("量子") == '"量子"'.encode()  # UTF-8, not \\u escapes, as Go writes it
    assert rfc3339(1_769_566_915_156_000_000) == b"2026-01-28T02:21:55.156Z"
    assert rfc3339(1_769_566_915_000_000_000) == b"2026-01-28T02:21:55Z"


def test_stream_lines_follow_the_wire_format(sim: SimProcess) -> None:
    response = requests.post(sim.url + "/api/chat", json=body({"tokens": 3}, think=False), stream=True, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert response.headers["Transfer-Encoding"] == "chunked"
    raw = list(response.iter_lines())
    assert all(b"\n" not in line and line for line in raw)
    assert raw[0].startswith(b'{"model":"qwen3:32b","created_at":"') and raw[0].endswith(b'"done":false}')
    parsed = [json.loads(line) for line in raw]
    assert [list(p) for p in parsed[:-1]] == [["model", "created_at", "message", "done"]] * 3
    assert "".join(p["message"]["content"] for p in parsed) == "".join(answer_tokens(3))
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z", p["created_at"]) for p in parsed)
    final = parsed[-1]
    assert list(final)[:5] == ["model", "created_at", "message", "done", "done_reason"]
    assert final["done"] is True and final["done_reason"] == "stop" and final["eval_count"] == 3
    assert final["eval_duration"] > 1e6 and final["total_duration"] >= final["eval_duration"]  # nanoseconds


def test_no_headers_until_the_first_token(sim: SimProcess) -> None:
    payload = json.dumps(body({"ttft": 0.6, "tokens": 1})).encode()
    with socket.create_connection(("127.0.0.1", sim.port)) as sock:
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%b" % (len(payload), payload)
        )
        sock.settimeout(0.4)
        with pytest.raises(TimeoutError):
            sock.recv(100)  # the model is "loading": not even a status line
        sock.settimeout(2)
        first = sock.recv(4096)
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b'"done":false}' in first  # headers with the first line


def test_tokens_are_paced_one_chunk_each(sim: SimProcess) -> None:
    response = requests.post(sim.url + "/api/chat", json=body({"tokens": 5, "tps": 10}, think=False), stream=True)
    arrivals = []
    for _ in response.iter_content(chunk_size=None):
        arrivals.append(time.monotonic())
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:5], strict=False)]
    assert all(0.06 < gap < 0.2 for gap in gaps), gaps


def test_thinking_native_then_content(sim: SimProcess) -> None:
    parsed = lines(requests.post(sim.url + "/api/chat", json=body({"tokens": 2, "think_tokens": 3}, think=True)))
    assert "".join(p["message"].get("thinking", "") for p in parsed) == "".join(thinking_tokens(3))
    assert [p["message"]["content"] for p in parsed[:3]] == ["", "", ""]
    assert "".join(p["message"]["content"] for p in parsed) == "".join(answer_tokens(2))


def test_thinking_in_tags_for_old_servers(start_simulator: StartSimulator) -> None:
    old = start_simulator("--think-style", "tags", "--ttft", "0", "--tps", "100")
    parsed = lines(requests.post(old.url + "/api/chat", json=body({"tokens": 2, "think_tokens": 2})))
    content = "".join(p["message"]["content"] for p in parsed)
    assert content == "<think>" + "".join(thinking_tokens(2)) + "</think>\n\n" + "".join(answer_tokens(2))
    assert not any("thinking" in p["message"] for p in parsed)


def test_stream_false_is_one_object(sim: SimProcess) -> None:
    answer = requests.post(sim.url + "/api/chat", json=body({"tokens": 4}, stream=False, think=True)).json()
    assert answer["message"]["content"] == "".join(answer_tokens(4))
    assert answer["message"]["thinking"] == "".join(thinking_tokens(8))
    assert answer["done"] is True and answer["eval_count"] == 4


def test_generate_and_load_requests(sim: SimProcess) -> None:
    parsed = lines(requests.post(sim.url + "/api/generate", json={"model": "qwen3:32b", "prompt": "x", "think": False}))
    assert "".join(p["response"] for p in parsed) == "".join(answer_tokens(default_tokens()))
    load = requests.post(sim.url + "/api/generate", json={"model": "qwen3:32b", "keep_alive": -1}).json()
    assert load["done"] is True and load["done_reason"] == "load"
    load = requests.post(sim.url + "/api/chat", json={"model": "qwen3:32b", "messages": [], "keep_alive": 0}).json()
    assert load["done_reason"] == "unload"
    assert requests.get(sim.url + "/api/ps").json()["models"] == []  # unloaded, as Ollama does with keep_alive 0


def test_num_predict_cuts_with_length(sim: SimProcess) -> None:
    parsed = lines(requests.post(sim.url + "/api/chat", json=body(think=False, options={"num_predict": 2})))
    assert len(parsed) == 3 and parsed[-1]["done_reason"] == "length"


@pytest.mark.parametrize(
    ("payload", "status", "error"),
    [
        (b"{nope", 400, "invalid character in request body"),
        (b'{"messages": []}', 400, "model is required"),
        (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}', 404, "model 'gpt-9' not found"),
    ],
)
def test_errors_before_streaming(sim: SimProcess, payload: bytes, status: int, error: str) -> None:
    response = requests.post(sim.url + "/api/chat", data=payload)
    assert (response.status_code, response.json()) == (status, {"error": error})


def test_foreign_host_or_origin_gets_an_empty_403(sim: SimProcess) -> None:
    for headers in ({"Host": "chat.example.com"}, {"Origin": "https://chat.example.com"}):
        response = requests.post(sim.url + "/api/chat", json=body(), headers=headers)
        assert (response.status_code, response.content) == (403, b"")
    assert requests.get(sim.url + "/", headers={"Host": "localhost:11434"}).text == "Ollama is running"
    assert requests.get(sim.url + "/api/version").json() == {"version": "0.12.6"}
    assert requests.get(sim.url + "/api/nope").status_code == 404


def test_error_line_status_and_crash_directives(sim: SimProcess) -> None:
    parsed = lines(requests.post(sim.url + "/api/chat", json=body({"error_after": 2}, think=False)))
    assert parsed[-1] == {"error": "simulated failure after 2 tokens"} and len(parsed) == 3
    failed = requests.post(sim.url + "/api/chat", json=body({"status": 500}))
    assert (failed.status_code, failed.json()) == (500, {"error": "simulated error"})
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        lines(requests.post(sim.url + "/api/chat", json=body({"close_after": 2}, think=False), stream=True))


def test_parallel_slots_queue_and_503(sim: SimProcess) -> None:
    sim.reset()
    slow = body({"tokens": 20, "tps": 20}, think=False)
    held = [requests.post(sim.url + "/api/chat", json=slow, stream=True) for _ in range(2)]
    waiting_sock = socket.create_connection(("127.0.0.1", sim.port))
    payload = json.dumps(slow).encode()
    waiting_sock.sendall(
        b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%b" % (len(payload), payload)
    )
    deadline = time.monotonic() + 2
    while sim.stats()["queued"] != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    busy = requests.post(sim.url + "/api/chat", json=slow)
    assert busy.status_code == 503 and "maximum pending requests exceeded" in busy.json()["error"]
    waiting_sock.close()  # a queued client that leaves is noticed and counted
    for response in held:
        lines(response)
    stats = sim.stats()
    assert stats["max_active"] == 2 and stats["disconnects"] == 1 and stats["completed"] == 2


def test_disconnect_while_loading_is_counted(sim: SimProcess) -> None:
    sim.reset()
    payload = json.dumps(body({"ttft": 5})).encode()
    with socket.create_connection(("127.0.0.1", sim.port)) as sock:
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%b" % (len(payload), payload)
        )
        time.sleep(0.2)
    deadline = time.monotonic() + 2
    while sim.stats()["disconnects"] != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.stats()["disconnects"] == 1 and sim.stats()["active"] == 0


def test_keep_alive_serves_several_requests_on_one_connection(sim: SimProcess) -> None:
    with socket.create_connection(("127.0.0.1", sim.port)) as sock, sock.makefile("rb") as reader:
        for _ in range(3):
            sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert reader.readline() == b"HTTP/1.1 200 OK\r\n"
            while reader.readline() != b"\r\n":
                pass
            assert reader.read(len(b'{"version":"0.12.6"}')) == b'{"version":"0.12.6"}'


def test_streams_beyond_1024_open_connections(start_simulator: StartSimulator) -> None:
    """A simulator holding more than 1024 connections (a benchmark's 500 streams beside a gateway's pooled
    connections) still answers: waiting on a client with ``select`` failed from file descriptor 1024 on, and those
    connections were closed without an answer (half of one benchmark round)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2400:
        assert hard >= 2400, f"this machine allows {hard} open files; the test needs 2400"
        resource.setrlimit(resource.RLIMIT_NOFILE, (2400, hard))  # the simulator started below inherits it
    try:
        sim = start_simulator("--ttft", "0.05", "--tps", "200")
        idle = [socket.create_connection(("127.0.0.1", sim.port)) for _ in range(1100)]
        try:
            # ttft makes the simulator wait on the client (is it gone?) before answering
            response = requests.post(sim.url + "/api/chat", json=body({"tokens": 3, "ttft": 0.1}), timeout=10)
            assert response.status_code == 200 and lines(response)[-1]["done"] is True
        finally:
            for sock in idle:
                sock.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
