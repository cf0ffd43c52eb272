"""The lanes row of ``make bench``: 16 people on the chat page beside a batch flood of 200 answers, through clawweb
with its 4 answer slots (CLAWWEB_MAX_ACTIVE as shipped) and accounts on; their time to first token alone, beside
the flood with the lanes as shipped, and beside the same flood with every request in one lane (the yardstick).

The yardstick is the queue as it was before the lanes: one FIFO. Equal ``CLAWWEB_LANE_SHARES`` would not give it
(the lanes are still served in order; shares only cap a lane while another waits), so the 16 send with batch keys
of their own instead of their sessions: every request in the batch lane, and as each of the 216 is its own user
(one request each), the turns between users keep arrival order, which is FIFO. One key could not queue 200 as
shipped anyway (CLAWWEB_MAX_ACTIVE_PER_CLIENT=3): a flood of that size is many people's scripts, or one job's many
accounts.

Imported by bench/run.py (which monkey-patches gevent first); ``make bench PART=lanes`` runs it alone.
"""

from __future__ import annotations

import http.client
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import requests
from werkzeug.security import generate_password_hash

from clawweb import accounts
from clawweb.storage import Store
from tests.support.servers import Gateway
from tests.support.simproc import SimProcess, chat, sim_line

FLOOD = 200  # batch answers sent at once, each from its own batch key (user)
PEOPLE = 16  # people on the chat page, logged in
SLOTS = 4  # CLAWWEB_MAX_ACTIVE as shipped
TOKENS = 3  # per answer, at 100 tokens/s after 50 ms: a slot turns over about 10 times a second
PASSWORD = "correct horse battery"


@dataclass
class Answer:
    sent: float = 0.0
    first_token: float = float("nan")
    finished: float = float("nan")

    @property
    def ttft(self) -> float:
        return self.first_token - self.sent

    @property
    def answered(self) -> bool:
        return not math.isnan(self.finished)


@dataclass
class Person:
    """One of the 16: a session (cookie and CSRF token) for the page, and a batch key for the yardstick."""

    cookie: str
    csrf: str
    key: str


def follow(response: http.client.HTTPResponse, answer: Answer, token: bytes, end: bytes) -> None:
    """Read an answer (SSE or NDJSON) to its end, a line holding ``end``, noting its first token: a line holding
    ``token``."""
    while line := response.readline():
        if token in line and math.isnan(answer.first_token):
            answer.first_token = time.monotonic()
        if end in line:
            answer.finished = time.monotonic()
            return


def batch_answer(port: int, key: str) -> Answer:
    """One answer of the flood: /api/chat as a script's Ollama client sends it (NDJSON: it waits silently)."""
    answer, conn = Answer(), http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    try:
        answer.sent = time.monotonic()
        conn.request("POST", "/api/chat", json.dumps(chat({"tokens": TOKENS})), headers)
        follow(conn.getresponse(), answer, b'"created_at"', b'"done":true')
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()
    return answer


def in_gateway(port: int, lane: str) -> int:
    """The lane's answers holding a slot or queued, from /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    names = (f'clawweb_lane_active{{lane="{lane}"}} ', f'clawweb_lane_queued{{lane="{lane}"}} ')
    return sum(int(float(line.split()[-1])) for line in text.splitlines() if line.startswith(names))


def page_answer(port: int, conversation: str, auth: dict[str, str]) -> Answer:
    """One question from the page: POST the message (timed from here), then follow its answer's events."""
    answer, conn = Answer(), http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = json.dumps({"content": "hello" + sim_line(tokens=TOKENS), "think": False})
    try:
        answer.sent = time.monotonic()
        conn.request("POST", f"/api/conversations/{conversation}/messages", body, auth)
        generation = json.loads(conn.getresponse().read())["generation"]
        conn.request("GET", generation["events_url"], headers={**auth, "Accept": "text/event-stream"})
        follow(conn.getresponse(), answer, b"event: token", b"event: done")
    except (OSError, http.client.HTTPException, ValueError, KeyError):
        pass
    finally:
        conn.close()
    return answer


def session_auth(person: Person) -> dict[str, str]:
    return {"Content-Type": "application/json", "Cookie": person.cookie, "X-CSRF-Token": person.csrf}


def key_auth(person: Person) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {person.key}"}


def conversation(port: int, auth: dict[str, str]) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/api/conversations", "{}", auth)
        return str(json.loads(conn.getresponse().read())["id"])
    finally:
        conn.close()


def accounts_for(gateway: Gateway) -> tuple[list[str], list[Person]]:
    """The flood's 200 batch keys (a user each) and the 16 people, written to the gateway's database as the CLI
    does (432 CLI runs would take minutes); the people then log in through the real login form. Their password
    hash is werkzeug's PBKDF2 of one round instead of scrypt (which the login reads from the hash): 16 scrypt checks
    at once take 1.6 s of CPU, much longer on a busy machine, and the row measures admission, not logins."""
    store = Store(gateway.env["CLAWWEB_DB"], mark_interrupted=False)
    hashed = generate_password_hash(PASSWORD, "pbkdf2:sha256:1")
    try:
        jobs = [store.add_user(f"job{i}", hashed)["id"] for i in range(FLOOD)]
        people = [store.add_user(f"person{i}", hashed)["id"] for i in range(PEOPLE)]
        flood, keys = ([accounts.create_key(store, u, lane="batch")[0] for u in users] for users in (jobs, people))
    finally:
        store.close()
    logins = [gevent.spawn(log_in, gateway.url, f"person{i}") for i in range(PEOPLE)]
    gevent.joinall(logins, raise_error=True)
    return flood, [Person(job.value[0], job.value[1], key) for job, key in zip(logins, keys, strict=True)]


def log_in(url: str, name: str) -> tuple[str, str]:
    """The session cookie and the page's CSRF token, as a browser gets them."""
    session = requests.Session()
    page = session.get(url + "/login", timeout=30).text
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    form = {"name": name, "password": PASSWORD, "csrf_token": token, "next": "/"}
    assert session.post(url + "/login", data=form, allow_redirects=False, timeout=30).status_code == 302
    page = session.get(url + "/", headers={"Accept": "text/html"}, timeout=30).text
    csrf = page.split('<meta name="csrf-token" content="', 1)[1].split('"', 1)[0]
    return "; ".join(f"{c.name}={c.value}" for c in session.cookies), csrf


@dataclass
class Run:
    page: list[Answer]  # the 16's
    flood: list[Answer]
    flood_in_s: float = 0.0  # from the flood's first request until all were admitted or queued


def run(port: int, flood: list[str], people: list[Person], auth: Callable[[Person], dict[str, str]]) -> Run:
    """The flood (if any) sent first; once every one of its answers has begun (admitted or queued), the 16 ask."""
    chats = [conversation(port, auth(person)) for person in people]  # open before: the page has one
    batch = [gevent.spawn(batch_answer, port, key) for key in flood]
    began, deadline = time.monotonic(), time.monotonic() + 60
    while flood and time.monotonic() < deadline:  # every one admitted or queued (or already answered)
        answered = sum(job.value is not None and job.value.answered for job in batch)
        if in_gateway(port, "batch") + answered >= len(flood):
            break
        gevent.sleep(0.05)
    flood_in_s = time.monotonic() - began
    asked = [gevent.spawn(page_answer, port, c, auth(p)) for c, p in zip(chats, people, strict=True)]
    gevent.joinall(asked + batch)
    return Run([job.value for job in asked], [job.value for job in batch], flood_in_s)


def summary(runs: list[Run]) -> dict[str, Any]:
    """The 16's time to first token (pooled over ``runs``) and the flood's throughput, from its first request
    sent to its last answer read."""
    page = [answer for one in runs for answer in one.page]
    ttft = [answer.ttft for answer in page if not math.isnan(answer.first_token)]
    result: dict[str, Any] = {
        "ttft_p50_ms": percentile(ttft, 0.5) * 1000,
        "ttft_p99_ms": percentile(ttft, 0.99) * 1000,
        "page_asked": len(page),
        "page_answered": sum(answer.answered for answer in page),
    }
    for one in runs:
        if one.flood:
            done = [answer for answer in one.flood if answer.answered]
            span = max(a.finished for a in done) - min(a.sent for a in one.flood) if done else float("nan")
            result |= {"flood_answered": len(done), "flood_s": span, "flood_answers_per_s": len(done) / span}
            result["flood_in_s"] = one.flood_in_s
    return result


def percentile(values: list[float], q: float) -> float:
    """Nearest rank (of 16 values p99 is the slowest, of 48 the second slowest)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def lanes_row(work: Path, progress: Callable[[str], None] = lambda message: None) -> tuple[str, dict[str, Any]]:
    """On one gateway: the 16 alone, with the flood (lanes as shipped), alone, with the flood in one lane, alone;
    the three runs alone pooled (a second each, they take this machine's drift from before to after the floods).
    The markdown table and the figures; ``progress`` gets a line as each run starts."""
    sim = SimProcess("--ttft", "0.05", "--tps", "100", "--parallel", str(SLOTS * 4))
    # As shipped (4 slots, a queue of 256, 3 per client, the lanes' shares) but with accounts on and the per-minute
    # limits open (Gateway: the flood's 200 answers and the 48 conversations in a few seconds).
    gateway = Gateway(work / "gw-lanes.log", sim.url, auth="required", log_level="warning", heartbeat_s=15)
    port = gateway.port
    try:
        progress(f"{FLOOD} batch keys, {PEOPLE} people logging in")
        flood, people = accounts_for(gateway)
        run(port, flood[:8], people, session_auth)  # warm: the worker's first requests, the model list
        progress(f"the {PEOPLE} alone")
        alone = [run(port, [], people, session_auth)]
        progress(f"the {PEOPLE} beside {FLOOD} batch answers, lanes as shipped")
        lanes = run(port, flood, people, session_auth)
        alone.append(run(port, [], people, session_auth))
        progress(f"the {PEOPLE} beside {FLOOD} batch answers, every request in one lane")
        one_lane = run(port, flood, people, key_auth)
        alone.append(run(port, [], people, session_auth))
        report = {"none": summary(alone), "lanes": summary([lanes]), "one lane": summary([one_lane])}
    finally:
        gateway.stop()
        sim.stop()
    return lanes_table(report), report


def lanes_table(report: dict[str, Any]) -> str:
    """Its own small printer (the row stands alone)."""
    alone = report["none"]
    names = {
        "none": "no flood (3 runs, pooled)",
        "lanes": f"{FLOOD} batch answers queued, lanes as shipped",
        "one lane": f"the same {FLOOD}, every request in one lane (FIFO: the queue before lanes)",
    }
    header = ["page's 16", "TTFT p50 ms", "TTFT p99 ms", "p50 vs no flood", "p99 vs no flood", "answered"]
    header += ["flood answered", "flood answers/s"]
    lines = [
        f"### Lanes: {PEOPLE} people on the chat page beside a batch flood, {SLOTS} slots, {TOKENS}-token answers",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, result in report.items():
        flooded = "flood_answered" in result
        cells = [
            names[name],
            f"{result['ttft_p50_ms']:.0f}",
            f"{result['ttft_p99_ms']:.0f}",
            f"{result['ttft_p50_ms'] / alone['ttft_p50_ms']:.2f}×",
            f"{result['ttft_p99_ms'] / alone['ttft_p99_ms']:.2f}×",
            f"{result['page_answered']}/{result['page_asked']}",
            f"{result['flood_answered']}/{FLOOD}" if flooded else "",
            f"{result['flood_answers_per_s']:.1f}" if flooded else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
