"""An Ollama simulator that follows Ollama's wire format (see OLLAMA_WIRE.md) closely enough to test against.

``python -m clawweb.simulator --port 11434``. Tests, the benchmark and ``make run`` (when no Ollama answers)
use it. What matters for a gateway is reproduced on purpose: NDJSON with one HTTP chunk per line, *no headers
until the first token* (so a model load looks like silence), Go's JSON escaping, nanosecond durations,
parallel slots with a silent queue, errors before and during the stream, and 403 for a foreign Host/Origin.

A line ``#sim {...}`` in the last user message changes one answer: ``tokens``, ``ttft`` (s), ``tps``, ``text``,
``think_tokens``, ``load`` (s: the model is unloaded and loads first, absent from ``/api/ps`` meanwhile), ``prompt``
(s spent reading the prompt, after any load), ``error_after`` (an error line after N tokens), ``close_after`` (drop
the connection after N tokens, like a crashed runner), ``status`` (an HTTP error before streaming, after ``ttft``
when given), ``hang`` (send nothing, ever). ``--load`` makes a model that is not in memory load that long.

A chat whose last message is the assistant's is *continued*, as Ollama does: the answer planned (as if it
had not been begun) goes on after that text, and only the rest is streamed (``num_predict`` and ``eval_count``
count the new tokens); it does not think again once the text has begun. A text that is not the beginning of
the planned answer is followed by the whole planned answer.
Plain gevent sockets and a small HTTP/1.1 parser keep the per-token cost low: the benchmark runs thousands of
streams through it on two cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

import gevent
import gevent.event
import gevent.lock
import gevent.select
import gevent.server

DEFAULT_TEXT = (
    "Quantum computing uses **qubits**, which can be 0 and 1 at the same time. "
    "量子计算利用叠加和纠缠来并行处理信息。\n\n"
    "```python\nfrom qiskit import QuantumCircuit\ncircuit = QuantumCircuit(2)\ncircuit.h(0)\n```\n\n"
    "A register of *n* qubits spans 2^n states, which is why some problems get exponentially easier. "
)
THINKING_TEXT = "The user asks about quantum computing. I should explain qubits simply, then give an example. "

_CJK = "\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef"
_TOKEN = re.compile(rf"[{_CJK}]|\n|[^\S\n]*[^\s{_CJK}]+|[^\S\n]+")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"}
REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def tokenize(text: str) -> list[str]:
    """Words with their leading blanks, each CJK character and each newline alone: roughly an LLM's tokens."""
    return _TOKEN.findall(text)


def default_tokens() -> int:
    """The default answer length: the whole built-in text once."""
    return len(tokenize(DEFAULT_TEXT))


def answer_tokens(n: int, text: str | None = None) -> list[str]:
    """The first ``n`` content tokens of an answer (the text repeats as needed): what tests expect to see."""
    base = tokenize(text if text is not None else DEFAULT_TEXT) or [""]
    return [base[i % len(base)] for i in range(n)]


def thinking_tokens(n: int) -> list[str]:
    return answer_tokens(n, THINKING_TEXT)


def go_json(value: str) -> bytes:
    """A JSON string as Go's encoder writes it: UTF-8, with <, >, &, U+2028 and U+2029 escaped."""
    out = json.dumps(value, ensure_ascii=False)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        out = out.replace(raw, escaped)
    return out.encode()


def rfc3339(ns: int) -> bytes:
    """Go's RFC3339Nano in UTC: fraction with trailing zeros trimmed (and none at all when zero)."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    digits = f"{fraction:09d}".rstrip("0")
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ("." + digits if digits else "") + "Z").encode()


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 11434
    ttft: float = 0.3
    tps: float = 20.0
    tokens: int = 69  # the whole DEFAULT_TEXT (see default_tokens)
    parallel: int = 0  # 0: unlimited, like a big OLLAMA_NUM_PARALLEL
    max_queue: int = 512
    models: list[str] = field(default_factory=lambda: ["qwen3:32b"])
    think_style: str = "native"  # or "tags": <think>...</think> inside content, like Ollama before 0.9
    load: float = 0.0  # seconds to load a model that is not in memory (never used, or idle for 5 minutes)


class ClientGone(Exception):
    """The client closed its connection."""


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def read_request(rfile: IO[bytes]) -> Request | None:
    line = rfile.readline(65537)
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (header := rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int(rfile.readline().split(b";")[0], 16):
            body += rfile.read(size)
            rfile.readline()
        rfile.readline()
    else:
        body = rfile.read(int(headers.get("content-length", "0")))
    return Request(method, path.split("?", 1)[0], headers, body)


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def prompt_count(body: dict[str, Any]) -> int:
    """The prompt's tokens as this simulator counts them (its own tokenizer, 4 per message for the template)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return len(tokenize(str(body.get("prompt") or ""))) + 4
    return sum(len(tokenize(str(m.get("content") or ""))) + 4 for m in messages if isinstance(m, dict))


def _continued(body: dict[str, Any]) -> str | None:
    """The text of a trailing assistant message (an answer to continue), or None."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    return str(last.get("content") or "") if last.get("role") == "assistant" else None


def _after(tokens: list[str], begun: str) -> list[str]:
    """The tokens that follow ``begun`` when it is their beginning (on a token boundary); else all of them."""
    written = 0
    for index, token in enumerate(tokens):
        if written == len(begun):
            return tokens[index:] if "".join(tokens[:index]) == begun else tokens
        written += len(token)
    return [] if "".join(tokens) == begun else tokens


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.port = config.port
        self._server: gevent.server.StreamServer | None = None
        self._slots = gevent.lock.Semaphore(config.parallel) if config.parallel else None
        self._loaded: dict[str, float] = {}
        self._active = 0  # generating now
        self._queued = 0  # waiting for a parallel slot
        self.reset()

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._server = gevent.server.StreamServer((self.config.host, self.config.port), self._handle, backlog=4096)
        self._server.start()
        self.port = self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=1)

    def reset(self) -> dict[str, Any]:
        self._stats: dict[str, Any] = {
            "requests": 0,
            "active": 0,
            "max_active": 0,
            "queued": 0,
            "completed": 0,
            "disconnects": 0,
            "errors": 0,
            "last_request": None,
            "last_body": None,  # the raw text, for tests of exactly what was forwarded (keys, duplicates)
            "last_headers": None,
        }
        return self.stats()

    def stats(self) -> dict[str, Any]:
        stats = dict(self._stats)
        stats["active"], stats["queued"] = self._active, self._queued
        return stats

    # --- HTTP ------------------------------------------------------------------------------------------------

    def _handle(self, sock: socket.socket, address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = sock.makefile("rb")
        try:
            while (request := read_request(rfile)) is not None:
                if not self._dispatch(sock, request) or request.headers.get("connection", "").lower() == "close":
                    break
        except (OSError, ValueError, ClientGone):
            pass
        finally:
            rfile.close()
            sock.close()

    @staticmethod
    def _send(
        sock: socket.socket,
        status: int,
        body: bytes,
        content_type: str = "application/json; charset=utf-8",
        head: bool = False,
    ) -> bool:
        sock.sendall(
            b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\nContent-Length: %d\r\n\r\n%b"
            % (status, REASONS.get(status, "Error").encode(), content_type.encode(), len(body), b"" if head else body)
        )
        return True

    def _error(self, sock: socket.socket, status: int, message: str) -> bool:
        self._stats["errors"] += 1
        return self._send(sock, status, b'{"error":%b}' % go_json(message))

    def _dispatch(self, sock: socket.socket, request: Request) -> bool:
        host = _hostname(request.headers.get("host", ""))
        origin = request.headers.get("origin", "")
        if host not in LOCAL_HOSTS or (origin and not origin.startswith(("http://127.0.0.1", "http://localhost"))):
            return self._send(sock, 403, b"", "text/plain")  # Ollama's empty 403
        route = (request.method, request.path)
        if route in (("GET", "/"), ("HEAD", "/")):
            return self._send(sock, 200, b"Ollama is running", "text/plain; charset=utf-8", request.method == "HEAD")
        if route == ("GET", "/api/version"):
            return self._send(sock, 200, b'{"version":"0.12.6"}')
        if route == ("GET", "/api/tags"):
            return self._send(
                sock,
                200,
                json.dumps(
                    {"models": [self._model_info(m) for m in self.config.models]}, separators=(",", ":")
                ).encode(),
            )
        if route == ("GET", "/api/ps"):
            return self._send(sock, 200, json.dumps({"models": self._ps()}, separators=(",", ":")).encode())
        if route == ("GET", "/_sim/stats"):
            return self._send(sock, 200, json.dumps(self.stats()).encode())
        if route == ("POST", "/_sim/reset"):
            return self._send(sock, 200, json.dumps(self.reset()).encode())
        if route in (("POST", "/api/chat"), ("POST", "/api/generate")):
            return self._generate(sock, request, chat=request.path == "/api/chat")
        return self._send(sock, 404, b"404 page not found", "text/plain")

    @staticmethod
    def _model_info(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": "2026-01-02T03:04:05.678Z",
            "size": 20201253788,
            "digest": "sha256:" + hashlib.sha256(name.encode()).hexdigest(),
            "details": {
                "format": "gguf",
                "family": name.split(":")[0],
                "parameter_size": "32.8B",
                "quantization_level": "Q4_K_M",
            },
        }

    def _ps(self) -> list[dict[str, Any]]:
        now = time.time()
        return [
            {
                "name": name,
                "model": name,
                "size": 21_000_000_000,
                "size_vram": 21_000_000_000,
                "expires_at": rfc3339(int((used + 300) * 1e9)).decode(),
            }
            for name, used in self._loaded.items()
            if used + 300 > now
        ]

    # --- generation ------------------------------------------------------------------------------------------

    def _generate(self, sock: socket.socket, request: Request, chat: bool) -> bool:
        try:
            body = json.loads(request.body)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return self._error(sock, 400, "invalid character in request body")
        model = body.get("model")
        if not model:
            return self._error(sock, 400, "model is required")
        if model not in self.config.models:
            return self._error(sock, 404, f"model '{model}' not found")
        self._stats["requests"] += 1
        self._stats["last_request"], self._stats["last_headers"] = body, request.headers
        self._stats["last_body"] = request.body.decode("utf-8", "replace")
        prompt = body.get("messages") if chat else body.get("prompt")
        if not prompt:  # a load (or unload) request: no generation, one final object
            reason = "unload" if body.get("keep_alive") in (0, "0", "0s") else "load"
            if reason == "unload":
                self._loaded.pop(model, None)
            else:
                self._loaded[model] = time.time()
            final = b'{"model":%b,"created_at":"%b",%b"done":true,"done_reason":"%b"}' % (
                go_json(model),
                rfc3339(time.time_ns()),
                b'"message":{"role":"assistant","content":""},' if chat else b'"response":"",',
                reason.encode(),
            )
            return self._send(sock, 200, final)
        sim = self._directive(body, chat)
        if "status" in sim:  # with a "ttft": the error comes after that long (a model that fails to load)
            self._wait(sock, float(sim.get("ttft", 0)))
            return self._error(sock, int(sim["status"]), "simulated error")
        if self._slots is not None and self._queued >= self.config.max_queue and self._slots.locked():
            return self._error(sock, 503, "server busy, please try again.  maximum pending requests exceeded")
        if not self._acquire(sock):
            return False
        self._active += 1
        self._stats["max_active"] = max(self._stats["max_active"], self._active)
        try:
            return (
                self._stream(sock, body, sim, chat) if body.get("stream", True) else self._whole(sock, body, sim, chat)
            )
        except (ClientGone, OSError):
            self._stats["disconnects"] += 1
            return False
        finally:
            self._active -= 1
            if self._slots is not None:
                self._slots.release()

    def _directive(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        if chat:
            users = [m.get("content", "") for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
            text = users[-1] if users else ""
        else:
            text = str(body.get("prompt", ""))
        for line in str(text).splitlines():
            if line.startswith("#sim "):
                return dict(json.loads(line[5:]))
        return {}

    def _acquire(self, sock: socket.socket) -> bool:
        """Wait for a parallel slot like Ollama's scheduler: FIFO, silent, but a client that leaves is noticed."""
        if self._slots is None:
            return True
        self._queued += 1
        try:
            while not self._slots.acquire(timeout=0.1):
                if self._client_gone(sock, 0):
                    self._stats["disconnects"] += 1
                    return False
            return True
        finally:
            self._queued -= 1

    @staticmethod
    def _client_gone(sock: socket.socket, timeout: float) -> bool:
        """Wait up to ``timeout``; True as soon as the peer closed its side."""
        readable, _, _ = gevent.select.select([sock], [], [], timeout)
        if not readable:
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _wait(self, sock: socket.socket, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._client_gone(sock, left):
                raise ClientGone
            if (left := deadline - time.monotonic()) > 0:
                # Woken before the deadline: the client sent more bytes (pipelining). Keep waiting, politely.
                gevent.sleep(min(left, 0.05))

    def _plan(self, body: dict[str, Any], sim: dict[str, Any]) -> tuple[list[bytes], list[str], str]:
        """(thinking chunks' texts, content tokens, done_reason)."""
        text = sim.get("text")
        count = int(sim.get("tokens", len(tokenize(text)) if text is not None else self.config.tokens))
        content = answer_tokens(count, text)
        begun = _continued(body)
        if begun is not None:
            content = _after(content, begun)
        limit = (body.get("options") or {}).get("num_predict")
        reason = "stop"
        if isinstance(limit, int) and 0 <= limit < len(content):
            content, reason = content[:limit], "length"
        # Left unset, Ollama 0.12.4+ thinks by default with a thinking-capable model; every model here is one.
        thinking_wanted = body.get("think") is not False and not begun
        thinking = thinking_tokens(int(sim.get("think_tokens", 8))) if thinking_wanted else []
        if thinking and self.config.think_style == "tags":
            content = ["<think>", *thinking, "</think>\n\n", *content]
            thinking = []
        return [go_json(t) for t in thinking], content, reason

    def _load(self, sock: socket.socket, model: str, sim: dict[str, Any]) -> int:
        """Load the model if it is not in memory (or ``load`` says to), then read the prompt; when loaded (ns)."""
        used = self._loaded.get(model)
        load_s = float(sim.get("load", 0 if used is not None and used + 300 > time.time() else self.config.load))
        if load_s:
            self._loaded.pop(model, None)  # not in /api/ps while it loads, as in Ollama
            self._wait(sock, load_s)
        self._loaded[model] = time.time()
        loaded = time.monotonic_ns()
        self._wait(sock, float(sim.get("prompt", 0)) + float(sim.get("ttft", self.config.ttft)))
        return loaded

    def _stream(self, sock: socket.socket, body: dict[str, Any], sim: dict[str, Any], chat: bool) -> bool:
        model = go_json(body["model"])
        thinking, content, reason = self._plan(body, sim)
        tps = float(sim.get("tps", self.config.tps))
        started = time.monotonic_ns()
        loaded = self._load(sock, body["model"], sim)
        if sim.get("hang"):
            while not self._client_gone(sock, 3600):
                pass
            raise ClientGone
        prompt_done = time.monotonic_ns()
        if chat:
            think_line = (
                b'{"model":%b,"created_at":"%%b","message":{"role":"assistant","content":"","thinking":%%b},'
                b'"done":false}' % model
            )
            token_line = (
                b'{"model":%b,"created_at":"%%b","message":{"role":"assistant","content":%%b},"done":false}' % model
            )
        else:
            think_line = b'{"model":%b,"created_at":"%%b","response":"","thinking":%%b,"done":false}' % model
            token_line = b'{"model":%b,"created_at":"%%b","response":%%b,"done":false}' % model
        lines = [(think_line, t) for t in thinking] + [(token_line, go_json(t)) for t in content]
        error_after, close_after = sim.get("error_after"), sim.get("close_after")
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
        interval, sent = 1.0 / tps, 0
        for index, (template, value) in enumerate(lines):
            if close_after is not None and index == close_after:
                sock.shutdown(socket.SHUT_RDWR)  # an abrupt end without the final chunk: a crashed runner
                return False
            if error_after is not None and index == error_after:
                self._stats["errors"] += 1
                line = b'{"error":%b}' % go_json(f"simulated failure after {error_after} tokens")
                sock.sendall(head + b"%x\r\n%b\n\r\n0\r\n\r\n" % (len(line) + 1, line))
                return True
            if index:
                # Scheduled from the start, so the rate holds however long each send took.
                self._wait_until(sock, prompt_done + int(index * interval * 1e9))
            line = template % (rfc3339(time.time_ns()), value)
            sock.sendall(head + b"%x\r\n%b\n\r\n" % (len(line) + 1, line))
            head, sent = b"", sent + 1
        if close_after is not None and close_after >= len(lines):
            sock.shutdown(socket.SHUT_RDWR)
            return False
        now = time.monotonic_ns()
        final = b'{"model":%b,"created_at":"%b",%b"done":true,"done_reason":"%b",%b}' % (
            model,
            rfc3339(time.time_ns()),
            b'"message":{"role":"assistant","content":""},' if chat else b'"response":"",',
            reason.encode(),
            self._counters(started, loaded, prompt_done, now, len(content), prompt_count(body)),
        )
        sock.sendall(head + b"%x\r\n%b\n\r\n0\r\n\r\n" % (len(final) + 1, final))
        self._stats["completed"] += 1
        return True

    def _wait_until(self, sock: socket.socket, monotonic_ns: int) -> None:
        delay = (monotonic_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            gevent.sleep(delay)  # a departed client shows up as a failed send, within two tokens

    @staticmethod
    def _counters(started: int, loaded: int, prompt_done: int, now: int, eval_count: int, prompt_count: int) -> bytes:
        """Ollama's durations (ns). Its ``eval_count`` counts thinking tokens too; this one leaves them out, as some
        servers do, so that the gateway's own count of the stream is tested."""
        load = max(1, loaded - started, (prompt_done - started) // 10)
        return (
            b'"total_duration":%d,"load_duration":%d,"prompt_eval_count":%d,"prompt_eval_duration":%d,'
            b'"eval_count":%d,"eval_duration":%d'
            % (
                now - started,
                load,
                prompt_count,
                max(1, prompt_done - started - load),
                eval_count,
                max(1, now - prompt_done),
            )
        )

    def _whole(self, sock: socket.socket, body: dict[str, Any], sim: dict[str, Any], chat: bool) -> bool:
        thinking, content, reason = self._plan(body, sim)
        started = time.monotonic_ns()
        loaded = self._load(sock, body["model"], sim)
        prompt_done = time.monotonic_ns()
        self._wait(sock, (len(thinking) + len(content)) / float(sim.get("tps", self.config.tps)))
        think = b"".join(json.loads(t).encode() for t in thinking)
        text = "".join(content)
        if chat:
            message = b'"message":{"role":"assistant","content":%b%b},' % (
                go_json(text),
                b',"thinking":' + go_json(think.decode()) if think else b"",
            )
        else:
            message = b'"response":%b%b,' % (go_json(text), b',"thinking":' + go_json(think.decode()) if think else b"")
        answer = b'{"model":%b,"created_at":"%b",%b"done":true,"done_reason":"%b",%b}' % (
            go_json(body["model"]),
            rfc3339(time.time_ns()),
            message,
            reason.encode(),
            self._counters(started, loaded, prompt_done, time.monotonic_ns(), len(content), prompt_count(body)),
        )
        self._stats["completed"] += 1
        return self._send(sock, 200, answer)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m clawweb.simulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434, help="0 picks a free port")
    parser.add_argument("--ttft", type=float, default=0.3, help="seconds before the first token (model load)")
    parser.add_argument("--tps", type=float, default=20.0, help="tokens per second per stream")
    parser.add_argument("--tokens", type=int, default=default_tokens(), help="content tokens per answer")
    parser.add_argument("--parallel", type=int, default=0, help="generations at once, like OLLAMA_NUM_PARALLEL")
    parser.add_argument("--max-queue", type=int, default=512, help="waiting requests before 503")
    parser.add_argument("--model", action="append", dest="models", help="model to list (repeatable)")
    parser.add_argument("--think-style", choices=["native", "tags"], default="native")
    parser.add_argument("--load", type=float, default=0.0, help="seconds to load a model not in memory")
    args = parser.parse_args(argv)
    config = SimConfig(
        args.host,
        args.port,
        args.ttft,
        args.tps,
        args.tokens,
        args.parallel,
        args.max_queue,
        args.models or ["qwen3:32b"],
        args.think_style,
        args.load,
    )
    simulator = Simulator(config)
    simulator.start()
    print(
        f"ollama simulator listening on http://{config.host}:{simulator.port} (models: {', '.join(config.models)},"
        f" ttft={config.ttft:g}s, tps={config.tps:g})",
        flush=True,
    )
    stopped = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopped.set)
    stopped.wait()
    simulator.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
