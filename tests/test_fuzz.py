"""Property-based fuzzing (hypothesis) of every JSON route and the login form, against one real gateway.

Why: the routes parse bodies from anyone holding a key, and a body clawweb did not foresee must end as a 4xx
with the usual ``{"error": ...}``, never as a 500, a dead worker or a changed conversation it was not aimed at.
Unit tests check the answers we thought of; these send what nobody thought of: random bytes, non-UTF-8, broken
JSON, JSON of every wrong type in the right places, deep nesting, oversized bodies and huge numbers.

One ``gunicorn -k gevent`` gateway with accounts required (a small ``CLAWWEB_MAX_BODY_BYTES`` so oversized
bodies are cheap) in front of a fast simulator; every request carries an API key. For each request:

* the status is below 500;
* a 4xx is JSON with a non-empty string ``error``; an oversized body (with a Content-Length) is a 413;
* a 2xx comes only for a body a careful reading of the API accepts (an oracle written here, not the app's own
  validator), and a streamed answer is read to its end.

At the end the worker that started is still the one serving, the log holds no traceback or worker restart,
and the "witness" conversation, never aimed at, is byte for byte what it was ("victim" takes the hits).

The bodies with which this file first found 500s (lone surrogates, unhashable values, deep nesting, non-ASCII
CSRF tokens, oversized chunked bodies) stay at the end as regression tests.
``CLAWWEB_FUZZ_SCALE=10`` multiplies every example count for a deeper run.
"""

from __future__ import annotations

import json
import os
import re
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode

import pytest
import requests
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from clawweb.validation import OPTIONS, ROLES

from .support.factories import StartGateway, StartRedis, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess

# Every test drives a gateway (some through `site`, whose servers come by name: markers cannot follow them).
pytestmark = pytest.mark.integration

MAX_BODY = 65536  # the fuzz gateway's CLAWWEB_MAX_BODY_BYTES: oversized bodies stay cheap to send
MODEL = "qwen3:32b"  # the one model the simulator lists, and the gateway's default
PASSWORD = "correct horse battery"
SCALE = float(os.environ.get("CLAWWEB_FUZZ_SCALE", "1"))
TIMEOUT = 15

FUZZ = settings(
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],  # no slow "explain"
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


def examples(n: int) -> settings:
    return settings(FUZZ, max_examples=max(1, int(n * SCALE)))


# --- the gateway --------------------------------------------------------------------------------------------------


@dataclass
class Fuzz:
    gateway: Gateway
    sim: SimProcess
    key: str
    worker_pid: int
    victim: str  # conversation the PATCH/messages/regenerate fuzzing aims at
    witness: str  # conversation nobody aims at: must not change
    witness_snapshot: bytes

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # what hypothesis prints in a failure report
        printer.text(f"Fuzz({self.gateway.url}, worker {self.worker_pid}, victim {self.victim})")


def worker_pids(master: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{master}/task").iterdir():
        pids += [int(pid) for pid in (task / "children").read_text().split()]
    return sorted(pids)


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return not re.search(r"^State:\s+[ZX]", status, re.MULTILINE)


def wait_for_generation(fuzz: Fuzz, generation_id: str) -> None:
    """Until the answer started by a 202 is finished and stored (the next message would be a 409 otherwise)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = requests.get(
            f"{fuzz.gateway.url}/api/generations/{generation_id}", headers=fuzz.headers, timeout=TIMEOUT
        )
        assert response.status_code == 200, response.text
        if response.json()["status"] in ("done", "stopped", "error"):
            return
        time.sleep(0.01)
    raise AssertionError(f"generation {generation_id} did not finish")


def conversation_with_answer(gateway: Gateway, headers: dict[str, str], title: str) -> str:
    return answered(gateway, headers, title)[0]


def answered(
    gateway: Gateway, headers: dict[str, str], title: str, directive: str = "", wait: bool = True
) -> tuple[str, dict[str, Any]]:
    """A new conversation with an answer (finished, unless not ``wait``): its id and the generation's summary."""
    created = requests.post(gateway.url + "/api/conversations", json={"title": title}, headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    conversation_id = str(created.json()["id"])
    started = requests.post(
        f"{gateway.url}/api/conversations/{conversation_id}/messages",
        json={"content": f"first message of the {title}{directive}", "think": False},
        headers=headers,
        timeout=10,
    )
    assert started.status_code == 202, started.text
    generation: dict[str, Any] = started.json()["generation"]
    url = f"{gateway.url}/api/generations/{generation['id']}"
    deadline = time.monotonic() + 10
    while wait and generation["status"] not in ("done", "stopped", "error"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
        generation = requests.get(url, headers=headers, timeout=10).json()
    return conversation_id, generation


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.01", "--tps", "1000", "--tokens", "3")


@pytest.fixture(scope="module")
def fuzz(sim: SimProcess, start_module_gateway: StartGateway) -> Fuzz:
    gateway = start_module_gateway(
        sim.url,
        auth="required",
        max_body_bytes=MAX_BODY,
        login_attempts=100_000,  # the login fuzzing must reach the password check, not the throttle
        heartbeat_s=0.2,  # a reader waiting past the end of a live answer hears something soon
    )
    key = gateway.new_user("fuzz", PASSWORD)
    headers = {"Authorization": f"Bearer {key}"}
    (worker,) = worker_pids(gateway.proc.pid)
    witness = conversation_with_answer(gateway, headers, "witness")
    victim = conversation_with_answer(gateway, headers, "victim")
    snapshot = requests.get(f"{gateway.url}/api/conversations/{witness}", headers=headers, timeout=10).content
    return Fuzz(gateway, sim, key, worker, victim, witness, snapshot)


# --- what is sent, and what may come back -------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """One request body as sent: bytes, in one piece (Content-Length) or chunked, with a Content-Type."""

    data: bytes
    kind: str
    chunked: bool = False
    content_type: str | None = "application/json"

    def __repr__(self) -> str:  # oversized bodies would fill the failure report
        shown = self.data if len(self.data) <= 600 else self.data[:300] + b"..." + self.data[-100:]
        return f"Body({self.kind}, {len(self.data)} bytes, chunked={self.chunked}, {self.content_type!r}: {shown!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis would print every byte otherwise
        printer.text(repr(self))

    def payload(self) -> bytes | Iterator[bytes]:
        if not self.chunked:
            return self.data
        return iter([self.data[i : i + 4096] for i in range(0, len(self.data), 4096)] or [b""])


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    content: bytes


def send(fuzz: Fuzz, method: str, path: str, body: Body, extra: dict[str, str] | None = None) -> Answer:
    headers = {**fuzz.headers, **(extra or {})}
    if body.content_type is not None:
        headers["Content-Type"] = body.content_type
    with requests.request(
        method,
        fuzz.gateway.url + path,
        data=body.payload(),
        headers=headers,
        timeout=TIMEOUT,
        stream=True,
        allow_redirects=False,
    ) as response:
        content = response.content  # read to the end: streamed answers are short (3 tokens)
        return Answer(response.status_code, response.headers.get("Content-Type", ""), content)


def check(
    answer: Answer, body: Body, accepted: Callable[[Any], bool], empty_is_object: bool = False, found: bool = True
) -> Any:
    """The property every route shares; returns the parsed JSON of a 2xx/4xx answer.

    ``found``: the URL names an existing conversation (a 404 for a missing one may come before the body is read).
    """
    if currently_in_test_context():  # the regression tests at the end call this outside hypothesis
        event(f"{body.kind.split(' (')[0]} -> {answer.status}")  # --hypothesis-show-statistics shows the mix
    assert answer.status < 500, (answer.status, answer.content[:2000])
    if len(body.data) > MAX_BODY and not body.chunked and found:
        assert answer.status == 413, (answer.status, answer.content[:500])
    if 400 <= answer.status < 500:
        assert answer.content_type.startswith("application/json"), answer
        error = json.loads(answer.content).get("error")
        assert isinstance(error, str) and error.strip(), answer
    elif 200 <= answer.status < 300:
        parsed = parse_object(body.data, empty_is_object)
        assert parsed is not None and accepted(parsed), f"{answer.status} for a body that is not valid: {body!r}"
    else:
        raise AssertionError(f"unexpected status {answer.status}: {answer.content[:500]!r}")
    if answer.content_type.startswith("application/json"):
        return json.loads(answer.content)
    return None


class Repeated(dict[str, Any]):
    """An object in which some key appeared more than once (the dict holds the last value, as ``json.loads``)."""


def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return dict(items) if len({key for key, _ in items}) == len(items) else Repeated(items)


def finite(digits: str) -> float:
    value = float(digits)
    if value in (float("inf"), float("-inf")):
        raise ValueError("a number no double holds: Go's decoder refuses it")
    return value


def not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def parse_object(data: bytes, empty_is_object: bool) -> dict[str, Any] | None:
    """The body as a JSON object, as a strict reader would take it; None when it is not one."""
    if empty_is_object and not data.strip():
        return {}
    if len(data) > MAX_BODY:
        return None
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_float=finite, parse_constant=not_json)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


# The oracle: what a 2xx needs, written from the API's documentation rather than from validation.py.


def is_text(value: Any, limit: int | None = None) -> bool:
    return isinstance(value, str) and (limit is None or len(value) <= limit)


def think_ok(value: Any) -> bool:
    return value is None or isinstance(value, bool) or (isinstance(value, str) and value in ("low", "medium", "high"))


# The objects Ollama's Go decoder reads into structs (api/types.go), and the fields of each that clawweb forwards.
CHAT_FIELDS = ("model", "messages", "stream", "format", "options", "think", "tools", "keep_alive")
MESSAGE_FIELDS = ("role", "content", "thinking", "images", "tool_calls", "tool_name")
TOOL_FIELDS, TOOL_FUNCTION_FIELDS = ("type", "function"), ("name", "description", "parameters")
TOOL_CALL_FIELDS, TOOL_CALL_FUNCTION_FIELDS = ("function",), ("name", "arguments")


def spelled_once(value: Any, fields: Any) -> bool:
    """An object in which Go's decoder reads each field from one key spelled as the field: it matches keys
    case-insensitively (U+212A KELVIN SIGN is a k, U+017F LONG S an s) and the last of several wins."""
    if not isinstance(value, dict) or isinstance(value, Repeated):
        return False
    folded = [key.casefold() for key in value]
    return len(set(folded)) == len(folded) and all(key in fields or key.casefold() not in fields for key in value)


def options_ok(value: Any) -> bool:
    """An option set to null is not set, whatever its name (Ollama reads it so); a key sent twice stays refused."""
    if isinstance(value, dict) and not isinstance(value, Repeated):
        value = {key: option for key, option in value.items() if option is not None}
    return value is None or (spelled_once(value, OPTIONS) and all(key in OPTIONS for key in value))


def tools_ok(value: Any) -> bool:
    return value is None or (
        isinstance(value, list)
        and all(
            spelled_once(tool, TOOL_FIELDS)
            and ("function" not in tool or spelled_once(tool["function"], TOOL_FUNCTION_FIELDS))
            for tool in value
        )
    )


def tool_calls_ok(value: Any) -> bool:
    return value is None or (
        isinstance(value, list)
        and all(
            spelled_once(call, TOOL_CALL_FIELDS)
            and ("function" not in call or spelled_once(call["function"], TOOL_CALL_FUNCTION_FIELDS))
            for call in value
        )
    )


def format_ok(value: Any) -> bool:
    return value in (None, "", "json") or isinstance(value, dict)


def chat_message_ok(message: Any) -> bool:
    return (
        spelled_once(message, MESSAGE_FIELDS)
        and message.get("role") in ROLES
        and ("content" not in message or is_text(message["content"]))  # the official client omits it at times
        and tool_calls_ok(message.get("tool_calls"))
    )


def known_model(value: Any) -> bool:
    return isinstance(value, str) and value == MODEL


def chat_ok(body: dict[str, Any]) -> bool:
    messages = body.get("messages")
    return (
        spelled_once(body, CHAT_FIELDS)
        and known_model(body.get("model", MODEL))
        and isinstance(messages, list)
        and bool(messages)
        and all(chat_message_ok(m) for m in messages)
        and ("stream" not in body or isinstance(body["stream"], bool))
        and think_ok(body.get("think"))
        and options_ok(body.get("options"))
        and tools_ok(body.get("tools"))
        and format_ok(body.get("format"))
    )


def forwarded_ok(sim: SimProcess) -> None:
    """What reached the simulator for the last answer: each object Ollama reads as a struct holds forwarded
    fields only, and no key anywhere appears twice."""
    sent = json.loads(sim.stats()["last_body"], object_pairs_hook=pairs)
    stack: list[Any] = [sent]
    while stack:
        value = stack.pop()
        assert not isinstance(value, Repeated), sent
        stack.extend(value.values() if isinstance(value, dict) else value if isinstance(value, list) else [])
    structs: list[tuple[Any, tuple[str, ...]]] = [(sent, CHAT_FIELDS[:-1]), (sent.get("options") or {}, tuple(OPTIONS))]
    for message in sent["messages"]:
        structs.append((message, MESSAGE_FIELDS))
        for call in message.get("tool_calls") or []:
            structs += [(call, TOOL_CALL_FIELDS), (call.get("function") or {}, TOOL_CALL_FUNCTION_FIELDS)]
    for tool in sent.get("tools") or []:
        structs += [(tool, TOOL_FIELDS), (tool.get("function") or {}, TOOL_FUNCTION_FIELDS)]
    for value, fields in structs:
        assert set(value) <= set(fields), (value, fields)


def conversation_ok(body: dict[str, Any]) -> bool:
    fields = [body.get(name) for name in ("title", "model", "system_prompt")]
    return (
        all(value is None or is_text(value) for value in fields)
        and (body.get("model") is None or bool(body["model"].strip()))
        and (body.get("title") is None or len(body["title"]) <= 200)
    )


def knobs_ok(body: dict[str, Any]) -> bool:
    """The per-answer knobs of messages/regenerate: a falsy model means "the conversation's"."""
    return (
        (not body.get("model") or known_model(body["model"]))
        and think_ok(body.get("think"))
        and (options_ok(body.get("options")))
    )


def message_ok(body: dict[str, Any]) -> bool:
    return is_text(body.get("content")) and bool(body["content"].strip()) and knobs_ok(body)


# --- strategies ---------------------------------------------------------------------------------------------------


@cache
def texts(surrogates: bool, max_size: int = 30) -> st.SearchStrategy[str]:
    """Any text (every Unicode category, lone surrogates when asked); never a simulator ``#sim`` directive."""
    alphabet = st.characters(exclude_categories=[] if surrogates else ["Cs"])
    return st.text(alphabet, max_size=max_size).filter(lambda text: "#sim" not in text)


FIELD_NAMES = [
    "model",
    "messages",
    "role",
    "content",
    "stream",
    "think",
    "options",
    "keep_alive",
    "tools",
    "format",
    "images",
    "thinking",
    "title",
    "system_prompt",
    *OPTIONS,
    "num_gpu",
    # What Ollama's decoder reads as a field, and a check of the exact name would not.
    "MODEL",
    "Model",
    "Messages",
    "Options",
    "\u212aeep_alive",
    "\u017ftream",
    "Think",
    "Content",
    "ROLE",
    "NUM_CTX",
    "Tools",
    "tool_calls",
    "tool_name",
    "function",
    "Function",
]


@cache
def json_values(surrogates: bool) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),  # NaN and infinities too: Python's json writes and reads them
        texts(surrogates),
        st.sampled_from(["", " ", MODEL, "user", "assistant", "high", "5m", "0"]),
    )
    keys = st.one_of(st.sampled_from(FIELD_NAMES), texts(surrogates, 10))
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
        max_leaves=6,
    )


def field(valid: st.SearchStrategy[Any], surrogates: bool) -> st.SearchStrategy[Any]:
    """A field's value: valid, or anything at all (the right key holding the wrong type)."""
    return st.one_of(valid, valid, json_values(surrogates))


@cache
def options(surrogates: bool) -> st.SearchStrategy[Any]:
    names = st.one_of(
        st.sampled_from([*OPTIONS, "num_gpu", "main_gpu", "use_mmap", "", "NUM_CTX", "Temperature", "\u017feed"]),
        texts(surrogates, 10),
    )
    values = st.one_of(
        st.integers(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.booleans(),
        st.lists(texts(surrogates, 210), max_size=3),
        st.lists(st.just("s"), min_size=15, max_size=18),
        json_values(surrogates),
    )
    return st.one_of(st.none(), st.dictionaries(names, values, max_size=4), json_values(surrogates))


def spelled(name: str) -> st.SearchStrategy[str]:
    """A field's name, or now and then a spelling Go's decoder reads as it (and the gateway refuses)."""
    variants = {name.upper(), name.capitalize(), name.replace("k", "\u212a").replace("s", "\u017f")} - {name}
    return st.sampled_from([name] * 6 + sorted(variants))


@cache
def tool_calls(surrogates: bool) -> st.SearchStrategy[Any]:
    function = st.dictionaries(
        spelled("name") | spelled("arguments"), st.one_of(texts(surrogates), json_values(surrogates)), max_size=2
    )
    return st.dictionaries(spelled("function"), function | json_values(surrogates), max_size=1)


@cache
def tools(surrogates: bool) -> st.SearchStrategy[Any]:
    """Tool definitions: their struct keys (possibly misspelled), their parameters a schema of any shape."""
    function: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
        st.one_of(spelled("name"), spelled("description"), spelled("parameters")),
        st.one_of(texts(surrogates), json_values(surrogates), st.just({"properties": {"Name": {}, "name": {}}})),
        max_size=3,
    )
    tool = st.dictionaries(spelled("type") | spelled("function"), st.just("function") | function, max_size=2)
    return st.lists(tool | json_values(surrogates), max_size=2)


@cache
def messages(surrogates: bool) -> st.SearchStrategy[Any]:
    role = field(st.sampled_from(sorted(ROLES)), surrogates)
    message = st.fixed_dictionaries(
        {},
        optional={
            "role": role,
            "content": field(texts(surrogates), surrogates),
            "images": field(st.lists(st.text(string.ascii_letters, max_size=8), max_size=2), surrogates),
            "thinking": field(texts(surrogates), surrogates),
            "tool_calls": field(st.lists(tool_calls(surrogates), max_size=2), surrogates),
            "tool_name": field(texts(surrogates), surrogates),
        },
    )
    valid = st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": texts(surrogates)}), min_size=1)
    return st.one_of(valid, st.lists(message, max_size=4), st.dictionaries(st.text(max_size=5), message, max_size=2))


MODELS = st.sampled_from([MODEL, MODEL, "qwen3", "llama3:8b", "", " ", "QWEN3:32B"])
THINK = st.sampled_from([False, True, None, "low", "medium", "high", "max", 1, 0])


@cache
def shaped(route: str, surrogates: bool) -> st.SearchStrategy[dict[str, Any]]:
    """An object with the route's own keys, each holding a valid value or a wrong-typed one."""
    text = texts(surrogates)
    if route == "chat":
        required: dict[str, st.SearchStrategy[Any]] = {"messages": field(messages(surrogates), surrogates)}
        optional: dict[str, st.SearchStrategy[Any]] = {
            "model": field(MODELS, surrogates),
            "stream": field(st.booleans(), surrogates),
            "think": field(THINK, surrogates),
            "options": options(surrogates),
            "keep_alive": field(st.sampled_from(["5m", 0, -1, 3.5, "0s"]), surrogates),
            "tools": field(tools(surrogates), surrogates),
            "format": st.one_of(json_values(surrogates), st.sampled_from(["json", "", {"type": "object"}])),
        }
    elif route in ("create", "patch"):
        required = {}
        optional = {
            "title": field(text, surrogates),
            "model": field(MODELS, surrogates),
            "system_prompt": field(text, surrogates),
        }
    else:  # messages, regenerate
        required = {"content": field(text, surrogates)} if route == "messages" else {}
        optional = {
            "model": field(MODELS, surrogates),
            "think": field(THINK, surrogates),
            "options": options(surrogates),
        }
    extra = st.dictionaries(st.sampled_from(FIELD_NAMES) | texts(surrogates, 10), json_values(surrogates), max_size=2)
    return st.builds(lambda base, more: {**more, **base}, st.fixed_dictionaries(required, optional=optional), extra)


def option_value(kind: str, low: float, high: float) -> st.SearchStrategy[Any]:
    """A value within one option's documented type and bounds."""
    if kind == "a boolean":
        return st.booleans()
    if kind == "a list of strings":
        return st.lists(st.text(max_size=20), max_size=int(high))
    top = min(high, 10**9)
    if kind == "an integer":
        return st.integers(int(low), int(top))
    return st.floats(low, top) | st.integers(int(low), int(top))


@cache
def valid(route: str, surrogates: bool) -> st.SearchStrategy[dict[str, Any]]:
    """A body the API must take (it may still be refused for state: a 409 while an answer runs, a 404 model)."""
    text = texts(surrogates)
    knobs = {
        "think": st.sampled_from([False, True, None, "low", "medium", "high"]),
        "options": st.fixed_dictionaries({}, optional={k: option_value(*spec) for k, spec in OPTIONS.items()}),
    }
    if route == "chat":
        call = st.fixed_dictionaries(
            {"function": st.fixed_dictionaries({"name": text, "arguments": st.dictionaries(text, json_values(False))})}
        )
        message = st.fixed_dictionaries(
            {"role": st.sampled_from(sorted(ROLES)), "content": text},
            optional={
                "images": st.lists(st.sampled_from(["aGVsbG8=", ""]), max_size=2),
                "thinking": text,
                "tool_calls": st.lists(call, max_size=2),
                "tool_name": text,
            },
        )
        schema = st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(text, st.just({}))})
        function = st.fixed_dictionaries({"name": text}, optional={"description": text, "parameters": schema})
        valid_tool = st.fixed_dictionaries({"type": st.just("function"), "function": function})
        last = st.fixed_dictionaries({"role": st.just("user"), "content": text})
        optional = {
            **knobs,
            "model": st.just(MODEL),
            "stream": st.booleans(),
            "keep_alive": st.sampled_from(["5m", 0, -1, 3.5, "0s", None]),
            "tools": st.lists(valid_tool, max_size=2),
            "format": st.sampled_from(["json", None, "", {"type": "object", "properties": {"A": {}, "a": {}}}]),
        }
        messages = st.builds(lambda before, end: [*before, end], st.lists(message, max_size=3), last)
        return st.fixed_dictionaries({"messages": messages}, optional=optional)
    if route in ("create", "patch"):
        fields = {"title": texts(surrogates, 200), "model": st.just(MODEL), "system_prompt": text}
        return st.fixed_dictionaries({}, optional=fields)
    content = text.map(lambda content: content if content.strip() else content + "hi")
    required = {"content": content} if route == "messages" else {}
    return st.fixed_dictionaries(required, optional={**knobs, "model": st.sampled_from([MODEL, "", None])})


def valid_base(route: str) -> dict[str, Any]:
    bases: dict[str, dict[str, Any]] = {
        "chat": {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "think": False},
        "create": {"title": "t", "model": MODEL, "system_prompt": "be brief"},
        "patch": {"title": "t"},
        "messages": {"content": "hello", "think": False},
        "regenerate": {"think": False},
    }
    return bases[route]


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json",
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/json; charset=latin-1",
    ]
)
# Bytes that are never valid UTF-8 wherever they stand: a lone continuation byte, an overlong NUL, an encoded
# surrogate, a five-byte form, a truncated sequence, and 0xff.
BAD_UTF8 = st.sampled_from([b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\xff"])


@st.composite
def bodies(draw: st.DrawFn, route: str) -> Body:
    """Every kind of body for ``route``; ``kind`` says which, for the failure report."""
    surrogates = True  # lone surrogates everywhere: refused with a 400 since this file found them stored as 500s
    kind = draw(
        st.sampled_from(
            [
                "raw bytes",
                "non-utf8",
                "malformed json",
                "any json",
                "shaped",
                "shaped",
                "shaped",
                "valid",
                "valid",
                "nested",
                "oversized",
                "huge number",
            ]
        )
    )
    content_type = draw(CONTENT_TYPES)
    base = valid_base(route)
    if kind == "raw bytes":
        data = draw(st.binary(max_size=300))
    elif kind == "non-utf8":
        encoded = dumps(draw(st.one_of(st.just(base), shaped(route, surrogates))))
        at = draw(st.integers(0, len(encoded)))
        data = encoded[:at] + draw(BAD_UTF8) + encoded[at:]
        if draw(st.booleans()):  # a whole body in another encoding (UTF-16/32 with a BOM, latin-1 with a non-ASCII)
            encoding = draw(st.sampled_from(["utf-16", "utf-32", "latin-1"]))
            data = json.dumps({**base, "title": "caf\u00e9"}, ensure_ascii=False).encode(encoding)
    elif kind == "malformed json":
        text = json.dumps(draw(st.one_of(st.just(base), shaped(route, surrogates))))
        at = draw(st.integers(0, len(text)))
        mutation = draw(st.sampled_from(["truncate", "insert", "delete", "trailing", "bom", "single quotes", "text"]))
        if mutation == "truncate":
            text = text[:at]
        elif mutation == "insert":
            text = (
                text[:at] + draw(st.sampled_from(list('{}[],:"\\\x00\n') + ["//", "/*", "'", "NaN", "tru"])) + text[at:]
            )
        elif mutation == "delete":
            text = text[:at] + text[at + 1 :]
        elif mutation == "trailing":
            text += draw(st.sampled_from([",", "}", " x", "\x00", "{}", "]"]))
        elif mutation == "bom":
            text = "\ufeff" + text
        elif mutation == "single quotes":
            text = text.replace('"', "'")
        else:
            text = draw(st.text(max_size=80))
        data = text.encode("utf-8", "surrogatepass")
    elif kind == "any json":
        data = dumps(draw(json_values(surrogates)))
    elif kind == "shaped":
        data = dumps(draw(shaped(route, surrogates)))
    elif kind == "valid":
        data = dumps(draw(valid(route, surrogates)))
    elif kind == "nested":
        data = draw(nested(route, base))
    elif kind == "oversized":
        size = draw(st.integers(MAX_BODY + 1, 3 * MAX_BODY))
        filler = draw(st.sampled_from(["spaces after a valid body", "x", "[", "utf-8 text"]))
        if filler == "spaces after a valid body":
            head = dumps(base)
            data = head + b" " * (size - len(head))
        elif filler == "utf-8 text":
            data = ('{"content": "' + "é" * size + '"}').encode()
        else:
            data = filler.encode() * size
        return Body(data, f"oversized ({filler})", chunked=False, content_type=content_type)
    else:
        data = draw(huge_numbers(route, base))
    # A quarter go as Transfer-Encoding: chunked; oversized chunked ones: test_regression_oversized_chunked_body.
    chunked = draw(st.booleans()) and draw(st.booleans()) and len(data) <= MAX_BODY
    return Body(data, kind, chunked, content_type)


@st.composite
def nested(draw: st.DrawFn, route: str, base: dict[str, Any]) -> bytes:
    """Deep arrays/objects: far past any parser's limit, or a random depth inside an otherwise valid body."""
    shape = draw(st.sampled_from(["open brackets", "deep valid", "deep field"]))
    if shape == "open brackets":  # under the body limit: must be refused as nesting, not crash a parser
        return b"[" * draw(st.sampled_from([60_000, MAX_BODY, 100_000]))  # the last one is a 413
    depth = draw(st.sampled_from([5000, 20_000]) | st.integers(0, 1000))
    opening, closing = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"x":', "}]")]))
    leaf = draw(st.sampled_from(["1", "null", '"s"', "[]", "{}"]))
    deep = opening * depth + leaf + closing * depth
    if shape == "deep valid":
        return deep.encode()
    name = draw(st.sampled_from(["tools", "format", "options", "messages", "content", "title", "x", "model"]))
    body = {**base, "stream": draw(st.booleans())} if route == "chat" else dict(base)
    return (json.dumps(body)[:-1] + f', "{name}": {deep}}}').encode()


@st.composite
def huge_numbers(draw: st.DrawFn, route: str, base: dict[str, Any]) -> bytes:
    """Numbers as digits, from just past 64 bits to beyond what Python converts (10**5000 and more)."""
    digits = draw(st.sampled_from([19, 20, 309, 400, 4300, 4301, 5000, 20_000]))
    sign = draw(st.sampled_from(["", "-"]))
    number = draw(
        st.sampled_from(
            [
                sign + "9" * digits,
                sign + "1" + "0" * digits,
                sign + "1" + "0" * digits + ".5",
                sign + "1e" + "9" * min(digits, 50),
                "0." + "0" * digits + "1",
            ]
        )
    )
    where = draw(st.sampled_from(["top", "model", "stream", "think", "content", "title", "seed", "num_ctx", "temp"]))
    body: dict[str, Any] = dict(base)
    if where == "top":
        return number.encode()
    if where in ("seed", "num_ctx", "temp"):
        name = {"temp": "temperature"}.get(where, where)
        body["options"] = {name: "__NUMBER__"}
    elif where == "content" and route == "chat":
        body["messages"] = [{"role": "user", "content": "__NUMBER__"}]
    else:
        body[where] = "__NUMBER__"
    return json.dumps(body).replace('"__NUMBER__"', number).encode()


def conversation_ids() -> st.SearchStrategy[str | None]:
    """None (four times in five) aims at the victim; otherwise a garbage id that is nobody's (a 404)."""
    garbage = st.text(string.ascii_letters + string.digits + "-_~%é ", min_size=1, max_size=20)
    return st.one_of(st.none(), st.none(), st.none(), st.none(), garbage)


def target(fuzz: Fuzz, drawn: str | None) -> str:
    return fuzz.victim if drawn is None else quote(drawn, safe="")


# --- the JSON routes ----------------------------------------------------------------------------------------------

ACCEPT = {
    "native": st.one_of(
        st.sampled_from([None, "application/x-ndjson", "*/*", "application/json", "text/event-stream;q=0"]),
        st.text(string.printable.strip(), max_size=40),  # whatever a client sends; may ask for SSE after all
    ),
    "sse": st.sampled_from(
        ["text/event-stream", "text/event-stream, */*;q=0.1", "application/json, text/event-stream"]
    ),
}


@pytest.mark.parametrize("flavour", ["native", "sse"])
@examples(90)
@given(body=bodies("chat"), accept=st.data())
def test_chat_never_fails_on_any_body(fuzz: Fuzz, flavour: str, body: Body, accept: st.DataObject) -> None:
    header = accept.draw(ACCEPT[flavour], label="Accept")
    answer = send(fuzz, "POST", "/api/chat", body, {"Accept": header} if header else None)
    check(answer, body, chat_ok)
    if answer.status == 200:
        forwarded_ok(fuzz.sim)
    if answer.status == 200 and flavour == "sse":
        assert answer.content_type.startswith("text/event-stream"), answer
    if answer.status == 200 and answer.content_type.startswith("text/event-stream"):
        assert answer.content.startswith(b": ok\n\n") and b"event: error" not in answer.content, answer.content
    elif answer.status == 200 and answer.content_type.startswith("application/x-ndjson"):
        lines = [json.loads(line) for line in answer.content.splitlines() if line.strip()]
        assert lines and lines[-1].get("done") is True and not any("error" in line for line in lines), lines


@examples(70)
@given(body=bodies("create"))
def test_create_conversation_never_fails(fuzz: Fuzz, body: Body) -> None:
    answer = send(fuzz, "POST", "/api/conversations", body)
    created = check(answer, body, conversation_ok, empty_is_object=True)
    if answer.status == 201:
        assert created["id"] not in (fuzz.victim, fuzz.witness)


@examples(70)
@given(body=bodies("messages"), conversation=conversation_ids())
def test_post_message_never_fails(fuzz: Fuzz, body: Body, conversation: str | None) -> None:
    path = f"/api/conversations/{target(fuzz, conversation)}/messages"
    started = check(send(fuzz, "POST", path, body), body, message_ok, True, conversation is None)
    if started and "generation" in started:
        assert conversation is None and started["generation"]["conversation_id"] == fuzz.victim
        wait_for_generation(fuzz, started["generation"]["id"])


@examples(60)
@given(body=bodies("regenerate"), conversation=conversation_ids())
def test_regenerate_never_fails(fuzz: Fuzz, body: Body, conversation: str | None) -> None:
    path = f"/api/conversations/{target(fuzz, conversation)}/regenerate"
    started = check(send(fuzz, "POST", path, body), body, knobs_ok, True, conversation is None)
    if started and "generation" in started:
        assert conversation is None and started["generation"]["conversation_id"] == fuzz.victim
        wait_for_generation(fuzz, started["generation"]["id"])


@examples(60)
@given(body=bodies("patch"), conversation=conversation_ids())
def test_patch_conversation_never_fails(fuzz: Fuzz, body: Body, conversation: str | None) -> None:
    path = f"/api/conversations/{target(fuzz, conversation)}"
    updated = check(send(fuzz, "PATCH", path, body), body, conversation_ok, True, conversation is None)
    if updated and "id" in updated:
        assert conversation is None and updated["id"] == fuzz.victim


# --- the login form -----------------------------------------------------------------------------------------------

FORM_TYPES = st.sampled_from(
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz", "multipart/form-data", "text/plain"]
)


@examples(30)
@given(
    token=st.sampled_from(["real", "real", "real", "none", "wrong"]),
    fields=st.dictionaries(
        st.sampled_from(["name", "password", "next", "csrf_token"]) | st.text(max_size=8),
        st.one_of(st.text(max_size=80), st.sampled_from(["fuzz", PASSWORD, "//evil.example", "/\\x", "é" * 70])),
        max_size=5,
    ),
    raw=st.none() | st.binary(max_size=200),
    content_type=FORM_TYPES,
    language=st.text(string.printable.strip(), max_size=30),
)
def test_login_form_never_fails(
    fuzz: Fuzz, token: str, fields: dict[str, str], raw: bytes | None, content_type: str, language: str
) -> None:
    with requests.Session() as browser:
        page = browser.get(fuzz.gateway.url + "/login", timeout=TIMEOUT)
        assert page.status_code == 200
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found
        if token != "none":
            fields = {**fields, "csrf_token": found.group(1) if token == "real" else "forged"}
        headers = {"Accept-Language": language}
        if raw is not None:  # the form's bytes as they come, under a form Content-Type
            data: Any = fields_encoded(fields) + b"&" + raw
            headers["Content-Type"] = content_type
        else:
            data = fields
        response = browser.post(
            fuzz.gateway.url + "/login", data=data, headers=headers, allow_redirects=False, timeout=TIMEOUT
        )
        event(f"login -> {response.status_code}")
        assert response.status_code < 500, (response.status_code, response.text[:2000])


def fields_encoded(fields: dict[str, str]) -> bytes:
    return "&".join(f"{quote(k)}={quote(v)}" for k, v in fields.items()).encode()


# --- URLs and headers: query strings, path segments, Last-Event-ID, Accept, Content-Type, Authorization -------


@dataclass
class Site:
    """What the URL and header fuzzing aims at: the gateway above (in memory, accounts required), or two gateways
    on one Redis (open mode), where a reader on the second follows answers the first runs (``RemoteGeneration``,
    ``XREAD``). Each has a finished answer and one that streams for the whole module."""

    name: str
    urls: list[str]
    headers: dict[str, str]
    key: str  # an API key, or "" in open mode
    conversation: str  # holds the finished answer
    finished: dict[str, Any]  # its generation's summary
    live: dict[str, Any]  # a generation that keeps streaming

    @property
    def generation_ids(self) -> set[str]:
        return {self.finished["id"], self.live["id"]}

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"Site({self.name})")


LIVE = '\n#sim {"tokens": 1000000, "tps": 20}'  # outlasts the module; stopped at the end


def open_site(name: str, gateways: list[Gateway], headers: dict[str, str], key: str) -> Site:
    first = gateways[0]
    conversation, finished = answered(first, headers, f"{name} urls")
    _, live = answered(first, headers, f"{name} live", LIVE, wait=False)
    return Site(name, [g.url for g in gateways], headers, key, conversation, finished, live)


def close_site(site: Site) -> None:
    stopped = requests.delete(f"{site.urls[0]}/api/generations/{site.live['id']}", headers=site.headers, timeout=10)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped", stopped.text


@pytest.fixture(scope="module")
def memory_site(fuzz: Fuzz) -> Iterator[Site]:
    site = open_site("memory", [fuzz.gateway], fuzz.headers, fuzz.key)
    yield site
    close_site(site)


@pytest.fixture(scope="module")
def redis_site(
    sim: SimProcess,
    tmp_path_factory: pytest.TempPathFactory,
    start_module_redis: StartRedis,
    start_module_gateway: StartGateway,
) -> Iterator[Site]:
    redis_server = start_module_redis()
    db = tmp_path_factory.mktemp("fuzz-redis") / "clawweb.db"
    shared = {"redis_url": redis_server.url, "db": str(db), "heartbeat_s": 0.1, "auth": "off"}
    site = open_site("redis", [start_module_gateway(sim.url, **shared) for _ in (1, 2)], {}, "")
    yield site
    close_site(site)


@pytest.fixture(scope="module", params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def site(request: pytest.FixtureRequest) -> Site:
    return cast(Site, request.getfixturevalue(f"{request.param}_site"))


def cursor_ok(raw: str) -> bool:
    """An event id as Redis takes it (memory ids are its first part): digits, 64 bits a part."""
    parts = raw.split("-")
    return 1 <= len(parts) <= 2 and all(
        part.isascii() and part.isdigit() and len(part) <= 20 and int(part) < 2**64 for part in parts
    )


def whole_number_ok(raw: str | None, low: int, high: int) -> bool:
    return raw is None or (raw.isascii() and raw.isdigit() and len(raw) <= 20 and low <= int(raw) <= high)


NUMBERS = ["", "0", "1", "50", "200", "201", "-1", "+1", " 1", "1 ", "²", "١٢", "１", "1e3", "0x10", "007", "1.0"]
NUMBERS += ["nan", str(2**63), str(2**64), "9" * 20, "9" * 21, "9" * 400]  # gunicorn's own 414 beyond 4 kB
CURSORS = ["0", "0-0", "1-", "-", "1-2-3", "$", ">", "*", "+", "18446744073709551615-18446744073709551615"]


def cursors(site: Site) -> st.SearchStrategy[str]:
    """Event ids around the real ones (before, at and after the last of an answer), and junk."""
    last = site.finished["last_event_id"]
    ms, _, seq = last.partition("-")
    near = [last, ms, f"{int(ms) + 1}", f"{int(ms) - 1}"]
    if seq:  # a Redis id: the next sequence number, the next millisecond
        near += [f"{ms}-{int(seq) + 1}", f"{int(ms) + 1}-0"]
    return st.one_of(
        st.sampled_from(near + CURSORS + NUMBERS),
        st.integers(-1, 2**66).map(str),
        st.tuples(st.integers(0, 2**65), st.integers(0, 2**65)).map(lambda pair: f"{pair[0]}-{pair[1]}"),
        st.text(max_size=25),
    )


def error_shape(path: str, answer: Answer, accept: str | bytes | None = None) -> None:
    """No 500; a 4xx of the API is JSON with a message, of a page when JSON is asked. Under /v1 it is OpenAI's
    shape, except for a path no /v1 rule matches at all (a line break in it): the app's own 404 answers that."""
    assert answer.status < 500, (path, answer.status, answer.content[:2000])
    accepted = accept.decode("latin-1") if isinstance(accept, bytes) else accept or ""
    wants_json = accepted.startswith("application/json")
    if 400 <= answer.status < 500 and (path.startswith(("/api/", "/v1/")) or wants_json):
        assert answer.content_type.startswith("application/json"), (path, answer)
        error = json.loads(answer.content)["error"]
        message = error["message"] if path.startswith("/v1/") and isinstance(error, dict) else error
        assert isinstance(message, str) and message.strip(), (path, answer)


def fetch(
    site: Site, at: int, method: str, path: str, headers: dict[str, Any], live: bool = False, data: bytes | None = None
) -> Answer:
    """One request; a stream of the live answer is read to its second block (the opening, then a frame or a
    heartbeat), every other body to its end: a stream cut short raises in ``requests`` and fails the test."""
    with requests.request(
        method, site.urls[at] + path, headers=headers, data=data, stream=True, timeout=TIMEOUT, allow_redirects=False
    ) as response:
        kind = response.headers.get("Content-Type", "")
        if live and response.status_code == 200 and kind.startswith("text/event-stream"):
            content = b""
            for chunk in response.iter_content(chunk_size=None):
                content += chunk
                if content.count(b"\n\n") >= 2:
                    break
            assert content.count(b"\n\n") >= 2, f"the stream of a live answer ended: {content!r}"
        else:
            content = response.content
        return Answer(response.status_code, kind, content)


def events_complete(answer: Answer, live: bool) -> None:
    """A 200 of ``/events`` is an SSE stream that opens as every one does and, for a finished answer, ends with
    its final event (not cut in the middle: a reconnecting EventSource would resume from a wrong place)."""
    if answer.status != 200:
        return
    assert answer.content_type.startswith("text/event-stream"), answer
    assert answer.content.startswith(b"retry: 2000\n: ok\n\n"), answer.content[:200]
    if not live:
        last = answer.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
        assert last.startswith((b"event: done\n", b"event: stopped\n", b"event: error\n")), answer.content[-500:]


QUERY_NAMES = st.sampled_from(["limit", "offset", "after"]) | st.text(max_size=8)
RAW_QUERY_JUNK = st.sampled_from(["", "&", "&&", "=", "%", "%ff", "%zz", "a=%80", "%00=1", ";", "+", "&=&"])


@examples(150)
@given(data=st.data())
def test_query_strings_never_fail(site: Site, data: st.DataObject) -> None:
    """Limits, offsets and cursors in the URL: a 400 naming the parameter, or the page/stream they ask for."""
    route = data.draw(st.sampled_from(["list", "events", "events live", "conversation", "generation"]))
    values = st.one_of(st.sampled_from(NUMBERS), cursors(site), st.integers(-(10**25), 10**25).map(str))
    own = st.sampled_from(["limit", "offset"] if route == "list" else ["after"])  # the route's own, mostly
    pairs = data.draw(st.lists(st.tuples(own | own | QUERY_NAMES, values), max_size=4), label="query")
    junk = data.draw(RAW_QUERY_JUNK, label="raw junk")
    live = route == "events live"
    generation = site.live if live else site.finished
    path = {
        "list": "/api/conversations",
        "events": f"/api/generations/{generation['id']}/events",
        "events live": f"/api/generations/{generation['id']}/events",
        "conversation": f"/api/conversations/{site.conversation}",
        "generation": f"/api/generations/{generation['id']}",
    }[route]
    at = data.draw(st.sampled_from(range(len(site.urls))), label="gateway")
    query = urlencode(pairs) + ("&" if pairs and junk else "") + junk
    answer = fetch(site, at, "GET", f"{path}?{query}", site.headers, live)
    event(f"{site.name} query {route} -> {answer.status}")
    error_shape(path, answer)
    first = {name: value for name, value in reversed(pairs)}  # Flask reads the first of a repeated parameter
    if route == "list" and 200 <= answer.status < 300:
        assert whole_number_ok(first.get("limit"), 1, 200) and whole_number_ok(first.get("offset"), 0, 10**9), pairs
    if route.startswith("events"):
        assert answer.status not in (200, 204) or not first.get("after") or cursor_ok(first["after"]), pairs
        events_complete(answer, live)


def segments(site: Site) -> st.SearchStrategy[str]:
    """Path segments: other ids that name Redis keys (``<id>:log``), near misses of real ids, and any text."""
    finished, live = site.finished["id"], site.live["id"]
    near = [
        finished,
        live,
        site.conversation,
        f"{finished}:log",
        f"{live}:log",
        f"{finished}:x",
        f"{site.conversation}:running",
        finished.upper(),
    ]
    near += [finished + "0", finished[:-1], f"{finished}\x00", "%00", "%", "%zz", "%2e%2e", "%2F", "null", "0", "-1"]
    near += ["*", "9" * 30, "x" * 3000, "ſ", "\u212a", "qwen3:32b", "QWEN3:32B", "..%2F..%2Fapi%2Fconversations"]
    anything = st.text(min_size=1, max_size=30).filter(lambda text: text not in (".", ".."))  # dots: other paths
    return st.one_of(st.sampled_from(near), st.sampled_from(near), anything)


PATHS = [
    ("GET", "/api/conversations/{}"),
    ("DELETE", "/api/conversations/{}"),
    ("GET", "/api/generations/{}"),
    ("GET", "/api/generations/{}"),
    ("GET", "/api/generations/{}/events"),
    ("GET", "/api/generations/{}/events"),
    ("DELETE", "/api/generations/{}"),
    ("GET", "/c/{}"),
    ("GET", "/v1/models/{}"),
    ("POST", "/v1/{}"),
    ("GET", "/api/{}"),
    ("GET", "/{}"),
]


@examples(150)
@given(data=st.data())
def test_path_segments_never_fail(site: Site, data: st.DataObject) -> None:
    """Ids in the URL that are nobody's: a 404 (JSON under /api and /v1), never a 500 from a key they name."""
    method, template = data.draw(st.sampled_from(PATHS), label="route")
    segment = data.draw(segments(site), label="segment")
    quoted = data.draw(st.booleans(), label="quoted")  # raw, requests quotes what it must (and a '/' is a '/')
    if method == "DELETE":  # never the module's own answers or conversation
        assume(segment not in site.generation_ids and segment != site.conversation)
    path = template.format(quote(segment, safe="") if quoted else segment)
    accept = data.draw(st.sampled_from([None, "application/json", "text/html", "*/*"]), label="Accept")
    headers = {**site.headers, **({"Accept": accept} if accept else {})}
    live = segment == site.live["id"]
    answer = fetch(site, data.draw(st.sampled_from(range(len(site.urls)))), method, path, headers, live)
    event(f"{site.name} path {template} -> {answer.status}")
    error_shape(path, answer, accept)
    if 200 <= answer.status < 300 and template.startswith(("/api/conversations", "/api/generations", "/c/")):
        assert segment in site.generation_ids | {site.conversation}, (path, answer)
    if template.endswith("/events"):
        events_complete(answer, live)


def header_values() -> st.SearchStrategy[str | bytes]:
    """What a client may put in a header that gunicorn's parser takes: tab, space, visible ASCII and any byte
    from 0x80 (latin-1 text, UTF-8, or neither); no leading blank (requests refuses one)."""
    latin = st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]) | st.just("\t"), max_size=60)
    utf8 = st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=30).map(lambda text: text.encode())
    return st.one_of(latin.map(str.lstrip), utf8.map(bytes.lstrip))


def as_header(value: str | bytes) -> bytes:
    """A value as it can go on the wire: UTF-8 where latin-1 does not hold it, without the control characters
    and leading blanks that gunicorn's parser (or requests) refuses before the app sees anything."""
    if isinstance(value, str):
        value = value.encode("latin-1") if all(ord(c) < 256 for c in value) else value.encode()
    return re.sub(rb"[\x00-\x08\x0a-\x1f\x7f]", b"", value).lstrip(b" \t")


AUTHORIZATION = ["", "Bearer", "Bearer ", "Bearer x", "bearer {key}", "Bearer {key}", "Bearer  {key}", "{key}"]
AUTHORIZATION += ["Bearer {key}x", "Bearer {key}\t", "Basic Zm9vOmJhcg==", "Bearer ollama", "Token {key}", "Bearer é"]
ACCEPTS = ["text/event-stream", "application/json", "application/x-ndjson", "*/*", "text/html", "text/*;q=0", "*/*;q=x"]
MEDIA_TYPES = ["application/json", "application/json; charset=latin-1", "text/plain", "multipart/form-data"]
MEDIA_TYPES += ["application/x-www-form-urlencoded", "application/json; boundary=", ";", "application/"]
HEADER_ROUTES = {
    "list": ("GET", "/api/conversations", None),
    "create": ("POST", "/api/conversations", b'{"title": "from the header fuzzing"}'),
    "events": ("GET", "/api/generations/{finished}/events", None),
    "events live": ("GET", "/api/generations/{live}/events", None),
    "chat": ("POST", "/api/chat", json.dumps(valid_base("chat")).encode()),
    "page": ("GET", "/c/{conversation}", None),
    "models": ("GET", "/v1/models", None),
    "openai": ("POST", "/v1/chat/completions", json.dumps({"messages": valid_base("chat")["messages"]}).encode()),
}


@examples(150)
@given(data=st.data())
def test_headers_never_fail(site: Site, data: st.DataObject) -> None:
    """Junk in the headers clients and proxies set: refused in the usual shape, or answered in full."""
    route = data.draw(st.sampled_from(sorted(HEADER_ROUTES)), label="route")
    method, template, body = HEADER_ROUTES[route]
    path = template.format(finished=site.finished["id"], live=site.live["id"], conversation=site.conversation)
    headers: dict[str, str | bytes] = dict(site.headers)
    choices = {
        "Last-Event-ID": cursors(site),
        "Accept": st.sampled_from(ACCEPTS) | header_values(),
        "Content-Type": st.sampled_from(MEDIA_TYPES) | header_values(),
        "Authorization": st.sampled_from(AUTHORIZATION).map(lambda value: value.format(key=site.key)) | header_values(),
    }
    for name, values in choices.items():
        if data.draw(st.booleans(), label=f"send {name}"):
            headers[name] = as_header(data.draw(values, label=name))
    live = route == "events live"
    answer = fetch(site, data.draw(st.sampled_from(range(len(site.urls)))), method, path, headers, live, body)
    event(f"{site.name} headers {route} -> {answer.status}")
    accept = headers.get("Accept")
    error_shape(path, answer, accept)
    if route.startswith("events"):
        events_complete(answer, live)
    if answer.status == 200 and answer.content_type.startswith("application/x-ndjson"):
        lines = [json.loads(line) for line in answer.content.splitlines() if line.strip()]
        assert lines and lines[-1].get("done") is True, lines
    if answer.status == 200 and route == "chat" and answer.content_type.startswith("text/event-stream"):
        last = answer.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].split(b"data: ", 1)[-1]
        assert b"event: error" not in answer.content and json.loads(last).get("done") is True, answer


# --- afterwards: nothing died, nothing leaked into the log, the witness is untouched ------------------------------


def test_the_gateway_survived_the_fuzzing(fuzz: Fuzz) -> None:
    assert alive(fuzz.worker_pid), f"worker {fuzz.worker_pid} died"
    assert worker_pids(fuzz.gateway.proc.pid) == [fuzz.worker_pid], "the master had to start another worker"
    log = fuzz.gateway.log
    for sign in ("Traceback", "Worker exited", "WORKER TIMEOUT", "was sent SIGKILL"):
        assert sign not in log, log[-20_000:]
    assert not re.search(r"Worker \(pid:\d+\) exited", log), log[-20_000:]
    witness = requests.get(
        f"{fuzz.gateway.url}/api/conversations/{fuzz.witness}", headers=fuzz.headers, timeout=TIMEOUT
    )
    assert witness.status_code == 200 and witness.content == fuzz.witness_snapshot
    # And it still answers: a valid chat after all that.
    ok = requests.post(fuzz.gateway.url + "/api/chat", json=valid_base("chat"), headers=fuzz.headers, timeout=TIMEOUT)
    assert ok.status_code == 200 and json.loads(ok.text.splitlines()[-1])["done"] is True


# --- regressions: the exact bodies that once were 500s ----------------------------------------------------------
# Each aims at a conversation of its own, with the default model and an answer, so the fuzzing's victim state
# does not matter.


@pytest.fixture
def fresh(fuzz: Fuzz) -> str:
    return conversation_with_answer(fuzz.gateway, fuzz.headers, "regression")


@pytest.mark.parametrize(
    ("method", "route", "data"),
    [
        ("POST", "/api/conversations", b'{"title": "\\ud800"}'),
        ("PATCH", "/api/conversations/{fresh}", b'{"model": "\\udfff"}'),
        ("POST", "/api/conversations/{fresh}/messages", b'{"content": "hi \\ud800"}'),
    ],
)
def test_regression_lone_surrogates(fuzz: Fuzz, fresh: str, method: str, route: str, data: bytes) -> None:
    body = Body(data, "regression: lone surrogate")
    answer = send(fuzz, method, route.format(fresh=fresh), body)
    check(answer, body, lambda parsed: True)
    assert answer.status == 400 and b"surrogate" in answer.content, answer


def test_regression_deep_body_with_stream_false(fuzz: Fuzz) -> None:
    # Once parsed just below json.loads's limit, then a RecursionError when encoded again for Ollama.
    for depth in (65, 100, 950, 1000):
        data = f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "hi"}}], "think": false, '
        data += f'"stream": false, "tools": {"[" * depth}{"]" * depth}}}'
        answer = send(fuzz, "POST", "/api/chat", Body(data.encode(), f"nested {depth}"))
        assert answer.status == 400 and b"nested deeper" in answer.content, (depth, answer.status, answer.content)


@pytest.mark.parametrize(
    ("route", "data"),
    [
        ("/api/chat", b'{"messages": [{"role": "user", "content": ""}], "think": []}'),
        ("/api/chat", b'{"messages": [{"role": "user", "content": "hi"}], "think": {}}'),
        ("/api/chat", b'{"messages": [{"role": ["user"], "content": "hi"}]}'),
        ("/api/conversations/{fresh}/messages", b'{"content": "hi", "think": []}'),
        ("/api/conversations/{fresh}/regenerate", b'{"think": {"level": "high"}}'),
    ],
)
def test_regression_unhashable_think_or_role(fuzz: Fuzz, fresh: str, route: str, data: bytes) -> None:
    body = Body(data, "regression: unhashable")
    answer = send(fuzz, "POST", route.format(fresh=fresh), body)
    check(answer, body, lambda parsed: True)
    assert answer.status == 400, answer


@pytest.mark.parametrize("filler", [b" ", b"x"])
def test_regression_oversized_chunked_body(fuzz: Fuzz, filler: bytes) -> None:
    head = dumps(valid_base("chat"))
    body = Body(head + filler * (2 * MAX_BODY), "oversized chunked", chunked=True)
    answer = send(fuzz, "POST", "/api/chat", body)
    assert answer.status == 413, (answer.status, answer.content[:300])


@pytest.mark.parametrize("where", ["login form field", "X-CSRF-Token header"])
def test_regression_non_ascii_csrf_token(fuzz: Fuzz, where: str) -> None:
    with requests.Session() as browser:
        assert browser.get(fuzz.gateway.url + "/login", timeout=TIMEOUT).status_code == 200  # the session's token
        if where == "login form field":
            response = browser.post(
                fuzz.gateway.url + "/login",
                data={"name": "fuzz", "password": "x", "csrf_token": "\x80"},
                timeout=TIMEOUT,
            )
        else:  # any cookie-authenticated request that changes something; header bytes arrive as latin-1 text
            token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get(fuzz.gateway.url + "/login").text)
            assert token
            login = {"name": "fuzz", "password": PASSWORD, "csrf_token": token.group(1)}
            logged_in = browser.post(fuzz.gateway.url + "/login", data=login, allow_redirects=False, timeout=TIMEOUT)
            assert logged_in.status_code == 302
            response = browser.post(
                fuzz.gateway.url + "/api/conversations", json={}, headers={"X-CSRF-Token": b"\xe9"}, timeout=TIMEOUT
            )
        assert response.status_code < 500, (response.status_code, response.text[:300])


# Item 13 of issue 14: 500s found by hand in URLs, each once a 500 (or a stream cut in the middle).


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("limit=%C2%B2", "limit"),  # "²": str.isdigit() took it, int() did not
        ("limit=%D9%A1", "limit"),  # "١": both took it
        ("offset=99999999999999999999", "offset"),  # past SQLite's 64-bit integers
        ("limit=1&offset=%EF%BC%91", "offset"),  # a fullwidth "１"
    ],
)
def test_regression_query_integers(memory_site: Site, query: str, named: str) -> None:
    answer = fetch(memory_site, 0, "GET", f"/api/conversations?{query}", memory_site.headers)
    assert answer.status == 400, answer
    assert json.loads(answer.content)["error"].startswith(f"'{named}' must be a whole number from"), answer


@pytest.mark.parametrize("suffix", [":log", ":log/events", "%3Alog"])
def test_regression_a_generation_id_that_names_another_redis_key(redis_site: Site, suffix: str) -> None:
    """``gen:<id>:log`` is the answer's event stream: HGETALL on it was a WRONGTYPE error, a 500."""
    for at in range(len(redis_site.urls)):
        answer = fetch(redis_site, at, "GET", f"/api/generations/{redis_site.finished['id']}{suffix}", {})
        assert answer.status == 404 and b"no generation" in answer.content, answer


@pytest.mark.parametrize("where", ["after", "Last-Event-ID"])
def test_regression_redis_cursor_beyond_64_bits(redis_site: Site, where: str) -> None:
    """A reader on the other process (``XREAD``) with a cursor Redis cannot hold: once a 200 whose stream was cut
    when Redis refused the id; now a 400 before anything streams. The largest id Redis holds still streams."""
    path = f"/api/generations/{redis_site.live['id']}/events"
    for cursor, status in [("99999999999999999999", 400), ("18446744073709551615-18446744073709551615", 200)]:
        query, headers = (f"?after={cursor}", {}) if where == "after" else ("", {"Last-Event-ID": cursor})
        answer = fetch(redis_site, 1, "GET", path + query, headers, live=True)
        assert answer.status == status, (cursor, answer)
        error_shape(path, answer)
        events_complete(answer, live=True)  # and a heartbeat after the opening: not cut


def test_regression_a_remote_reader_past_the_end_stops_with_the_answer(redis_site: Site) -> None:
    """A reader on the other process whose cursor lies beyond the answer's last event: once it heard heartbeats
    until the finished stream expired (CLAWWEB_GENERATION_TTL_S); now its stream ends when the answer does."""
    gateway = redis_site.urls[0]
    _, generation = answered_on(gateway, '\n#sim {"tokens": 6, "tps": 20}')
    headers = {"Last-Event-ID": "18446744073709551615-18446744073709551615"}
    url = f"{redis_site.urls[1]}/api/generations/{generation['id']}/events"
    heartbeats_after_the_end = 0
    with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT) as response:
        assert response.status_code == 200
        for block in sse_blocks(response):
            assert block == b"event: heartbeat\ndata: {}" or block.startswith(b"retry:"), block  # nothing after it
            state = requests.get(f"{gateway}/api/generations/{generation['id']}", timeout=TIMEOUT).json()
            heartbeats_after_the_end += state["status"] == "done"
            assert heartbeats_after_the_end <= 5, "the stream outlived its answer"
    assert requests.get(url, headers=headers, timeout=TIMEOUT).status_code == 204


def answered_on(url: str, directive: str) -> tuple[str, dict[str, Any]]:
    conversation = requests.post(url + "/api/conversations", json={}, timeout=TIMEOUT).json()["id"]
    started = requests.post(
        f"{url}/api/conversations/{conversation}/messages", json={"content": "hi" + directive}, timeout=TIMEOUT
    )
    assert started.status_code == 202, started.text
    return conversation, started.json()["generation"]


def sse_blocks(response: requests.Response) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            yield block
