"""Attacks on the routes of issue 19 (``/api/generate``, ``/api/embed``, ``/api/embeddings``, ``/api/show``, the
``GET /`` probe), written by someone who did not write them, against real gunicorn, the simulator and Redis.

What is proven here and nowhere else:

* a hostile body on any new route (variant spellings, duplicate keys, smuggled ``keep_alive``, wrong types, token
  ids no answer returned, deep nesting, surrogates, non-UTF-8, a chunked body over the limit) is a JSON 4xx and
  nothing reaches Ollama (the simulator's ``/_sim/stats`` counts what did);
* a non-admin key cannot unload a model, whichever route and spelling it tries: every attempt is refused, or
  reaches Ollama without ``keep_alive``, and both models are still loaded at the end;
* the probe tells an unauthenticated caller "Ollama is running" and nothing else;
* a flood of embeddings with two slots answers each request 200 or a clean 503/429, takes no answer slot while
  answers stream, and leaves every gauge at 0;
* Ollama killed in the middle of a generate stream or of an embedding, Redis killed under waiting embeddings, the
  worker stopped mid-embedding, a client that reads nothing of a generate stream: each ends cleanly, slots freed;
* an error Ollama (an older one, or a proxy in front of it) words in plain text is still JSON here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from .support.factories import StartGateway, StartRedis, StartSimulator
from .support.servers import Gateway, metric, wait_for
from .support.simproc import SimProcess, chat, sim_line
from .support.sseclient import events

MODEL = "qwen3:32b"
EMBED_MODEL = "nomic-embed-text:latest"
MAX_BODY = 65536
SSE = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.01", "--tps", "500", "--tokens", "4")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, auth="required", max_body_bytes=MAX_BODY, max_embed_inputs=8)


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> str:
    return gateway.new_user("mallory")


@pytest.fixture(autouse=True)
def fresh_counters(request: pytest.FixtureRequest) -> None:
    if "sim" in request.fixturenames:
        request.getfixturevalue("sim").reset()


def post(gateway: Gateway, path: str, body: Any, key: str, **headers: str) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers}
    return requests.post(gateway.url + path, data=data, headers=sent, timeout=20)


def reached(sim: SimProcess) -> int:
    stats = sim.stats()
    return int(stats["requests"] + stats["embeds"] + stats["shows"])


def error_of(response: requests.Response) -> str:
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:200]
    message = response.json()["error"]
    assert isinstance(message, str) and message
    return message


# --- hostile bodies --------------------------------------------------------------------------------------------

G, E, OLD, SHOW = "/api/generate", "/api/embed", "/api/embeddings", "/api/show"
HOSTILE: list[tuple[str, Any, int, str]] = [
    # Go's decoder folds case and U+212A/U+017F into the field: a variant spelling is one more copy of it
    (G, {"Prompt": "hi"}, 400, "Prompt"),
    (G, {"prompt": "hi", "\u017fuffix": "x"}, 400, "\u017fuffix"),
    (G, {"prompt": "hi", "SYSTEM": "obey me"}, 400, "SYSTEM"),
    (G, b'{"prompt": "hi", "prompt": ""}', 400, "more than once"),
    (G, {"prompt": "", "\u212aeep_alive": 0}, 400, "\u212aeep_alive"),
    (G, {"prompt": "", "KEEP_ALIVE": "0s"}, 400, "KEEP_ALIVE"),
    (G, {"prompt": "", "options": {"keep_alive": 0}}, 400, "keep_alive"),
    (G, {"prompt": "", "keep_alive": True}, 400, "keep_alive"),
    (G, {"prompt": "", "keep_alive": {"seconds": 0}}, 400, "keep_alive"),
    (G, {"prompt": None, "keep_alive": 0}, 400, "prompt"),
    (G, {"prompt": "hi", "options": {"num_gpu": 0}}, 400, "num_gpu"),
    # token ids no answer ever returned: negative, past int32 (llama_token), past Go's int64, not numbers
    (G, {"prompt": "hi", "context": [1, -1]}, 400, "context"),
    (G, {"prompt": "hi", "context": [2**31]}, 400, "context"),
    (G, {"prompt": "hi", "context": [10**30]}, 400, "context"),
    (G, {"prompt": "hi", "context": [True, 2]}, 400, "context"),
    (G, {"prompt": "hi", "context": [1.5]}, 400, "context"),
    (G, {"prompt": "hi", "context": "1,2"}, 400, "context"),
    (G, b'{"prompt": "hi", "context": [' + b"9" * 5000 + b"]}", 400, "cannot read"),
    (G, {"prompt": "hi", "images": [1]}, 400, "images"),
    (G, {"prompt": "hi", "think": "max"}, 400, "think"),
    (G, {"prompt": "hi", "format": "yaml"}, 400, "format"),
    (G, {"prompt": "hi", "raw": "yes"}, 400, "raw"),
    (G, b'{"prompt": "\\ud800"}', 400, "surrogate"),
    (G, b'{"prompt": "\xff"}', 400, "UTF-8"),
    (G, b'{"prompt": "hi", "format": ' + b'{"a": ' * 100 + b"1" + b"}" * 100 + b"}", 400, "nested"),
    (G, b"[" * 60_000, 400, "nested"),
    (G, b'{"prompt": NaN}', 400, "NaN"),
    (G, b'"prompt"', 400, "object"),
    # /api/embed: input of every wrong shape, too many or too long, dimensions at and past the edges
    (E, {"model": EMBED_MODEL}, 400, "input"),
    (E, {"model": EMBED_MODEL, "input": None}, 400, "input"),
    (E, {"model": EMBED_MODEL, "input": 7}, 400, "input"),
    (E, {"model": EMBED_MODEL, "input": [["nested"]]}, 400, "input"),
    (E, {"model": EMBED_MODEL, "input": ["a", None]}, 400, "input"),
    (E, {"model": EMBED_MODEL, "input": {"text": "a"}}, 400, "input"),
    (E, {"model": EMBED_MODEL, "input": ["a"] * 9}, 400, "CLAWWEB_MAX_EMBED_INPUTS"),
    (E, {"model": EMBED_MODEL, "input": [""] * 10_000}, 400, "CLAWWEB_MAX_EMBED_INPUTS"),
    (E, {"model": EMBED_MODEL, "input": "a", "Input": "b"}, 400, "Input"),
    (E, {"model": EMBED_MODEL, "input": "a", "\u212aeep_alive": 0}, 400, "\u212aeep_alive"),
    (E, {"model": EMBED_MODEL, "input": "a", "options": {"keep_alive": 0}}, 400, "keep_alive"),
    (E, {"model": EMBED_MODEL, "input": "a", "dimensions": 0}, 400, "dimensions"),
    (E, {"model": EMBED_MODEL, "input": "a", "dimensions": -1}, 400, "dimensions"),
    (E, {"model": EMBED_MODEL, "input": "a", "dimensions": 65537}, 400, "dimensions"),
    (E, {"model": EMBED_MODEL, "input": "a", "dimensions": 2.5}, 400, "dimensions"),
    (E, {"model": EMBED_MODEL, "input": "a", "dimensions": 1e300}, 400, "dimensions"),
    (E, {"model": EMBED_MODEL, "input": "a", "dimensions": True}, 400, "dimensions"),
    (E, {"model": EMBED_MODEL, "input": "a", "dimensions": "8"}, 400, "dimensions"),
    (E, {"model": EMBED_MODEL, "input": "a", "truncate": 0}, 400, "truncate"),
    (E, {"model": [EMBED_MODEL], "input": "a"}, 400, "model"),
    (E, {"model": " ", "input": "a"}, 400, "model"),
    (E, b'{"model": "nomic-embed-text:latest", "input": ["\\udfff"]}', 400, "surrogate"),
    (OLD, {"model": EMBED_MODEL, "input": "a"}, 400, "prompt"),
    (OLD, {"model": EMBED_MODEL, "prompt": ["a"]}, 400, "prompt"),
    (OLD, {"model": EMBED_MODEL, "PROMPT": "a"}, 400, "PROMPT"),
    (OLD, {"model": EMBED_MODEL, "prompt": "a", "keep_alive": []}, 400, "keep_alive"),
    # /api/show: name is model's old spelling, both read by Ollama, so both are checked
    (SHOW, {}, 400, "model"),
    (SHOW, {"model": ""}, 400, "model"),
    (SHOW, {"name": ""}, 400, "name"),
    (SHOW, {"model": MODEL, "Name": MODEL}, 400, "Name"),
    (SHOW, {"model": MODEL, "name": 3}, 400, "name"),
    (SHOW, {"model": MODEL, "verbose": "true"}, 400, "verbose"),
    (SHOW, {"model": MODEL, "MODEL": "nope:1b"}, 400, "MODEL"),
]


@pytest.mark.parametrize(("path", "body", "status", "named"), HOSTILE)
def test_a_hostile_body_is_a_json_4xx_before_anything_reaches_ollama(
    gateway: Gateway, sim: SimProcess, key: str, path: str, body: Any, status: int, named: str
) -> None:
    refused = post(gateway, path, body, key)
    assert refused.status_code == status, refused.text[:300]
    assert named in error_of(refused)
    assert reached(sim) == 0


@pytest.mark.parametrize("path", [G, E, OLD, SHOW])
def test_a_body_over_the_limit_is_a_413_chunked_or_not(gateway: Gateway, sim: SimProcess, key: str, path: str) -> None:
    text = "x" * MAX_BODY
    body = json.dumps({"model": EMBED_MODEL, "prompt": text, "input": text}).encode()
    headers = {"Authorization": f"Bearer {key}"}
    whole = requests.post(gateway.url + path, data=body, headers=headers, timeout=20)
    chunks = iter([body[i : i + 4096] for i in range(0, len(body), 4096)])
    chunked = requests.post(gateway.url + path, data=chunks, headers=headers, timeout=20)
    for refused in (whole, chunked):
        assert refused.status_code == 413 and error_of(refused)
    assert reached(sim) == 0


def test_what_is_forwarded_holds_only_canonical_fields(gateway: Gateway, sim: SimProcess, key: str) -> None:
    """The largest context a previous answer can return is forwarded as it is; an unknown key never is."""
    body = {"prompt": "hi", "context": [0, 2**31 - 1], "stream": False, "_debug_render_only": True, "runner": "x"}
    answered = post(gateway, G, body, key)
    assert answered.status_code == 200, answered.text
    assert sim.stats()["last_request"] == {"model": MODEL, "prompt": "hi", "context": [0, 2**31 - 1], "stream": False}


# --- nobody but an admin unloads a model -----------------------------------------------------------------------

UNLOADS: list[tuple[str, dict[str, Any]]] = [
    (G, {"model": MODEL, "prompt": "", "keep_alive": 0}),
    (G, {"model": MODEL, "keep_alive": "0"}),
    (G, {"model": MODEL, "keep_alive": "0s"}),
    (G, {"model": MODEL, "keep_alive": 0.0}),
    (G, {"model": MODEL, "keep_alive": -0.0}),
    (G, {"model": MODEL, "keep_alive": "0m", "stream": False}),
    (G, {"model": MODEL, "prompt": "", "system": "x", "keep_alive": 0}),
    (G, {"model": MODEL, "prompt": "", "suffix": "x", "keep_alive": 0}),
    (G, {"model": MODEL, "prompt": "hi", "keep_alive": 0}),  # Ollama: unload once answered
    (G, {"model": MODEL, "prompt": " ", "keep_alive": "0s"}),
    (G, {"model": MODEL, "prompt": "", "keep_alive": None}),  # null: Ollama's default, a plain load
    (G, {"model": MODEL, "prompt": ""}),
    ("/api/chat", {"model": MODEL, "messages": [], "keep_alive": 0}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": ""}], "keep_alive": 0}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "keep_alive": "0s"}),
    # Ollama's EmbedHandler schedules the runner with the request's keep_alive: 0 unloads the embedding model
    (E, {"model": EMBED_MODEL, "input": "hi", "keep_alive": 0}),
    (E, {"model": EMBED_MODEL, "input": [], "keep_alive": 0}),
    (E, {"model": EMBED_MODEL, "input": "", "keep_alive": "0s"}),
    (OLD, {"model": EMBED_MODEL, "prompt": "", "keep_alive": 0}),
    (OLD, {"model": EMBED_MODEL, "prompt": "hi", "keep_alive": "0"}),
    (SHOW, {"model": MODEL, "keep_alive": 0}),
]


def loaded(sim: SimProcess) -> set[str]:
    listing = requests.get(sim.url + "/api/ps", timeout=5).json()
    return {model["name"] for model in listing["models"]}


@pytest.mark.parametrize("sse", [False, True], ids=["native", "sse"])
def test_no_attempt_by_a_non_admin_unloads_a_model(gateway: Gateway, sim: SimProcess, key: str, sse: bool) -> None:
    for path, body in ((G, {"model": MODEL, "prompt": "load"}), (E, {"model": EMBED_MODEL, "input": "load"})):
        assert post(gateway, path, body, key).status_code == 200
    assert loaded(sim) == {MODEL, EMBED_MODEL}
    for path, body in UNLOADS:
        before = reached(sim)
        response = post(gateway, path, body, key, **(SSE if sse else {}))
        if response.status_code >= 400:
            assert response.status_code in (400, 403), (path, body, response.text)
            assert error_of(response) and reached(sim) == before, (path, body)
        else:
            response.content  # noqa: B018  # read to its end
            assert reached(sim) == before + 1
            assert "keep_alive" not in sim.stats()["last_request"], (path, body)
    assert loaded(sim) == {MODEL, EMBED_MODEL}


# --- the probe -------------------------------------------------------------------------------------------------

PROBES = ["/", "/?x=1", "//", "/%2F", "/?next=/c/1"]
ACCEPTS = [None, "*/*", "application/json", "text/plain", "text/html;q=0", "TEXT/HTML", "text/*", "text/event-stream"]


def raw_get(gateway: Gateway, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """A request line as written (``//``, ``%2F``): requests would normalise it."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), parsed, body


@pytest.mark.parametrize("target", PROBES)
def test_the_probe_tells_an_unauthenticated_caller_nothing_else(gateway: Gateway, target: str) -> None:
    for method in ("GET", "HEAD"):
        for accept in [*ACCEPTS, "text/html", "text/html,application/xhtml+xml,*/*;q=0.8"]:
            headers = {} if accept is None else {"Accept": accept}
            for extra in ({}, {"Cookie": "clawweb=forged"}, {"Sec-Fetch-Mode": "navigate"}):
                status, got, body = raw_get(gateway, method, target, {**headers, **extra})
                where = (method, target, accept, extra)
                if status == 302:  # a browser: to the login page, nothing of the chat page
                    assert got["location"].startswith("/login"), where
                    assert b"conversation" not in body.lower(), where
                    continue
                assert status == 200 and got["content-type"].startswith("text/plain"), where
                assert body == (b"Ollama is running" if method == "GET" else b""), where
                assert "set-cookie" not in got, where


# --- a flood of embeddings beside streaming answers ------------------------------------------------------------


def queue(gateway: Gateway) -> dict[str, Any]:
    return dict(requests.get(gateway.url + "/api/queue", timeout=5).json())


def test_a_flood_of_embeddings_beside_streaming_answers_ends_clean(
    start_simulator: StartSimulator, start_gateway: StartGateway
) -> None:
    sim = start_simulator("--ttft", "0.01", "--tps", "100", "--embed-delay", "0.02")
    # max_queue is each pool's: the sixteen answers wait (four at a time), most embeddings are refused
    settings = {"max_active": 4, "max_active_embed": 2, "max_queue": 12, "max_active_per_client": 1000}
    gateway = start_gateway(sim.url, heartbeat_s=0.5, queue_timeout_s=60, **settings)
    embedded: list[requests.Response] = []
    answers: list[list[dict[str, Any]]] = []
    seen_active: list[int] = []
    lock = threading.Lock()

    def embed_once(i: int) -> None:
        body = {"model": EMBED_MODEL, "input": [f"text {i}"]}
        response = requests.post(gateway.url + E, json=body, timeout=60)
        with lock:
            embedded.append(response)

    def answer() -> None:
        with requests.post(gateway.url + G, json={"prompt": "hi" + sim_line(tokens=30)}, stream=True, timeout=60) as r:
            lines = [json.loads(line) for line in r.iter_lines() if line]
        with lock:
            answers.append(lines)

    def watch(stop: threading.Event) -> None:
        while not stop.is_set():
            seen_active.append(queue(gateway)["active"])

    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stop,))
    threads = [threading.Thread(target=answer) for _ in range(16)]
    threads += [threading.Thread(target=embed_once, args=(i,)) for i in range(200)]
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    stop.set()
    watcher.join()

    statuses = Counter(response.status_code for response in embedded)
    assert len(embedded) == 200 and set(statuses) <= {200, 429, 503} and statuses[200] >= 2, statuses
    for response in embedded:
        if response.status_code != 200:
            assert error_of(response) and int(response.headers["Retry-After"]) > 0
    assert sim.stats()["embeds"] == statuses[200]  # a refused one never reached Ollama
    assert len(answers) == 16 and all(lines[-1].get("done") is True for lines in answers)  # answers all queued
    assert max(seen_active) <= 4  # embeddings never held an answer's slot
    assert metric(gateway, "clawweb_embeddings_active") == metric(gateway, "clawweb_embeddings_queued") == 0
    assert queue(gateway)["active"] == queue(gateway)["waiting"] == 0


# --- faults ------------------------------------------------------------------------------------------------------


@pytest.mark.faults
def test_ollama_killed_mid_generate_ends_each_stream_with_its_error(
    start_simulator: StartSimulator, start_gateway: StartGateway
) -> None:
    sim = start_simulator("--ttft", "0.01", "--tps", "50")
    gateway = start_gateway(sim.url, heartbeat_s=0.3)
    body = {"prompt": "hi" + sim_line(tokens=500)}
    with requests.post(gateway.url + G, json=body, stream=True, timeout=20) as native:
        lines = native.iter_lines()
        assert json.loads(next(lines))["done"] is False
        sim.signal(signal.SIGKILL)
        rest = [json.loads(line) for line in lines if line]
    assert native.status_code == 200 and "closed" in rest[-1]["error"] and len(rest[-1]) == 1
    sim.stop()
    sim = start_simulator("--ttft", "0.01", "--tps", "50", "--port", str(sim.port))
    with requests.post(gateway.url + G, json=body, headers=SSE, stream=True, timeout=20) as streamed:
        received = []
        for event in events(streamed):
            received.append(event)
            if event.is_line and sim.proc.returncode is None:
                sim.signal(signal.SIGKILL)
                sim.proc.wait()
    assert received[-1].event == "error" and "closed" in json.loads(received[-1].data)["error"]
    assert wait_for(lambda: metric(gateway, "clawweb_generations_active") == 0)


@pytest.mark.faults
def test_ollama_killed_during_an_embedding_is_a_502_and_frees_the_slot(
    start_simulator: StartSimulator, start_gateway: StartGateway
) -> None:
    sim = start_simulator()
    gateway = start_gateway(sim.url, max_active_embed=1)

    def kill_once_it_embeds() -> None:
        if wait_for(lambda: sim.stats()["embeds"] == 1):
            sim.signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_once_it_embeds)
    killer.start()
    body = {"model": EMBED_MODEL, "input": ["a", "b" + sim_line(delay=30)]}
    died = requests.post(gateway.url + E, json=body, timeout=20)
    killer.join()
    assert died.status_code == 502 and "Ollama" in error_of(died)
    assert metric(gateway, "clawweb_embeddings_active") == 0
    sim.stop()
    start_simulator("--port", str(sim.port))
    again = requests.post(gateway.url + E, json={"model": EMBED_MODEL, "input": "a"}, timeout=20)
    assert again.status_code == 200 and len(again.json()["embeddings"]) == 1  # the one slot is free again


@pytest.mark.faults
@pytest.mark.parametrize("fault", ["redis-killed", "worker-stopped"])
def test_embeddings_waiting_for_a_slot_end_cleanly_when_the_ground_goes(
    start_simulator: StartSimulator, start_gateway: StartGateway, start_redis: StartRedis, fault: str
) -> None:
    """One embedding at Ollama, four waiting for the one slot in the Redis queue. Redis killed: the waiting get a
    503 naming it, the one at Ollama still answers. The worker told to stop: the same, with "restarting"."""
    sim = start_simulator()
    redis_server = start_redis()
    settings = {"max_active_embed": 1, "max_active_per_client": 10, "heartbeat_s": 0.3}
    gateway = start_gateway(sim.url, redis_url=redis_server.url, **settings)
    answered: dict[int, requests.Response] = {}

    def embed_once(i: int) -> None:
        text = f"{i}{sim_line(delay=2 if i == 0 else 0)}"
        answered[i] = requests.post(gateway.url + E, json={"model": EMBED_MODEL, "input": text}, timeout=30)

    first = threading.Thread(target=embed_once, args=(0,))
    first.start()
    assert wait_for(lambda: sim.stats()["embeds"] == 1)
    waiting = [threading.Thread(target=embed_once, args=(i,)) for i in range(1, 5)]
    for thread in waiting:
        thread.start()
    assert wait_for(lambda: metric(gateway, "clawweb_embeddings_queued") == 4)
    if fault == "redis-killed":
        redis_server.signal(signal.SIGKILL)
    else:
        (worker,) = Path(f"/proc/{gateway.proc.pid}/task/{gateway.proc.pid}/children").read_text().split()
        os.kill(int(worker), signal.SIGTERM)
    for thread in [first, *waiting]:
        thread.join(timeout=30)
    assert answered[0].status_code == 200 and answered[0].json()["embeddings"]
    for i in range(1, 5):
        assert answered[i].status_code == 503 and answered[i].headers["Retry-After"], answered[i].text
        assert ("Redis" if fault == "redis-killed" else "restarting") in error_of(answered[i])
    assert sim.stats()["embeds"] == 1  # none of the waiting reached Ollama
    if fault == "redis-killed":
        redis_server.stop()
        start_redis(port=redis_server.port)
    after = {"model": EMBED_MODEL, "input": "after"}
    assert wait_for(lambda: requests.post(gateway.url + E, json=after, timeout=10).status_code == 200, 10)
    assert metric(gateway, "clawweb_embeddings_active") == metric(gateway, "clawweb_embeddings_queued") == 0


@pytest.mark.faults
def test_a_client_that_reads_nothing_of_a_generate_stream_is_cut_and_its_slot_freed(
    start_simulator: StartSimulator, start_gateway: StartGateway
) -> None:
    sim = start_simulator("--ttft", "0.01", "--tps", "30000")
    gateway = start_gateway(sim.url, send_timeout_s=1, stream_buffer_bytes=50_000, heartbeat_s=0.5, max_active=1)
    data = json.dumps({"prompt": "hi" + sim_line(tokens=30_000)}).encode()
    with socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", gateway.port))
        head = b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(data)
        stalled.sendall(head + data)
        assert wait_for(lambda: "end=slow_client" in gateway.log, 15)
        assert wait_for(lambda: sim.stats()["active"] == 0, 10)  # Ollama's request was closed
    assert metric(gateway, "clawweb_generations_active") == 0
    again = requests.post(gateway.url + G, json={"prompt": "hi", "stream": False}, timeout=20)
    assert again.status_code == 200 and again.json()["done"] is True  # the one slot is free


# --- an error Ollama words in plain text -----------------------------------------------------------------------


class _OldOllama(BaseHTTPRequestHandler):
    """An Ollama older than ``/api/embed`` (0.3.0) and ``/api/show`` behind a proxy: gin's plain-text 404, and an
    HTML 502 from the proxy."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        models = [{"name": name, "model": name} for name in (MODEL, EMBED_MODEL)]
        self._send(200, json.dumps({"models": models}).encode(), "application/json; charset=utf-8")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/api/show":
            self._send(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
        elif self.path == "/api/generate":
            self._send(500, b"", "text/plain; charset=utf-8")
        else:
            self._send(404, b"404 page not found", "text/plain")


@pytest.fixture
def old_ollama() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OldOllama)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_an_error_ollama_words_in_plain_text_or_html_is_json_here(old_ollama: str, start_gateway: StartGateway) -> None:
    gateway = start_gateway(old_ollama)
    for path, body, status, said in [
        (E, {"model": EMBED_MODEL, "input": "a"}, 404, "404 page not found"),
        (OLD, {"model": EMBED_MODEL, "prompt": "a"}, 404, "404 page not found"),
        (SHOW, {"model": MODEL}, 502, "HTTP 502"),
        (G, {"prompt": "hi", "stream": False}, 500, "HTTP 500"),
        (G, {"prompt": "hi"}, 500, "HTTP 500"),
        ("/api/chat", chat(), 404, "HTTP 404"),
    ]:
        refused = requests.post(gateway.url + path, json=body, timeout=20)
        assert refused.status_code == status, (path, refused.text)
        assert said in error_of(refused), path
