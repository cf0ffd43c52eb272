"""The OpenAI-compatible API under a real gunicorn gevent with accounts required, driven by the official
``openai`` client (unchanged, pointed at the gateway) and by raw HTTP for the exact wire shapes."""

from __future__ import annotations

import array
import json
import statistics
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import openai
import pydantic
import pytest
import requests

from clawweb.simulator import FIM_TEXT, answer_tokens, prompt_count, thinking_tokens, tokenize

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway, wait_for
from .support.simproc import SimProcess, sim_line
from .support.sseclient import events

HEARTBEAT_S = 0.3
MODEL = "qwen3:32b"
CODE_MODEL = "qwen2.5-coder:7b"  # fills in the middle: Ollama (and the simulator) refuse a suffix to other models
EMBED_MODEL = "nomic-embed-text:latest"  # the simulator's embedding model, 768 dimensions


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    timing = ("--ttft", "0.05", "--tps", "100", "--tokens", "12")
    return start_module_simulator(*timing, "--model", MODEL, "--model", "llama3:8b", "--model", CODE_MODEL)


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
    assert [m.id for m in listed] == [MODEL, "llama3:8b", CODE_MODEL, EMBED_MODEL]  # chat models, then embedding
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
    assert reply.choices[0].message.content == "".join(answer_tokens(3))  # the directive's tokens, cut at 3
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
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [REMOTE_IMAGE]}]}, "messages[0].content[0]"),
        ({"messages": ask(), "tools": [{"type": "function"}]}, "tools[0].function"),
        ({"messages": ask(), "temperature": "hot"}, "temperature"),
        ({"messages": ask(), "reasoning_effort": "max"}, "reasoning_effort"),
        ({"messages": ask(), "response_format": {"type": "yaml"}}, "response_format"),
        ({"messages": ask(), "response_format": {"type": "json_schema", "json_schema": "Weather"}}, "response_format"),
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
    unknown = requests.post(gateway.url + "/v1/audio/speech", json={"input": "x"}, headers=auth, timeout=5)
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


# --- structured output ---------------------------------------------------------------------------------------


class Weather(pydantic.BaseModel):
    city: str
    celsius: float
    sunny: bool


WEATHER_JSON = '{"city": "Paris", "celsius": 21.5, "sunny": true}'


def test_parse_sends_the_models_schema_as_ollamas_format(client: openai.OpenAI, sim: SimProcess) -> None:
    reply = client.chat.completions.parse(
        model=MODEL, messages=ask({"text": WEATHER_JSON}, "weather in Paris?"), response_format=Weather
    )
    message = reply.choices[0].message
    assert message.parsed == Weather(city="Paris", celsius=21.5, sunny=True)
    assert message.content == WEATHER_JSON and message.refusal is None
    # The schema the client made of the model (strict: every property required, no others), as Ollama's format.
    assert sim.stats()["last_request"]["format"] == {
        "type": "object",
        "title": "Weather",
        "properties": {
            "city": {"type": "string", "title": "City"},
            "celsius": {"type": "number", "title": "Celsius"},
            "sunny": {"type": "boolean", "title": "Sunny"},
        },
        "required": ["city", "celsius", "sunny"],
        "additionalProperties": False,
    }


def test_stream_helper_parses_the_streamed_json(client: openai.OpenAI, sim: SimProcess) -> None:
    with client.chat.completions.stream(
        model=MODEL, messages=ask({"text": WEATHER_JSON}), response_format=Weather, reasoning_effort="none"
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    deltas = [event.delta for event in events if event.type == "content.delta"]
    assert "".join(deltas) == WEATHER_JSON and deltas[1:] == tokenize(WEATHER_JSON)  # "" first, with the role
    (done,) = [event for event in events if event.type == "content.done"]
    assert done.parsed == Weather(city="Paris", celsius=21.5, sunny=True)
    assert final.choices[0].message.parsed == Weather(city="Paris", celsius=21.5, sunny=True)
    assert sim.stats()["last_request"]["format"]["title"] == "Weather"


def test_a_hand_written_json_schema_is_ollamas_format(gateway: Gateway, key: str, sim: SimProcess) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    form = {"type": "json_schema", "json_schema": {"name": "count", "schema": schema, "strict": False}}
    response = post(gateway, key, {"model": MODEL, "messages": ask({"text": '{"n": 3}'}), "response_format": form})
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"n": 3}
    assert sim.stats()["last_request"]["format"] == schema


# --- tool calls ----------------------------------------------------------------------------------------------

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PARIS_CALL = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}


def test_tool_call_and_the_tools_answer_sent_back(client: openai.OpenAI, sim: SimProcess) -> None:
    """The function-calling guide's loop: the model calls, the program runs the tool, sends the result back."""
    messages: list[Any] = ask(PARIS_CALL, "weather in Paris?")
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert sim.stats()["last_request"]["tools"] == [WEATHER_TOOL]
    messages.append(choice.message)  # the message object itself, as the guide does
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 °C"})
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls
    assert second.choices[0].message.content == "get_weather answered: sunny, 21 °C"  # the simulator read it
    sent = sim.stats()["last_request"]["messages"]
    assert sent[1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny, 21 °C", "tool_name": "get_weather"},
    ]


def test_tool_call_streamed(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=ask(PARIS_CALL), tools=[WEATHER_TOOL], stream=True, reasoning_effort="none"
    )
    chunks = list(stream)
    deltas = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or []]
    assert [(d.index, d.type, d.function and d.function.name) for d in deltas] == [(0, "function", "get_weather")]
    assert deltas[0].id and deltas[0].id.startswith("call_")
    assert json.loads(deltas[0].function.arguments or "") == {"city": "Paris"}  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


class GetWeather(pydantic.BaseModel):
    city: str


def test_stream_helper_accumulates_and_parses_the_call(client: openai.OpenAI) -> None:
    """``client.chat.completions.stream`` with a strict pydantic tool: the client accumulates the chunks by index
    and parses the arguments into the model."""
    directive = {
        "tool_calls": [
            {"name": "GetWeather", "arguments": {"city": "Paris"}},
            {"name": "GetWeather", "arguments": {"city": "Rome"}},
        ]
    }
    with client.chat.completions.stream(
        model=MODEL, messages=ask(directive), tools=[openai.pydantic_function_tool(GetWeather)]
    ) as stream:
        done = [event for event in stream if event.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert [(event.index, event.parsed_arguments) for event in done] == [
        (0, GetWeather(city="Paris")),
        (1, GetWeather(city="Rome")),
    ]
    calls = final.choices[0].message.tool_calls or []
    assert [call.function.parsed_arguments for call in calls] == [GetWeather(city="Paris"), GetWeather(city="Rome")]
    assert final.choices[0].finish_reason == "tool_calls"


# --- legacy completions --------------------------------------------------------------------------------------


def test_completion_with_suffix(client: openai.OpenAI, sim: SimProcess) -> None:
    prompt = "def add(a, b):\n"
    reply = client.completions.create(
        model=CODE_MODEL, prompt=prompt, suffix="\nprint(add(1, 2))\n", max_tokens=50, seed=1
    )
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-") and reply.model == CODE_MODEL
    assert reply.choices[0].text == FIM_TEXT and reply.choices[0].finish_reason == "stop"  # the simulator's middle
    assert reply.usage is not None and reply.usage.completion_tokens == len(tokenize(FIM_TEXT))
    sent = sim.stats()["last_request"]
    assert (sent["prompt"], sent["suffix"], sent["stream"]) == (prompt, "\nprint(add(1, 2))\n", False)
    assert sent["options"] == {"num_predict": 50, "seed": 1}


def test_completion_streamed(client: openai.OpenAI, sim: SimProcess) -> None:
    stream = client.completions.create(
        model=CODE_MODEL, prompt="def f():", suffix="end", stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == FIM_TEXT and texts[:-1] == tokenize(FIM_TEXT)  # a chunk per token, "" with the finish
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(tokenize(FIM_TEXT))
    assert {c.object for c in chunks} == {"text_completion"}
    assert sim.stats()["last_request"]["suffix"] == "end"


def test_completion_without_suffix_and_a_suffix_ollama_refuses(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="once" + sim_line(tokens=5), max_tokens=3)
    assert reply.choices[0].text == "".join(answer_tokens(3)) and reply.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as refused:  # Ollama's own status and words, in OpenAI's shape
        client.completions.create(model=MODEL, prompt="def f():", suffix="end")
    assert refused.value.body == {
        "message": "registry.ollama.ai/library/qwen3:32b does not support insert",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_completion_refusals(client: openai.OpenAI, sim: SimProcess) -> None:
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"echo": True}, "echo"),
        ({"best_of": 2}, "best_of"),
        ({"n": 2}, "n"),
        ({"logprobs": 1}, "logprobs"),
    ]
    for kwargs, param in refusals:
        with pytest.raises(openai.BadRequestError) as refused:
            client.completions.create(model=MODEL, prompt="x", **kwargs)
        assert refused.value.param == param
    with pytest.raises(openai.BadRequestError) as tokens:
        client.completions.create(model=MODEL, prompt=[1, 2, 3])
    assert tokens.value.param == "prompt" and "token arrays" in tokens.value.message
    assert sim.stats()["requests"] == 0


# --- embeddings ----------------------------------------------------------------------------------------------


def test_embeddings_default_encoding_is_base64_decoded_by_the_client(client: openai.OpenAI, sim: SimProcess) -> None:
    default = client.embeddings.create(model=EMBED_MODEL, input=["first text", "second text"])
    assert sim.stats()["last_request"]["input"] == ["first text", "second text"]
    floats = client.embeddings.create(model=EMBED_MODEL, input=["first text", "second text"], encoding_format="float")
    assert [e.index for e in default.data] == [0, 1] and default.model == EMBED_MODEL and default.object == "list"
    assert [len(e.embedding) for e in floats.data] == [768, 768]
    # base64 is float32: the client's decoded vectors are the floats rounded to float32
    rounded = [list(array.array("f", e.embedding)) for e in floats.data]
    assert [e.embedding for e in default.data] == rounded
    assert default.data[0].embedding != default.data[1].embedding
    assert default.usage.prompt_tokens == default.usage.total_tokens


def test_embeddings_with_dimensions(client: openai.OpenAI, sim: SimProcess) -> None:
    reply = client.embeddings.create(
        model=EMBED_MODEL, input="one text", dimensions=8, encoding_format="float", user="u1"
    )
    assert len(reply.data) == 1 and len(reply.data[0].embedding) == 8
    sent = sim.stats()["last_request"]
    assert (sent["input"], sent["dimensions"]) == ("one text", 8) and "user" not in sent


def test_embeddings_refusals(client: openai.OpenAI, sim: SimProcess) -> None:
    with pytest.raises(openai.BadRequestError) as tokens:
        client.embeddings.create(model=EMBED_MODEL, input=[[1, 2, 3]])
    assert tokens.value.param == "input" and "token arrays" in tokens.value.message
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="missing:1b", input="x")
    assert sim.stats()["embeds"] == 0
    with pytest.raises(openai.InternalServerError) as chat_model:  # Ollama's 500, its words
        client.embeddings.create(model=MODEL, input="x")
    assert chat_model.value.body["message"] == "this model does not support embeddings"  # type: ignore[index]
