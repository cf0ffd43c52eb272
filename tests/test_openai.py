"""The OpenAI-compatible API under a real gunicorn gevent with accounts required, driven by the official
``openai`` client (unchanged, pointed at the gateway) and by raw HTTP for the exact wire shapes."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import openai
import pytest
import requests

from clawweb.simulator import answer_tokens, prompt_count, thinking_tokens

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway, wait_for
from .support.simproc import SimProcess
from .support.sseclient import events

HEARTBEAT_S = 0.3
MODEL = "qwen3:32b"


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator(
        "--ttft", "0.05", "--tps", "100", "--tokens", "12", "--model", MODEL, "--model", "llama3:8b"
    )


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, auth="required", heartbeat_s=HEARTBEAT_S, read_timeout_s=2.5)


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> str:
    return gateway.new_user("olga")


@pytest.fixture
def client(gateway: Gateway, key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture(autouse=True)
def fresh_counters(sim: SimProcess) -> None:
    sim.reset()


def ask(directive: dict[str, Any] | None = None, text: str = "hello") -> list[Any]:
    """OpenAI messages whose user turn carries a ``#sim`` directive for the simulator."""
    return [{"role": "user", "content": text + (f"\n#sim {json.dumps(directive)}" if directive else "")}]


def post(gateway: Gateway, key: str | None, body: Any, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(gateway.url + "/v1/chat/completions", data=data, headers=headers, timeout=10, **kwargs)


# --- models --------------------------------------------------------------------------------------------------


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    listed = client.models.list().data
    assert [m.id for m in listed] == [MODEL, "llama3:8b", "nomic-embed-text:latest"]  # the simulator's embedding model
    created = int(datetime.fromisoformat("2026-01-02T03:04:05.678Z").timestamp())  # the simulator's modified_at
    assert listed[0].model_dump(exclude_none=True) == {
        "id": MODEL,
        "object": "model",
        "created": created,
        "owned_by": "ollama",
    }
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("nope:1b")
    assert info.value.code == "model_not_found"


# --- answers -------------------------------------------------------------------------------------------------


def test_whole_answer(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=ask({"tokens": 5}), reasoning_effort="none")
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == "".join(answer_tokens(5))
    assert choice.finish_reason == "stop"
    assert not hasattr(choice.message, "reasoning_content")
    prompt = prompt_count({"messages": ask({"tokens": 5})})  # the simulator's prompt_eval_count
    assert reply.usage is not None and reply.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": prompt,
        "completion_tokens": 5,
        "total_tokens": prompt + 5,
    }


def test_whole_answer_with_reasoning(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=ask({"tokens": 3, "think_tokens": 4}))
    message = reply.choices[0].message
    assert message.content == "".join(answer_tokens(3))
    assert message.reasoning_content == "".join(thinking_tokens(4))  # type: ignore[attr-defined]


def test_stream_arrives_token_by_token(client: openai.OpenAI, sim: SimProcess) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=ask({"tokens": 10, "tps": 10}), reasoning_effort="none", stream=True
    )
    chunks, times = [], []
    for chunk in stream:  # ends by itself at `data: [DONE]`
        chunks.append(chunk)
        times.append(time.monotonic())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"
    tokens = [(c.choices[0].delta.content, t) for c, t in zip(chunks, times, strict=True) if c.choices[0].delta.content]
    assert "".join(text for text, _ in tokens) == "".join(answer_tokens(10))
    gaps = [b[1] - a[1] for a, b in zip(tokens, tokens[1:], strict=False)]
    # One token every 100 ms. A relay that buffers delivers them in one burst: every gap near 0. A busy machine
    # may bunch a few (the simulator catches up on its schedule after a stall), never most of them.
    assert statistics.median(gaps) > 0.05, gaps
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage is None
    assert sim.stats()["last_request"]["stream"] is True and sim.stats()["completed"] == 1


def test_stream_with_reasoning_and_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ask({"tokens": 3, "think_tokens": 4}),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert reasoning == "".join(thinking_tokens(4))
    assert "".join(d.content or "" for d in deltas) == "".join(answer_tokens(3))
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    prompt = prompt_count({"messages": ask({"tokens": 3, "think_tokens": 4})})
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (prompt, 3)


def test_request_fields_become_ollama_options(client: openai.OpenAI, sim: SimProcess) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "developer", "content": "be brief"}, *ask({"tokens": 6})],
        temperature=0.5,
        top_p=0.9,
        max_tokens=3,
        stop="\n\n",
        seed=7,
        presence_penalty=0.25,
        frequency_penalty=0.5,
        reasoning_effort="high",
        response_format={"type": "json_object"},
        user="someone",
    )
    assert reply.choices[0].message.content == "".join(answer_tokens(3))
    assert reply.choices[0].finish_reason == "length"  # Ollama's done_reason for num_predict
    sent = sim.stats()["last_request"]
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["options"] == {
        "temperature": 0.5,
        "top_p": 0.9,
        "num_predict": 3,
        "stop": ["\n\n"],
        "seed": 7,
        "presence_penalty": 0.25,
        "frequency_penalty": 0.5,
    }
    assert (sent["think"], sent["format"], sent["stream"]) == ("high", "json", False)
    assert "user" not in sent


def test_content_parts_and_images(gateway: Gateway, key: str, sim: SimProcess) -> None:
    parts = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "text", "text": '#sim {"tokens": 2}'},
    ]
    response = post(gateway, key, {"model": MODEL, "messages": [{"role": "user", "content": parts}]})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "".join(answer_tokens(2))
    message = sim.stats()["last_request"]["messages"][0]
    assert message == {"role": "user", "content": 'look\n#sim {"tokens": 2}', "images": ["iVBORw0KGgo="]}


def test_stream_wire_format_and_keep_alive_while_loading(gateway: Gateway, key: str) -> None:
    body = {"model": MODEL, "messages": ask({"tokens": 2, "ttft": 1.0}), "stream": True, "reasoning_effort": "none"}
    response = post(gateway, key, body, stream=True)
    assert response.headers["Content-Type"] == "text/event-stream"
    received = list(events(response))
    assert received[0].comments == ["ok"]
    first_data = next(i for i, e in enumerate(received) if e.data_lines)
    assert sum(e.comments == ["keep-alive"] for e in received[:first_data]) >= 2  # 1 s of silence / 0.3 s
    data = [e.data for e in received if e.data_lines]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        *({"content": token} for token in answer_tokens(2)),
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-2:] == [None, "stop"]


# --- errors --------------------------------------------------------------------------------------------------


def test_errors_raise_the_official_exceptions(gateway: Gateway, client: openai.OpenAI) -> None:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="cw_wrong", max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError) as auth:
            stranger.models.list()
    assert auth.value.body == {
        "message": "invalid or revoked API key",
        "type": "authentication_error",
        "param": None,
        "code": "invalid_api_key",
    }
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="missing:7b", messages=ask())
    assert missing.value.code == "model_not_found" and "missing:7b" in missing.value.message
    with pytest.raises(openai.BadRequestError) as many:
        client.chat.completions.create(model=MODEL, messages=ask(), n=2)
    assert many.value.param == "n"
    with pytest.raises(openai.BadRequestError) as zero:
        client.chat.completions.create(model=MODEL, messages=ask(), max_completion_tokens=0, stream=True)
    assert zero.value.param == "max_completion_tokens"


REMOTE_IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"not json", None),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [REMOTE_IMAGE]}]}, "messages[0].content[0]"),
        ({"messages": ask(), "tools": [{"type": "function"}]}, "tools"),
        ({"messages": ask(), "temperature": "hot"}, "temperature"),
        ({"messages": ask(), "reasoning_effort": "max"}, "reasoning_effort"),
        ({"messages": ask(), "response_format": {"type": "yaml"}}, "response_format"),
        ({"model": "", "messages": ask()}, "model"),
    ],
)
def test_bad_requests_name_the_field(gateway: Gateway, key: str, sim: SimProcess, body: Any, param: Any) -> None:
    response = post(gateway, key, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, None)
    assert sim.stats()["requests"] == 0


def test_unknown_routes_and_methods_in_openai_shape(gateway: Gateway, key: str) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    wrong_method = requests.get(gateway.url + "/v1/chat/completions", headers=auth, timeout=5)
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["Allow"]
    unknown = requests.post(gateway.url + "/v1/embeddings", json={"input": "x"}, headers=auth, timeout=5)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_url"
    for response in (wrong_method, unknown):
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_missing_key_is_a_401_in_openai_shape(gateway: Gateway) -> None:
    for response in (requests.get(gateway.url + "/v1/models", timeout=5), post(gateway, None, {"messages": ask()})):
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"]["type"] == "authentication_error"


def test_failure_mid_stream_raises_in_the_client(client: openai.OpenAI, gateway: Gateway, key: str) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=ask({"error_after": 3}), reasoning_effort="none", stream=True
    )
    texts = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")
    assert info.value.message == "simulated failure after 3 tokens"
    assert "".join(texts) == "".join(answer_tokens(3))
    body = {"model": MODEL, "messages": ask({"error_after": 1}), "stream": True}
    data = [e.data for e in events(post(gateway, key, body, stream=True)) if e.data_lines]
    assert json.loads(data[-1]) == {  # the last frame: no [DONE] after a failure
        "error": {
            "message": "simulated failure after 1 tokens",
            "type": "server_error",
            "param": None,
            "code": "error_line",
        }
    }


def test_upstream_status_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as whole:
        client.chat.completions.create(model=MODEL, messages=ask({"status": 500}))
    assert whole.value.body == {"message": "simulated error", "type": "server_error", "param": None, "code": None}
    # A stream has sent its 200 and keep-alives before Ollama answers: the failure comes in-band.
    with pytest.raises(openai.APIError, match="simulated error"):
        list(client.chat.completions.create(model=MODEL, messages=ask({"status": 503}), stream=True))


def test_client_leaving_a_stream_closes_upstream(client: openai.OpenAI, sim: SimProcess) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=ask({"tokens": 500, "tps": 20}), reasoning_effort="none", stream=True
    )
    for _, chunk in zip(range(3), stream, strict=False):
        assert chunk.choices[0].delta is not None
    stream.close()
    assert wait_for(lambda: sim.stats()["disconnects"] == 1)
    assert sim.stats()["completed"] == 0 and sim.stats()["active"] == 0


def test_allow_list_queue_and_rate_limit_apply(sim: SimProcess, start_gateway: StartGateway) -> None:
    server = start_gateway(sim.url, auth="required", models=MODEL, rate_per_minute=2, max_active=1)
    key = server.new_user("ann")
    with openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0) as limited:
        assert [m.id for m in limited.models.list().data] == [MODEL]
        with pytest.raises(openai.PermissionDeniedError) as denied:
            limited.chat.completions.create(model="llama3:8b", messages=ask())
        assert denied.value.body["type"] == "permission_error"  # type: ignore[index]
        # One stream holds the only slot; the next waits in the queue with its place as a comment.
        holding = limited.chat.completions.create(model=MODEL, messages=ask({"tokens": 10, "tps": 20}), stream=True)
        next(iter(holding))
        body = {"model": MODEL, "messages": ask({"tokens": 2}), "stream": True, "reasoning_effort": "none"}
        queued = list(events(post(server, key, body, stream=True)))
        assert ["queued position=1 active=1"] in [e.comments for e in queued]
        assert json.loads(queued[-2].data)["choices"][0]["finish_reason"] == "stop"
        assert len(list(holding)) > 10
        with pytest.raises(openai.RateLimitError) as limit:
            limited.chat.completions.create(model=MODEL, messages=ask())
        assert int(limit.value.response.headers["Retry-After"]) > 0
        assert limit.value.code == "rate_limit_exceeded"
