"""The network edge under a real gunicorn: Host names (DNS rebinding), slow request bodies and connections held
open per address, which peer's X-Forwarded-Proto counts, and Ollama URLs never shown with their credentials."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import ollama
import pytest
import requests

from clawweb.config import ConfigError, load_settings, redact_url
from clawweb.edge import hostname
from clawweb.simulator import answer_tokens

from .support.exports import chatgpt_file
from .support.factories import StartGateway, StartSimulator
from .support.servers import ROOT, Gateway, free_port
from .support.simproc import SimProcess, chat

PASSWORD = "an edge test password"
EVIL = "evil.example"
CREDENTIALS = "u:s3cret-in-url"  # userinfo in CLAWWEB_OLLAMA_URL: must never be shown
SSE = "text/event-stream"


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "200")


@pytest.fixture(scope="module")
def open_gw(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    """Open mode (loopback bind, no proxy), two extra names; per-client limit out of the way for the burst."""
    return start_module_gateway(sim.url, allowed_hosts="chat.example,.lan.example", max_active_per_client=5000)


@pytest.fixture(scope="module")
def slow_gw(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    """A small worker (40 connections) so that slow clients could take all of it; imports of up to 200 kB, given
    20 s for the full size (10 s for 100 kB)."""
    return start_module_gateway(
        sim.url,
        worker_connections=40,
        body_timeout_s=2,
        max_pending_per_address=10,
        max_import_bytes=200_000,
        import_timeout_s=20,
    )


@pytest.fixture(scope="module")
def accounts_gw(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    """Accounts on, nobody trusted in front: whatever X-Forwarded-* a client sends counts for nothing."""
    server = start_module_gateway(sim.url, auth="required", body_timeout_s=2)
    server.new_user("ops", PASSWORD)
    return server


@pytest.fixture(scope="module")
def own_sim(start_module_simulator: StartSimulator) -> SimProcess:
    """A simulator for ``proxied_gw`` alone: its last request's headers are that gateway's, whatever the other
    gateways of this module still send to theirs."""
    return start_module_simulator("--ttft", "0.02", "--tps", "200")


@pytest.fixture(scope="module")
def proxied_gw(own_sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    """As behind the deploy kit's nginx (one trusted proxy, accounts on), with two Ollama URLs carrying
    credentials: the simulator, and a port where nothing listens."""
    urls = f"http://{CREDENTIALS}@127.0.0.1:{own_sim.port},http://{CREDENTIALS}@127.0.0.1:{free_port()}"
    return start_module_gateway(urls, auth="required", trusted_proxies=1)


@pytest.fixture(scope="module")
def proxied_key(proxied_gw: Gateway) -> str:
    return proxied_gw.new_user("ops", PASSWORD)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- 6. Host names: DNS rebinding -----------------------------------------------------------------------------------


def refused_host(response: requests.Response, host: str) -> bool:
    return response.status_code == 403 and response.json() == {
        "error": f"Host '{host}' is not served here; add it to CLAWWEB_ALLOWED_HOSTS"
    }


def test_a_rebound_name_cannot_list_read_delete_or_run_the_model(open_gw: Gateway) -> None:
    api = open_gw.url + "/api/conversations"
    made = requests.post(api, json={"title": "mine"}, timeout=5).json()
    one = f"{api}/{made['id']}"
    foreign = {"Host": f"{EVIL}:{open_gw.port}"}  # what the browser sends once evil.example resolves to 127.0.0.1
    for method, url, body in [
        ("GET", api, None),
        ("GET", one, None),
        ("DELETE", one, None),
        ("POST", api, {"title": "theirs"}),
        ("POST", open_gw.url + "/api/chat", chat()),
        ("GET", open_gw.url + "/", None),
        ("GET", open_gw.url + "/static/chat.css", None),  # the page's own script would be readable too
        ("GET", open_gw.url + "/readyz", None),
    ]:
        response = requests.request(method, url, json=body, headers=foreign, timeout=10)
        assert refused_host(response, f"{EVIL}:{open_gw.port}"), (method, url, response.text)
    assert requests.get(one, timeout=5).json()["title"] == "mine"  # the refused DELETE deleted nothing
    assert "refused requests for the host name 'evil.example'" in open_gw.log


@pytest.mark.parametrize(
    "host", ["localhost:{port}", "127.0.0.1:{port}", "127.0.0.9", "[::1]:{port}", "app.localhost", "LOCALHOST."]
)
def test_loopback_names_work_with_any_port(open_gw: Gateway, host: str) -> None:
    headers = {"Host": host.format(port=open_gw.port)}
    api = open_gw.url + "/api/conversations"
    made = requests.post(api, json={}, headers=headers, timeout=5)
    assert made.status_code == 201
    assert requests.get(api, headers=headers, timeout=5).status_code == 200
    assert requests.get(f"{api}/{made.json()['id']}", headers=headers, timeout=5).status_code == 200
    assert requests.delete(f"{api}/{made.json()['id']}", headers=headers, timeout=5).status_code == 204


@pytest.mark.parametrize(
    ("host", "served"),
    [("chat.example", True), ("chat.example:8443", True), ("lan.example", True), ("gpu.lan.example", True)]
    + [("other.example", False), ("chat.example.evil.example", False), ("evillan.example", False)]
    + [("127.0.0.1.nip.io", False), ("0.0.0.0", False), ("", False)],
)
def test_allowed_hosts_setting(open_gw: Gateway, host: str, served: bool) -> None:
    response = requests.get(open_gw.url + "/api/conversations", headers={"Host": host}, timeout=5)
    assert response.status_code == 200 if served else refused_host(response, host)


def test_healthz_answers_any_name_for_probes(open_gw: Gateway) -> None:
    response = requests.get(open_gw.url + "/healthz", headers={"Host": "10.0.0.7:8080"}, timeout=5)
    assert response.json() == {"status": "ok"}


def test_a_foreign_origin_cannot_change_anything(open_gw: Gateway) -> None:
    api = open_gw.url + "/api/conversations"
    for origin in (f"http://{EVIL}", f"http://{EVIL}:{open_gw.port}", "http://127.0.0.1.nip.io"):
        response = requests.post(api, json={}, headers={"Origin": origin}, timeout=5)
        assert response.status_code == 403, origin
        assert (
            response.json()["error"] == f"Origin '{origin}' is not allowed here; add its host to CLAWWEB_ALLOWED_HOSTS"
        )
    # Reading is not what Origin guards (the Host check does), and the page's own origin is fine.
    assert requests.get(api, headers={"Origin": f"http://{EVIL}"}, timeout=5).status_code == 200
    ours = {"Origin": f"http://localhost:{open_gw.port}", "Sec-Fetch-Site": "same-origin"}
    assert requests.post(api, json={}, headers=ours, timeout=5).status_code == 201


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_the_official_ollama_client_still_works(open_gw: Gateway, name: str) -> None:
    messages = chat({"tokens": 4})["messages"]
    with ollama.Client(host=f"http://{name}:{open_gw.port}") as client:
        parts = list(client.chat(model="qwen3:32b", messages=messages, stream=True, think=False))
        assert "".join(p.message.content or "" for p in parts) == "".join(answer_tokens(4))
        assert [m.model for m in client.list().models] == ["qwen3:32b", "nomic-embed-text:latest"]


def test_with_accounts_a_foreign_name_is_left_to_the_accounts(accounts_gw: Gateway) -> None:
    # No CLAWWEB_ALLOWED_HOSTS: a rebound page gets no cookie of the real name, so it meets the login like anyone.
    response = requests.get(accounts_gw.url + "/api/tags", headers={"Host": EVIL}, timeout=5)
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("chat.example.com", ("chat.example.com",)),
        (" Chat.Example.com. , .lan.example", ("chat.example.com", ".lan.example")),
        ("*.lan.example", (".lan.example",)),
        ("[2001:db8::1],10.0.0.7", ("2001:db8::1", "10.0.0.7")),
    ],
)
def test_allowed_hosts_are_parsed(raw: str, parsed: tuple[str, ...]) -> None:
    assert load_settings({"CLAWWEB_ALLOWED_HOSTS": raw}).allowed_hosts == parsed


@pytest.mark.parametrize("raw", ["https://chat.example.com", "chat.example.com:443", "chat_example", "a..b"])
def test_allowed_hosts_refuses_what_is_no_name(raw: str) -> None:
    with pytest.raises(ConfigError, match="CLAWWEB_ALLOWED_HOSTS"):
        load_settings({"CLAWWEB_ALLOWED_HOSTS": raw})


@pytest.mark.parametrize(
    ("host", "name"),
    [("Localhost:8080", "localhost"), ("[::1]:80", "::1"), ("chat.example.", "chat.example"), ("", "")],
)
def test_hostname(host: str, name: str) -> None:
    assert hostname(host) == name


# --- 8. Slow bodies and connections held open per address ---------------------------------------------------------


class SlowClient:
    """A raw connection from ``source`` (all of 127/8 is loopback on Linux) that announces a body and then sends
    it one byte per ``drip`` — or, with ``request=None``, connects and sends nothing at all."""

    def __init__(self, port: int, source: str, request: bytes | None) -> None:
        self.sock = socket.socket()
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        if request is not None:
            self.sock.sendall(request)
        self.trickle = request is not None
        self.sock.setblocking(False)
        self.received = b""
        self.closed = False

    def drip(self) -> None:
        """Read what arrived; while nothing did, send one more byte of the body."""
        try:
            while chunk := self.sock.recv(65536):
                self.received += chunk
            self.closed = True
        except BlockingIOError:
            pass
        except OSError:
            self.closed = True
        if self.trickle and not self.closed and not self.received:
            try:
                self.sock.send(b" ")
            except OSError:
                self.closed = True

    @property
    def status(self) -> int | None:
        found = re.match(rb"HTTP/1\.1 (\d{3}) ", self.received)
        return int(found.group(1)) if found else None

    def headers_and_json(self) -> tuple[str, dict[str, Any]]:
        head, _, body = self.received.partition(b"\r\n\r\n")
        return head.decode().lower(), dict(json.loads(body))


def post_head(port: int, path: str, content_type: str = "application/json", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: 100000\r\n{extra}\r\n"
    ).encode()


def run_until_answered(clients: list[SlowClient], gateway: Gateway, limit_s: float = 30) -> Counter[int]:
    """Trickle every client's body (a byte every 0.25 s) until each got its answer, while a well-behaved client
    on 127.0.0.1 keeps asking /healthz; returns how the probes went (a probe that got no answer is a failure)."""
    probes: Counter[int] = Counter()
    give_up = time.monotonic() + limit_s  # a guard against hanging, not a measurement
    while time.monotonic() < give_up and not all(c.status for c in clients):
        for client in clients:
            client.drip()
        probes[requests.get(gateway.url + "/healthz", timeout=3).status_code] += 1
        time.sleep(0.25)
    return probes


def test_slow_bodies_from_one_address_do_not_stall_the_worker(slow_gw: Gateway) -> None:
    # 60 clients from 127.0.0.2 announce 100 kB and send a byte now and then; the worker holds 40 connections.
    # Before the fix they took all 40 until they stopped, and /healthz got no answer at all.
    clients = [SlowClient(slow_gw.port, "127.0.0.2", post_head(slow_gw.port, "/api/chat")) for _ in range(60)]
    try:
        probes = run_until_answered(clients, slow_gw)
    finally:
        for client in clients:
            client.sock.close()
    assert set(probes) == {200} and probes[200] >= 3
    assert Counter(c.status for c in clients) == {429: 50, 408: 10}  # 10 waiting at most, each for 2 s at most
    for client in clients:
        head, body = client.headers_and_json()
        assert "connection: close" in head and "application/json" in head
        if client.status == 408:
            assert body == {"error": "the request body did not arrive within 2 s (CLAWWEB_BODY_TIMEOUT_S)"}
        else:
            assert "CLAWWEB_MAX_PENDING_PER_ADDRESS" in body["error"] and "127.0.0.2" in body["error"]
    assert "refusing connections from 127.0.0.2" in slow_gw.log


def test_connections_that_send_nothing_are_bounded_per_address(slow_gw: Gateway) -> None:
    # The idle flood: connect and say nothing. Beyond 10 from one address, a 429 from the worker itself.
    idle = [SlowClient(slow_gw.port, "127.0.0.3", None) for _ in range(30)]
    try:
        give_up = time.monotonic() + 10
        while time.monotonic() < give_up and sum(1 for c in idle if c.status) < 20:
            for client in idle:
                client.drip()
            assert requests.get(slow_gw.url + "/healthz", timeout=3).status_code == 200
            time.sleep(0.1)
        refused = [c for c in idle if c.status]
    finally:
        for client in idle:
            client.sock.close()
    assert len(refused) == 20 and {c.status for c in refused} == {429}
    head, body = refused[0].headers_and_json()
    assert "connection: close" in head and "retry-after: 5" in head
    assert "CLAWWEB_MAX_PENDING_PER_ADDRESS" in body["error"]
    # Another address is not affected, and the refused one is served again once its connections are gone.
    assert requests.get(slow_gw.url + "/api/tags", timeout=5).status_code == 200


def test_body_timeout_covers_the_login_form(accounts_gw: Gateway) -> None:
    head = post_head(accounts_gw.port, "/login", "application/x-www-form-urlencoded", "Accept: application/json\r\n")
    client = SlowClient(accounts_gw.port, "127.0.0.4", head + b"name=ops&password=")
    try:
        run_until_answered([client], accounts_gw)
    finally:
        client.sock.close()
    assert client.status == 408
    head_text, body = client.headers_and_json()
    assert "connection: close" in head_text and "CLAWWEB_BODY_TIMEOUT_S" in body["error"]


def import_head(port: int, length: int) -> bytes:
    return (
        f"POST /api/import HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_an_import_gets_time_for_its_size_and_nothing_else_does(slow_gw: Gateway) -> None:
    # 100 kB at a steady pace over about 3 s: past CLAWWEB_BODY_TIMEOUT_S (2 s), within the import's 10 s.
    body = chatgpt_file(100_000)
    with socket.create_connection(("127.0.0.1", slow_gw.port), timeout=30) as sock:
        sock.sendall(import_head(slow_gw.port, len(body)))
        for start in range(0, len(body), 20_000):
            time.sleep(0.6)
            sock.sendall(body[start : start + 20_000])
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert (response.status, json.loads(response.read())) == (200, {"imported": 1, "skipped": 0, "messages": 2})
    # Trickled: a 40 kB import is cut at its share (4 s), a 1 kB one at the usual 2 s, like any other body.
    clients = [
        SlowClient(slow_gw.port, "127.0.0.8", import_head(slow_gw.port, 40_000)),
        SlowClient(slow_gw.port, "127.0.0.8", import_head(slow_gw.port, 1_000)),
    ]
    try:
        run_until_answered(clients, slow_gw)
    finally:
        for client in clients:
            client.sock.close()
    assert [c.status for c in clients] == [408, 408]
    assert [c.headers_and_json()[1]["error"] for c in clients] == [
        "the request body did not arrive within 4 s (CLAWWEB_IMPORT_TIMEOUT_S)",
        "the request body did not arrive within 2 s (CLAWWEB_BODY_TIMEOUT_S)",
    ]


def test_a_burst_from_one_address_gets_the_apps_answers(open_gw: Gateway) -> None:
    # 1000 requests at once from one address against 4 slots and a queue of 256: the admission queue answers
    # each (200, or 503 when full); the per-address bound refuses none, since their bytes are all there.
    body = json.dumps(chat({"ttft": 5, "tokens": 1})).encode()
    start = threading.Barrier(1000)
    outcomes: Counter[int | str] = Counter()
    lock = threading.Lock()

    def one() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", open_gw.port, timeout=60)
        try:
            start.wait()
            connection.request("POST", "/api/chat", body, {"Content-Type": "application/json", "Accept": SSE})
            outcome: int | str = connection.getresponse().status
        except (OSError, http.client.HTTPException) as exc:
            outcome = type(exc).__name__
        finally:
            connection.close()
        with lock:
            outcomes[outcome] += 1

    threads = [threading.Thread(target=one) for _ in range(1000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(outcomes) == {200, 503}, outcomes  # 503: the queue was full (the 200s close at once, freeing it)
    assert "refusing connections" not in open_gw.log


def receive_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while end not in data:
        chunk = sock.recv(65536)
        assert chunk, data  # closed early
        data += chunk
    return data


def test_a_response_without_body_bytes_still_gets_its_headers_sent(open_gw: Gateway) -> None:
    """The worker holds a response's headers to send them with its body's first bytes (one send); a response that
    has none (HEAD here) gets them when the worker turns to the connection's next request, and that request on
    the same keep-alive connection is answered after them, in order."""
    with socket.create_connection(("127.0.0.1", open_gw.port), timeout=10) as sock:
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = receive_until(sock, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = receive_until(sock, b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), head + answer
        length = int(re.search(rb"Content-Length: (\d+)", answer).group(1))  # type: ignore[union-attr]
        body = answer.split(b"\r\n\r\n", 1)[1]
        while len(body) < length:
            body += sock.recv(65536)
        assert json.loads(body)["status"] == "ok"


# --- 9. Who may say the request came over TLS ------------------------------------------------------------------------


def session_cookies(response: requests.Response) -> list[str]:
    return [c for c in response.raw.headers.getlist("Set-Cookie") if c.startswith("clawweb=")]


def login_cookies(gateway: Gateway, headers: dict[str, str]) -> list[str]:
    """The session cookies of a login sent with ``headers`` (by hand: a cookie marked Secure is one that requests
    would not send back over plain HTTP)."""
    form = requests.get(gateway.url + "/login", headers=headers, timeout=5)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, form.text
    cookie = session_cookies(form)[0].split(";", 1)[0]
    login = requests.post(
        gateway.url + "/login",
        data={"name": "ops", "password": PASSWORD, "csrf_token": token.group(1)},
        headers={**headers, "Cookie": cookie},
        allow_redirects=False,
        timeout=10,
    )
    assert login.status_code == 302, login.text
    return session_cookies(form) + session_cookies(login)


def test_x_forwarded_proto_from_an_untrusted_peer_changes_nothing(accounts_gw: Gateway) -> None:
    # Before the fix gunicorn took the header from any loopback peer and the cookie became Secure.
    for spoof in ({"X-Forwarded-Proto": "https"}, {"X-Forwarded-Ssl": "on"}, {"X-Forwarded-Protocol": "ssl"}):
        cookies = login_cookies(accounts_gw, spoof)
        assert cookies and not any("Secure" in cookie for cookie in cookies), spoof


def test_x_forwarded_proto_from_a_trusted_proxy_counts(proxied_gw: Gateway, proxied_key: str) -> None:
    cookies = login_cookies(proxied_gw, {"X-Forwarded-Proto": "https"})
    assert cookies and all("Secure" in cookie for cookie in cookies)
    # Only the header nginx sets counts (ProxyFix reads X-Forwarded-Proto alone).
    assert not any("Secure" in cookie for cookie in login_cookies(proxied_gw, {"X-Forwarded-Ssl": "on"}))


# --- 11. Ollama's URL is never shown with its credentials -----------------------------------------------------------


def test_readyz_detail_only_for_this_machine_or_a_key(
    proxied_gw: Gateway, proxied_key: str, own_sim: SimProcess
) -> None:
    sim = own_sim
    local = requests.get(proxied_gw.url + "/readyz", timeout=10)
    assert local.status_code == 200
    hosts = local.json()["hosts"]
    assert local.json()["ollama"] == ",".join(h["url"] for h in hosts)
    assert hosts[0]["url"] == f"http://***@127.0.0.1:{sim.port}" and hosts[0]["up"]
    assert not hosts[1]["up"] and hosts[1]["error"] == "Connection refused"
    stranger = {"X-Forwarded-For": "203.0.113.9"}  # a browser on the internet, as nginx reports it
    assert requests.get(proxied_gw.url + "/readyz", headers=stranger, timeout=10).json() == {"status": "ready"}
    keyed = requests.get(proxied_gw.url + "/readyz", headers={**stranger, **bearer(proxied_key)}, timeout=10)
    assert len(keyed.json()["hosts"]) == 2


def test_credentials_in_the_ollama_url_are_used_but_never_shown(
    proxied_gw: Gateway, proxied_key: str, own_sim: SimProcess
) -> None:
    sim = own_sim
    shown = [
        requests.get(proxied_gw.url + "/readyz", timeout=10),
        requests.get(proxied_gw.url + "/metrics", timeout=10),  # host labels
        requests.post(proxied_gw.url + "/api/chat", json=chat({"tokens": 2}), headers=bearer(proxied_key), timeout=10),
        requests.get(proxied_gw.url + "/api/tags", headers=bearer(proxied_key), timeout=10),
    ]
    assert all(response.ok for response in shown)
    assert 'host="http://***@127.0.0.1:' in shown[1].text
    # Still sent to Ollama, as HTTP basic authentication (what requests makes of userinfo).
    expected = "Basic " + base64.b64encode(CREDENTIALS.encode()).decode()
    assert {k.lower(): v for k, v in sim.stats()["last_headers"].items()}["authorization"] == expected
    for text in [r.text for r in shown] + [proxied_gw.log]:
        assert "s3cret" not in text
    assert "relaying to Ollama at http://***@127.0.0.1:" in proxied_gw.log


def test_an_unreachable_url_is_named_without_its_credentials(start_gateway: StartGateway) -> None:
    dead = f"127.0.0.1:{free_port()}"
    server = start_gateway(f"http://{CREDENTIALS}@{dead}")
    refused = requests.post(server.url + "/api/chat", json=chat(), timeout=10)
    down = requests.get(server.url + "/readyz", timeout=10)
    server.stop()  # its whole log, for the check below
    assert refused.status_code == 502
    assert refused.json()["error"] == f"cannot reach Ollama at http://***@{dead}: Connection refused"
    assert down.status_code == 503 and f"http://***@{dead}" in down.json()["error"]
    for text in (refused.text, down.text, server.log):
        assert "s3cret" not in text


def test_doctor_and_config_errors_hide_the_credentials(sim: SimProcess) -> None:
    env = {**os.environ, "CLAWWEB_OLLAMA_URL": f"http://{CREDENTIALS}@127.0.0.1:{sim.port}"}
    doctor = subprocess.run(
        [sys.executable, "-m", "clawweb", "doctor"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert f"http://***@127.0.0.1:{sim.port}, version" in doctor.stdout
    assert "s3cret" not in doctor.stdout + doctor.stderr
    with pytest.raises(ConfigError) as bad:
        load_settings({"CLAWWEB_OLLAMA_URL": f"http://{CREDENTIALS}@127.0.0.1:99999"})
    assert "s3cret" not in str(bad.value) and "http://***@127.0.0.1:99999" in str(bad.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("http://user:pass@gpu:11434", "http://***@gpu:11434"),
        ("https://user@gpu", "https://***@gpu"),
        ("http://a:1,http://u:p@b:2", "http://a:1,http://***@b:2"),
        ("http://u:p,w@a:1,http://v:q/r@b", "http://***@a:1,http://***@b"),  # a comma or slash in the password
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
