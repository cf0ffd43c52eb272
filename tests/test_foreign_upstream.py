"""The gateway in front of an Ollama-compatible server that formats differently (spaced JSON, reordered fields,
no trailing newline), through every path: SSE, NDJSON, one JSON, the official ``ollama`` and ``openai`` clients,
and the chat page's conversations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest
import requests

from .support.factories import StartGateway
from .support.foreign_ollama import MODEL, WORDS, ForeignOllama
from .support.servers import Gateway
from .support.sseclient import content_of, events

ANSWER = "".join(WORDS)
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def foreign() -> Iterator[ForeignOllama]:
    upstream = ForeignOllama()
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def gateway(foreign: ForeignOllama, start_module_gateway: StartGateway) -> Gateway:
    """Started after ``foreign``, so stopped before it."""
    return start_module_gateway(foreign.url, heartbeat_s=0.5)


def test_sse_ends_with_the_done_line_not_an_error(gateway: Gateway) -> None:
    body = {"model": MODEL, "messages": MESSAGES}
    with requests.post(gateway.url + "/api/chat", json=body, headers={"Accept": "text/event-stream"}, stream=True) as r:
        received = [e for e in events(r) if not e.is_comment]
    # Its other spacing and field order read right: the stage frames say writing once its text flows.
    assert [e.json()["stage"] for e in received if e.event == "status"] == ["prompt", "writing"]
    assert [e.event for e in received if e.event != "status"] == ["message"] * (len(WORDS) + 1)
    assert content_of(received) == ANSWER and received[-1].json()["done"] is True


def test_ndjson_and_one_json_pass_through(gateway: Gateway) -> None:
    streamed = requests.post(gateway.url + "/api/chat", json={"model": MODEL, "messages": MESSAGES}, timeout=10)
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert "error" not in streamed.text and lines[-1]["done"] is True
    assert "".join(line["message"]["content"] for line in lines) == ANSWER
    whole = requests.post(gateway.url + "/api/chat", json={"model": MODEL, "messages": MESSAGES, "stream": False})
    assert whole.json()["message"]["content"] == ANSWER


def test_the_official_clients_get_the_whole_answer(gateway: Gateway) -> None:
    with ollama.Client(host=gateway.url) as client:
        parts = list(client.chat(model=MODEL, messages=MESSAGES, stream=True))
    assert "".join(p.message.content or "" for p in parts) == ANSWER and parts[-1].done
    chunks = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused").chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER


def test_a_conversation_stores_the_answer_as_done(gateway: Gateway, tmp_path: Path) -> None:
    conversation = requests.post(gateway.url + "/api/conversations", json={}, timeout=5).json()
    url = f"{gateway.url}/api/conversations/{conversation['id']}"
    started = requests.post(url + "/messages", json={"content": "hi"}, timeout=5).json()
    with requests.get(gateway.url + started["generation"]["events_url"], stream=True, timeout=10) as r:
        final = [e for e in events(r) if e.event in ("done", "error", "stopped")]
    assert [e.event for e in final] == ["done"]
    stored = requests.get(url, timeout=5).json()["messages"][-1]
    assert stored["status"] == "done" and stored["content"] == ANSWER and stored["tokens"] == len(WORDS)
