"""An Ollama simulator that follows Ollama's wire format (see OLLAMA_WIRE.md) closely enough to test against.

``python -m clawweb.simulator --port 11434``. Tests, the benchmark and ``make run`` (when no Ollama answers)
use it. What matters for a gateway is reproduced on purpose: NDJSON with one HTTP chunk per line, *no headers
until the first token* (so a model load looks like silence), Go's JSON escaping, nanosecond durations,
parallel slots with a silent queue, errors before and during the stream, and 403 for a foreign Host/Origin.

Routes (shapes from Ollama's docs/api.md and api/types.go): ``GET /`` and ``HEAD /``, ``GET /api/version``,
``/api/tags`` (the chat models, then the embedding models), ``/api/ps``; ``POST /api/chat`` and ``/api/generate``
(``prompt``, ``system``, ``suffix``, ``raw``, ``format``, ``think``, ``images``, ``context``; its lines carry
``response`` and ``thinking``, the last one ``context``: the token ids of context, prompt and answer, none with
``raw``); an empty prompt or message list loads the model, and with ``keep_alive: 0`` unloads it (``keep_alive: 0``
with a prompt unloads it after the answer); ``POST /api/embed`` and the older ``/api/embeddings``, through their
own slots (``--embed-parallel``), never behind the answers; ``POST /api/show``; ``/_sim/stats`` and
``/_sim/reset`` for tests. Capability errors are Ollama's: an embedding model asked to chat or generate, a chat
model asked to embed (``500 this model does not support embeddings``), a ``suffix`` for a model without ``insert``
(only code models, such as ``qwen2.5-coder:7b``, fill in the middle), ``think`` for a model that does not think.

What the model writes: the directive's ``text``, else the built-in text; for a ``suffix``, the middle part is
``FIM_TEXT`` (so a suffix that never arrived shows); with ``format``, JSON (``{"answer": ...}`` for ``"json"``, for
a schema the smallest value it accepts); after a ``role: "tool"`` message (a tool's answer sent back), a sentence
quoting what each tool answered (``get_weather answered: 18 °C``), so that an agent loop ends. Embeddings are a
hash of model and input, of the model's declared dimension (``--embed-model NAME=DIM``), normalized as Ollama
does (``dimensions`` cuts and normalizes again); the older route's vector is the raw one, not normalized.

A line ``#sim {...}`` in the last user message changes one answer: ``tokens``, ``ttft`` (s), ``tps``, ``text``,
``think_tokens``, ``load`` (s: the model is unloaded and loads first, absent from ``/api/ps`` meanwhile), ``prompt``
(s spent reading the prompt, after any load), ``error_after`` (an error line after N tokens), ``close_after`` (drop
the connection after N tokens, like a crashed runner), ``status`` (an HTTP error before streaming, after ``ttft``
when given), ``hang`` (send nothing, ever), ``hang_after`` (go silent after N tokens), ``tool_calls``
(``[{"name": ..., "arguments": {...}}]``: the answer calls these tools instead of writing, when the request offers
``tools``: Ollama only calls tools it was given).
A directive's ``text`` or ``tokens`` wins over those derived answers. In an embedding input,
``#sim {...}`` takes ``delay`` (s, instead of ``--embed-delay``) and ``status``. ``--load`` makes a model that is
not in memory load that long.
``--prompt-rate`` makes reading the prompt take its tokens / that rate before the first token, and
``--cache-prefixes N`` keeps the last N prompts and answers, as Ollama's slots keep their KV cache, so that a
conversation's next turn reads only what is new (``simulator_cache``; ``prompt_eval_count`` then counts only that).

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
import zlib
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

import gevent
import gevent.event
import gevent.lock
import gevent.server
import gevent.socket

from clawweb import simulator_models as catalog
from clawweb.simulator_cache import PromptCache, Slot

DEFAULT_TEXT = (
    "Quantum computing uses **qubits**, which can be 0 and 1 at the same time. "
    "量子计算利用叠加和纠缠来并行处理信息。\n\n"
    "```python\nfrom qiskit import QuantumCircuit\ncircuit = QuantumCircuit(2)\ncircuit.h(0)\n```\n\n"
    "A register of *n* qubits spans 2^n states, which is why some problems get exponentially easier. "
)
THINKING_TEXT = "The user asks about quantum computing. I should explain qubits simply, then give an example. "
FIM_TEXT = "\n    result = a + b\n    print(result)\n"  # the middle a code model fills in between prompt and suffix
JSON_TEXT = "Quantum computing uses qubits."  # the answer, in JSON mode

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


_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def _go_escaped(text: str) -> bytes:
    for raw, escaped in _GO_ESCAPES:
        text = text.replace(raw, escaped)
    return text.encode()


def go_json(value: str) -> bytes:
    """A JSON string as Go's encoder writes it: UTF-8, with <, >, &, U+2028 and U+2029 escaped."""
    return _go_escaped(json.dumps(value, ensure_ascii=False))


def go_dumps(value: Any) -> bytes:
    """Any JSON value as Go writes it: compact, UTF-8, Go's escapes (``<`` and the like only occur in strings)."""
    return _go_escaped(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


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
    embed_models: dict[str, int] = field(default_factory=lambda: {"nomic-embed-text:latest": 768})  # name: dimension
    embed_delay: float = 0.0  # seconds each embedding request takes (inside its slot)
    embed_parallel: int = 0  # embedding requests at once (0: unlimited), apart from the chat models' slots
    prompt_rate: float = 0.0  # prompt tokens read per second before the first token (0: reading takes no time)
    cache_prefixes: int = 0  # prompts (with their answers) kept in the prompt cache, like Ollama's slots (0: none)


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


def _prompt_tokens(body: dict[str, Any], plan: Plan) -> int:
    """``prompt_eval_count``: as Ollama counts it, only the tokens read (not those found in the prompt cache)."""
    return prompt_count(body) if plan.prompt_tokens is None else plan.prompt_tokens


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


def _after_tool(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``role: "tool"`` messages after the last user message: the tools' answers, sent back to be read."""
    messages = body.get("messages")
    answers: list[dict[str, Any]] = []
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, dict) and message.get("role") == "user":
            answers = []
        elif isinstance(message, dict) and message.get("role") == "tool":
            answers.append(message)
    return answers


def _unloads(body: dict[str, Any]) -> bool:
    return body.get("keep_alive") in (0, "0", "0s")


def _directive_in(text: str) -> dict[str, Any]:
    for line in text.splitlines():
        if line.startswith("#sim "):
            return dict(json.loads(line[5:]))
    return {}


def _tool_call(index: int, call: dict[str, Any]) -> bytes:
    """One of Ollama's ``ToolCall``s: ``id`` (``call_`` and 8 of [a-z0-9], as server/routes.go's toolCallId makes
    them; derived from the call here, so that tests can predict it) and ``function`` {index, name, arguments}; the
    arguments keep their order (Ollama keeps the model's), nested objects sorted as Go writes a map."""
    name, arguments = str(call.get("name", "")), dict(call.get("arguments") or {})
    args = (
        b"{"
        + b",".join(
            go_json(k) + b":" + _go_escaped(json.dumps(v, ensure_ascii=False, separators=(",", ":"), sort_keys=True))
            for k, v in arguments.items()
        )
        + b"}"
    )
    ident = "call_" + hashlib.sha256(b"%d %b %b" % (index, name.encode(), args)).hexdigest()[:8]
    return b'{"id":"%b","function":{"index":%d,"name":%b,"arguments":%b}}' % (
        ident.encode(),
        index,
        go_json(name),
        args,
    )


def _token_ids(tokens: list[str]) -> list[int]:
    """Token ids for ``context``: stable numbers below qwen3's vocabulary size, one per token."""
    return [zlib.crc32(token.encode()) % 151_643 for token in tokens]


@dataclass
class Pool:
    """One runner's parallel slots (None: unlimited) and who uses or waits for them, as Ollama's scheduler keeps."""

    slots: gevent.lock.Semaphore | None
    active: int = 0
    queued: int = 0


@dataclass
class Plan:
    """What one answer will be: thinking chunks (Go-escaped), content tokens, tool calls, why it ends."""

    thinking: list[bytes]
    content: list[str]
    calls: list[bytes]
    reason: str
    eval_count: int
    prompt_s: float = 0.0  # reading the prompt's uncached tokens at --prompt-rate
    prompt_tokens: int | None = None  # what prompt_eval_count says when the prompt cache is on: the tokens read


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.port = config.port
        self._server: gevent.server.StreamServer | None = None
        self._answers = Pool(gevent.lock.Semaphore(config.parallel) if config.parallel else None)
        # Ollama runs each model in its own runner: embeddings never wait behind the chat model's answers.
        self._embeds = Pool(gevent.lock.Semaphore(config.embed_parallel) if config.embed_parallel else None)
        self._loaded: dict[str, float] = {}
        self._specs = {name: catalog.chat_spec(name) for name in config.models}
        self._specs.update({name: catalog.embed_spec(name, dim) for name, dim in config.embed_models.items()})
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
        self._cache = PromptCache(self.config.cache_prefixes)  # emptied too: each test starts from cold slots
        self._stats: dict[str, Any] = {
            "requests": 0,  # chat and generate requests for a known model
            "ps": 0,  # GET /api/ps answered
            "active": 0,
            "max_active": 0,
            "queued": 0,
            "completed": 0,
            "disconnects": 0,
            "errors": 0,
            "embeds": 0,  # /api/embed and /api/embeddings requests for a known model
            "embed_inputs": 0,  # the texts they held
            "active_embeds": 0,
            "max_active_embeds": 0,
            "queued_embeds": 0,
            "shows": 0,  # /api/show answered
            "last_request": None,  # of any route that names a model
            "last_body": None,  # the raw text, for tests of exactly what was forwarded (keys, duplicates)
            "last_headers": None,
            "prompt_cached": 0,  # prompt tokens the prompt cache spared reading (--cache-prefixes)
            "prompt_read": 0,  # prompt tokens read (counted with --prompt-rate or --cache-prefixes)
        }
        return self.stats()

    def stats(self) -> dict[str, Any]:
        stats = dict(self._stats)
        stats["active"], stats["queued"] = self._answers.active, self._answers.queued
        stats["active_embeds"], stats["queued_embeds"] = self._embeds.active, self._embeds.queued
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
            return self._send(sock, 200, go_dumps({"models": [catalog.tags_entry(s) for s in self._specs.values()]}))
        if route == ("GET", "/api/ps"):
            self._stats["ps"] += 1
            return self._send(sock, 200, json.dumps({"models": self._ps()}, separators=(",", ":")).encode())
        if route == ("GET", "/_sim/stats"):
            return self._send(sock, 200, json.dumps(self.stats()).encode())
        if route == ("POST", "/_sim/reset"):
            return self._send(sock, 200, json.dumps(self.reset()).encode())
        if route in (("POST", "/api/chat"), ("POST", "/api/generate")):
            return self._generate(sock, request, chat=request.path == "/api/chat")
        if route in (("POST", "/api/embed"), ("POST", "/api/embeddings")):
            return self._embed(sock, request, legacy=request.path == "/api/embeddings")
        if route == ("POST", "/api/show"):
            return self._show(sock, request)
        return self._send(sock, 404, b"404 page not found", "text/plain")

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

    def _model(
        self, sock: socket.socket, request: Request, *keys: str
    ) -> tuple[dict[str, Any], str, catalog.ModelSpec] | None:
        """The JSON body, the model as named and its spec; None once an error was answered (bad JSON, no model, an
        unknown one). A request that names a known model is remembered for ``/_sim/stats``."""
        try:
            body = json.loads(request.body)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            self._error(sock, 400, "invalid character in request body")
            return None
        model = next((str(body[key]) for key in keys if body.get(key)), "")
        if not model:
            self._error(sock, 400, "model is required")
            return None
        spec = self._specs.get(catalog.canonical(model))
        if spec is None:
            self._error(sock, 404, f"model '{model}' not found")
            return None
        self._stats["last_request"], self._stats["last_headers"] = body, request.headers
        self._stats["last_body"] = request.body.decode("utf-8", "replace")
        return body, model, spec

    def _show(self, sock: socket.socket, request: Request) -> bool:
        found = self._model(sock, request, "model", "name")  # "name": the field's old spelling, still read
        if found is None:
            return True
        body, _, spec = found
        self._stats["shows"] += 1
        return self._send(sock, 200, go_dumps(catalog.show(spec, bool(body.get("verbose")))))

    # --- generation ------------------------------------------------------------------------------------------

    def _refusal(self, body: dict[str, Any], model: str, spec: catalog.ModelSpec, chat: bool) -> str | None:
        """What Ollama answers (400) before running a model that cannot do what is asked, in its order (server/
        routes.go GenerateHandler and ChatHandler: raw mode, thinking, then the capabilities the request needs)."""
        quoted = json.dumps(model)  # Go's %q
        if not chat and body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
            return "raw mode does not support template, system, or context"
        if body.get("think") not in (None, False) and "thinking" not in spec.capabilities and not spec.embeds:
            return f"{quoted} does not support thinking"
        if spec.embeds:
            return f"{quoted} does not support {'chat' if chat else 'generate'}"
        if not chat and body.get("suffix") and "insert" not in spec.capabilities:
            return f"{spec.full_name} does not support insert"
        if chat and body.get("tools") and "tools" not in spec.capabilities:
            return f"{spec.full_name} does not support tools"
        return None

    def _generate(self, sock: socket.socket, request: Request, chat: bool) -> bool:
        found = self._model(sock, request, "model")
        if found is None:
            return True
        body, model, spec = found
        self._stats["requests"] += 1
        prompt = body.get("messages") if chat else body.get("prompt")
        if not prompt and _unloads(body):  # before any capability check, as in Ollama: any model unloads
            self._loaded.pop(spec.name, None)
            return self._send(sock, 200, self._done_only(model, chat, "unload"))
        if (refused := self._refusal(body, model, spec, chat)) is not None:
            return self._error(sock, 400, refused)
        if not prompt:  # a load request: no generation, one final object
            self._loaded[spec.name] = time.time()
            return self._send(sock, 200, self._done_only(model, chat, "load"))
        sim = self._directive(body, chat)
        if "status" in sim:  # with a "ttft": the error comes after that long (a model that fails to load)
            self._wait(sock, float(sim.get("ttft", 0)))
            return self._error(sock, int(sim["status"]), "simulated error")
        pool = self._answers
        if pool.slots is not None and pool.queued >= self.config.max_queue and pool.slots.locked():
            return self._error(sock, 503, "server busy, please try again.  maximum pending requests exceeded")
        if not self._acquire(sock, pool):
            return False
        pool.active += 1
        self._stats["max_active"] = max(self._stats["max_active"], pool.active)
        cache, slot = self._cache, None
        try:
            plan = self._plan(body, sim, spec, chat)
            slot = self._read_prompt(body, plan, chat)
            if body.get("stream", True):
                return self._stream(sock, body, sim, spec, plan, chat)
            return self._whole(sock, body, sim, spec, plan, chat)
        except (ClientGone, OSError):
            self._stats["disconnects"] += 1
            return False
        finally:
            cache.release(slot)
            pool.active -= 1
            if pool.slots is not None:
                pool.slots.release()
            if _unloads(body):  # keep_alive 0 with a prompt: the model goes once it has answered
                self._loaded.pop(spec.name, None)

    @staticmethod
    def _done_only(model: str, chat: bool, reason: str) -> bytes:
        return b'{"model":%b,"created_at":"%b",%b"done":true,"done_reason":"%b"}' % (
            go_json(model),
            rfc3339(time.time_ns()),
            b'"message":{"role":"assistant","content":""},' if chat else b'"response":"",',
            reason.encode(),
        )

    def _directive(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        if chat:
            users = [m.get("content", "") for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
            text = users[-1] if users else ""
        else:
            text = str(body.get("prompt", ""))
        return _directive_in(str(text))

    def _acquire(self, sock: socket.socket, pool: Pool) -> bool:
        """Wait for a parallel slot like Ollama's scheduler: FIFO, silent, but a client that leaves is noticed."""
        if pool.slots is None:
            return True
        pool.queued += 1
        try:
            while not pool.slots.acquire(timeout=0.1):
                if self._client_gone(sock, 0):
                    self._stats["disconnects"] += 1
                    return False
            return True
        finally:
            pool.queued -= 1

    @staticmethod
    def _client_gone(sock: socket.socket, timeout: float) -> bool:
        """Wait up to ``timeout``; True as soon as the peer closed its side. (Not ``select``: it refuses file
        descriptors from 1024 on, which a simulator holding a few hundred streams and a gateway's pooled
        connections reaches: those connections were dropped without an answer.)"""
        try:
            gevent.socket.wait_read(sock.fileno(), timeout)
        except TimeoutError:
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _hang(self, sock: socket.socket) -> NoReturn:
        """Send nothing more until the client leaves."""
        while not self._client_gone(sock, 3600):
            pass
        raise ClientGone

    def _wait(self, sock: socket.socket, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._client_gone(sock, left):
                raise ClientGone
            if (left := deadline - time.monotonic()) > 0:
                # Woken before the deadline: the client sent more bytes (pipelining). Keep waiting, politely.
                gevent.sleep(min(left, 0.05))

    def _plan(self, body: dict[str, Any], sim: dict[str, Any], spec: catalog.ModelSpec, chat: bool) -> Plan:
        tool_answers = _after_tool(body) if chat else []
        calls: list[bytes] = []
        if chat and body.get("tools") and sim.get("tool_calls") and not tool_answers:
            calls = [_tool_call(index, call) for index, call in enumerate(sim["tool_calls"])]
        text, derived = sim.get("text"), None
        if tool_answers:  # a sentence that quotes each tool's answer, so that tests see it was read
            derived = " ".join(
                f"{m.get('tool_name') or 'The tool'} answered: {m.get('content', '')}" for m in tool_answers
            )
        elif body.get("format"):
            schema = body["format"]
            derived = json.dumps(
                {"answer": JSON_TEXT} if schema == "json" else catalog.schema_instance(schema), ensure_ascii=False
            )
        elif not chat and body.get("suffix"):
            derived = FIM_TEXT
        if calls:
            content = []
        elif derived is not None and text is None and "tokens" not in sim:
            content = tokenize(derived)
        else:
            count = int(sim.get("tokens", len(tokenize(text)) if text is not None else self.config.tokens))
            content = answer_tokens(count, text)
        begun = _continued(body)
        if begun is not None:
            content = _after(content, begun)
        limit = (body.get("options") or {}).get("num_predict")
        reason = "stop"
        if isinstance(limit, int) and 0 <= limit < len(content):
            content, reason = content[:limit], "length"
        # Left unset, Ollama 0.12.4+ thinks by default with a thinking-capable model (qwen3-like ones here).
        wanted = body.get("think") is not False and not begun and "thinking" in spec.capabilities
        thinking = thinking_tokens(int(sim.get("think_tokens", 8))) if wanted else []
        if thinking and self.config.think_style == "tags":
            content = ["<think>", *thinking, "</think>\n\n", *content]
            thinking = []
        eval_count = len(content) + sum(len(tokenize(call.decode())) for call in calls)
        return Plan([go_json(t) for t in thinking], content, calls, reason, eval_count)

    def _read_prompt(self, body: dict[str, Any], plan: Plan, chat: bool) -> Slot | None:
        """With ``--prompt-rate`` or ``--cache-prefixes``: how long reading the prompt takes, what the cache spares;
        the cache's slot taken (released once answered)."""
        config = self.config
        if not config.prompt_rate and not config.cache_prefixes:
            return None
        messages = body["messages"] if chat else [{"role": "user", "content": body.get("prompt") or ""}]
        cached, read, slot = self._cache.take(messages, "".join(plan.content), lambda text: len(tokenize(text)))
        self._stats["prompt_cached"] += cached
        self._stats["prompt_read"] += read
        plan.prompt_tokens = read
        plan.prompt_s = read / config.prompt_rate if config.prompt_rate else 0.0
        return slot

    def _load(self, sock: socket.socket, model: str, sim: dict[str, Any], reading_s: float = 0.0) -> int:
        """Load the model if it is not in memory (or ``load`` says to), then read the prompt; when loaded (ns)."""
        used = self._loaded.get(model)
        load_s = float(sim.get("load", 0 if used is not None and used + 300 > time.time() else self.config.load))
        if load_s:
            self._loaded.pop(model, None)  # not in /api/ps while it loads, as in Ollama
            self._wait(sock, load_s)
        self._loaded[model] = time.time()
        loaded = time.monotonic_ns()
        self._wait(sock, float(sim.get("prompt", reading_s)) + float(sim.get("ttft", self.config.ttft)))
        return loaded

    @staticmethod
    def _context(body: dict[str, Any], content: list[str]) -> bytes:
        """``"context":[...],`` for a generate answer: the ids of the context sent, the prompt and the answer; none
        in raw mode (Ollama's docs/api.md: "raw mode will not return a context")."""
        if body.get("raw"):
            return b""
        given = body.get("context")
        sent = [n for n in given if isinstance(n, int)] if isinstance(given, list) else []
        ids = sent + _token_ids(tokenize(str(body.get("prompt") or ""))) + _token_ids(content)
        return b'"context":[%b],' % ",".join(map(str, ids)).encode()

    def _stream(
        self,
        sock: socket.socket,
        body: dict[str, Any],
        sim: dict[str, Any],
        spec: catalog.ModelSpec,
        plan: Plan,
        chat: bool,
    ) -> bool:
        model = go_json(body["model"])
        tps = float(sim.get("tps", self.config.tps))
        started = time.monotonic_ns()
        loaded = self._load(sock, spec.name, sim, plan.prompt_s)
        if sim.get("hang"):
            self._hang(sock)
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
        # Each tool call in its own chunk, as Ollama's qwen3 parser hands one over when its </tool_call> closes.
        call_line = (
            b'{"model":%b,"created_at":"%%b","message":{"role":"assistant","content":"","tool_calls":[%%b]},'
            b'"done":false}' % model
        )
        lines = (
            [(think_line, t) for t in plan.thinking]
            + [(token_line, go_json(t)) for t in plan.content]
            + [(call_line, c) for c in plan.calls]
        )
        error_after, close_after, hang_after = sim.get("error_after"), sim.get("close_after"), sim.get("hang_after")
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
        interval, sent = 1.0 / tps, 0
        for index, (template, value) in enumerate(lines):
            if close_after is not None and index == close_after:
                sock.shutdown(socket.SHUT_RDWR)  # an abrupt end without the final chunk: a crashed runner
                return False
            if hang_after is not None and index == hang_after:
                self._hang(sock)  # a runner stuck midway: the gateway's read timeout ends it
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
        final = b'{"model":%b,"created_at":"%b",%b"done":true,"done_reason":"%b",%b%b}' % (
            model,
            rfc3339(time.time_ns()),
            b'"message":{"role":"assistant","content":""},' if chat else b'"response":"",',
            plan.reason.encode(),
            b"" if chat else self._context(body, plan.content),
            self._counters(started, loaded, prompt_done, now, plan.eval_count, _prompt_tokens(body, plan)),
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

    def _whole(
        self,
        sock: socket.socket,
        body: dict[str, Any],
        sim: dict[str, Any],
        spec: catalog.ModelSpec,
        plan: Plan,
        chat: bool,
    ) -> bool:
        started = time.monotonic_ns()
        loaded = self._load(sock, spec.name, sim, plan.prompt_s)
        prompt_done = time.monotonic_ns()
        steps = len(plan.thinking) + len(plan.content) + len(plan.calls)
        self._wait(sock, steps / float(sim.get("tps", self.config.tps)))
        think = b"".join(json.loads(t).encode() for t in plan.thinking).decode()
        thinking = b',"thinking":' + go_json(think) if think else b""
        text = go_json("".join(plan.content))
        if chat:
            calls = b',"tool_calls":[%b]' % b",".join(plan.calls) if plan.calls else b""
            message = b'"message":{"role":"assistant","content":%b%b%b},' % (text, thinking, calls)
        else:
            message = b'"response":%b%b,' % (text, thinking)
        answer = b'{"model":%b,"created_at":"%b",%b"done":true,"done_reason":"%b",%b%b}' % (
            go_json(body["model"]),
            rfc3339(time.time_ns()),
            message,
            plan.reason.encode(),
            b"" if chat else self._context(body, plan.content),
            self._counters(
                started, loaded, prompt_done, time.monotonic_ns(), plan.eval_count, _prompt_tokens(body, plan)
            ),
        )
        self._stats["completed"] += 1
        return self._send(sock, 200, answer)

    # --- embeddings ------------------------------------------------------------------------------------------

    def _embed(self, sock: socket.socket, request: Request, legacy: bool) -> bool:
        """``/api/embed`` (``input``: a string or a list of them) or the older ``/api/embeddings`` (``prompt``),
        as server/routes.go's EmbedHandler and EmbeddingsHandler answer them."""
        found = self._model(sock, request, "model")
        if found is None:
            return True
        body, model, spec = found
        given = body.get("prompt") if legacy else body.get("input")
        if isinstance(given, list) and not legacy and all(isinstance(text, str) for text in given):
            inputs = list(given)
        elif isinstance(given, str) or given is None:
            inputs = [given] if given else []
        else:
            return self._error(sock, 400, "invalid input type")
        self._stats["embeds"] += 1
        self._stats["embed_inputs"] += len(inputs)
        sim = next((d for text in inputs if (d := _directive_in(text))), {})
        if "status" in sim:
            return self._error(sock, int(sim["status"]), "simulated error")
        pool = self._embeds
        if not self._acquire(sock, pool):
            return False
        pool.active += 1
        self._stats["max_active_embeds"] = max(self._stats["max_active_embeds"], pool.active)
        try:
            return self._embedding(sock, body, model, spec, inputs, sim, legacy)
        except (ClientGone, OSError):
            self._stats["disconnects"] += 1
            return False
        finally:
            pool.active -= 1
            if pool.slots is not None:
                pool.slots.release()

    def _embedding(
        self,
        sock: socket.socket,
        body: dict[str, Any],
        model: str,
        spec: catalog.ModelSpec,
        inputs: list[str],
        sim: dict[str, Any],
        legacy: bool,
    ) -> bool:
        started = time.monotonic_ns()
        used = self._loaded.get(spec.name)
        if self.config.load and (used is None or used + 300 < time.time()):
            self._wait(sock, self.config.load)
        self._loaded[spec.name] = time.time()
        loaded = time.monotonic_ns()
        if _unloads(body):
            self._loaded.pop(spec.name, None)
        if not inputs:  # the model is loaded; nothing to embed
            return self._send(
                sock, 200, b'{"embedding":[]}' if legacy else b'{"model":%b,"embeddings":[]}' % go_json(model)
            )
        if not spec.embeds:  # the chat model's runner has no embeddings (what Ollama 0.12 answers, with a 500)
            return self._error(sock, 500, "this model does not support embeddings")
        self._wait(sock, float(sim.get("delay", self.config.embed_delay)))
        if legacy:
            return self._send(
                sock, 200, b'{"embedding":%b}' % catalog.embedding_json(spec.name, inputs[0], spec.embedding_length)
            )
        options = body.get("options")
        num_ctx = options.get("num_ctx") if isinstance(options, dict) else None
        limit = min(spec.context_length, num_ctx if isinstance(num_ctx, int) and num_ctx > 0 else spec.context_length)
        limit -= 2  # the BOS and EOS tokens the model adds
        vectors, counted = [], 0
        for text in inputs:
            tokens = tokenize(text)
            if len(tokens) > limit:
                if body.get("truncate") is False:
                    return self._error(sock, 400, "the input length exceeds the context length")
                text, tokens = "".join(tokens[:limit]), tokens[:limit]
            counted += len(tokens) + 2
            dimensions = body.get("dimensions")
            cut = dimensions if isinstance(dimensions, int) else 0
            vectors.append(catalog.embed_json(spec.name, text, spec.embedding_length, cut))
        now = time.monotonic_ns()
        answer = b'{"model":%b,"embeddings":[%b],"total_duration":%d,"load_duration":%d,"prompt_eval_count":%d}' % (
            go_json(model),
            b",".join(vectors),
            now - started,
            max(1, loaded - started),
            counted,
        )
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
    parser.add_argument(
        "--embed-model",
        action="append",
        dest="embed_models",
        metavar="NAME=DIM",
        help="embedding model to list, with its dimension (repeatable; default nomic-embed-text:latest=768; none: no"
        " embedding model)",
    )
    parser.add_argument("--embed-delay", type=float, default=0.0, help="seconds each embedding request takes")
    parser.add_argument("--embed-parallel", type=int, default=0, help="embedding requests at once (0: unlimited)")
    parser.add_argument(
        "--prompt-rate",
        type=float,
        default=0.0,
        metavar="TOKENS_PER_S",
        help="prompt tokens read per second before the first token, beyond --ttft (0: reading takes no time)",
    )
    parser.add_argument(
        "--cache-prefixes",
        type=int,
        default=0,
        metavar="N",
        help="prompt cache: the last N prompts and their answers (one per Ollama slot) need no reading again (0: off)",
    )
    args = parser.parse_args(argv)
    embed_models = SimConfig().embed_models
    if args.embed_models:
        pairs = [given.rpartition("=") for given in args.embed_models if given != "none"]
        if any(not name or not dim.isdigit() for name, _, dim in pairs):
            parser.error("--embed-model takes NAME=DIM, such as nomic-embed-text:latest=768")
        embed_models = {catalog.canonical(name): int(dim) for name, _, dim in pairs}
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
        embed_models,
        args.embed_delay,
        args.embed_parallel,
        args.prompt_rate,
        args.cache_prefixes,
    )
    simulator = Simulator(config)
    simulator.start()
    print(
        f"ollama simulator listening on http://{config.host}:{simulator.port} (models: {', '.join(config.models)};"
        f" embedding models: {', '.join(config.embed_models) or 'none'}; ttft={config.ttft:g}s, tps={config.tps:g})",
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
