"""Accounts, API keys, CSRF and limits: in-process for the route table and settings, the rest under a real
gunicorn gevent with accounts required, users made with the real ``clawweb`` command."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
import requests

from clawweb import create_app
from clawweb.config import ConfigError, load_settings
from clawweb.services import services
from clawweb.storage import Store
from clawweb.storage.migrations import SQLITE as MIGRATIONS

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess, chat

PASSWORD = "correct horse battery"
MARKER = "zebra-quartz-marker"  # message text that must never reach the log unless asked for


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "200", "--model", "qwen3:32b", "--model", "llama3:8b")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, auth="required", heartbeat_s=0.3)


@pytest.fixture(scope="module")
def limited(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    """Tight limits, a model allow-list, and message text logged on purpose."""
    return start_module_gateway(
        sim.url,
        auth="required",
        rate_per_minute=2,
        login_attempts=2,
        models="qwen3:32b",
        log_content=1,
    )


@pytest.fixture(scope="module")
def keys(gateway: Gateway) -> dict[str, str]:
    return {name: gateway.new_user(name) for name in ("alice", "bob")}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def form_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def log_in(gateway: Gateway, name: str, password: str = PASSWORD, next_path: str = "/") -> requests.Session:
    session = requests.Session()
    token = form_token(session.get(gateway.url + "/login", timeout=5).text)
    response = session.post(
        gateway.url + "/login",
        data={"name": name, "password": password, "csrf_token": token, "next": next_path},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302, response.text
    return session


def page_token(session: requests.Session, gateway: Gateway) -> str:
    page = session.get(gateway.url + "/", headers={"Accept": "text/html"}, timeout=5).text
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert found
    return found.group(1)


def new_conversation(gateway: Gateway, key: str) -> dict[str, Any]:
    response = requests.post(gateway.url + "/api/conversations", json={}, headers=bearer(key), timeout=5)
    assert response.status_code == 201, response.text
    return dict(response.json())


# --- settings and the route table, in-process -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "required"),
    [
        ({}, False),
        ({"CLAWWEB_BIND": "0.0.0.0:8080"}, True),
        ({"CLAWWEB_BIND": "10.1.2.3:8080"}, True),
        ({"CLAWWEB_BIND": "[::1]:8080"}, False),
        ({"CLAWWEB_BIND": "unix:/run/clawweb.sock"}, True),
        ({"CLAWWEB_TRUSTED_PROXIES": "1"}, True),
        ({"CLAWWEB_TRUSTED_PROXIES": "1", "CLAWWEB_AUTH": "off"}, False),
        ({"CLAWWEB_AUTH": "required"}, True),
    ],
)
def test_accounts_are_required_unless_only_this_machine_can_connect(env: dict[str, str], required: bool) -> None:
    assert load_settings(env).auth_required is required


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLAWWEB_AUTH": "off", "CLAWWEB_BIND": "0.0.0.0:8080"}, "open mode is only allowed on a loopback bind"),
        ({"CLAWWEB_AUTH": "maybe"}, "must be one of auto, required, off"),
        ({"CLAWWEB_SECRET_KEY": "short"}, "at least 32 characters"),
        ({"CLAWWEB_MODELS": "llama3:8b"}, "must include CLAWWEB_DEFAULT_MODEL"),
    ],
)
def test_unsafe_settings_stop_the_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_the_session_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    config = {"db": str(tmp_path / "db"), "secret_key_file": str(tmp_path / "secret")}
    first = create_app(config)
    assert stat.S_IMODE(os.stat(tmp_path / "secret").st_mode) == 0o600
    second = create_app(config)
    assert first.secret_key == second.secret_key and len(str(first.secret_key)) >= 32
    for app in (first, second):
        services(app).close()


def test_a_database_from_before_accounts_keeps_its_conversations_for_open_mode(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(f"BEGIN; {MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;")
    old.execute("INSERT INTO conversations VALUES ('c1', 'kept', 'qwen3:32b', '', 1, 1)")
    old.close()
    store = Store(str(path))
    try:
        assert store.conversation("c1", None) is not None  # open mode still sees it
        user = store.add_user("kim", "x")
        assert store.conversation("c1", user["id"]) is None  # a user does not
    finally:
        store.close()


def test_every_route_needs_credentials(tmp_path: Path) -> None:
    app = create_app({"auth": "required", "db": str(tmp_path / "db"), "secret_key_file": str(tmp_path / "key")})
    client = app.test_client()
    public = {"/healthz", "/readyz", "/login", "/static/<path:filename>", "/metrics"}
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.rule in public:
            continue
        path = re.sub(r"<[^>]+>", "0123456789abcdef", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            api = path.startswith(("/api/", "/v1/"))
            headers = {} if api else {"Accept": "text/html"}  # a page, as a browser asks for it
            response = client.open(path, method=method, json={} if method != "GET" else None, headers=headers)
            checked += 1
            if path.startswith(("/api/", "/v1/")):
                assert response.status_code == 401, (method, path)
                assert "error" in response.get_json() and response.headers["WWW-Authenticate"] == "Bearer"
            else:
                assert response.status_code == 302, (method, path)
                assert response.headers["Location"].startswith("/login")
    assert checked >= 15
    # A program probing / as Ollama's clients do is told "Ollama is running", and nothing else, without a key.
    for probe in (client.get("/"), client.get("/", headers={"Accept": "*/*"}), client.head("/")):
        assert probe.status_code == 200 and probe.mimetype == "text/plain"
    assert client.get("/").text == "Ollama is running"
    assert client.post("/logout").headers["Location"] == "/login"  # a post is not a page to come back to
    # Prometheus on this machine scrapes without a key; from anywhere else /metrics needs one.
    assert client.get("/metrics").status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 401
    services(app).close()


# --- the command line ---------------------------------------------------------------------------------------------


def test_cli_manages_users_and_keys_and_stores_no_secret(gateway: Gateway) -> None:
    gateway.cli("users", "add", "carol", "--password-stdin", stdin=PASSWORD + "\n")
    with pytest.raises(RuntimeError, match="exists"):
        gateway.cli("users", "add", "carol", "--password-stdin", stdin=PASSWORD + "\n")
    with pytest.raises(RuntimeError, match="8 to 1024 characters"):
        gateway.cli("users", "add", "dave", "--password-stdin", stdin="short\n")
    created = gateway.cli("keys", "create", "carol", "--name", "ci job")
    key = created.split()[-1]
    assert key.startswith("cw_") and "shown only now" in created
    listed = gateway.cli("keys", "list")
    assert "carol" in listed and "ci job" in listed and key not in listed and key[:10] in listed
    assert "carol" in gateway.cli("users", "list")
    database = b"".join(p.read_bytes() for p in gateway.log_path.parent.glob("clawweb.db*"))
    assert key.encode() not in database and PASSWORD.encode() not in database
    assert requests.get(gateway.url + "/api/tags", headers=bearer(key), timeout=5).status_code == 200


# --- logging in -----------------------------------------------------------------------------------------------------


def test_login_flow_cookie_flags_and_logout(gateway: Gateway, keys: dict[str, str]) -> None:
    anonymous = requests.get(gateway.url + "/c/abc?x=1", allow_redirects=False, timeout=5)
    assert anonymous.status_code == 302 and anonymous.headers["Location"] == "/login?next=/c/abc?x%3D1"
    browser = requests.Session()
    browser.headers["Accept"] = "text/html"  # as a browser navigates (a program asking for / is told Ollama runs)
    token = form_token(browser.get(gateway.url + "/login", timeout=5).text)
    wrong = browser.post(
        gateway.url + "/login", data={"name": "alice", "password": "nope-nope", "csrf_token": token}, timeout=10
    )
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    right = browser.post(
        gateway.url + "/login",
        data={"name": "alice", "password": PASSWORD, "csrf_token": token, "next": "//evil.example/x"},
        allow_redirects=False,
        timeout=10,
    )
    assert right.status_code == 302 and right.headers["Location"] == "/"  # never off-site
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie  # plain HTTP here
    page = browser.get(gateway.url + "/", timeout=5)
    assert page.status_code == 200 and "alice" in page.text
    out = browser.post(gateway.url + "/logout", data={"csrf_token": page_token(browser, gateway)}, timeout=5)
    assert out.url.endswith("/login")
    assert browser.get(gateway.url + "/", allow_redirects=False, timeout=5).status_code == 302


def test_login_needs_the_form_token(gateway: Gateway, keys: dict[str, str]) -> None:
    response = requests.post(gateway.url + "/login", data={"name": "alice", "password": PASSWORD}, timeout=10)
    assert response.status_code == 403 and "CSRF" in response.json()["error"]


def test_wrong_passwords_are_throttled(limited: Gateway) -> None:
    limited.new_user("erin")
    browser = requests.Session()
    token = form_token(browser.get(limited.url + "/login", timeout=5).text)
    statuses = []
    for password in ("wrong-one", "wrong-two", PASSWORD):  # login_attempts=2: even the right one waits now
        response = browser.post(
            limited.url + "/login", data={"name": "erin", "password": password, "csrf_token": token}, timeout=10
        )
        statuses.append(response.status_code)
    assert statuses == [401, 401, 429]
    assert 0 < int(response.headers["Retry-After"]) <= 15 * 60 and "Too many failed attempts" in response.text


# --- who sees what --------------------------------------------------------------------------------------------------


def test_users_only_ever_see_their_own(gateway: Gateway, keys: dict[str, str]) -> None:
    alice, bob = bearer(keys["alice"]), bearer(keys["bob"])
    conversation = new_conversation(gateway, keys["alice"])
    url = f"{gateway.url}/api/conversations/{conversation['id']}"
    started = requests.post(
        url + "/messages", json={"content": chat({"tokens": 3})["messages"][0]["content"]}, headers=alice, timeout=5
    )
    assert started.status_code == 202
    generation = started.json()["generation"]
    for method, path in [
        ("GET", url),
        ("PATCH", url),
        ("DELETE", url),
        ("POST", url + "/messages"),
        ("POST", url + "/regenerate"),
        ("GET", f"{gateway.url}/api/generations/{generation['id']}"),
        ("GET", f"{gateway.url}{generation['events_url']}"),
        ("DELETE", f"{gateway.url}/api/generations/{generation['id']}"),
    ]:
        response = requests.request(method, path, json={"content": "x"}, headers=bob, timeout=5)
        assert response.status_code == 404, (method, path, response.text)
    assert conversation["id"] not in requests.get(gateway.url + "/api/conversations", headers=bob, timeout=5).text
    page = log_in(gateway, "bob").get(f"{gateway.url}/c/{conversation['id']}", timeout=5)
    assert page.status_code == 404
    mine = requests.get(url, headers=alice, timeout=5)
    assert mine.status_code == 200 and mine.json()["id"] == conversation["id"]


def test_api_keys_work_on_the_ollama_routes_until_revoked(gateway: Gateway, sim: SimProcess) -> None:
    key = gateway.new_user("frank")
    streamed = requests.post(gateway.url + "/api/chat", json=chat({"tokens": 3}), headers=bearer(key), timeout=10)
    assert streamed.status_code == 200 and streamed.text.count("\n") == 4  # 3 tokens and the done line
    assert requests.get(gateway.url + "/api/ps", headers=bearer(key), timeout=5).status_code == 200
    for header in ({"Authorization": "Bearer cw_not-a-key"}, {"Authorization": f"Basic {key}"}, {}):
        refused = requests.get(gateway.url + "/api/tags", headers=header, timeout=5)
        assert refused.status_code == 401 and refused.json()["error"]
    key_id = gateway.cli("keys", "list").split("frank")[0].split()[-2]
    gateway.cli("keys", "revoke", key_id)
    revoked = requests.get(gateway.url + "/api/tags", headers=bearer(key), timeout=5)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]


def test_disabling_a_user_or_changing_the_password_ends_access(gateway: Gateway) -> None:
    key = gateway.new_user("grace")
    browser = log_in(gateway, "grace")
    assert browser.get(gateway.url + "/api/conversations", timeout=5).status_code == 200
    gateway.cli("users", "passwd", "grace", "--password-stdin", stdin="a brand new password\n")
    assert browser.get(gateway.url + "/api/conversations", timeout=5).status_code == 401  # that session is over
    assert requests.get(gateway.url + "/api/tags", headers=bearer(key), timeout=5).status_code == 200
    gateway.cli("users", "disable", "grace")
    assert requests.get(gateway.url + "/api/tags", headers=bearer(key), timeout=5).status_code == 401
    gateway.cli("users", "enable", "grace")
    assert requests.get(gateway.url + "/api/tags", headers=bearer(key), timeout=5).status_code == 200


def test_model_management_is_never_reachable(gateway: Gateway, keys: dict[str, str], sim: SimProcess) -> None:
    sim.reset()
    for method, path in [
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/blobs/sha256:00"),
        ("HEAD", "/api/blobs/sha256:00"),
    ]:
        response = requests.request(
            method, gateway.url + path, json={"model": "x"}, headers=bearer(keys["alice"]), timeout=5
        )
        assert response.status_code == 404, (method, path)
        assert method == "HEAD" or "not offered here" in response.json()["error"]
    assert sim.stats()["requests"] == 0


# --- CSRF -----------------------------------------------------------------------------------------------------------


def test_cross_site_and_tokenless_requests_are_refused(gateway: Gateway, keys: dict[str, str]) -> None:
    browser = log_in(gateway, "alice")
    token = page_token(browser, gateway)
    url = gateway.url + "/api/conversations"
    assert browser.post(url, json={}, timeout=5).status_code == 403  # the cookie alone is not enough
    assert browser.post(url, json={}, headers={"X-CSRF-Token": "forged"}, timeout=5).status_code == 403
    assert browser.post(url, json={}, headers={"X-CSRF-Token": token}, timeout=5).status_code == 201
    # What a form on another site makes the browser send: the cookie, a form body, the foreign origin.
    for headers in (
        {"Origin": "https://evil.example", "X-CSRF-Token": token},
        {"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": token},
        {"Origin": "null"},
    ):
        refused = browser.post(url, data={"title": "pwned"}, headers=headers, timeout=5)
        assert refused.status_code == 403 and "cross-site" in refused.json()["error"], headers
    forged_logout = browser.post(gateway.url + "/logout", headers={"Sec-Fetch-Site": "cross-site"}, timeout=5)
    assert forged_logout.status_code == 403
    same_site = {"Origin": gateway.url, "Sec-Fetch-Site": "same-origin", "X-CSRF-Token": token}
    assert browser.post(url, json={}, headers=same_site, timeout=5).status_code == 201
    # Programs with a key send no cookie, so there is nothing to forge: no token needed.
    assert requests.post(url, json={}, headers=bearer(keys["bob"]), timeout=5).status_code == 201


# --- limits ---------------------------------------------------------------------------------------------------------


def test_rate_limit_and_model_allow_list(limited: Gateway) -> None:
    key = limited.new_user("heidi")
    other = requests.post(limited.url + "/api/chat", json=chat(model="llama3:8b"), headers=bearer(key), timeout=10)
    assert other.status_code == 403 and "CLAWWEB_MODELS" in other.json()["error"]
    tags = requests.get(limited.url + "/api/tags", headers=bearer(key), timeout=5).json()
    assert [m["name"] for m in tags["models"]] == ["qwen3:32b"]
    body = chat({"tokens": 2})
    statuses = [
        requests.post(limited.url + "/api/chat", json=body, headers=bearer(key), timeout=10).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    refused = requests.post(limited.url + "/api/chat", json=body, headers=bearer(key), timeout=10)
    assert "CLAWWEB_RATE_PER_MINUTE" in refused.json()["error"] and 0 < int(refused.headers["Retry-After"]) <= 60
    other_user = limited.new_user("ivan")  # the limit is per user
    assert requests.post(limited.url + "/api/chat", json=body, headers=bearer(other_user), timeout=10).ok


def test_logs_hold_no_passwords_keys_or_text_unless_asked(
    gateway: Gateway, limited: Gateway, keys: dict[str, str]
) -> None:
    for server, key in ((gateway, keys["alice"]), (limited, limited.new_user("judy"))):
        body = {**chat({"tokens": 2}), "messages": [{"role": "user", "content": f'{MARKER}\n#sim {{"tokens": 2}}'}]}
        assert requests.post(server.url + "/api/chat", json=body, headers=bearer(key), timeout=10).ok
    log = gateway.log
    assert "stream end=done" in log and "user:alice" in log
    for secret in (PASSWORD, keys["alice"], keys["bob"], MARKER, "nope-nope"):
        assert secret not in log
    assert MARKER in limited.log and PASSWORD not in limited.log  # CLAWWEB_LOG_CONTENT=1 logs the text only
