"""Real servers for integration tests, werkzeug ``dev_server`` style: a subprocess on a free loopback port,
polled until it answers, its log kept in a file, stopped (and killed if need be) at the end."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts(port: int) -> bool:
    """Something listens on this loopback port (a refused connection raises, for ``wait_until``)."""
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return True


def require(program: str) -> str:
    """The path of a program the test needs; missing, the test fails under CI=true and is skipped elsewhere."""
    found = shutil.which(program) or (f"/usr/sbin/{program}" if os.path.exists(f"/usr/sbin/{program}") else None)
    if found is None:
        message = f"{program} is missing: `make test` installs it from Debian"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def wait_for(predicate: Callable[[], Any], timeout: float = 3.0) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


class ServerProcess:
    """A child process in its own session (so a signal reaches it alone), logging into ``log_path``."""

    stop_signal = signal.SIGTERM  # what ``stop`` sends first (before the method ``signal`` below hides the module)

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log_file = open(log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, ready: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{shlex.join(self.argv)} exited with {self.proc.returncode}:\n{self.log}")
            try:
                if ready():
                    return
            except (OSError, requests.RequestException):
                pass
            time.sleep(0.05)
        self.stop()  # a server that never got ready must not outlive the test
        raise RuntimeError(f"{shlex.join(self.argv)} not ready after {timeout} s:\n{self.log}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """``stop_signal``, then SIGKILL after ``timeout``; returns the exit code (negative: killed by that signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


class Gateway(ServerProcess):
    """clawweb under a real ``gunicorn -k gevent`` with the project's ``gunicorn.conf.py``."""

    config = "gunicorn.conf.py"  # bench/run.py --profile: bench/profiling.conf.py (the same, plus a sampler)

    def __init__(self, log_path: Path, ollama_url: str, **settings: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            "CLAWWEB_OLLAMA_URL": ollama_url,
            "CLAWWEB_BIND": f"127.0.0.1:{self.port}",
            "CLAWWEB_DB": str(log_path.parent / "clawweb.db"),
        }
        # Tests start far more answers (and conversations) than a person would: the limits have their own tests.
        settings.setdefault("rate_per_minute", 100_000)
        settings.setdefault("conversations_per_minute", 0)
        settings.setdefault("quota_answers_per_day", 0)
        env.update({f"CLAWWEB_{key.upper()}": str(value) for key, value in settings.items()})
        self.env = env
        super().__init__([str(BIN / "gunicorn"), "-c", self.config, "wsgi:app"], log_path, env)
        # Any HTTP answer means the worker is up (the master binds before the worker can accept).
        self.wait_until(lambda: requests.get(self.url + "/healthz", timeout=1).status_code > 0)

    def cli(self, *args: str, stdin: str = "") -> str:
        """``python -m clawweb ...`` on this gateway's database; its output (raises if it fails)."""
        done = subprocess.run(
            [sys.executable, "-m", "clawweb", *args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"clawweb {' '.join(args)}: {done.stderr}")
        return done.stdout

    def new_user(self, name: str, password: str = "correct horse battery") -> str:
        """Create a user with an API key; returns the key."""
        self.cli("users", "add", name, "--password-stdin", stdin=password + "\n")
        return self.cli("keys", "create", name).split()[-1]


class RedisServer(ServerProcess):
    """Debian's redis-server on a free loopback port, in memory only (no RDB/AOF files)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        """``port``: a restarted server takes its predecessor's (clients reconnect to the same URL)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        super().__init__([*argv, "--dir", str(directory)], directory / "redis.log")

        def answers() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")

        self.wait_until(answers)


class CuttableProxy:
    """A TCP forwarder on loopback whose open connections can be cut at once: a network drop, on demand."""

    def __init__(self, target_port: int) -> None:
        import threading

        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target_port))
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def cut(self) -> int:
        """Drop every open connection (both sides see a reset/close); new ones are accepted as before."""
        with self._lock:
            victims = list(self._open)
        for sock in victims:
            self._close(sock)
        return len(victims)

    def close(self) -> None:
        self._listener.close()
        self.cut()


def render_deploy(template: str, **values: str) -> str:
    """A deploy template rendered by deploy/install.sh itself (one renderer for tests and hosts)."""
    return subprocess.run(
        [str(ROOT / "deploy" / "install.sh"), "--render", template],
        env={**os.environ, **values},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class Nginx(ServerProcess):
    """Debian's nginx with the deploy kit's site, rendered for free loopback ports and this checkout's paths."""

    def __init__(
        self,
        directory: Path,
        upstream_port: int,
        cert: Path,
        key: Path,
        edit: Callable[[str], str] = lambda site: site,
        **values: str,
    ) -> None:
        """``edit`` changes the rendered site before use (to test a broken configuration)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.https_port, self.http_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.https_port}"
        self.site_path = directory / "site.conf"
        rendered = render_deploy(
            "nginx/clawweb.conf",
            BIND=f"127.0.0.1:{upstream_port}",
            SERVER_NAME="localhost",
            HTTPS_PORT=str(self.https_port),
            HTTP_PORT=str(self.http_port),
            CERT=str(cert),
            CERT_KEY=str(key),
            STATIC_ROOT=str(ROOT / "static"),
            **{"ACCESS_LOG": str(directory / "access.log"), **values},
        )
        self.site_path.write_text(edit(rendered))
        temp = "\n".join(
            f"    {kind}_temp_path {directory}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.conf = directory / "nginx.conf"
        self.conf.write_text(f"""
user root;  # tests only: workers read pytest's private temporary directory
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    access_log {directory}/access.log;
{temp}
    include {self.site_path};
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.test = subprocess.run(
            [nginx, "-t", "-p", str(directory), "-c", str(self.conf)], capture_output=True, text=True
        )
        super().__init__(
            [nginx, "-p", str(directory), "-c", str(self.conf), "-g", "daemon off;"], directory / "nginx.out"
        )
        self.wait_until(lambda: accepts(self.https_port))


def metric(gateway: Gateway, name: str) -> float:
    """The value of the unlabelled sample ``name`` on the gateway's ``/metrics`` (an ``AssertionError`` if absent)."""
    for family in text_string_to_metric_families(requests.get(gateway.url + "/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no metric {name}")
