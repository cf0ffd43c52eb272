"""``make bench``: the same streams four ways — the Ollama simulator direct (the floor), nginx relaying the
simulator (a C proxy), the naive relay (bench/naive.py: 20 lines of Flask under the same gunicorn gevent, the
floor of this stack), and clawweb under its real gunicorn.conf.py (direct and behind the deploy kit's nginx).

Loopback only. Prints markdown tables, writes JSON and an SVG plot (bench/plot.py) to bench/results/. The client
is gevent + http.client in this process; every stream is timed on arrival of each line.

The benchmark is a table of parts (``PARTS``), each a function that starts what it measures and returns its
table; each prints its progress on stderr as it goes. ``--part NAME`` (``make bench PART=NAME``) runs one alone,
into bench/results/part-NAME.*. ``--quick``: the small variant (two small levels, one round) of the parts marked
quick, into bench/results/quick.* (for working on the plot or the targets; its figures are not the benchmark's).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import ssl  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
import requests  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fair_lanes import lanes_row  # noqa: E402  (bench/fair_lanes.py, beside this script)
from plot import svg  # noqa: E402  (bench/plot.py, beside this script)

from clawweb.simulator import answer_tokens  # noqa: E402
from tests.support.servers import (  # noqa: E402
    BIN,
    Gateway,
    Nginx,
    RedisServer,
    ServerProcess,
    free_port,
    self_signed_certificate,
)
from tests.support.simproc import SimProcess, sim_line  # noqa: E402
from tests.support.simproc import chat as sim_chat  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PROFILE = ""  # --profile DIR: clawweb's and the naive relay's workers sample their stacks into DIR (bench/sampler.py)
LOG_STREAMS = 100  # answers followed at once through the chat API's event log
EMBED_MODEL = "nomic-embed-text:latest"  # the simulator's default embedding model (768 dimensions)
EMBED_CALLS = 100  # embedding calls sent at once beside the answers
EMBED_ANSWERS = 16  # streaming answers measured with and without them
EMBED_SLOW_S = 0.1  # the slow variant's time per embedding call in the simulator: 100 of them queue in 4 slots
# A RAG chunk of about 90 words, as an indexing job sends (one text per call; the answer is about 10 KB).
EMBED_TEXT = (
    "The gateway admits embedding requests through slots of their own, so that a document index being rebuilt "
    "does not take the places of people waiting for an answer, and an answer that streams for a minute does not "
    "hold up a search. Each request passes the allow-list, the model check and the rate limit, waits in its own "
    "queue when every embedding slot is busy, and goes to a host that has the model. Ollama answers with one "
    "vector per input text, which the gateway relays as it is."
)


@dataclass
class Bench:
    """What a part gets: its scratch directory, whether the run is ``--quick``, and a progress line to print."""

    work: Path
    quick: bool
    part: str = ""
    started: float = field(default_factory=time.monotonic)

    def progress(self, message: str) -> None:
        """One line on stderr, at once (``make bench`` runs for minutes): the part, its elapsed time, ``message``."""
        elapsed = time.monotonic() - self.started
        print(f"[{self.part} {elapsed // 60:.0f}:{elapsed % 60:04.1f}] {message}", file=sys.stderr, flush=True)


@dataclass
class Stream:
    sent: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each token line
    latencies: list[float] = field(default_factory=list)  # wall-clock receive time minus the simulator's stamp
    done: bool = False
    comments: int = 0
    error: str = ""  # why a stream did not complete: its status, the exception, or the end without a done line


def created_at(line: bytes) -> float:
    """The simulator's send time (``created_at``, RFC 3339 with nanoseconds) as epoch seconds."""
    stamp = line.split(b'"created_at":"', 1)[1].split(b'"', 1)[0].decode()
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return seconds + float("0." + (fraction or "0"))


def run_stream(
    host: str, port: int, body: dict[str, Any], sse: bool, tls: ssl.SSLContext | None = None, limit_s: float = 600
) -> Stream:
    stream = Stream()
    conn: http.client.HTTPConnection = (
        http.client.HTTPSConnection(host, port, context=tls, timeout=limit_s)
        if tls
        else http.client.HTTPConnection(host, port, timeout=limit_s)
    )
    headers = {"Content-Type": "application/json", **({"Accept": "text/event-stream"} if sse else {})}
    try:
        stream.sent = time.monotonic()
        conn.request("POST", "/api/chat", json.dumps(body), headers)
        response = conn.getresponse()
        if response.status != 200:
            stream.error = f"HTTP {response.status}"
        while line := response.readline():
            if line.startswith(b":"):
                stream.comments += 1
                continue
            if sse:
                if not line.startswith(b"data: "):
                    continue
                line = line[6:]
            if b'"done":true' in line:
                stream.done = True
                break
            if b'"created_at"' in line:
                now_wall, now = time.time(), time.monotonic()
                stream.arrivals.append(now)
                stream.latencies.append(now_wall - created_at(line))
        if not stream.done:
            stream.error = stream.error or "ended without a done line"
    except (OSError, http.client.HTTPException) as exc:
        stream.error = f"{type(exc).__name__} after {len(stream.arrivals)} tokens"
    finally:
        conn.close()
    return stream


def failures(streams: list[Stream]) -> str:
    """What ended the streams that did not complete, counted (for the progress line): empty when all did."""
    counted: dict[str, int] = {}
    for stream in streams:
        if not stream.done:
            counted[stream.error] = counted.get(stream.error, 0) + 1
    return "; ".join(f"{n} × {error}" for error, n in sorted(counted.items(), key=lambda item: -item[1]))


def run_generation(port: int, tokens: int, limit_s: float = 600) -> Stream:
    """The chat page's path: a conversation, a message, then its answer followed as SSE (the event log)."""
    stream = Stream()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=limit_s)
    headers = {"Content-Type": "application/json"}
    try:
        stream.sent = time.monotonic()
        conn.request("POST", "/api/conversations", "{}", headers)
        conversation = json.loads(conn.getresponse().read())
        content = "hello\n#sim " + json.dumps({"tokens": tokens})
        body = json.dumps({"content": content, "think": False})
        conn.request("POST", f"/api/conversations/{conversation['id']}/messages", body, headers)
        generation = json.loads(conn.getresponse().read())["generation"]
        conn.request("GET", generation["events_url"], headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        while line := response.readline():
            if line.startswith(b"event: done"):
                stream.done = True
                break
            if line.startswith(b"data: ") and b'"created_at"' in line:
                now_wall, now = time.time(), time.monotonic()
                stream.arrivals.append(now)
                stream.latencies.append(now_wall - created_at(line))
    except (OSError, http.client.HTTPException, ValueError, KeyError):
        pass
    finally:
        conn.close()
    return stream


@dataclass
class Call:
    """One embedding call: request sent to answer read."""

    seconds: float = float("nan")
    embedded: bool = False  # a 200 holding embeddings (anything else is a refusal or a failure)


def run_embed(host: str, port: int, body: dict[str, Any], limit_s: float = 120) -> Call:
    call = Call()
    conn = http.client.HTTPConnection(host, port, timeout=limit_s)
    try:
        sent = time.monotonic()
        conn.request("POST", "/api/embed", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        call.seconds = time.monotonic() - sent
        # Not parsed: 100 answers of 768 floats would cost this client more CPU than the check needs.
        call.embedded = response.status == 200 and b'"embeddings":[[' in payload.replace(b" ", b"")
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()
    return call


def chat(tokens: int, **directive: Any) -> dict[str, Any]:
    return sim_chat({"tokens": tokens, **directive})


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """The CPU time ``pid`` has run, all its threads, to the nanosecond (the scheduler's own count: utime and
    stime in /proc/PID/stat tick in 10 ms, too coarse for a few hundred requests)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that just ended
    return total / 1e9


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def concurrent(count: int, target: tuple[str, int, bool, ssl.SSLContext | None], body: dict[str, Any]) -> list[Stream]:
    host, port, sse, tls = target
    pool = gevent.pool.Pool(count)
    jobs = [pool.spawn(run_stream, host, port, body, sse, tls) for _ in range(count)]
    gevent.joinall(jobs)
    return [job.value for job in jobs]


def summarize(streams: list[Stream]) -> dict[str, float]:
    ttft = [s.arrivals[0] - s.sent for s in streams if s.arrivals]
    rates = [(len(s.arrivals) - 1) / (s.arrivals[-1] - s.arrivals[0]) for s in streams if len(s.arrivals) > 1]
    latencies = [latency for s in streams for latency in s.latencies]
    return {
        "ttft_p50_ms": percentile(ttft, 0.5) * 1000,
        "ttft_p99_ms": percentile(ttft, 0.99) * 1000,
        "tokens_per_s": statistics.mean(rates) if rates else float("nan"),
        "completed_pct": 100 * sum(s.done for s in streams) / len(streams),
        "latency_p50_ms": percentile(latencies, 0.5) * 1000,
        "latency_p99_ms": percentile(latencies, 0.99) * 1000,
        "latency_max_ms": max(latencies, default=float("nan")) * 1000,
        "tokens": float(sum(len(s.arrivals) for s in streams)),
    }


def answers_beside_embeds(
    target: tuple[int, bool], embed: dict[str, Any] | None, answer: dict[str, Any], embeds: int, head_start: int = 0
) -> tuple[list[Stream], list[Call]]:
    """``EMBED_ANSWERS`` streaming answers beside ``embeds`` embedding calls (``embed``: their body), each on its own
    connection. The embedding calls are all sent first; the answers right after them, so that they arrive amid them,
    or once ``head_start`` of them have answered (so that the others stand queued)."""
    port, sse = target
    calls = [gevent.spawn(run_embed, "127.0.0.1", port, embed) for _ in range(embeds if embed else 0)]
    if head_start:
        gevent.wait(calls, count=head_start)
    answers = [gevent.spawn(run_stream, "127.0.0.1", port, answer, sse) for _ in range(EMBED_ANSWERS)]
    gevent.joinall(calls + answers)
    return [job.value for job in answers], [job.value for job in calls]


def embedding_row(bench: Bench) -> tuple[str, dict[str, Any]]:
    """16 streaming answers alone, amid 100 embedding calls sent at once, and beside 100 calls the simulator makes
    slow (so that they stand queued in the gateway's embedding slots), through clawweb and to the simulator direct
    (the yardstick: what sharing this machine's CPU with the embedding work costs without any gateway). The runs
    alternate three times (one with ``--quick``: the machine's drift falls on all alike) and each configuration's are
    pooled."""
    work, rounds = bench.work, 1 if bench.quick else 3
    answer = chat(20)  # 200 ms to first token, then half a second of tokens: the row measures the first token
    fast = {"model": EMBED_MODEL, "input": EMBED_TEXT}
    # The simulator's directive in an embedding input: this call takes EMBED_SLOW_S in the model.
    slow = {"model": EMBED_MODEL, "input": EMBED_TEXT + sim_line(delay=EMBED_SLOW_S)}
    # (body, how many embedding calls answer before the answers are sent): 8 is two rounds of the 4 slots, so the
    # answers start with 92 calls waiting and about 2.3 s of queue still ahead of them.
    loads: dict[str, tuple[dict[str, Any] | None, int]] = {
        "none": (None, 0),
        f"{EMBED_CALLS} at once": (fast, 0),
        f"{EMBED_CALLS} queued, {EMBED_SLOW_S * 1000:.0f} ms each": (slow, 8),
    }
    # The simulator's embedding model runs 4 requests at once, like Ollama's runner with OLLAMA_NUM_PARALLEL=4, apart
    # from the chat model's 16: direct, the slow calls queue in the simulator instead of the gateway.
    sim = SimProcess("--ttft", "0.2", "--tps", "38", "--parallel", str(EMBED_ANSWERS), "--embed-parallel", "4")
    # Enough answer slots for the 16; the embedding slots as shipped (CLAWWEB_MAX_ACTIVE_EMBED=4). All calls come
    # from one client here, so its limits are wide open (start_gateway): as shipped, one user may have 3 requests
    # active or queued (CLAWWEB_MAX_ACTIVE_PER_CLIENT) and send 600 embedding requests a minute.
    gateway = start_gateway(work / "gw-embed.log", sim.url, max_active=EMBED_ANSWERS, max_active_embed=4)
    targets = {"simulator direct": (sim.port, False), "clawweb": (gateway.port, True)}
    for target in targets.values():  # connections to the simulator, the model list, the worker's first requests
        answers_beside_embeds(target, fast, answer, embeds=4)
    worker = children(gateway.proc.pid)[0]
    pooled: dict[tuple[str, str], tuple[list[Stream], list[Call]]] = {}
    worker_cpu: dict[str, float] = {}  # clawweb's worker, by load: what it spends on the calls beside the answers
    for round_ in range(rounds):
        for name, target in targets.items():
            for load, (embed, head_start) in loads.items():
                bench.progress(f"round {round_ + 1}/{rounds}: {name}, embedding calls: {load}")
                before = cpu_seconds(worker)
                streams, calls = answers_beside_embeds(target, embed, answer, EMBED_CALLS, head_start)
                if name == "clawweb":
                    worker_cpu[load] = worker_cpu.get(load, 0.0) + cpu_seconds(worker) - before
                pool = pooled.setdefault((name, load), ([], []))
                pool[0].extend(streams)
                pool[1].extend(calls)
    gateway.stop()
    sim.stop()
    rows: list[list[str]] = []
    report: dict[str, Any] = {}
    for name in targets:
        alone = summarize(pooled[(name, "none")][0])
        for load, (embed, _) in loads.items():
            streams, calls = pooled[(name, load)]
            result = summarize(streams)
            seconds = [call.seconds for call in calls if call.embedded]
            if embed:
                result |= {
                    "embed_calls": float(len(calls)),
                    "embed_p50_ms": percentile(seconds, 0.5) * 1000,
                    "embed_p99_ms": percentile(seconds, 0.99) * 1000,
                    "embed_not_answered": float(len(calls) - len(seconds)),
                }
            if name == "clawweb" and embed:
                # The worker's CPU beyond the answers' alone (the same answers, the runs alternated), per call.
                result["worker_cpu_ms_per_call"] = (worker_cpu[load] - worker_cpu["none"]) / len(calls) * 1000
            report.setdefault(name, {})[load] = result
            rows.append(
                [
                    name,
                    load,
                    f"{result['ttft_p50_ms']:.1f}",
                    f"{result['ttft_p99_ms']:.1f}",
                    f"{result['ttft_p50_ms'] / alone['ttft_p50_ms']:.2f}×",
                    f"{result['ttft_p99_ms'] / alone['ttft_p99_ms']:.2f}×",
                    f"{result['completed_pct']:.0f}%",
                    f"{result['embed_p50_ms']:.1f}" if embed else "",
                    f"{result['embed_p99_ms']:.1f}" if embed else "",
                    f"{len(calls) - len(seconds)}/{len(calls)}" if embed else "",
                    f"{result['worker_cpu_ms_per_call']:.2f}" if "worker_cpu_ms_per_call" in result else "",
                ]
            )
    title = (
        f"Embedding calls beside streaming answers: {EMBED_ANSWERS} answers (200 ms to first token), "
        f"{EMBED_CALLS} embedding calls at once, {rounds} round{'s' if rounds > 1 else ''}"
    )
    header = [
        "path",
        "embedding calls",
        "answers' TTFT p50 ms",
        "TTFT p99 ms",
        "p50 vs none",
        "p99 vs none",
        "answers completed",
        "embed p50 ms",
        "embed p99 ms",
        "embed not answered",
        "worker CPU ms / call",
    ]
    return table(title, header, rows), report


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plain_proxy(directory: Path, upstream_port: int) -> ServerProcess:
    """nginx relaying the simulator over plain HTTP with the deploy site's streaming settings: pure relaying."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(f"""
user root; worker_processes 1; pid {directory}/nginx.pid; error_log {directory}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body; proxy_temp_path {directory}/proxy;
    upstream sim {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen {port};
        location / {{
            proxy_pass http://sim; proxy_http_version 1.1; proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1; proxy_buffering off; proxy_read_timeout 600s;
        }}
    }}
}}
""")
    server = ServerProcess(
        ["/usr/sbin/nginx", "-p", str(directory), "-c", str(conf), "-g", "daemon off;"], directory / "out.log"
    )
    server.port = port  # type: ignore[attr-defined]
    time.sleep(0.5)
    return server


def naive_relay(log: Path, sim_url: str) -> ServerProcess:
    """bench/naive.py under gunicorn's gevent worker, one worker with clawweb's connection and timeout settings."""
    port = free_port()
    argv = [str(BIN / "gunicorn"), "-k", "gevent", "-w", "1", "--worker-connections", "4096", "--keep-alive", "5"]
    argv += ["--timeout", "30", "-b", f"127.0.0.1:{port}", "--chdir", str(ROOT / "bench"), "naive:app"]
    env = {"NAIVE_OLLAMA_URL": sim_url}
    if PROFILE:  # the sampler alone (bench/profiling.conf.py), into a directory of its own
        argv[1:1] = ["-c", str(ROOT / "bench" / "profiling.conf.py")]
        env["CLAWWEB_BENCH_PROFILE"] = str(Path(PROFILE) / "naive")
    server = ServerProcess(argv, log, env)
    server.port = port  # type: ignore[attr-defined]
    server.wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/", timeout=1).status_code > 0)
    return server


# --- Conversation affinity: 8 conversations x 10 turns over 2 hosts with a prompt cache ------------------------------

AFFINITY_CONVERSATIONS, AFFINITY_TURNS = 8, 10
AFFINITY_WORDS = 150  # per question; with 40-token answers and the template, turn 10 sends about 2100 prompt tokens
AFFINITY_PROMPT_RATE = 2000  # prompt tokens/s: re-reading turn 10's history costs ~1 s, its new question ~80 ms
AFFINITY_SIM = ("--ttft", "0.05", "--tps", "100", "--tokens", "40", "--parallel", "4", "--cache-prefixes", "4")


def conversation(port: int, number: int, seed: int) -> list[float]:
    """One conversation's turns in a row, each sent with the whole history (as Ollama clients do) after its user
    read and typed for up to half a second (seeded: the same pauses in both modes): the time to first token of
    each. (Without the pauses the 8 conversations would move in lockstep, and the least-busy ranking alone would
    split them the same way every turn.)"""
    pauses = random.Random(seed * 100 + number)
    answer = "".join(answer_tokens(40))
    messages = [{"role": "system", "content": "You answer briefly."}]
    ttft = []
    for turn in range(AFFINITY_TURNS):
        words = " ".join(f"w{number}x{turn}x{i}" for i in range(AFFINITY_WORDS))
        messages.append({"role": "user", "content": f"Conversation {number}, question {turn}: {words}"})
        gevent.sleep(pauses.uniform(0, 0.5))
        body = {"model": "qwen3:32b", "messages": messages, "think": False}
        stream = run_stream("127.0.0.1", port, body, sse=True)
        ttft.append(stream.arrivals[0] - stream.sent if stream.arrivals and stream.done else float("nan"))
        messages.append({"role": "assistant", "content": answer})
    return ttft


def affinity_row(work: Path) -> tuple[str, dict[str, Any]]:
    """8 conversations at once, 10 turns each, through clawweb over two simulators that each keep 4 prompts in their
    cache (like Ollama with OLLAMA_NUM_PARALLEL=4) and read uncached prompt tokens at 2000/s: time to first token
    with conversation affinity (as shipped) and without (CLAWWEB_AFFINITY_ENTRIES=0). The two alternate, twice."""
    sims = [SimProcess(*AFFINITY_SIM, "--prompt-rate", str(AFFINITY_PROMPT_RATE)) for _ in range(2)]
    url = ",".join(sim.url for sim in sims)
    modes = {
        "affinity (as shipped)": start_gateway(work / "gw-affinity.log", url),
        "no affinity (CLAWWEB_AFFINITY_ENTRIES=0)": start_gateway(work / "gw-no-affinity.log", url, affinity_entries=0),
    }
    for gateway in modes.values():  # the model list, connections, the worker's first requests
        concurrent(2, ("127.0.0.1", gateway.port, True, None), chat(2))
    first: dict[str, list[float]] = {name: [] for name in modes}
    later: dict[str, list[float]] = {name: [] for name in modes}
    cached: dict[str, list[int]] = {name: [0, 0] for name in modes}
    for run in range(2):
        for name, gateway in modes.items():
            for sim in sims:
                sim.reset()  # and its prompt cache: each run starts cold
            jobs = [gevent.spawn(conversation, gateway.port, n, run) for n in range(AFFINITY_CONVERSATIONS)]
            gevent.joinall(jobs)
            for job in jobs:
                first[name].append(job.value[0])
                later[name].extend(job.value[1:])
            for sim in sims:
                stats = sim.stats()
                cached[name][0] += stats["prompt_cached"]
                cached[name][1] += stats["prompt_cached"] + stats["prompt_read"]
    hits = {name: _affinity_hits(gateway) for name, gateway in modes.items()}
    for gateway in modes.values():
        gateway.stop()
    for sim in sims:
        sim.stop()
    rows, report = [], {}
    for name in modes:
        share = 100 * cached[name][0] / cached[name][1] if cached[name][1] else float("nan")
        report[name] = {
            "ttft_turn1_p50_ms": percentile(first[name], 0.5) * 1000,
            "ttft_later_p50_ms": percentile(later[name], 0.5) * 1000,
            "ttft_later_p99_ms": percentile(later[name], 0.99) * 1000,
            "ttft_later_mean_ms": statistics.mean(later[name]) * 1000,
            "prompt_cached_pct": share,
            "affinity": hits[name],
        }
        figures = report[name]
        rows.append(
            [
                name,
                f"{figures['ttft_turn1_p50_ms']:.0f}",
                f"{figures['ttft_later_p50_ms']:.0f}",
                f"{figures['ttft_later_p99_ms']:.0f}",
                f"{figures['ttft_later_mean_ms']:.0f}",
                f"{share:.0f}%",
                " ".join(f"{k} {v:.0f}" for k, v in sorted(hits[name].items())) or "-",
            ]
        )
    title = (
        f"Conversation affinity: {AFFINITY_CONVERSATIONS} conversations x {AFFINITY_TURNS} turns over 2 hosts "
        f"(prompt cache of 4 per host, {AFFINITY_PROMPT_RATE} prompt tokens/s, 50 ms base), 2 runs each"
    )
    header = ["routing", "turn 1 p50 ms", "turns 2-10 p50 ms", "p99 ms", "mean ms", "prompt cached", "affinity"]
    return table(title, header, rows), report


def _affinity_hits(gateway: Gateway) -> dict[str, float]:
    text = requests.get(gateway.url + "/metrics", timeout=5).text
    found = {}
    for line in text.splitlines():
        if line.startswith('clawweb_affinity_total{result="'):
            result, value = line[len('clawweb_affinity_total{result="') :].split('"} ')
            found[result] = float(value)
    return found


def start_gateway(log: Path, sim_url: str, **settings: Any) -> Gateway:
    """clawweb with admission and the rates wide open (the benchmark measures relaying, not queueing) unless
    overridden."""
    wide_open = {"max_active": 2000, "max_queue": 4000, "max_active_per_client": 10000, "heartbeat_s": 15}
    wide_open["embed_rate_per_minute"] = 100_000  # 600 by default; the embedding row sends more
    if PROFILE:
        Gateway.config = "bench/profiling.conf.py"
        settings.setdefault("bench_profile", str(Path(PROFILE) / "clawweb"))
    return Gateway(log, sim_url, log_level="warning", **{**wide_open, **settings})


# The seed table's small levels are repeated and pooled: one stream is one sample, and a sample's TTFT moves by
# several ms with the machine (each round: every path once, so the drift falls on all alike).
SEED_ROUNDS = {1: 5, 4: 2}


def warm(target: tuple[str, int, bool, ssl.SSLContext | None]) -> None:
    """One short answer through ``target``, not measured: a fresh worker's first request also pays for what only
    the first does (the upstream connection and the model list, Flask's and the app's lazy first-use work), about
    20 ms here for clawweb and for the naive relay alike, which the seed table's one stream measured as theirs."""
    concurrent(1, target, chat(3))


def seed_table(bench: Bench) -> tuple[str, dict[str, Any]]:
    """The seed workload (820 ms to first token, 38 tokens/s, 100 tokens) at 1 to 16 streams, five paths."""
    work = bench.work
    levels = (1, 4) if bench.quick else (1, 4, 8, 16)
    sim = SimProcess("--ttft", "0.82", "--tps", "38", "--parallel", "16")
    gateway = start_gateway(work / "gw.log", sim.url)
    cert, key = self_signed_certificate(work)
    front = Nginx(work / "front", gateway.port, cert, key)
    relay = plain_proxy(work / "relay", sim.port)
    naive = naive_relay(work / "naive.log", sim.url)
    tls = ssl.create_default_context(cafile=str(cert))
    paths = {
        "simulator direct": ("127.0.0.1", sim.port, False, None),
        "nginx → simulator": ("127.0.0.1", relay.port, False, None),  # type: ignore[attr-defined]
        "naive relay": ("127.0.0.1", naive.port, True, None),  # type: ignore[attr-defined]
        "clawweb": ("127.0.0.1", gateway.port, True, None),
        "nginx (TLS) → clawweb": ("127.0.0.1", front.https_port, True, tls),
    }
    for target in paths.values():
        warm(target)
    seed: dict[str, dict[int, dict[str, float]]] = {}
    rows = []
    for level in levels:
        rounds = 2 if bench.quick else SEED_ROUNDS.get(level, 1)
        pooled: dict[str, list[Stream]] = {name: [] for name in paths}
        for round_ in range(rounds):
            bench.progress(f"{level} stream{'s' if level > 1 else ''}, round {round_ + 1}/{rounds}: every path")
            for name, target in paths.items():
                pooled[name] += concurrent(level, target, chat(100))
        for name in paths:
            result = summarize(pooled[name]) | {"samples": float(len(pooled[name]))}
            seed.setdefault(name, {})[level] = result
            direct = seed["simulator direct"][level]
            rows.append(
                [
                    str(level),
                    name,
                    f"{result['ttft_p50_ms']:.1f}",
                    f"{result['ttft_p99_ms']:.1f}",
                    f"{result['ttft_p50_ms'] - direct['ttft_p50_ms']:+.1f}",
                    f"{result['tokens_per_s']:.2f}",
                    f"{100 * (result['tokens_per_s'] / direct['tokens_per_s'] - 1):+.2f}%",
                    f"{result['completed_pct']:.0f}%",
                ]
            )
        bench.progress(f"{level}: added TTFT p50 " + ", ".join(f"{row[1]} {row[4]} ms" for row in rows[-4:]))
    for server in (front, relay, naive, gateway, sim):
        server.stop()
    title = "Seed workload: 820 ms to first token, 38 tokens/s, 100 tokens"
    if not bench.quick:
        title += f" ({', '.join(f'{n} × {level}' for level, n in SEED_ROUNDS.items())} streams pooled, after a warm-up)"
    header = ["streams", "path", "TTFT p50 ms", "TTFT p99 ms", "added p50 ms", "tokens/s/stream", "vs direct"]
    return table(title, [*header, "completed"], rows), seed


# Rounds per level of the high-load table, pooled: one run's figures swing with when the burst of arrivals met the
# first tokens of the streams ahead (the naive relay's added p99 at 200 streams: +25 and +273 ms in two runs of
# 2026-12-02 on a quiet machine). Each round runs every path once, so the machine's drift falls on all alike.
HIGH_ROUNDS = {200: 3, 500: 2}


def high_load(bench: Bench) -> tuple[str, dict[str, Any]]:
    """200 and 500 streams of 200 tokens at 38 tokens/s: time to first token of the simultaneous arrivals, added
    latency and CPU per token, against nginx and the naive relay in the same run."""
    work = bench.work
    levels = (50,) if bench.quick else (200, 500)
    sim = SimProcess("--ttft", "0.2", "--tps", "38")
    gateway = start_gateway(work / "gw2.log", sim.url)
    relay = plain_proxy(work / "relay2", sim.port)
    naive = naive_relay(work / "naive2.log", sim.url)
    paths = (
        ("simulator direct", ("127.0.0.1", sim.port, False, None), 0),
        ("nginx → simulator", ("127.0.0.1", relay.port, False, None), children(relay.proc.pid)[0]),  # type: ignore[attr-defined]
        ("naive relay", ("127.0.0.1", naive.port, True, None), children(naive.proc.pid)[0]),  # type: ignore[attr-defined]
        ("clawweb", ("127.0.0.1", gateway.port, True, None), children(gateway.proc.pid)[0]),
    )
    for _, target, _ in paths:
        warm(target)
    high: dict[str, dict[int, dict[str, float]]] = {}
    rows = []
    for level in levels:
        rounds = 1 if bench.quick else HIGH_ROUNDS[level]
        pooled: dict[str, list[Stream]] = {name: [] for name, _, _ in paths}
        cpu_s = dict.fromkeys(pooled, 0.0)
        for round_ in range(rounds):
            for name, target, pid in paths:
                bench.progress(f"{level} streams, round {round_ + 1}/{rounds}: {name}")
                before = cpu_seconds(pid) if pid else 0.0
                streams = concurrent(level, target, chat(200))
                cpu_s[name] += cpu_seconds(pid) - before if pid else 0.0
                pooled[name] += streams
                if failed := failures(streams):
                    bench.progress(f"not completed: {failed}")
        for name in pooled:
            result = summarize(pooled[name]) | {"rounds": float(rounds)}
            result["cpu_s_per_1k_tokens"] = cpu_s[name] / result["tokens"] * 1000
            high.setdefault(name, {})[level] = result
        for name in ("nginx → simulator", "naive relay", "clawweb"):
            result, direct = high[name][level], high["simulator direct"][level]
            cpu = result["cpu_s_per_1k_tokens"]
            vs_nginx = cpu / high["nginx → simulator"][level]["cpu_s_per_1k_tokens"]
            vs_naive = cpu / high["naive relay"][level]["cpu_s_per_1k_tokens"]
            # Time to first token of ``level`` simultaneous arrivals, beyond the simulator's own (200 ms).
            added_ttft = result["ttft_p50_ms"] - direct["ttft_p50_ms"]
            naive_ttft = high["naive relay"][level]["ttft_p50_ms"] - direct["ttft_p50_ms"]
            rows.append(
                [
                    str(level),
                    name,
                    f"{added_ttft:+.1f}",
                    f"{added_ttft / naive_ttft:.2f}×" if naive_ttft > 0 else "-",
                    f"{result['latency_p50_ms'] - direct['latency_p50_ms']:+.2f}",
                    f"{result['latency_p99_ms'] - direct['latency_p99_ms']:+.2f}",
                    f"{result['latency_max_ms']:.1f}",
                    f"{cpu * 1000:.1f}",
                    f"{vs_nginx:.2f}×",
                    f"{vs_naive:.2f}×",
                    f"{result['completed_pct']:.1f}%",
                ]
            )
        bench.progress(f"{level}: CPU vs naive " + ", ".join(f"{row[1]} {row[9]}" for row in rows[-3:]))
    for server in (relay, naive, gateway, sim):
        server.stop()
    header = ["streams", "path", "added TTFT p50 ms", "TTFT vs naive relay", "added latency p50 ms", "added p99 ms"]
    header += ["max latency ms", "CPU ms / 1k tokens"]
    header += ["CPU vs nginx", "CPU vs naive relay", "completed"]
    title = "High load: 200 tokens per stream at 38 tokens/s"
    if not bench.quick:
        title += f" ({', '.join(f'{n} × {level}' for level, n in HIGH_ROUNDS.items())} streams pooled)"
    return table(title, header, rows), high


def idle_streams(bench: Bench) -> tuple[str, dict[str, Any]]:
    """2000 streams queued behind 4 slots, heartbeats every second: the worker's memory per open stream."""
    sim = SimProcess("--ttft", "0.2", "--tps", "38")
    gateway = start_gateway(bench.work / "gw3.log", sim.url, max_active=4, heartbeat_s=1)
    worker = children(gateway.proc.pid)[0]
    baseline = rss_kb(worker)
    body = chat(2, ttft=30)
    bench.progress("opening 2000 streams, holding them 8 s")
    idle = [gevent.spawn(run_stream, "127.0.0.1", gateway.port, body, True, None, 60) for _ in range(2000)]
    gevent.sleep(8)
    loaded = rss_kb(worker)
    gateway.stop()  # ends every stream (a final frame), which lets the clients return
    gevent.joinall(idle, timeout=30)
    sim.stop()
    streams = [job.value for job in idle if job.value is not None]
    reached = sum(1 for s in streams if s.comments >= 3)
    per_stream = (loaded - baseline) / 2000
    row = [f"{baseline / 1024:.1f} MiB", f"{loaded / 1024:.1f} MiB", f"{per_stream:.1f} KiB", f"{reached}/2000"]
    text = table(
        "2000 idle streams (queued, heartbeat every 1 s)",
        ["open streams", "worker RSS before", "with streams", "per stream", "got ≥ 3 heartbeats"],
        [["2000", *row]],
    )
    return text, {
        "baseline_kb": baseline,
        "loaded_kb": loaded,
        "per_stream_kb": per_stream,
        "heartbeats_reached": reached,
    }


def event_log(bench: Bench) -> tuple[str, dict[str, Any]]:
    """The chat page's answers through the event log: in memory, and in a local redis-server (CLAWWEB_REDIS_URL)."""
    sim = SimProcess("--ttft", "0.2", "--tps", "38")
    redis_server = RedisServer(bench.work / "redis")
    redis_pid = redis_server.proc.pid
    log_rows: list[list[str]] = []
    by_mode: dict[str, dict[str, float]] = {}
    for mode, extra in (("in memory", {}), ("Redis", {"redis_url": redis_server.url})):
        bench.progress(f"{LOG_STREAMS} answers, event log {mode}")
        gateway = start_gateway(bench.work / f"gw-{len(by_mode)}.log", sim.url, **extra)
        worker = children(gateway.proc.pid)[0]
        worker_before, redis_before = cpu_seconds(worker), cpu_seconds(redis_pid)
        pool = gevent.pool.Pool(LOG_STREAMS)
        jobs = [pool.spawn(run_generation, gateway.port, 200) for _ in range(LOG_STREAMS)]
        gevent.joinall(jobs)
        result = summarize([job.value for job in jobs])
        tokens = result["tokens"] or float("nan")
        result["cpu_s_per_1k_tokens"] = (cpu_seconds(worker) - worker_before) / tokens * 1000
        result["redis_cpu_s_per_1k_tokens"] = (cpu_seconds(redis_pid) - redis_before) / tokens * 1000
        gateway.stop()
        by_mode[mode] = result
        base = by_mode["in memory"]
        log_rows.append(
            [
                mode,
                f"{result['latency_p50_ms']:.2f}",
                f"{result['latency_p99_ms']:.2f}",
                f"{result['latency_p99_ms'] - base['latency_p99_ms']:+.2f}",
                f"{result['cpu_s_per_1k_tokens'] * 1000:.1f}",
                f"{result['redis_cpu_s_per_1k_tokens'] * 1000:.1f}",
                f"{result['cpu_s_per_1k_tokens'] / base['cpu_s_per_1k_tokens']:.2f}×",
                f"{result['completed_pct']:.1f}%",
            ]
        )
    redis_server.stop()
    sim.stop()
    header = ["event log", "latency p50 ms", "latency p99 ms", "p99 vs memory", "worker CPU ms / 1k tokens"]
    header += ["redis-server CPU ms / 1k", "worker CPU vs memory", "completed"]
    title = f"Chat answers through the event log: {LOG_STREAMS} at once, 200 tokens at 38 tokens/s"
    return table(title, header, log_rows), by_mode


def rendering(bench: Bench) -> tuple[str, dict[str, Any]]:
    """The chat page in Chromium while a 4000-token answer streams at 100 tokens/s."""
    bench.progress("a 4000-token answer at 100 tokens/s in headless Chromium (about 45 s)")
    # A separate process: Playwright's sync API does not run under this process's gevent monkey-patching.
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "render.py"), "--screenshot", str(bench.work / "render.png")],
        capture_output=True,
        text=True,
        check=True,
    )
    render = json.loads(rendered.stdout)
    header = ["answer s", "frames (median ms)", "dropped frames", "frames > 50 ms", "long tasks (longest ms)"]
    header += ["final re-render ms", "page main thread CPU", "other load"]
    row = [
        f"{render['answer_s']:.1f}",
        f"{render['frames']:.0f} ({render['frame_median_ms']:.1f})",
        f"{render['dropped_frames']:.0f}",
        f"{render['frames_over_50ms']:.0f}",
        f"{render['longtasks']:.0f} ({render['longtask_max_ms']:.0f})",
        f"{render['finish_script_ms']:.0f}",
        f"{render['renderer_main_cpu_pct']:.0f}%",
        f"{render['other_cpu_pct']:.0f}%",
    ]
    return table("Rendering: a 4000-token answer at 100 tokens/s in headless Chromium", header, [row]), render


def history(bench: Bench) -> tuple[str, dict[str, Any]]:
    """A team's history (bench/history.py): a branched conversation opens, search over 20000 messages."""
    bench.progress("building 22000 messages, then opening and searching them (about a minute)")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "history.py")], capture_output=True, text=True, check=True
    )
    figures = json.loads(done.stdout)
    big, small = "2000 messages, 50 branches", "2 messages (yardstick)"
    rows = [
        [
            "open: GET /api/conversations/<id>",
            f"{figures['open'][big]['p50_ms']:.1f}",
            f"{figures['open'][big]['p99_ms']:.1f}",
            f"{figures['open'][small]['p50_ms']:.1f}",
            f"{figures['open'][big]['p50_ms'] / figures['open'][small]['p50_ms']:.1f}×",
        ],
        [
            "open: the page's time to interactive (Chromium)",
            f"{figures['page'][big]['tti_p50_ms']:.0f}",
            f"{figures['page'][big]['tti_max_ms']:.0f} (max of 5)",
            f"{figures['page'][small]['tti_p50_ms']:.0f}",
            f"{figures['page'][big]['tti_p50_ms'] / figures['page'][small]['tti_p50_ms']:.1f}×",
        ],
    ]
    for query, by_size in figures["search"].items():
        many, few = by_size["20000 messages"], by_size["200 messages (yardstick)"]
        rows.append(
            [
                f"search 20000 messages: {query}",
                f"{many['p50_ms']:.1f}",
                f"{many['p99_ms']:.1f}",
                f"{few['p50_ms']:.1f}",
                f"{many['p50_ms'] / few['p50_ms']:.1f}×",
            ]
        )
    title = "History: a conversation of 2000 messages in 50 branches, search over 20000 messages (goal < 50 ms)"
    return table(title, ["what", "p50 ms", "p99 ms", "yardstick p50 ms", "vs yardstick"], rows), figures


def workers_row(bench: Bench) -> tuple[str, dict[str, Any]]:
    """500 streams (200 tokens at 38 tokens/s) through clawweb with Redis, one worker and ``CLAWWEB_WORKERS=2``,
    beside the simulator direct: what a second core buys (added latency) and costs (CPU per token, all workers and
    redis-server together)."""
    level = 100 if bench.quick else 500
    sim = SimProcess("--ttft", "0.2", "--tps", "38")
    redis_server = RedisServer(bench.work / "redis-workers")
    redis_pid = redis_server.proc.pid
    gateways: dict[str, Gateway] = {}
    for workers in (1, 2):
        # A Redis database each: two installations must not share one (their answers' keys would meet).
        url = redis_server.url.rsplit("/", 1)[0] + f"/{workers}"
        gateways[f"clawweb, {workers} worker{'s' if workers > 1 else ''}, Redis"] = start_gateway(
            bench.work / f"gw-workers-{workers}.log", sim.url, redis_url=url, workers=workers
        )
    for gateway in gateways.values():  # every worker booted (the gateway answered from one), then warmed up
        wanted = int(gateway.env["CLAWWEB_WORKERS"])
        gateway.wait_until(partial(lambda gw, n: len(children(gw.proc.pid)) == n, gateway, wanted))
        concurrent(8, ("127.0.0.1", gateway.port, True, None), chat(3))
    paths: dict[str, tuple[tuple[str, int, bool, ssl.SSLContext | None], list[int]]] = {
        "simulator direct": (("127.0.0.1", sim.port, False, None), [])
    }
    paths |= {name: (("127.0.0.1", gw.port, True, None), children(gw.proc.pid)) for name, gw in gateways.items()}
    results: dict[str, dict[str, float]] = {}
    shares: dict[str, list[float]] = {}
    for name, (target, pids) in paths.items():
        bench.progress(f"{level} streams: {name}")
        before = [cpu_seconds(pid) for pid in pids]
        redis_before = cpu_seconds(redis_pid)
        result = summarize(concurrent(level, target, chat(200)))
        spent = [cpu_seconds(pid) - start for pid, start in zip(pids, before, strict=True)]
        tokens = result["tokens"] or float("nan")
        result["cpu_s_per_1k_tokens"] = sum(spent) / tokens * 1000
        result["redis_cpu_s_per_1k_tokens"] = (cpu_seconds(redis_pid) - redis_before) / tokens * 1000
        # How the streams fell between the workers (they accept from one socket), by the CPU each spent.
        shares[name] = [share / (sum(spent) or 1) for share in spent]
        result["worker_cpu_largest_share"] = max(shares[name], default=1.0)
        results[name] = result
    for gateway in gateways.values():
        gateway.stop()
    redis_server.stop()
    sim.stop()
    direct, one = results["simulator direct"], results[next(iter(gateways))]
    rows = []
    for name in gateways:
        result = results[name]
        rows.append(
            [
                str(level),
                name,
                f"{result['ttft_p50_ms'] - direct['ttft_p50_ms']:+.1f}",
                f"{result['latency_p50_ms'] - direct['latency_p50_ms']:+.2f}",
                f"{result['latency_p99_ms'] - direct['latency_p99_ms']:+.2f}",
                f"{result['latency_p99_ms']:.1f}",
                f"{result['cpu_s_per_1k_tokens'] * 1000:.1f}",
                "/".join(f"{100 * share:.0f}" for share in shares[name]),
                f"{result['redis_cpu_s_per_1k_tokens'] * 1000:.1f}",
                f"{result['cpu_s_per_1k_tokens'] / one['cpu_s_per_1k_tokens']:.2f}×",
                f"{result['completed_pct']:.1f}%",
            ]
        )
    bench.progress("added p99 " + ", ".join(f"{row[1]} {row[4]} ms, CPU {row[9]}" for row in rows))
    header = [
        "streams",
        "path",
        "added TTFT p50 ms",
        "added latency p50 ms",
        "added p99 ms",
        "latency p99 ms",  # too: on a busy machine the simulator falls behind its clock, the added can go negative
        "worker CPU ms / 1k tokens",
    ]
    header += ["CPU split between workers %", "redis-server CPU ms / 1k", "CPU vs 1 worker", "completed"]
    title = f"Every core: {level} streams of 200 tokens at 38 tokens/s, Redis, one worker and CLAWWEB_WORKERS=2"
    return table(title, header, rows), results


def process_cpu(pids: list[int]) -> dict[int, float]:
    """The CPU seconds of each process (one that ended meanwhile is left out)."""
    spent = {}
    for pid in pids:
        try:
            spent[pid] = cpu_seconds(pid)
        except FileNotFoundError:
            pass
    return spent


def engines_row(bench: Bench) -> tuple[str, dict[str, Any]]:
    """One gateway on SQLite vs two gateway processes on PostgreSQL + Redis (the several-hosts layout, on one
    machine): chat answers at once through the chat API (each stored: the database's share of an answer), and
    search over 20000 messages. PostgreSQL with its own defaults (fsync on), as SQLite keeps its WAL durable."""
    from history import QUERIES, SEARCH_MESSAGES, fill_history, timed_gets  # bench/history.py

    from tests.support.postgres import PostgresServer

    answers = 30 if bench.quick else 100
    sim = SimProcess("--ttft", "0.2", "--tps", "38")
    redis_server = RedisServer(bench.work / "redis-engines")
    postgres = PostgresServer(durable=True)
    sqlite_dir = bench.work / "engines-sqlite"
    sqlite_dir.mkdir()
    pg_url = postgres.create_database("bench")
    bench.progress(f"{SEARCH_MESSAGES} messages into SQLite and into PostgreSQL")
    for location in (str(sqlite_dir / "clawweb.db"), pg_url):  # where Gateway puts its SQLite file: beside its log
        fill_history(location)
    setups: dict[str, list[Gateway]] = {
        "1 gateway, SQLite": [start_gateway(sqlite_dir / "gw.log", sim.url)],
        "2 gateways, PostgreSQL + Redis": [
            start_gateway(bench.work / f"gw-pg-{n}.log", sim.url, database_url=pg_url, redis_url=redis_server.url)
            for n in (1, 2)
        ],
    }
    results: dict[str, dict[str, Any]] = {}
    for name, gateways in setups.items():
        for gateway in gateways:
            pool = gevent.pool.Pool(4)
            gevent.joinall([pool.spawn(run_generation, gateway.port, 3) for _ in range(4)])  # warm
        workers = [pid for gateway in gateways for pid in children(gateway.proc.pid)]
        bench.progress(f"{answers} answers at once: {name}")
        shared = [redis_server.proc.pid] if len(gateways) > 1 else []
        before_workers = process_cpu(workers)
        before_db = process_cpu(shared + ([postgres.proc.pid, *children(postgres.proc.pid)] if shared else []))
        pool = gevent.pool.Pool(answers)
        jobs = [pool.spawn(run_generation, gateways[n % len(gateways)].port, 200) for n in range(answers)]
        gevent.joinall(jobs)
        result: dict[str, Any] = summarize([job.value for job in jobs])
        tokens = result["tokens"] or float("nan")
        after_workers = process_cpu(workers)
        spent = sum(after_workers[pid] - before_workers.get(pid, 0.0) for pid in after_workers)
        after_db = process_cpu(shared + ([postgres.proc.pid, *children(postgres.proc.pid)] if shared else []))
        db_spent = sum(after_db[pid] - before_db.get(pid, 0.0) for pid in after_db)  # new backends: all theirs
        result["gateway_cpu_s_per_1k_tokens"] = spent / tokens * 1000
        result["store_cpu_s_per_1k_tokens"] = db_spent / tokens * 1000  # PostgreSQL + Redis (SQLite: in the worker)
        bench.progress(f"search: {name}")
        result["search"] = {query: timed_gets(f"{gateways[0].url}/api/search", q=q) for query, q in QUERIES.items()}
        results[name] = result
        for gateway in gateways:
            gateway.stop()
    postgres.remove()
    redis_server.stop()
    sim.stop()
    base = results["1 gateway, SQLite"]
    total = {n: r["gateway_cpu_s_per_1k_tokens"] + r["store_cpu_s_per_1k_tokens"] for n, r in results.items()}
    rows = [
        [
            name,
            f"{r['ttft_p50_ms']:.0f}",
            f"{r['ttft_p99_ms']:.0f}",
            f"{r['latency_p50_ms']:.1f}",
            f"{r['latency_p99_ms']:.1f}",
            f"{r['gateway_cpu_s_per_1k_tokens'] * 1000:.1f}",
            f"{r['store_cpu_s_per_1k_tokens'] * 1000:.1f}",
            f"{total[name] / total['1 gateway, SQLite']:.2f}×",
            f"{r['completed_pct']:.1f}%",
        ]
        for name, r in results.items()
    ]
    header = ["setup", "TTFT p50 ms", "TTFT p99 ms", "token latency p50 ms", "token latency p99 ms"]
    header += ["gateway CPU ms / 1k tokens", "PostgreSQL + Redis CPU ms / 1k", "all CPU vs SQLite", "completed"]
    title = f"Engines: {answers} chat answers at once (stored), 200 tokens at 38 tokens/s"
    search_rows = [
        [query]
        + [f"{r['search'][query]['p50_ms']:.1f} / {r['search'][query]['p99_ms']:.1f}" for r in results.values()]
        + [f"{results[list(results)[1]]['search'][query]['p50_ms'] / base['search'][query]['p50_ms']:.1f}×"]
        for query in QUERIES
    ]
    search_header = ["search over 20000 messages", *(f"{name}: p50 / p99 ms" for name in results), "vs SQLite"]
    text = table(title, header, rows) + "\n" + table("Engines: search", search_header, search_rows)
    return text, results


@dataclass(frozen=True)
class Part:
    """A part of the benchmark: a function that starts what it measures, measures, stops it and returns its
    markdown table and its report entry; ``quick``: part of ``--quick`` (in its small variant)."""

    run: Callable[[Bench], tuple[str, Any]]
    quick: bool = False


# The benchmark's parts in the order `make bench` runs them; `make bench PART=name` runs one (the report key is
# the name with "_" for "-"). A new row is one line here.
PARTS: dict[str, Part] = {
    "seed": Part(seed_table, quick=True),
    "high-load": Part(high_load, quick=True),
    "embed": Part(embedding_row, quick=True),
    "idle": Part(idle_streams),
    "event-log": Part(event_log),
    "render": Part(rendering),
    "history": Part(history),
    "workers": Part(workers_row),
    "lanes": Part(lambda bench: lanes_row(bench.work, progress=bench.progress)),
    "affinity": Part(lambda bench: affinity_row(bench.work)),
    "engines": Part(engines_row),
}


def main() -> None:
    parser = argparse.ArgumentParser(description="The loopback benchmark (make bench): see bench/README.md.")
    parser.add_argument("--quick", action="store_true", help="small levels of the quick parts, into results/quick.*")
    parser.add_argument(
        "--part",
        action="append",
        choices=list(PARTS),
        help="run this part alone (repeatable), into results/part-NAME.*; with --quick its small variant",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="sample the stacks of clawweb's and the naive relay's workers into DIR/{clawweb,naive}/PID.folded",
    )
    args = parser.parse_args()
    global PROFILE
    PROFILE = args.profile or ""
    names = args.part or [name for name, part in PARTS.items() if part.quick or not args.quick]
    if args.part:
        command, output = f"make bench PART={','.join(names)}", "part-" + "+".join(names)
    else:
        command, output = ("bench/run.py --quick", "quick") if args.quick else ("make bench", "latest")
    if args.quick and args.part:
        command = f"bench/run.py --quick --part {' --part '.join(names)}"
    work = Path(tempfile.mkdtemp(prefix="clawweb-bench-"))
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": command,
        "started": datetime.now(UTC).isoformat(),
    }
    out: list[str] = []
    started = time.monotonic()
    for number, name in enumerate(names, 1):
        bench = Bench(work, args.quick, name)
        bench.progress(f"part {number}/{len(names)} ({', '.join(names)}); {os_load()}")
        text, report[name.replace("-", "_")] = PARTS[name].run(bench)
        out.append(text)
        bench.progress(f"done; {os_load()}; {(time.monotonic() - started) / 60:.1f} min since the start")
    write(report, out, output, plot="seed" in names or "high-load" in names)


def os_load() -> str:
    """The machine's load average: every figure of a run on this shared machine is read against it."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (5 min: {five:.2f}) on {os.cpu_count()} cores"


def write(report: dict[str, Any], out: list[str], name: str, plot: bool = True) -> None:
    """Print the tables; bench/results/<name>.md, .json and (``plot``) .svg (the plot of the seed and high-load
    runs)."""
    header = (
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, by `{report['command']}` (bench/run.py); everything on loopback.\n"
    )
    text = header + "\n" + "\n".join(out)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2))
    (RESULTS / f"{name}.md").write_text(text)
    if plot:
        (RESULTS / f"{name}.svg").write_text(svg(report))


if __name__ == "__main__":
    main()
