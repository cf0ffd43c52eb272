"""Faults, done for real: gateways SIGKILLed, redis-server killed, paused and restarted, a disk that fills up, the
database file removed under a running gateway, a read-only data directory. Every answer ends, every word shown
is stored, nothing answers 500. Run alone with ``pytest -m faults``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from clawweb.simulator import answer_tokens

from .support.factories import StartGateway, StartRedis, StartSimulator
from .support.servers import BIN, ROOT, Gateway, free_port, wait_for
from .support.simproc import SimProcess, chat
from .support.sseclient import Event, events

pytestmark = [pytest.mark.faults, pytest.mark.integration]  # every test here starts real processes

SSE = {"Accept": "text/event-stream"}
# One connection per request: an idle keep-alive connection held by a response object would make each
# gateway's graceful stop wait out gunicorn's keepalive (5 s).
http = requests.Session()
http.headers["Connection"] = "close"
FINAL = ("done", "stopped", "error")


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "40")


def start_answer(gateway: Gateway, directive: dict[str, Any], conversation_id: str | None = None) -> dict[str, Any]:
    if conversation_id is None:
        conversation_id = http.post(gateway.url + "/api/conversations", json={}, timeout=10).json()["id"]
    response = http.post(
        f"{gateway.url}/api/conversations/{conversation_id}/messages",
        json={"content": f"hello\n#sim {json.dumps(directive)}", "think": False},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return dict(response.json()["generation"])


class Reader(threading.Thread):
    """Follows an answer's events in the background, as a browser tab would, keeping every block it gets
    (heartbeats included); stops at the final event, when the connection breaks, or after ``give_up``
    heartbeats in a row (an answer that never ends)."""

    def __init__(self, url: str, give_up: int = 100) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.give_up = give_up
        self.received: list[Event] = []
        self.status = 0
        self.broken = False
        self.start()

    def run(self) -> None:
        quiet = 0
        try:
            with http.get(self.url, headers=SSE, stream=True, timeout=30) as response:
                self.status = response.status_code
                for event in events(response):
                    self.received.append(event)
                    quiet = quiet + 1 if event.is_heartbeat else 0
                    if event.event in FINAL or quiet >= self.give_up:
                        return
        except requests.RequestException:
            self.broken = True  # the server went away mid-stream

    @property
    def tokens(self) -> list[str]:
        return [e.json()["message"]["content"] for e in self.received if e.event == "token"]

    @property
    def final(self) -> Event | None:
        last = self.received[-1] if self.received else None
        return last if last is not None and last.event in FINAL else None

    def wait_for_tokens(self, count: int, timeout: float = 15.0) -> None:
        assert wait_for(lambda: len(self.tokens) >= count, timeout), f"only {len(self.tokens)} tokens"


def stored_answer(gateway: Gateway, conversation_id: str) -> dict[str, Any]:
    conversation = http.get(f"{gateway.url}/api/conversations/{conversation_id}", timeout=10).json()
    return dict(conversation["messages"][-1])


def tokens_in(text: str, tokens: list[str]) -> int:
    """How many of ``tokens`` make up ``text`` (which must be a prefix of their concatenation)."""
    joined = ""
    for count, token in enumerate(tokens):
        if joined == text:
            return count
        joined += token
    assert joined == text, "not a prefix made of whole tokens"
    return len(tokens)


def worker_pids(gateway: Gateway) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(gateway.proc.pid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a disk that fills up. Needs root (mount); skipped elsewhere, never under CI=true."""
    directory = tmp_path / "tmpfs"
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)], capture_output=True)
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield directory
    subprocess.run(["umount", "-l", str(directory)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it (remove it to make room again)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):  # unbuffered: each write either fits or fails
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def assert_unavailable(response: requests.Response, what: str) -> None:
    """A dependency is down: 503 JSON naming it, with Retry-After; never a 500, never HTML."""
    assert response.status_code == 503, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:300]
    assert response.json()["error"].startswith(f"{what} unavailable: "), response.text
    assert int(response.headers["Retry-After"]) > 0


# --- 1 and 5: a gateway process dies mid-answer ----------------------------------------------------------------


def test_a_reader_on_another_process_ends_with_an_error_and_the_exact_text_when_the_writer_is_killed(
    sim: SimProcess, tmp_path: Path, start_gateway: StartGateway, start_redis: StartRedis
) -> None:
    redis_server = start_redis()
    heartbeat_s = 0.2  # the lease is three heartbeats
    shared = {"redis_url": redis_server.url, "db": str(tmp_path / "clawweb.db"), "heartbeat_s": heartbeat_s}
    doomed, survivor = start_gateway(sim.url, **shared), start_gateway(sim.url, **shared)
    generation = start_answer(doomed, {"tokens": 400, "tps": 20})
    reader = Reader(survivor.url + generation["events_url"])
    reader.wait_for_tokens(10)
    os.killpg(doomed.proc.pid, signal.SIGKILL)  # the master and its worker: no chance to clean up
    killed_at = time.monotonic()
    reader.join(30)
    final = reader.final
    assert final is not None and final.event == "error", reader.received[-3:]
    print(f"kill -> the reader's final frame: {final.at - killed_at:.2f} s (lease {3 * heartbeat_s:g} s)")
    assert "the gateway process running this answer stopped" in final.json()["error"]
    last_token = max(i for i, e in enumerate(reader.received) if e.event == "token")
    waited = reader.received[last_token + 1 : -1]
    assert all(e.is_heartbeat for e in waited) and len(waited) <= 12  # about the lease's 3 heartbeats
    shown = "".join(reader.tokens)
    assert final.json()["message"]["content"] == shown
    # Stored then, by whoever noticed, before anyone opened the conversation: read the file itself.
    with sqlite3.connect(tmp_path / "clawweb.db") as db:
        status, content = db.execute(
            "SELECT status, content FROM messages WHERE id = ?", (generation["message_id"],)
        ).fetchone()
    assert (status, content) == ("error", shown)
    print(f"characters shown {len(shown)}, stored {len(content)}")
    state = http.get(f"{survivor.url}/api/generations/{generation['id']}", timeout=5).json()
    answer = stored_answer(survivor, generation["conversation_id"])
    assert state["status"] == answer["status"] == "error" and answer["content"] == shown
    again = Reader(survivor.url + start_answer(survivor, {"tokens": 3}, generation["conversation_id"])["events_url"])
    again.join(10)  # a new message is taken (no 409): the answer is over for everyone
    assert again.final is not None and again.final.event == "done"


def test_a_killed_worker_keeps_the_text_its_readers_saw_to_within_a_checkpoint(
    sim: SimProcess, start_gateway: StartGateway
) -> None:
    tps, checkpoint_s = 20, 1.0
    gateway = start_gateway(sim.url, heartbeat_s=0.3, checkpoint_s=checkpoint_s)
    generation = start_answer(gateway, {"tokens": 400, "tps": tps})
    reader = Reader(gateway.url + generation["events_url"])
    reader.wait_for_tokens(50)
    (worker,) = worker_pids(gateway)
    os.kill(worker, signal.SIGKILL)
    reader.join(30)
    assert reader.broken and reader.final is None  # the stream just broke
    assert wait_for(lambda: worker_pids(gateway) not in ([], [worker]), timeout=20)
    gateway.wait_until(lambda: http.get(gateway.url + "/healthz", timeout=1).ok)
    answer = stored_answer(gateway, generation["conversation_id"])
    assert answer["status"] == "error" and "stopped" in answer["error"]
    shown = reader.tokens
    kept = tokens_in(answer["content"], shown)
    print(f"tokens shown {len(shown)}, kept {kept} ({len(''.join(shown))} vs {len(answer['content'])} characters)")
    assert len(shown) - kept <= tps * checkpoint_s * 1.5  # at most about one checkpoint interval lost


# --- 2: ending an answer whatever fails -------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["killed", "paused"])
def test_an_answer_ends_and_is_stored_when_redis_fails_mid_answer(
    sim: SimProcess, fault: str, start_gateway: StartGateway, start_redis: StartRedis
) -> None:
    redis_server = start_redis()
    gateway = start_gateway(sim.url, redis_url=redis_server.url, heartbeat_s=0.3)
    try:
        generation = start_answer(gateway, {"tokens": 60, "tps": 30})
        reader = Reader(gateway.url + generation["events_url"])  # one worker: this reader is on the writer's
        reader.wait_for_tokens(5)
        redis_server.signal(signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
        reader.join(30)
        final = reader.final
        assert final is not None and final.event == "done", reader.received[-3:]
        expected = "".join(answer_tokens(60))
        assert "".join(reader.tokens) == expected
        if fault == "killed":
            redis_server.stop()
            redis_server = start_redis(port=redis_server.port)
        else:
            redis_server.signal(signal.SIGCONT)
        assert stored_answer(gateway, generation["conversation_id"])["content"] == expected
        # The conversation takes new messages again (before: 409 for good).
        url = f"{gateway.url}/api/conversations/{generation['conversation_id']}/messages"
        message = {"content": 'hello\n#sim {"tokens": 3}', "think": False}
        assert wait_for(lambda: http.post(url, json=message, timeout=10).status_code == 202, timeout=15)
    finally:
        if fault == "paused":
            redis_server.signal(signal.SIGCONT)  # a failure while it is paused: it must still stop


def test_an_answer_ends_when_the_disk_is_full_and_is_stored_once_there_is_room(
    sim: SimProcess, tmpfs: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(sim.url, db=str(tmpfs / "clawweb.db"), heartbeat_s=0.3)
    generation = start_answer(gateway, {"tokens": 1500, "tps": 500})
    reader = Reader(gateway.url + generation["events_url"])
    reader.wait_for_tokens(5)
    filler = fill(tmpfs)
    reader.join(30)
    final = reader.final
    assert final is not None and final.event == "done", reader.received[-3:]
    expected = "".join(answer_tokens(1500))
    assert final.json()["message"]["content"] == expected and "not saved yet" in final.json()["warning"]
    conversation_url = f"{gateway.url}/api/conversations/{generation['conversation_id']}"
    message = {"content": 'hello\n#sim {"tokens": 3}', "think": False}
    assert_unavailable(http.post(conversation_url + "/messages", json=message, timeout=10), "storage")
    filler.unlink()

    # Stored by the background retry, not by the next request: read the file itself.
    def stored() -> bool:
        with sqlite3.connect(tmpfs / "clawweb.db") as db:
            row = db.execute("SELECT status, content FROM messages WHERE id = ?", (generation["message_id"],))
            return bool(row.fetchone() == ("done", expected))

    assert wait_for(stored, timeout=15)
    assert http.post(conversation_url + "/messages", json=message, timeout=10).status_code == 202


# --- 3: Redis down: 503 or an in-band error, never a 500; back by itself ----------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_with_redis_down_every_route_answers_503_or_an_in_band_error_and_recovers_by_itself(
    sim: SimProcess, workers: int, start_gateway: StartGateway, start_redis: StartRedis
) -> None:
    redis_server = start_redis()
    gateway = start_gateway(sim.url, redis_url=redis_server.url, heartbeat_s=0.3, workers=workers)
    idle = http.post(gateway.url + "/api/conversations", json={}, timeout=10).json()
    running = start_answer(gateway, {"tokens": 120, "tps": 30})
    early_reader = Reader(gateway.url + running["events_url"])
    early_reader.wait_for_tokens(3)
    redis_server.signal(signal.SIGKILL)
    redis_server.stop()
    message = {"content": 'hello\n#sim {"tokens": 3}', "think": False}
    down = {
        "SSE chat": http.post(gateway.url + "/api/chat", json=chat({"tokens": 3}), headers=SSE, timeout=10),
        "native chat": http.post(gateway.url + "/api/chat", json=chat({"tokens": 3}), timeout=10),
        "post a message": http.post(f"{gateway.url}/api/conversations/{idle['id']}/messages", json=message, timeout=10),
        "open a conversation": http.get(f"{gateway.url}/api/conversations/{idle['id']}", timeout=10),
        "answer state": http.get(f"{gateway.url}/api/generations/{running['id']}", timeout=10),
        "stop an answer": http.delete(f"{gateway.url}/api/generations/{running['id']}", timeout=10),
    }
    ready = http.get(gateway.url + "/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["error"].startswith("shared state unavailable: ")
    statuses = {route: response.status_code for route, response in down.items()}
    print(f"{workers} worker(s), Redis down: {statuses}")
    for route, response in down.items():
        # The worker running the answer needs no Redis to show or stop it; everything else does.
        if not (route in ("answer state", "stop an answer") and response.status_code == 200):
            assert response.status_code == 503, (route, response.text[:200])
            assert_unavailable(response, "shared state")
    # A reader that followed from before: the answer's end (same worker) or an in-band error; a clean end.
    early_reader.join(30)
    final = early_reader.final
    assert final is not None and not early_reader.broken, early_reader.received[-3:]
    assert final.event in ("done", "stopped") or final.json()["error"].startswith("shared state unavailable: ")
    # A reader joining now: the same, or a 503 before its stream starts; never gunicorn's HTML 500.
    late_reader = Reader(gateway.url + running["events_url"])
    late_reader.join(30)
    assert late_reader.status in (200, 503) and not late_reader.broken
    if late_reader.status == 200:
        assert late_reader.final is not None

    redis_server = start_redis(port=redis_server.port)
    back_at = time.monotonic()

    def chat_works() -> bool:
        response = http.post(gateway.url + "/api/chat", json=chat({"tokens": 2}), headers=SSE, timeout=10)
        return response.status_code == 200 and '"done":true' in response.text

    assert wait_for(chat_works, timeout=15)
    print(f"{workers} worker(s): Redis back -> a chat answered in {time.monotonic() - back_at:.2f} s")
    for _ in range(4):  # whichever worker takes it
        assert chat_works()
        assert http.get(gateway.url + "/readyz", timeout=10).status_code == 200
        assert http.get(f"{gateway.url}/api/conversations/{idle['id']}", timeout=10).status_code == 200
        native = http.post(gateway.url + "/api/chat", json=chat({"tokens": 2}), timeout=10)
        assert native.status_code == 200
    again = start_answer(gateway, {"tokens": 400, "tps": 20}, idle["id"])
    Reader(gateway.url + again["events_url"]).wait_for_tokens(2)
    stopped = http.delete(f"{gateway.url}/api/generations/{again['id']}", timeout=10)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"


# --- 6: the database file goes away; a read-only data directory -------------------------------------------------


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_removed_or_replaced_database_turns_readyz_503_and_refuses_writes(
    sim: SimProcess, tmp_path: Path, how: str, start_gateway: StartGateway
) -> None:
    db = tmp_path / "data" / "clawweb.db"
    gateway = start_gateway(sim.url, db=str(db))
    conversation = http.post(gateway.url + "/api/conversations", json={}, timeout=10).json()
    assert http.get(gateway.url + "/readyz", timeout=10).status_code == 200
    if how == "removed":
        db.unlink()
    else:
        replacement = tmp_path / "data" / "restored.db"
        sqlite3.connect(replacement).close()
        replacement.replace(db)  # a restore from a backup, say: another file under the same name
    ready = http.get(gateway.url + "/readyz", timeout=10)
    assert ready.status_code == 503 and f"the database file {db} was removed or replaced" in ready.json()["error"]
    created = http.post(gateway.url + "/api/conversations", json={}, timeout=10)
    assert_unavailable(created, "storage")
    assert "restart clawweb" in created.json()["error"]
    message = {"content": 'hello\n#sim {"tokens": 3}', "think": False}
    posted = http.post(f"{gateway.url}/api/conversations/{conversation['id']}/messages", json=message)
    assert_unavailable(posted, "storage")
    if how == "replaced":  # nothing was written into the new file either
        with sqlite3.connect(db) as replaced:
            assert replaced.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    else:
        assert not db.exists()


@pytest.mark.parametrize("where", ["the directory", "a directory to create in it"])
def test_a_read_only_data_directory_stops_start_up_with_one_line_naming_it(tmp_path: Path, where: str) -> None:
    directory = tmp_path / "readonly"
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(directory)], capture_output=True)
    if mounted.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(mounted.stderr.decode())
        pytest.skip(f"cannot mount a read-only tmpfs: {mounted.stderr.decode().strip()}")
    try:
        db = directory / ("clawweb.db" if where == "the directory" else "var/clawweb.db")
        result = subprocess.run(
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env={**os.environ, "CLAWWEB_DB": str(db), "CLAWWEB_BIND": f"127.0.0.1:{free_port()}"},
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "Worker failed to boot" not in output, output
    assert output.strip() == (
        f"clawweb: CLAWWEB_DB={db}: the directory {directory} is not writable (a read-only file system); make it "
        "writable for the user running clawweb, or set CLAWWEB_DB to a writable place"
    )
