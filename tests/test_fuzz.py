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
from typing import Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from clawweb.validation import OPTIONS, ROLES

from .servers import Gateway
from .simproc import SimProcess, start_simulator

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
    created = requests.post(gateway.url + "/api/conversations", json={"title": title}, headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    conversation_id = str(created.json()["id"])
    started = requests.post(
        f"{gateway.url}/api/conversations/{conversation_id}/messages",
        json={"content": f"first message of the {title}", "think": False},
        headers=headers,
        timeout=10,
    )
    assert started.status_code == 202, started.text
    generation = started.json()["generation"]["id"]
    deadline = time.monotonic() + 10
    while requests.get(f"{gateway.url}/api/generations/{generation}", headers=headers, timeout=10).json()[
        "status"
    ] not in ("done", "stopped", "error"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return conversation_id


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    simulator = start_simulator("--ttft", "0.01", "--tps", "1000", "--tokens", "3")
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def fuzz(sim: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    gateway = Gateway(
        tmp_path_factory.mktemp("fuzz") / "gunicorn.log",
        sim.url,
        auth="required",
        max_body_bytes=MAX_BODY,
        login_attempts=100_000,  # the login fuzzing must reach the password check, not the throttle
    )
    try:
        key = gateway.new_user("fuzz", PASSWORD)
        headers = {"Authorization": f"Bearer {key}"}
        (worker,) = worker_pids(gateway.proc.pid)
        witness = conversation_with_answer(gateway, headers, "witness")
        victim = conversation_with_answer(gateway, headers, "victim")
        snapshot = requests.get(f"{gateway.url}/api/conversations/{witness}", headers=headers, timeout=10).content
        yield Fuzz(gateway, key, worker, victim, witness, snapshot)
    finally:
        gateway.stop()


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


def parse_object(data: bytes, empty_is_object: bool) -> dict[str, Any] | None:
    """The body as a JSON object, as a strict reader would take it; None when it is not one."""
    if empty_is_object and not data.strip():
        return {}
    if len(data) > MAX_BODY:
        return None
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


# The oracle: what a 2xx needs, written from the API's documentation rather than from validation.py.


def is_text(value: Any, limit: int | None = None) -> bool:
    return isinstance(value, str) and (limit is None or len(value) <= limit)


def think_ok(value: Any) -> bool:
    return value is None or isinstance(value, bool) or (isinstance(value, str) and value in ("low", "medium", "high"))


def options_ok(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(key in OPTIONS for key in value))


def known_model(value: Any) -> bool:
    return isinstance(value, str) and value == MODEL


def chat_ok(body: dict[str, Any]) -> bool:
    messages = body.get("messages")
    return (
        known_model(body.get("model", MODEL))
        and isinstance(messages, list)
        and bool(messages)
        and all(isinstance(m, dict) and m.get("role") in ROLES and is_text(m.get("content")) for m in messages)
        and ("stream" not in body or isinstance(body["stream"], bool))
        and think_ok(body.get("think"))
        and options_ok(body.get("options"))
    )


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
    alphabet = st.characters(exclude_categories=() if surrogates else ("Cs",))
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
    names = st.one_of(st.sampled_from([*OPTIONS, "num_gpu", "main_gpu", "use_mmap", ""]), texts(surrogates, 10))
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
            "tools": field(st.lists(json_values(surrogates), max_size=2), surrogates),
            "format": json_values(surrogates),
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
        message = st.fixed_dictionaries(
            {"role": st.sampled_from(sorted(ROLES)), "content": text},
            optional={"images": st.lists(st.sampled_from(["aGVsbG8=", ""]), max_size=2), "thinking": text},
        )
        last = st.fixed_dictionaries({"role": st.just("user"), "content": text})
        optional = {
            **knobs,
            "model": st.just(MODEL),
            "stream": st.booleans(),
            "keep_alive": st.sampled_from(["5m", 0, -1, 3.5, "0s", None]),
            "tools": st.lists(json_values(surrogates), max_size=2),
            "format": st.sampled_from(["json", None, {"type": "object"}]),
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
    return {
        "chat": {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "think": False},
        "create": {"title": "t", "model": MODEL, "system_prompt": "be brief"},
        "patch": {"title": "t"},
        "messages": {"content": "hello", "think": False},
        "regenerate": {"think": False},
    }[route]


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
        text = dumps(draw(st.one_of(st.just(base), shaped(route, surrogates))))
        at = draw(st.integers(0, len(text)))
        data = text[:at] + draw(BAD_UTF8) + text[at:]
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
