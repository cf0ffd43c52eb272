"""What reaches Ollama, byte for byte: a real gunicorn in front of the real simulator, which records the raw body
it received. Case variants and repeated keys (which Ollama's Go decoder would read as the field) are refused
before anything is sent; what is sent holds the validated fields only, in canonical spelling, on every route
that builds an Ollama body (native, SSE, the chat API, OpenAI), and the official ``ollama`` client still works."""

from __future__ import annotations

import json
from typing import Any

import ollama
import pytest
import requests

from clawweb.simulator import answer_tokens

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess

MODEL = "qwen3:32b"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    # qwen3:evil exists upstream: only the gateway's CLAWWEB_MODELS stands between a user and it.
    return start_module_simulator("--ttft", "0.01", "--tps", "1000", "--tokens", "3", "--model", MODEL)


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, models=MODEL, auth="off")


@pytest.fixture(autouse=True)
def fresh_counters(sim: SimProcess) -> None:
    sim.reset()


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(set(keys)) == len(keys), f"a key sent twice upstream: {keys}"
    return dict(pairs)


def sent(sim: SimProcess) -> tuple[str, dict[str, Any]]:
    """The raw body the simulator last received, and that body parsed (failing on a repeated key)."""
    raw = sim.stats()["last_body"]
    assert raw is not None, "nothing reached the simulator"
    return raw, json.loads(raw, object_pairs_hook=unique_keys)


def post_raw(gateway: Gateway, path: str, raw: str, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(gateway.url + path, data=raw.encode(), headers=headers, timeout=10)


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ('{"model": "qwen3:32b", "MODEL": "qwen3:evil", "messages": [{"role": "user", "content": "hi"}]}', "MODEL"),
        ('{"messages": [{"role": "user", "content": "hi"}], "Options": {"num_gpu": 1}}', "Options"),
        ('{"messages": [{"role": "user", "content": "hi"}], "\\u212aeep_alive": -1}', "\u212aeep_alive"),
        ('{"messages": [{"role": "user", "Content": "x", "content": "y"}]}', "messages[0].Content"),
        (
            '{"messages": [{"role": "user", "content": "hi"}], "options": {"num_ctx": 1, "NUM_CTX": 10}}',
            "options.NUM_CTX",
        ),
        ('{"model": "qwen3:32b", "model": "qwen3:32b", "messages": [{"role": "user", "content": "hi"}]}', "model"),
    ],
)
@pytest.mark.parametrize("flavour", ["native", "sse"])
def test_a_key_ollama_would_read_as_another_is_refused_and_nothing_is_sent(
    gateway: Gateway, sim: SimProcess, raw: str, named: str, flavour: str
) -> None:
    headers = {"Accept": "text/event-stream"} if flavour == "sse" else None
    response = post_raw(gateway, "/api/chat", raw, headers)
    assert response.status_code == 400 and response.headers["Content-Type"] == "application/json"
    assert f"'{named}'" in response.json()["error"], response.json()
    assert sim.stats()["requests"] == 0 and sim.stats()["last_body"] is None


def test_unknown_keys_and_keep_alive_are_not_forwarded(gateway: Gateway, sim: SimProcess) -> None:
    raw = json.dumps(
        {
            "foo": 1,
            "keep_alive": -1,
            "think": False,
            "stream": False,
            "messages": [{"role": "user", "content": "hi", "extra": "x"}],
            "options": {"temperature": 0.5, "num_ctx": 10**9},
            "model": MODEL,
        }
    )
    response = post_raw(gateway, "/api/chat", raw)
    assert response.status_code == 200, response.text
    assert response.json()["message"]["content"] == "".join(answer_tokens(3))
    body, parsed = sent(sim)
    expected = {
        "model": MODEL,
        "messages": HI,
        "stream": False,
        "options": {"num_ctx": 32768, "temperature": 0.5},  # clamped to CLAWWEB_MAX_NUM_CTX; in table order
        "think": False,
    }
    assert body == json.dumps(expected)  # the exact bytes: table order, canonical keys, nothing else
    assert parsed == expected


def test_the_chat_api_forwards_only_its_knobs(gateway: Gateway, sim: SimProcess) -> None:
    conversation = requests.post(gateway.url + "/api/conversations", json={}, timeout=5).json()
    url = f"{gateway.url}/api/conversations/{conversation['id']}/messages"
    refused = post_raw(gateway, url[len(gateway.url) :], '{"content": "hi", "options": {"Num_Ctx": 1}}')
    assert refused.status_code == 400 and "'options.Num_Ctx' is not a field" in refused.json()["error"]
    # Top-level keys of this route are not Ollama's: a variant of one is not read at all, so not refused.
    started = post_raw(gateway, url[len(gateway.url) :], '{"content": "hi", "THINK": true, "think": false}')
    assert started.status_code == 202, started.text
    generation = started.json()["generation"]
    with requests.get(gateway.url + generation["events_url"], timeout=10) as events:
        assert b"event: done" in events.content
    _, parsed = sent(sim)
    assert parsed == {"model": MODEL, "messages": HI, "stream": True, "think": False}


def test_the_openai_route_cannot_smuggle(gateway: Gateway, sim: SimProcess) -> None:
    """Its body is translated field by field (exact names) and the result passes the same canonical builder:
    variants of OpenAI's or Ollama's names reach nothing."""
    raw = (
        '{"model": "qwen3:32b", "MODEL": "qwen3:evil", "Options": {"num_gpu": 1}, "\\u212aeep_alive": -1, '
        '"messages": [{"role": "user", "content": "hi", "Content": "evil", "images": ["x"]}], '
        '"Temperature": 2, "max_tokens": 3, "max_tokens": 2, "think": true}'
    )
    response = post_raw(gateway, "/v1/chat/completions", raw)
    assert response.status_code == 200, response.text
    body, parsed = sent(sim)
    expected = {"model": MODEL, "messages": HI, "stream": False, "options": {"num_predict": 2}}
    assert body == json.dumps(expected) and parsed == expected


def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
      a: the first
      b: the second
    """
    return a + b


SCHEMA = {"type": "object", "properties": {"Name": {"type": "string"}, "name": {"type": "integer"}}}
CALLS: list[dict[str, Any]] = [
    {"messages": HI, "think": False},
    {"messages": HI, "think": "high", "keep_alive": 0, "format": SCHEMA, "options": {"temperature": 0.2, "seed": 3}},
    {
        "messages": [
            *HI,
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1}}}]},
            {"role": "tool", "content": "3", "tool_name": "add"},
        ],
        "tools": [add],
        "format": "json",
        "think": True,
        "keep_alive": "5m",
        "options": ollama.Options(num_ctx=4096, temperature=0.1),
    },
]


# What the simulator writes for each: its text; JSON the schema accepts; a sentence quoting the tool's answer.
ANSWERS = ["".join(answer_tokens(3)), '{"Name": "text", "name": 42}', "add answered: 3"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("call", "answer"), list(zip(CALLS, ANSWERS, strict=True)), ids=["plain", "format-schema-options", "tools"]
)
def test_the_official_client_works_unchanged(
    gateway: Gateway, sim: SimProcess, call: dict[str, Any], answer: str, stream: bool
) -> None:
    """Whatever the client sends (``"tools": []``, no ``content`` in a tool-calling message...) reaches Ollama
    as the client sent it directly, less ``keep_alive``."""
    with ollama.Client(host=sim.url) as direct:
        direct.chat(model=MODEL, stream=False, **call)
    _, sent_directly = sent(sim)
    with ollama.Client(host=gateway.url) as client:
        if stream:
            parts = list(client.chat(model=MODEL, stream=True, **call))
            content, done = "".join(p.message.content or "" for p in parts), parts[-1].done
        else:
            whole = client.chat(model=MODEL, stream=False, **call)
            content, done = whole.message.content or "", whole.done
    assert content == answer and done
    _, via_gateway = sent(sim)
    sent_directly["stream"] = stream
    assert via_gateway == {key: value for key, value in sent_directly.items() if key != "keep_alive"}
