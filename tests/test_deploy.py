"""The deploy kit, for real: Debian's nginx with the site, systemd-analyze on the units, install.sh --dry-run,
and ``clawweb doctor`` against good and broken setups."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from clawweb.simulator import answer_tokens

from .support.exports import chatgpt_file
from .support.factories import StartGateway, StartRedis, StartSimulator
from .support.servers import ROOT, Gateway, Nginx, render_deploy, require, self_signed_certificate
from .support.simproc import SimProcess, chat, sim_line
from .support.sseclient import Event, content_of, events

pytestmark = pytest.mark.integration  # nginx, systemd-analyze, install.sh, caddy: real programs throughout

PASSWORD = "a deploy test password"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require("openssl")
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "20")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    # As install.sh configures it: behind one proxy, accounts required, the site's server name allowed.
    return start_module_gateway(
        sim.url,
        heartbeat_s=0.3,
        trusted_proxies=1,
        auth="required",
        allowed_hosts="localhost",
    )


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> str:
    return gateway.new_user("ops", PASSWORD)


@pytest.fixture(scope="module")
def nginx(
    gateway: Gateway, certificate: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Nginx]:
    require("nginx")
    # A deliberately short stream timeout: only the gateway's heartbeats (0.3 s) keep silent streams open.
    server = Nginx(tmp_path_factory.mktemp("nginx"), gateway.port, *certificate, STREAM_TIMEOUT="1s")
    yield server
    server.stop()


def test_site_passes_nginx_t(nginx: Nginx) -> None:
    assert nginx.test.returncode == 0, nginx.test.stderr
    assert "syntax is ok" in nginx.test.stderr


def stream_via(url: str, body: dict[str, Any], cert: Path, key: str | None) -> list[Event]:
    """The SSE events of one chat through ``url``; a stream the proxy cuts yields what arrived before."""
    received: list[Event] = []
    headers = {"Accept": "text/event-stream", **({"Authorization": f"Bearer {key}"} if key else {})}
    with requests.post(
        url + "/api/chat", json=body, stream=True, headers=headers, verify=str(cert), timeout=10
    ) as response:
        try:
            for event in events(response):
                received.append(event)
        except requests.exceptions.ChunkedEncodingError:
            pass
    return received


def test_frames_arrive_spaced_out_through_nginx(nginx: Nginx, certificate: tuple[Path, Path], key: str) -> None:
    received = stream_via(nginx.url, chat({"tokens": 8, "tps": 10}), certificate[0], key)
    times = [e.at for e in received if e.is_line]
    gaps = [b - a for a, b in zip(times, times[1:8], strict=False)]
    assert min(gaps) > 0.05, gaps  # one token every 100 ms: not buffered into one burst
    assert content_of(received) == "".join(answer_tokens(8))


def test_ollamas_ndjson_from_generate_is_not_buffered(nginx: Nginx, certificate: tuple[Path, Path], key: str) -> None:
    """NDJSON has no heartbeats and no X-Accel-Buffering header: the site's stream location must cover it."""
    body = {"model": "qwen3:32b", "prompt": "hi" + sim_line(tokens=8, tps=10)}
    headers = {"Authorization": f"Bearer {key}"}
    with requests.post(
        nginx.url + "/api/generate", json=body, headers=headers, stream=True, verify=str(certificate[0]), timeout=10
    ) as response:
        arrivals = [(time.monotonic(), json.loads(line)) for line in response.iter_lines() if line]
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:8], strict=False)]
    assert min(gaps) > 0.05, gaps  # one token every 100 ms: not buffered into one burst
    assert "".join(line["response"] for _, line in arrivals) == "".join(answer_tokens(8))


def test_silence_longer_than_proxy_timeout_survives_thanks_to_heartbeats(
    nginx: Nginx,
    certificate: tuple[Path, Path],
    sim: SimProcess,
    tmp_path: Path,
    key: str,
    start_gateway: StartGateway,
) -> None:
    body = chat({"tokens": 3, "ttft": 2.5})  # 2.5 s of silence, proxy_read_timeout 1 s
    assert content_of(stream_via(nginx.url, body, certificate[0], key)) == "".join(answer_tokens(3))
    # The same without heartbeats in time (5 s): nginx cuts the silent stream, no answer arrives.
    quiet = start_gateway(sim.url, heartbeat_s=5)
    proxy = Nginx(tmp_path / "nginx", quiet.port, *certificate, STREAM_TIMEOUT="1s")
    try:
        assert content_of(stream_via(proxy.url, body, certificate[0], None)) == ""  # open mode: loopback
    finally:
        proxy.stop()


def test_http2_and_redirect(nginx: Nginx, certificate: tuple[Path, Path]) -> None:
    context = ssl.create_default_context(cafile=str(certificate[0]))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", nginx.https_port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
    redirect = requests.get(f"http://127.0.0.1:{nginx.http_port}/c/abc", allow_redirects=False, timeout=5)
    assert redirect.status_code == 308
    assert redirect.headers["Location"] == f"https://127.0.0.1:{nginx.https_port}/c/abc"


def test_static_files_come_from_nginx(nginx: Nginx, gateway: Gateway, certificate: tuple[Path, Path]) -> None:
    response = requests.get(nginx.url + "/static/chat.css", verify=str(certificate[0]), timeout=5)
    assert response.status_code == 200
    assert response.content == (ROOT / "static" / "chat.css").read_bytes()
    assert response.headers["Content-Type"] == "text/css; charset=utf-8"
    assert "public" in response.headers["Cache-Control"] and "Expires" in response.headers
    assert "Strict-Transport-Security" in response.headers
    assert "/static/chat.css" not in gateway.log  # gunicorn never saw it
    page = requests.get(nginx.url + "/", headers={"Accept": "text/html"}, verify=str(certificate[0]), timeout=5)
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers


def test_client_address_reaches_the_app(
    nginx: Nginx, gateway: Gateway, certificate: tuple[Path, Path], key: str
) -> None:
    # Connect from another loopback address than nginx's own (127.0.0.1) to tell them apart in the log.
    connection = http.client.HTTPSConnection(
        "127.0.0.1",
        nginx.https_port,
        context=ssl.create_default_context(cafile=str(certificate[0])),
        source_address=("127.0.0.5", 0),
        timeout=10,
    )
    try:
        connection.request(
            "POST",
            "/api/chat",
            json.dumps(chat({"tokens": 2})),
            {"Accept": "text/event-stream", "Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        assert connection.getresponse().read()
    finally:
        connection.close()
    assert "client=user:ops addr=127.0.0.5" in gateway.log


def test_login_cookie_is_secure_and_hsts_set_behind_tls(nginx: Nginx, key: str, certificate: tuple[Path, Path]) -> None:
    browser, ca = requests.Session(), str(certificate[0])
    form = browser.get(nginx.url + "/login", verify=ca, timeout=5)
    assert form.status_code == 200 and "max-age=" in form.headers["Strict-Transport-Security"]
    token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    login = browser.post(
        nginx.url + "/login",
        data={"name": "ops", "password": PASSWORD, "csrf_token": token},
        headers={"Origin": nginx.url},
        allow_redirects=False,
        verify=ca,
        timeout=10,
    )
    assert login.status_code == 302 and login.headers["Location"] == "/"
    cookie = login.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie  # TLS seen via nginx
    page = browser.get(nginx.url + "/", headers={"Accept": "text/html"}, verify=ca, timeout=5)
    assert page.status_code == 200 and "ops" in page.text
    for header in ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options"):
        assert header in page.headers
    assert requests.get(nginx.url + "/api/tags", verify=ca, timeout=5).status_code == 401


def test_only_the_server_name_is_served(nginx: Nginx, certificate: tuple[Path, Path]) -> None:
    # A name rebound to this host reaches nginx's only site (the default server) and is passed on as $host.
    ca = str(certificate[0])
    refused = requests.get(nginx.url + "/login", headers={"Host": "evil.example"}, verify=ca, timeout=5)
    assert refused.status_code == 403
    assert refused.json()["error"] == "Host 'evil.example' is not served here; add it to CLAWWEB_ALLOWED_HOSTS"
    assert requests.get(nginx.url + "/login", headers={"Host": "localhost"}, verify=ca, timeout=5).status_code == 200


TOO_MANY = {"error": "too many requests from your address at once; wait a few seconds and retry"}


def tls_from(source: str, port: int, cert: Path) -> ssl.SSLSocket:
    """A TLS connection to nginx from ``source`` (all of 127/8 is loopback): one client address per test."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return ssl.create_default_context(cafile=str(cert)).wrap_socket(raw, server_hostname="localhost")


def answer(sock: ssl.SSLSocket) -> tuple[int, str, bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.getheader("Content-Type", ""), response.read()


def test_connections_beyond_the_per_address_limit_get_429(
    gateway: Gateway, certificate: tuple[Path, Path], key: str, tmp_path: Path
) -> None:
    limited = Nginx(tmp_path / "nginx", gateway.port, *certificate, CONN_PER_ADDRESS="4")
    chats_before = gateway.log.count('"POST /api/chat ')
    slow = (
        b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    held = [tls_from("127.0.0.5", limited.https_port, certificate[0]) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(slow)  # a body that never finishes: nginx waits for it, gunicorn never hears of it
        for _ in range(3):
            with tls_from("127.0.0.5", limited.https_port, certificate[0]) as extra:
                extra.sendall(slow)
                status, kind, body = answer(extra)
            assert (status, kind, json.loads(body)) == (429, "application/json", TOO_MANY)
        # Another address streams as usual meanwhile.
        other = http.client.HTTPSConnection(
            "localhost",
            limited.https_port,
            context=ssl.create_default_context(cafile=str(certificate[0])),
            source_address=("127.0.0.6", 0),
            timeout=10,
        )
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        other.request("POST", "/api/chat", json.dumps(chat({"tokens": 3})), headers)
        streamed = other.getresponse()
        assert streamed.status == 200 and streamed.read().count(b'"done":false') == 3
        other.close()
    finally:
        for sock in held:
            sock.close()
        limited.stop()
    assert gateway.log.count('"POST /api/chat ') == chats_before + 1  # only the stream: bodies stay in nginx


def test_a_burst_of_logins_beyond_the_rate_gets_429(nginx: Nginx, certificate: tuple[Path, Path]) -> None:
    connection = http.client.HTTPSConnection(
        "localhost",
        nginx.https_port,
        context=ssl.create_default_context(cafile=str(certificate[0])),
        source_address=("127.0.0.7", 0),
        timeout=10,
    )
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    outcomes = []
    try:
        for attempt in range(30):
            connection.request("POST", "/login", f"name=guess{attempt}&password=x", form)
            response = connection.getresponse()
            body = response.read()
            kind = response.getheader("Content-Type", "")
            outcomes.append("nginx" if response.status == 429 and json.loads(body) == TOO_MANY else kind)
        connection.request("GET", "/login")
        page = connection.getresponse()
        page.read()
    finally:
        connection.close()
    assert "nginx" not in outcomes[:11]  # a burst of 10 beyond the first passes to the app
    assert outcomes.count("nginx") >= 15  # then one every 6 s (10 a minute)
    assert page.status == 200  # the form itself is not limited


def test_body_limit_matches_the_app(nginx: Nginx, certificate: tuple[Path, Path], key: str) -> None:
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * (2 << 20) + b'"}]}'
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    for path in ("/api/chat", "/api/conversations"):
        response = requests.post(nginx.url + path, data=big, headers=headers, verify=str(certificate[0]), timeout=10)
        assert response.status_code == 413
        assert response.json() == {"error": "request body is larger than the limit of 1m (CLAWWEB_MAX_BODY_BYTES)"}


IMPORTED = 40  # conversations in the 5 MiB file, two messages each


@pytest.fixture(scope="module")
def importer(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.new_user('importer', PASSWORD)}"}


@pytest.fixture(scope="module")
def imported(nginx: Nginx, certificate: tuple[Path, Path], importer: dict[str, str]) -> requests.Response:
    data = chatgpt_file(5 << 20, IMPORTED, prefix="deploy")
    return requests.post(
        nginx.url + "/api/import", data=data, headers=importer, verify=str(certificate[0]), timeout=120
    )


def test_a_5_mib_import_passes_nginx(nginx: Nginx, imported: requests.Response) -> None:
    assert imported.status_code == 200, imported.text
    assert imported.json() == {"imported": IMPORTED, "skipped": 0, "messages": 2 * IMPORTED}
    # Read whole by nginx (to disk past 1 MiB) before gunicorn heard of it: a slow upload holds no greenlet.
    assert "a client request body is buffered to a temporary file" in (nginx.site_path.parent / "error.log").read_text()


def test_an_import_over_its_limit_gets_nginxs_json_413(
    gateway: Gateway, certificate: tuple[Path, Path], importer: dict[str, str], tmp_path: Path
) -> None:
    limited = Nginx(tmp_path / "nginx", gateway.port, *certificate, MAX_IMPORT_BYTES=str(3 << 20))
    imports_before = gateway.log.count('"POST /api/import ')
    try:
        ca = str(certificate[0])
        response = requests.post(
            limited.url + "/api/import", data=chatgpt_file(4 << 20), headers=importer, verify=ca, timeout=60
        )
        assert limited.test.returncode == 0, limited.test.stderr
    finally:
        limited.stop()
    assert response.status_code == 413 and response.headers["Content-Type"] == "application/json"
    assert response.json() == {
        "error": f"the file is larger than the limit of {3 << 20} bytes (CLAWWEB_MAX_IMPORT_BYTES)"
    }
    assert gateway.log.count('"POST /api/import ') == imports_before  # refused by nginx, never sent on


def test_export_streams_through_nginx(
    nginx: Nginx, certificate: tuple[Path, Path], importer: dict[str, str], imported: requests.Response
) -> None:
    assert imported.status_code == 200
    with requests.get(
        nginx.url + "/api/export", headers=importer, stream=True, verify=str(certificate[0]), timeout=60
    ) as response:
        assert response.status_code == 200
        assert "Content-Length" not in response.headers and response.headers["Transfer-Encoding"] == "chunked"
        assert "attachment" in response.headers["Content-Disposition"]
        body = b"".join(response.iter_content(1 << 16))
    titles = sorted(c["title"] for c in json.loads(body)["conversations"])
    assert titles == sorted(f"imported deploy-{n}" for n in range(IMPORTED))
    # More than 5 MB went through without nginx spooling it to a file (what proxy_buffering on would do).
    assert len(body) > 5 << 20
    assert "upstream response is buffered" not in (nginx.site_path.parent / "error.log").read_text()


def test_share_pages_are_not_stored_and_their_token_stays_out_of_the_logs(
    nginx: Nginx,
    gateway: Gateway,
    certificate: tuple[Path, Path],
    importer: dict[str, str],
    imported: requests.Response,
) -> None:
    ca = str(certificate[0])
    listed = requests.get(nginx.url + "/api/conversations", headers=importer, verify=ca, timeout=10).json()
    conversation = listed["conversations"][0]["id"]
    shared = requests.post(
        nginx.url + f"/api/conversations/{conversation}/share", json={}, headers=importer, verify=ca, timeout=10
    )
    assert shared.status_code == 201, shared.text
    url = shared.json()["url"]
    token = url.removeprefix("/s/")
    page = requests.get(nginx.url + url, headers=importer, verify=ca, timeout=10)
    assert page.status_code == 200 and "imported deploy-" in page.text
    assert page.headers["Cache-Control"] == "private, no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer" and page.headers["X-Robots-Tag"] == "noindex"
    # Not logged in (CLAWWEB_SHARE=users): the login page, the link in its next=.
    browser = requests.get(nginx.url + url, headers={"Accept": "text/html"}, verify=ca, timeout=10)
    assert browser.status_code == 200 and "/login" in browser.url
    # Both servers write a request's log line after its response has gone: wait for the last ones to arrive.
    access_log = nginx.site_path.parent / "access.log"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (
        "/login?next=/s/REDACTED " in access_log.read_text() and '"GET /s/REDACTED HTTP/1.1" 302' in gateway.log
    ):
        time.sleep(0.05)
    access = access_log.read_text()
    assert token not in access and token not in gateway.log
    assert "GET /s/REDACTED HTTP" in access and "/login?next=/s/REDACTED " in access
    assert '"GET /s/REDACTED HTTP/1.1" 200' in gateway.log


UNITS = (
    "clawweb.service",
    "clawweb.socket",
    "clawweb-warmup.service",
    "clawweb-backup.service",
    "clawweb-backup.timer",
)


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = require("systemd-analyze")
    values = {
        "APP_DIR": str(ROOT),
        "VENV": str(Path(sys.executable).parent.parent),
        "CLAWWEB_USER": "root",
        "ENV_FILE": str(tmp_path / "clawweb.env"),
        "DATA_DIR": str(tmp_path),
    }
    (tmp_path / "clawweb.env").write_text("CLAWWEB_DB=/tmp/x.db\n")
    units = []
    for unit in UNITS:
        (tmp_path / unit).write_text(render_deploy(f"systemd/{unit}", **values))
        units.append(str(tmp_path / unit))
    result = subprocess.run([analyze, "verify", "--recursive-errors=no", *units], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    service = (tmp_path / "clawweb.service").read_text()
    for setting in (
        "Type=notify",
        "KillMode=mixed",
        "TimeoutStopSec=30",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=65536",
        f"EnvironmentFile={tmp_path}/clawweb.env",
        "User=root",
    ):
        assert setting in service
    backup = (tmp_path / "clawweb-backup.service").read_text()
    for setting in (  # the gateway's user and settings: its database, and backups as private as it
        f"ExecStart={values['VENV']}/bin/python -m clawweb backup {tmp_path}/backups --keep 14",
        f"EnvironmentFile={tmp_path}/clawweb.env",
        "User=root",
        f"ReadWritePaths={tmp_path}",
    ):
        assert setting in backup
    timer = (tmp_path / "clawweb-backup.timer").read_text()
    for setting in ("OnCalendar=daily", "Persistent=true", "RandomizedDelaySec=1h", "WantedBy=timers.target"):
        assert setting in timer
    dropin = render_deploy("systemd/ollama.service.d/clawweb.conf", MAX_ACTIVE="3")
    assert "OLLAMA_NUM_PARALLEL=3" in dropin and "OLLAMA_HOST=127.0.0.1:11434" in dropin


def test_install_dry_run_lists_every_action(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ROOT / "deploy" / "install.sh"), "--dry-run", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    out = result.stdout
    for expected in (
        "python3 -m venv",
        "pip install --quiet -r",
        "/etc/clawweb/clawweb.env",
        "/etc/systemd/system/clawweb.service",
        "/etc/systemd/system/clawweb.socket",
        "/etc/systemd/system/clawweb-warmup.service",
        "/etc/systemd/system/clawweb-backup.service",
        "/etc/systemd/system/clawweb-backup.timer",
        "/etc/systemd/system/ollama.service.d/clawweb.conf",
        "/etc/nginx/sites-available/clawweb.conf",
        "ln -s /etc/nginx/sites-available/clawweb.conf",
    ):
        assert expected in out, expected
    assert list(tmp_path.iterdir()) == []  # a dry run changes nothing


def doctor(sim_url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "clawweb", "doctor", "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "CLAWWEB_OLLAMA_URL": sim_url, **(env or {})},  # default heartbeat: 15 s
        timeout=60,
    )
    return result.returncode, json.loads(result.stdout)


def failed(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["fix"] for c in report["checks"] if not c["ok"]}


def test_doctor_passes_a_good_setup(
    nginx: Nginx, gateway: Gateway, sim: SimProcess, certificate: tuple[Path, Path], key: str
) -> None:
    args = ("--url", nginx.url, "--ca", str(certificate[0]), "--key", key)
    code, report = doctor(sim.url, *args, env={"CLAWWEB_DB": gateway.env["CLAWWEB_DB"]})
    assert (code, failed(report)) == (0, {})
    names = [c["name"] for c in report["checks"]]
    assert "tokens arrive one by one" in names and f"time to first token, through {nginx.url}" in names
    assert {"database writable", "database integrity", "database disk space"} <= set(names)


def test_doctor_diagnoses_redis_the_queue_and_a_broken_database(
    sim: SimProcess, tmp_path: Path, start_gateway: StartGateway, start_redis: StartRedis
) -> None:
    redis_server = start_redis()
    gateway = start_gateway(sim.url, redis_url=redis_server.url, max_active=2)
    env = {"CLAWWEB_DB": gateway.env["CLAWWEB_DB"], "CLAWWEB_REDIS_URL": redis_server.url, "CLAWWEB_MAX_ACTIVE": "2"}
    with requests.post(gateway.url + "/api/chat", json=chat({"tokens": 2000, "tps": 20}), stream=True) as held:
        lines = held.iter_lines()  # kept: a dropped iterator would close the response
        next(lines)  # the answer holds a slot while the doctor looks
        code, report = doctor(sim.url, env=env)
    figures = {c["name"]: c["figure"] for c in report["checks"]}
    assert (code, failed(report)) == (0, {})
    assert "1 of 2 slots held" in figures["queue"] and "127.0.0.1: 1" in figures["queue"]
    assert figures["redis round trip"].endswith(redis_server.url.replace("redis://", "ms to redis://"))
    redis_server.stop()
    code, report = doctor(sim.url, env=env)
    assert code == 1 and "start redis-server" in failed(report)["redis reachable"]
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 8192)  # a header, then garbage
    code, report = doctor(sim.url, env={"CLAWWEB_DB": str(broken)})
    problems = failed(report)
    assert code == 1 and ("database integrity" in problems or "database writable" in problems), problems


def break_streaming(site: str) -> str:
    """The classic mistakes: buffering on, the app's X-Accel-Buffering ignored, gzip on the stream, 10 s timeout."""
    return (
        site.replace("proxy_buffering off;", "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;")
        .replace("gzip off;", "gzip on; gzip_min_length 1; gzip_types text/event-stream;")
        .replace("proxy_read_timeout 600s;", "proxy_read_timeout 10s;")
    )


def test_doctor_names_a_buffering_proxy(
    gateway: Gateway, sim: SimProcess, certificate: tuple[Path, Path], tmp_path: Path, key: str
) -> None:
    buffering = Nginx(tmp_path / "nginx", gateway.port, *certificate, edit=break_streaming)
    try:
        site = str(buffering.site_path)
        code, report = doctor(
            sim.url, "--url", buffering.url, "--ca", str(certificate[0]), "--nginx-site", site, "--key", key
        )
    finally:
        buffering.stop()
    problems = failed(report)
    assert code == 1
    assert "proxy_buffering off" in problems["tokens arrive one by one"]
    assert "proxy_read_timeout" in problems["proxy timeout above heartbeat"]


def test_doctor_names_a_stopped_ollama(start_simulator: StartSimulator) -> None:
    simulator = start_simulator()
    simulator.stop()
    code, report = doctor(simulator.url)
    assert code == 1
    assert "start Ollama" in failed(report)["ollama reachable"]


def test_caddyfile_validates() -> None:
    caddy = require("caddy")
    result = subprocess.run(
        [caddy, "validate", "--config", str(ROOT / "deploy" / "Caddyfile"), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Valid configuration" in result.stderr + result.stdout
