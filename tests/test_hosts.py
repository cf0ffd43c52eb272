"""Several Ollama hosts: the choice of host (plain objects), the client's failover and merged lists (``responses``),
then two real simulator subprocesses behind a real ``gunicorn -k gevent``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import requests
import responses
from flask.testing import FlaskClient

from clawweb import create_app
from clawweb.config import ConfigError, Settings, load_settings, split_urls
from clawweb.errors import ApiError
from clawweb.services import services
from clawweb.simulator import answer_tokens
from clawweb.upstream import checker as upstream_checker
from clawweb.upstream.checker import HealthChecker
from clawweb.upstream.client import OllamaClient
from clawweb.upstream.errors import OllamaTimeout, OllamaUnreachable
from clawweb.upstream.hosts import Host, rank
from clawweb.upstream.wire import merge_listings

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway, wait_for
from .support.simproc import SimProcess, chat
from .support.sseclient import Event, content_of, events

A, B = "http://127.0.0.1:11434", "http://127.0.0.1:11436"
SSE = {"Accept": "text/event-stream"}
BODY = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hi"}]}
DONE = {"model": "qwen3:32b", "message": {"role": "assistant", "content": "hello"}, "done": True}
REFUSED = requests.ConnectionError("[Errno 111] Connection refused")


def tags(*names: str) -> dict[str, Any]:
    return {"models": [{"name": name, "model": name, "size": 1} for name in names]}


# --- configuration -------------------------------------------------------------------------------------------


def test_one_url_is_unchanged_several_are_normalized() -> None:
    assert load_settings({"CLAWWEB_OLLAMA_URL": "http://10.0.0.2:11434/"}).ollama_url == "http://10.0.0.2:11434"
    several = load_settings({"CLAWWEB_OLLAMA_URL": " http://a:11434/ , https://b:443,"}).ollama_url
    assert several == "http://a:11434,https://b:443"
    assert split_urls(several) == ("http://a:11434", "https://b:443")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://a:1,ftp://b", "CLAWWEB_OLLAMA_URL=http://a:1,ftp://b: ftp://b: must be an http(s) URL"),
        ("http://a:1,http://b:99999", "http://b:99999: has an invalid port"),
        ("http://a:1,http://a:1/", "names the same URL twice"),
        (" , ", "must be an http(s) URL"),
    ],
)
def test_bad_url_lists_name_the_culprit(value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"CLAWWEB_OLLAMA_URL": value})
    assert expected in str(info.value)


# --- choosing a host: plain objects ---------------------------------------------------------------------------


def pool(*specs: dict[str, Any]) -> list[Host]:
    made = []
    for index, spec in enumerate(specs):
        host = Host(f"http://h{index}", index)
        host.models = frozenset(spec.get("models", ["m:1"]))
        host.loaded = frozenset(spec.get("loaded", []))
        host.streams = spec.get("streams", 0)
        host.up = spec.get("up", True)
        made.append(host)
    return made


def urls(ranked: list[Host]) -> list[str]:
    return [host.url for host in ranked]


def test_only_hosts_that_list_the_model() -> None:
    hosts_ = pool({"models": ["a:1"]}, {"models": ["b:1"]}, {"models": ["a:1", "b:1"]})
    for turn in range(4):
        assert sorted(urls(rank(hosts_, "b:1", turn))) == ["http://h1", "http://h2"]


def test_a_model_nobody_lists_still_goes_somewhere() -> None:
    # require_model 404s before this; should a caller skip it, Ollama's own 404 is the answer.
    hosts_ = pool({"models": ["a:1"]}, {"models": ["b:1"], "up": False})
    assert urls(rank(hosts_, "c:1", 0)) == ["http://h0"]


def test_loaded_first_even_when_busier() -> None:
    hosts_ = pool({"streams": 0}, {"loaded": ["m:1"], "streams": 3})
    assert urls(rank(hosts_, "m:1", 0)) == ["http://h1", "http://h0"]


def test_least_busy_among_equals() -> None:
    hosts_ = pool({"loaded": ["m:1"], "streams": 2}, {"loaded": ["m:1"], "streams": 1}, {"streams": 0})
    assert urls(rank(hosts_, "m:1", 0)) == ["http://h1", "http://h0", "http://h2"]


def test_round_robin_breaks_ties() -> None:
    hosts_ = pool({}, {}, {})
    firsts = [rank(hosts_, "m:1", turn)[0].url for turn in range(6)]
    assert firsts == ["http://h0", "http://h1", "http://h2"] * 2
    assert sorted(urls(rank(hosts_, "m:1", 1))) == ["http://h0", "http://h1", "http://h2"]


def test_down_hosts_only_when_nothing_else_lists_the_model() -> None:
    hosts_ = pool({"models": ["a:1", "m:1"], "up": False}, {"models": ["m:1"]})
    assert urls(rank(hosts_, "m:1", 0)) == ["http://h1"]
    assert urls(rank(hosts_, "a:1", 0)) == ["http://h0"]  # its last check may be behind: try it anyway


def test_unknown_list_counts_as_listing_and_no_model_means_any_up_host() -> None:
    hosts_ = pool({}, {})
    hosts_[0].models = None
    assert "http://h0" in urls(rank(hosts_, "z:9", 0))
    hosts_[1].up = False
    assert urls(rank(hosts_, None, 0)) == ["http://h0"]


def test_merge_keeps_each_model_once() -> None:
    merged = merge_listings([tags("a:1", "s:1"), tags("s:1", "b:1"), {"models": None}])
    assert [m["name"] for m in merged["models"]] == ["a:1", "s:1", "b:1"]


def test_health_checker_runs_in_a_greenlet_and_survives_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    rounds: list[float] = []

    def check_round() -> None:
        rounds.append(time.monotonic())
        if len(rounds) == 2:
            raise RuntimeError("a bug in a round")

    unpatched = HealthChecker(check_round, interval=0.01)
    unpatched.start()  # this test process is not monkey-patched: nothing starts
    assert not unpatched.running
    monkeypatch.setattr(upstream_checker, "monkey_patched", lambda: True)
    checker = HealthChecker(check_round, interval=0.01)
    checker.start()
    checker.start()  # once per process
    gevent.sleep(0.1)
    assert checker.running and len(rounds) >= 4
    checker.stop()
    gevent.sleep(0.02)
    assert not checker.running


# --- the client with two hosts, Ollama mocked by `responses` ---------------------------------------------------


def two_hosts(**overrides: object) -> OllamaClient:
    return OllamaClient(Settings(ollama_url=f"{A},{B}", **overrides))  # type: ignore[arg-type]


def host(client: OllamaClient, url: str) -> Host:
    return next(h for h in client.hosts if h.url == url)


@responses.activate
def test_the_model_check_uses_the_union() -> None:
    responses.get(f"{A}/api/tags", json=tags("a:1", "s:1"))
    responses.get(f"{B}/api/tags", json=tags("b:1", "s:1"))
    client = two_hosts()
    for name in ("a:1", "b:1", "s:1"):
        client.require_model(name)
    with pytest.raises(ApiError) as info:
        client.require_model("c:1")
    assert (info.value.status, info.value.message) == (404, "model 'c:1' not found")
    assert client.models() == {"a:1", "b:1", "s:1"}
    assert len(responses.calls) == 2  # one refresh, cached for CLAWWEB_TAGS_TTL_S; no /api/ps on the hot path
    assert client.checker is not None and not client.checker.running  # not in an in-process app


@responses.activate
def test_a_model_only_a_down_host_has_is_a_502_naming_it() -> None:
    responses.get(f"{A}/api/tags", json=tags("a:1"))
    responses.get(f"{B}/api/tags", json=tags("b:1"))
    client = two_hosts(tags_ttl_s=0.0)
    client.require_model("a:1")
    responses.replace(responses.GET, f"{A}/api/tags", body=REFUSED)
    with pytest.raises(OllamaUnreachable) as info:
        client.require_model("a:1")
    assert (info.value.status, info.value.message) == (502, f"cannot reach Ollama at {A}: Connection refused")
    client.require_model("b:1")


@responses.activate
def test_every_host_down_is_one_502_naming_each() -> None:
    responses.get(f"{A}/api/tags", body=REFUSED)
    responses.get(f"{B}/api/tags", status=500)
    with pytest.raises(ApiError) as info:
        two_hosts().require_model("m:1")
    assert info.value.status == 502
    assert info.value.message == (
        f"no Ollama host could answer: {A}: Connection refused; {B}: Ollama answered /api/tags with HTTP 500"
    )


def chat_through(client: OllamaClient) -> tuple[str, int]:
    opened = client.open_stream("/api/chat", BODY)
    try:
        assert opened.host is not None and opened.host.streams == 1  # counted while open
        return opened.response.url.rsplit("/api/", 1)[0], opened.response.status_code
    finally:
        opened.close()
        assert all(h.streams == 0 for h in client.hosts)


@pytest.mark.parametrize(
    "failure",
    [
        {"body": REFUSED},
        {"body": requests.ReadTimeout()},
        {"status": 500, "json": {"error": "llama runner process has terminated"}},
        {"status": 503, "json": {"error": "server busy, please try again.  maximum pending requests exceeded"}},
        {"status": 404, "json": {"error": "model 'qwen3:32b' not found"}},
    ],
)
@responses.activate
def test_a_failure_before_the_first_token_moves_to_the_next_host(failure: dict[str, Any]) -> None:
    client = two_hosts()
    first, second = (h.url for h in rank(client.hosts, "qwen3:32b", client._turn + 1))
    attempt = responses.post(f"{first}/api/chat", **failure)
    responses.post(f"{second}/api/chat", json=DONE)
    assert chat_through(client) == (second, 200)
    assert attempt.call_count == 1
    if "body" in failure and isinstance(failure["body"], requests.ConnectionError):
        assert not host(client, first).up  # refused: skipped until the health check sees it again
    else:
        assert host(client, first).up


@responses.activate
def test_a_404_takes_the_model_off_that_hosts_list() -> None:
    client = two_hosts()
    for h in client.hosts:
        h.models = frozenset({"qwen3:32b", "other:1"})
    first, second = (h.url for h in rank(client.hosts, "qwen3:32b", client._turn + 1))
    responses.post(f"{first}/api/chat", status=404, json={"error": "model 'qwen3:32b' not found"})
    responses.post(f"{second}/api/chat", json=DONE)
    chat_through(client)
    assert host(client, first).models == frozenset({"other:1"}) and host(client, first).up
    assert host(client, second).loaded == {"qwen3:32b"}  # it answered: the model is loaded there now
    for _ in range(3):
        assert chat_through(client) == (second, 200)


@responses.activate
def test_a_request_error_is_not_retried() -> None:
    client = two_hosts()
    first = rank(client.hosts, "qwen3:32b", client._turn + 1)[0].url
    responses.post(f"{first}/api/chat", status=400, json={"error": "invalid options"})
    assert chat_through(client) == (first, 400)
    assert len(responses.calls) == 1


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # A host that was reached and said why wins over one that could not be reached.
        ({"status": 500, "json": {"error": "out of memory"}}, {"body": REFUSED}, (500, "out of memory")),
        # ... and over a 404 (the model exists elsewhere, per the model check).
        (
            {"status": 404, "json": {"error": "model not found"}},
            {"status": 503, "json": {"error": "busy"}},
            (503, "busy"),
        ),
        ({"status": 404, "json": {"error": "gone"}}, {"status": 404, "json": {"error": "gone"}}, (404, "gone")),
        (
            {"body": REFUSED},
            {"status": 404, "json": {"error": "model 'qwen3:32b' not found"}},
            (502, f"no Ollama host could answer: {A}: Connection refused; {B}: model 'qwen3:32b' not found"),
        ),
        (
            {"body": REFUSED},
            {"body": REFUSED},
            (502, f"no Ollama host could answer: {A}: Connection refused; {B}: Connection refused"),
        ),
        ({"body": requests.ReadTimeout()}, {"body": requests.ReadTimeout()}, (504, "no Ollama host sent anything")),
    ],
)
@responses.activate
def test_when_every_host_fails_the_clearest_error_wins(
    a: dict[str, Any], b: dict[str, Any], expected: tuple[int, str]
) -> None:
    responses.post(f"{A}/api/chat", **a)
    responses.post(f"{B}/api/chat", **b)
    client = two_hosts(read_timeout_s=7)
    client._turn = 1  # A first: the messages list the hosts in the order they were tried
    try:
        opened = client.open_stream("/api/chat", BODY)
    except ApiError as exc:
        assert (exc.status, exc.message[: len(expected[1])]) == expected
        assert isinstance(exc, OllamaTimeout if exc.status == 504 else OllamaUnreachable)  # the stream's kinds
    else:
        assert (opened.response.status_code, opened.response.json()["error"]) == expected
        opened.close()
    assert all(h.streams == 0 for h in client.hosts)


@responses.activate
def test_non_streaming_requests_fail_over_too() -> None:
    client = two_hosts()
    first, second = (h.url for h in rank(client.hosts, "qwen3:32b", client._turn + 1))
    responses.post(f"{first}/api/chat", body=REFUSED)
    responses.post(f"{second}/api/chat", json=DONE)
    response = client.request("POST", "/api/chat", {**BODY, "stream": False})
    assert response.json() == DONE
    assert all(h.streams == 0 for h in client.hosts)


@responses.activate
def test_prefers_the_host_with_the_model_loaded() -> None:
    for url in (A, B):
        responses.get(f"{url}/api/tags", json=tags("qwen3:32b"))
        responses.post(f"{url}/api/chat", json=DONE)
    responses.get(f"{A}/api/ps", json={"models": []})
    responses.get(f"{B}/api/ps", json=tags("qwen3:32b"))
    client = two_hosts()
    client.check(2.0)
    assert [chat_through(client)[0] for _ in range(4)] == [B] * 4


@responses.activate
def test_model_lists_are_merged_over_the_hosts_that_are_up() -> None:
    responses.get(f"{A}/api/tags", json=tags("a:1", "s:1"))
    responses.get(f"{B}/api/tags", json=tags("s:1", "b:1"))
    responses.get(f"{A}/api/ps", json=tags("s:1"))
    responses.get(f"{B}/api/ps", json=tags("s:1"))
    responses.get(f"{B}/api/version", json={"version": "0.12.6"})
    responses.get(f"{A}/api/version", body=REFUSED)
    client = two_hosts()
    listed = client.request("GET", "/api/tags")
    assert (listed.status_code, listed.headers["Content-Type"]) == (200, "application/json; charset=utf-8")
    assert [m["name"] for m in listed.json()["models"]] == ["a:1", "s:1", "b:1"]
    assert [m["name"] for m in client.request("GET", "/api/ps").json()["models"]] == ["s:1"]
    for _ in range(2):  # whichever host comes first
        assert client.request("GET", "/api/version").json() == {"version": "0.12.6"}
    host(client, A).up = False
    assert [m["name"] for m in client.request("GET", "/api/tags").json()["models"]] == ["s:1", "b:1"]


@responses.activate
def test_merged_list_with_every_host_down_names_them() -> None:
    responses.get(f"{A}/api/tags", body=REFUSED)
    responses.get(f"{B}/api/tags", body=REFUSED)
    with pytest.raises(ApiError) as info:
        two_hosts().request("GET", "/api/tags")
    assert info.value.status == 502 and A in info.value.message and B in info.value.message


# --- the views of an in-process app with two hosts --------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> Iterator[FlaskClient]:
    app = create_app({"ollama_url": f"{A},{B}", "db": str(tmp_path / "clawweb.db")})
    yield app.test_client()
    services(app).close()


@responses.activate
def test_readyz_reports_each_host(client: FlaskClient) -> None:
    responses.get(f"{A}/api/tags", body=REFUSED)
    responses.get(f"{B}/api/tags", json=tags("qwen3:32b"))
    responses.get(f"{B}/api/ps", json=tags("qwen3:32b"))
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["hosts"] == [
        {"url": A, "up": False, "error": "Connection refused", "streams": 0, "has_model": False, "model_loaded": False},
        {"url": B, "up": True, "error": None, "streams": 0, "has_model": True, "model_loaded": True},
    ]
    responses.replace(responses.GET, f"{B}/api/tags", json=tags("other:1"))
    missing = client.get("/readyz")
    assert missing.status_code == 503
    assert (
        missing.get_json()["error"]
        == "default model 'qwen3:32b' is not in the /api/tags of any Ollama host that answers"
    )
    responses.replace(responses.GET, f"{B}/api/tags", body=REFUSED)
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.get_json()["error"] == f"no Ollama host could answer: {A}: Connection refused; {B}: Connection refused"


# --- two real simulators behind a real gunicorn ------------------------------------------------------------------

SIM_TIMING = ("--ttft", "0.05", "--tps", "50", "--tokens", "12")


def sim_args(*models: str, extra: tuple[str, ...] = (), port: int | None = None) -> list[str]:
    models_args = [arg for model in models for arg in ("--model", model)]
    return [*models_args, *SIM_TIMING, *extra, *(("--port", str(port)) if port else ())]


def gateway_on(start: StartGateway, *sims_: SimProcess) -> Gateway:
    return start(",".join(s.url for s in sims_), heartbeat_s=0.3, read_timeout_s=5, default_model="s:1")


@pytest.fixture(scope="module")
def sims(start_module_simulator: StartSimulator) -> tuple[SimProcess, SimProcess]:
    # sim1 has one generation slot and no queue: a second generation there is Ollama's 503 "server busy".
    sim1 = start_module_simulator(*sim_args("a:1", "s:1", "p:1", extra=("--parallel", "1", "--max-queue", "0")))
    return sim1, start_module_simulator(*sim_args("b:1", "s:1", "p:1"))


@pytest.fixture(scope="module")
def gateway(sims: tuple[SimProcess, SimProcess], start_module_gateway: StartGateway) -> Gateway:
    return gateway_on(start_module_gateway, *sims)


def sse(gateway: Gateway, body: dict[str, Any], timeout: float = 15) -> tuple[int, list[Event]]:
    with requests.post(gateway.url + "/api/chat", json=body, headers=SSE, stream=True, timeout=timeout) as response:
        return response.status_code, list(events(response))


def native(gateway: Gateway, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = requests.post(gateway.url + "/api/chat", json=body, timeout=15)
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.iter_lines()]


def answered(received: list[Event], tokens: int = 12) -> bool:
    """The whole answer, and no error frame."""
    return all(e.event != "error" for e in received) and content_of(received) == "".join(answer_tokens(tokens))


def load(sim: SimProcess, model: str) -> None:
    """What `clawweb warmup` does: an empty request loads the model, so the simulator's /api/ps lists it."""
    assert requests.post(sim.url + "/api/chat", json={"model": model, "messages": []}, timeout=5).status_code == 200


def refresh(gateway: Gateway) -> dict[str, Any]:
    """/readyz checks every host at once, so the gateway knows now what the simulators report."""
    return dict(requests.get(gateway.url + "/readyz", timeout=5).json())


def reset(*sims_: SimProcess) -> None:
    for sim in sims_:
        sim.reset()


def test_a_model_only_one_host_has_always_goes_there(gateway: Gateway, sims: tuple[SimProcess, SimProcess]) -> None:
    sim1, sim2 = sims
    reset(sim1, sim2)
    for _ in range(3):
        assert answered(sse(gateway, chat(model="a:1"))[1])
        assert native(gateway, chat(model="b:1"))[-1]["done"] is True
    assert (sim1.stats()["requests"], sim2.stats()["requests"]) == (3, 3)
    assert sim1.stats()["last_request"]["model"] == "a:1" and sim2.stats()["last_request"]["model"] == "b:1"
    assert sse(gateway, chat(model="c:1"))[0] == 404  # in no host's list: a real status before any stream


def test_model_lists_are_merged_and_version_comes_from_any_host(gateway: Gateway) -> None:
    listed = requests.get(gateway.url + "/api/tags", timeout=5).json()
    # Each simulator lists its embedding model too: the union holds it once.
    assert sorted(m["name"] for m in listed["models"]) == ["a:1", "b:1", "nomic-embed-text:latest", "p:1", "s:1"]
    running = [m["name"] for m in requests.get(gateway.url + "/api/ps", timeout=5).json()["models"]]
    assert sorted(running) == sorted(set(running)) and {"a:1", "b:1"} <= set(running)
    assert requests.get(gateway.url + "/api/version", timeout=5).json() == {"version": "0.12.6"}


def test_prefers_the_host_where_the_model_is_loaded(gateway: Gateway, sims: tuple[SimProcess, SimProcess]) -> None:
    sim1, sim2 = sims
    load(sim2, "p:1")  # p:1 is listed by both, loaded only on sim2
    refresh(gateway)
    reset(sim1, sim2)
    results: list[list[Event]] = []
    streams = [
        threading.Thread(target=lambda: results.append(sse(gateway, chat({"tokens": 12}, model="p:1"))[1]))
        for _ in range(3)
    ]
    for thread in streams:  # at once: loaded beats least busy
        thread.start()
    for thread in streams:
        thread.join()
    assert len(results) == 3 and all(answered(r) for r in results)
    assert (sim1.stats()["requests"], sim2.stats()["requests"]) == (0, 3)
    assert "p:1" not in [m["name"] for m in requests.get(sim1.url + "/api/ps", timeout=5).json()["models"]]


def first_token(response: requests.Response) -> Iterator[Event]:
    reader = events(response)
    next(e for e in reader if e.is_line)
    return reader


def test_least_busy_two_long_streams_land_on_different_hosts(
    gateway: Gateway, sims: tuple[SimProcess, SimProcess]
) -> None:
    sim1, sim2 = sims
    for sim in sims:
        load(sim, "s:1")
    refresh(gateway)
    long = chat({"tokens": 200, "tps": 20}, model="s:1")
    opened, readers = [], []
    try:
        for _ in range(2):
            response = requests.post(gateway.url + "/api/chat", json=long, headers=SSE, stream=True, timeout=15)
            opened.append(response)
            # Kept: a reader that is dropped closes the connection (urllib3 releases it), and the gateway then ends
            # the stream and its count while the simulator, a token later, still shows it active.
            readers.append(first_token(response))
        assert (sim1.stats()["active"], sim2.stats()["active"]) == (1, 1)

        def both_counted() -> bool:  # the gauge follows the streams; a busy machine may show it a moment later
            metrics = requests.get(gateway.url + "/metrics", timeout=5).text
            return all(f'clawweb_upstream_host_streams{{host="{sim.url}"}} 1.0' in metrics for sim in sims)

        assert wait_for(both_counted, timeout=5)
    finally:
        for response in opened:
            response.close()
    assert wait_for(lambda: sim1.stats()["active"] + sim2.stats()["active"] == 0, timeout=5)


def test_a_5xx_before_the_first_token_moves_to_the_other_host(
    gateway: Gateway, sims: tuple[SimProcess, SimProcess]
) -> None:
    sim1, sim2 = sims
    for sim in sims:
        load(sim, "s:1")
    refresh(gateway)
    # Someone else holds sim1's only slot (not through this gateway, so it still looks idle): it answers 503.
    busy = requests.post(sim1.url + "/api/chat", json=chat({"tokens": 1000, "tps": 10}, model="s:1"), stream=True)
    lines = busy.iter_lines()  # kept: urllib3 closes the connection when this generator is collected
    try:
        next(lines)
        reset(sim1, sim2)
        for _ in range(4):
            assert answered(sse(gateway, chat(model="s:1"))[1])
        assert native(gateway, chat(model="s:1"))[-1]["done"] is True
        assert sim1.stats()["errors"] >= 2  # round robin: every other request tried sim1 first, got 503, moved on
        assert sim2.stats()["completed"] == 5
    finally:
        busy.close()
    assert wait_for(lambda: sim1.stats()["active"] == 0, timeout=5)  # its slot is free again for the next test


def test_a_client_leaving_during_the_model_load_frees_its_host(
    gateway: Gateway, sims: tuple[SimProcess, SimProcess]
) -> None:
    response = requests.post(
        gateway.url + "/api/chat", json=chat({"ttft": 30}, model="s:1"), headers=SSE, stream=True, timeout=5
    )
    assert wait_for(lambda: sum(sim.stats()["active"] for sim in sims) == 1, timeout=5)
    assert sum(h["streams"] for h in refresh(gateway)["hosts"]) == 1
    response.close()  # noticed at the next heartbeat; the reader is killed while it waits for headers
    assert wait_for(lambda: sum(h["streams"] for h in refresh(gateway)["hosts"]) == 0, timeout=5)
    assert wait_for(lambda: sum(sim.stats()["active"] for sim in sims) == 0, timeout=5)


@pytest.mark.parametrize(
    ("directive", "frames", "hosts", "message"),
    [
        ({"error_after": 2}, 2, 1, "simulated failure after 2 tokens"),
        # A dropped connection is continued on the other host, which drops it too (test_failover.py has the rest).
        ({"close_after": 3}, 6, 2, "Ollama closed the stream before the answer was done"),
    ],
)
def test_after_the_first_token_only_a_host_that_dies_is_left(
    gateway: Gateway,
    sims: tuple[SimProcess, SimProcess],
    directive: dict[str, Any],
    frames: int,
    hosts: int,
    message: str,
) -> None:
    reset(*sims)
    status, received = sse(gateway, chat(directive, model="s:1"))
    data = [e for e in received if e.is_line or e.event == "error"]
    assert status == 200 and len(data) == frames + 1
    assert data[-1].event == "error" and data[-1].json() == {"error": message}
    assert sum(sim.stats()["requests"] for sim in sims) == hosts  # an error line is Ollama's word: not retried


def cli(sims_: tuple[SimProcess, ...], model: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLAWWEB_OLLAMA_URL": ",".join(s.url for s in sims_), "CLAWWEB_DEFAULT_MODEL": model}
    return subprocess.run([sys.executable, "-m", "clawweb", *args], env=env, capture_output=True, text=True, timeout=60)


def test_doctor_and_warmup_visit_every_host(sims: tuple[SimProcess, SimProcess]) -> None:
    sim1, sim2 = sims
    doctor = cli(sims, "a:1", "doctor", "--json")
    report = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert doctor.returncode == 0, doctor.stdout
    assert report[f"model loaded at {sim1.url}"]["ok"]
    assert "not on this host" in report[f"model present at {sim2.url}"]["figure"]  # fine: a:1 goes to sim1
    assert cli(sims, "c:1", "doctor", "--json").returncode == 1  # on none of them
    warm = cli(sims, "b:1", "warmup")
    assert warm.returncode == 0 and f"warmup: {sim2.url}: b:1: HTTP 200" in warm.stdout
    assert cli(sims, "c:1", "warmup").returncode == 1


def test_failover_when_a_host_dies_and_recovery_without_a_restart(
    start_simulator: StartSimulator, start_gateway: StartGateway
) -> None:
    sim_a, sim_b = start_simulator(*sim_args("a:1", "s:1")), start_simulator(*sim_args("b:1", "s:1"))
    gateway = gateway_on(start_gateway, sim_a, sim_b)
    for sim in (sim_a, sim_b):
        load(sim, "s:1")
    assert [h["up"] and h["model_loaded"] for h in refresh(gateway)["hosts"]] == [True, True]
    reset(sim_a, sim_b)

    # 1. Two streams wait for their first token, one on each host; then sim_a dies. Its stream moves over.
    slow = chat({"ttft": 1.5, "tokens": 12}, model="s:1")
    results: list[tuple[int, list[Event]]] = []
    threads = [threading.Thread(target=lambda: results.append(sse(gateway, slow))) for _ in range(2)]
    threads[0].start()
    assert wait_for(lambda: sim_a.stats()["active"] + sim_b.stats()["active"] == 1, timeout=5)
    threads[1].start()
    assert wait_for(lambda: sim_a.stats()["active"] == 1 and sim_b.stats()["active"] == 1, timeout=5)
    sim_a.signal(signal.SIGKILL)
    sim_a.proc.wait()
    for thread in threads:
        thread.join()
    assert [status for status, _ in results] == [200, 200]
    assert all(answered(received) for _, received in results)
    assert sim_b.stats()["completed"] == 2

    # 2. sim_a stays down: every request still succeeds, none errors.
    for _ in range(3):
        assert answered(sse(gateway, chat(model="s:1"))[1])
        assert native(gateway, chat(model="s:1"))[-1]["done"] is True
    refused = requests.post(gateway.url + "/api/chat", json=chat(model="a:1"), headers=SSE, timeout=10)
    assert refused.status_code == 502  # only sim_a has a:1: a real status naming it, before any stream
    assert refused.json()["error"] == f"cannot reach Ollama at {sim_a.url}: Connection refused"
    ready = refresh(gateway)
    assert ready["status"] == "ready" and [h["up"] for h in ready["hosts"]] == [False, True]
    assert ready["hosts"][0]["error"] == "Connection refused"
    metrics = requests.get(gateway.url + "/metrics", timeout=5).text
    assert re.search(rf'clawweb_upstream_host_failures_total{{host="{sim_a.url}",kind="unreachable"}} [1-9]', metrics)

    # 3. sim_a comes back on the same port: the background check notices, traffic returns (no /readyz here).
    sim_a.stop()
    sim_a = start_simulator(*sim_args("a:1", "s:1", port=sim_a.port))
    load(sim_a, "s:1")  # warm, as `clawweb warmup` would: otherwise the loaded sim_b keeps all of s:1

    def sim_a_serves() -> bool:
        sse(gateway, chat(model="s:1"))
        return bool(sim_a.stats()["completed"])

    started = time.monotonic()
    assert wait_for(sim_a_serves, timeout=8)
    recovery_s = time.monotonic() - started
    print(f"sim_a got s:1 traffic again {recovery_s:.2f} s after its restart")
    assert answered(sse(gateway, chat(model="a:1"))[1])
    assert [h["streams"] for h in refresh(gateway)["hosts"]] == [0, 0]  # failed attempts gave theirs back


def test_generate_embed_and_show_go_to_a_host_with_the_model_and_fail_over(
    start_simulator: StartSimulator, start_gateway: StartGateway
) -> None:
    """Each route goes to a host that lists its model (the embedding dimensions tell the hosts apart); when a host
    that lists it dies before answering, the request goes to the next one."""
    sim_a = start_simulator(*sim_args("a:1", "s:1", extra=("--embed-model", "ea=8", "--embed-model", "both=4")))
    sim_b = start_simulator(*sim_args("b:1", "s:1", extra=("--embed-model", "eb=16", "--embed-model", "both=4")))
    gateway = gateway_on(start_gateway, sim_a, sim_b)
    url = gateway.url

    def embedding(model: str) -> list[float]:
        response = requests.post(url + "/api/embed", json={"model": model, "input": "hi"}, timeout=10)
        assert response.status_code == 200, response.text
        return list(response.json()["embeddings"][0])

    assert (len(embedding("ea")), len(embedding("eb"))) == (8, 16)
    for model, sim in (("a:1", sim_a), ("b:1", sim_b)):
        reset(sim_a, sim_b)
        whole = requests.post(url + "/api/generate", json={"model": model, "prompt": "hi", "stream": False}, timeout=10)
        assert whole.status_code == 200 and whole.json()["done"] is True
        shown = requests.post(url + "/api/show", json={"model": model}, timeout=10)
        assert shown.status_code == 200 and shown.json()["details"]
        assert sim.stats()["requests"] == 1 and sim.stats()["last_request"]["model"] == model
        assert (sim_a.stats()["requests"] + sim_b.stats()["requests"]) == 1
    vector = embedding("both")
    # sim_a has both models loaded, as the gateway learns (/readyz checks every host now), so it is tried first.
    load(sim_a, "s:1")
    assert requests.post(sim_a.url + "/api/embed", json={"model": "both", "input": "x"}, timeout=5).ok
    assert all(host["up"] for host in refresh(gateway)["hosts"])
    sim_a.signal(signal.SIGKILL)  # the gateway has not noticed yet: its next requests there fail and move on
    sim_a.proc.wait()
    reset(sim_b)
    for _ in range(2):
        assert embedding("both") == vector  # deterministic: the same vector from the other host
        streamed = requests.post(url + "/api/generate", json={"model": "s:1", "prompt": "hi"}, timeout=10)
        assert streamed.status_code == 200 and json.loads(streamed.text.splitlines()[-1])["done"] is True
    assert sim_b.stats()["embeds"] == 2 and sim_b.stats()["completed"] == 2
    metrics = requests.get(url + "/metrics", timeout=5).text  # and the dead host was really tried on the way
    assert re.search(rf'clawweb_upstream_host_failures_total{{host="{sim_a.url}",kind="unreachable"}} [1-9]', metrics)
