"""The official ``openai`` Python client, unchanged, pointed at the gateway's ``/v1`` (accounts required, real
gunicorn, the simulator behind): tool calls streamed and not with the tool's answer sent back, structured output
with a Pydantic model, embeddings in both encodings, legacy completions with ``suffix``; each as OpenAI's docs and
openai-python's README write it."""

from __future__ import annotations

import array
import json
from collections.abc import Iterator
from typing import Any

import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import BaseModel

from clawweb.simulator import answer_tokens

from ..support.clients import CHAT_MODEL, CODE_MODEL, EMBED_MODEL, QUESTION, get_weather
from ..support.servers import Gateway
from ..support.simproc import SimProcess, sim_line

# The tool as OpenAI's function-calling guide spells one: a JSON schema, strict.
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The name of the city"}},
                "required": ["city"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }
]


@pytest.fixture
def client(gateway: Gateway, key: str, sim: SimProcess) -> Iterator[openai.OpenAI]:
    # Ollama's OpenAI-compatibility docs: OpenAI(base_url="http://localhost:11434/v1/", api_key=...).
    sim.reset()
    with openai.OpenAI(base_url=gateway.url + "/v1/", api_key=key, max_retries=0, timeout=10) as client:
        yield client


def last_request(sim: SimProcess) -> dict[str, Any]:
    return dict(sim.stats()["last_request"])


# --- tools -------------------------------------------------------------------------------------------------------


def test_tool_call_and_the_answer_sent_back(client: openai.OpenAI, sim: SimProcess) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
    completion = client.chat.completions.create(model=CHAT_MODEL, messages=messages, tools=TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (tool_call,) = choice.message.tool_calls or []
    assert tool_call.type == "function" and tool_call.id
    assert tool_call.function.name == "get_weather" and json.loads(tool_call.function.arguments) == {"city": "Paris"}
    forwarded = last_request(sim)["tools"][0]["function"]
    assert forwarded["name"] == "get_weather" and forwarded["parameters"]["required"] == ["city"]
    # The guide: append the model's message as it came, then one `tool` message per call, by its id.
    messages.append(choice.message)  # type: ignore[arg-type]  # the guide's own line; the client serialises it
    result = get_weather(**json.loads(tool_call.function.arguments))
    messages.append({"role": "tool", "tool_call_id": tool_call.id, "content": result})
    final = client.chat.completions.create(model=CHAT_MODEL, messages=messages, tools=TOOLS)
    assert final.choices[0].finish_reason == "stop" and not final.choices[0].message.tool_calls
    assert "Sunny, 22 °C in Paris" in (final.choices[0].message.content or "")
    sent = last_request(sim)["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert [c["function"] for c in sent[1]["tool_calls"]] == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert sent[2]["content"] == "Sunny, 22 °C in Paris"


def test_tool_call_streamed_and_the_answer_sent_back(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
    stream = client.chat.completions.create(model=CHAT_MODEL, messages=messages, tools=TOOLS, stream=True)
    # The guide's "Streaming" part: the calls come as delta.tool_calls pieces, put together by index.
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        for piece in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += piece.id or ""
            call["name"] += (piece.function and piece.function.name) or ""
            call["arguments"] += (piece.function and piece.function.arguments) or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    call = calls[0]
    assert call["id"] and call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    messages.append(
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        }
    )
    messages.append(
        {"role": "tool", "tool_call_id": call["id"], "content": get_weather(**json.loads(call["arguments"]))}
    )
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(model=CHAT_MODEL, messages=messages, tools=TOOLS, stream=True)
        if chunk.choices
    )
    assert "Sunny, 22 °C in Paris" in text


# --- structured output -------------------------------------------------------------------------------------------


class Weather(BaseModel):
    city: str
    temperature_c: int


def test_structured_output_with_a_pydantic_model(client: openai.OpenAI, sim: SimProcess) -> None:
    # openai-python's helpers.md: chat.completions.parse(response_format=Model) and message.parsed.
    answer = '{"city": "Paris", "temperature_c": 22}'
    completion = client.chat.completions.parse(
        model=CHAT_MODEL,
        messages=[
            {"role": "system", "content": "Extract the weather."},
            {"role": "user", "content": "It is 22 degrees in Paris." + sim_line(text=answer)},
        ],
        response_format=Weather,
    )
    message = completion.choices[0].message
    assert isinstance(message.parsed, Weather) and message.parsed == Weather.model_validate_json(message.content or "")
    schema = last_request(sim)["format"]  # response_format's JSON schema became Ollama's `format`
    assert schema["type"] == "object" and set(schema["properties"]) == {"city", "temperature_c"}
    assert schema["required"] == ["city", "temperature_c"]


# --- embeddings --------------------------------------------------------------------------------------------------


def test_embeddings_default_encoding(client: openai.OpenAI, sim: SimProcess) -> None:
    # No encoding_format: the client asks for base64 and decodes little-endian float32 itself.
    text = "The food was delicious and the waiter was friendly."
    response = client.embeddings.create(model=EMBED_MODEL, input=text)
    (item,) = response.data
    assert item.index == 0 and item.object == "embedding" and response.model == EMBED_MODEL
    with ollama.Client(host=sim.url) as direct:
        (native,) = direct.embed(model=EMBED_MODEL, input=text).embeddings
    assert item.embedding == array.array("f", native).tolist()  # Ollama's vector, to float32 precision
    floats = client.embeddings.create(model=EMBED_MODEL, input=text, encoding_format="float").data[0].embedding
    assert array.array("f", floats).tolist() == item.embedding


def test_embeddings_several_inputs_as_floats(client: openai.OpenAI) -> None:
    texts = ["Llamas are members of the camelid family", "Grass is green"]
    response = client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    assert [item.index for item in response.data] == [0, 1]
    first, second = (item.embedding for item in response.data)
    assert len(first) == len(second) > 0 and first != second
    again = client.embeddings.create(model=EMBED_MODEL, input=texts[1], encoding_format="float")
    assert again.data[0].embedding == second  # deterministic, and the batch keeps its order
    assert response.usage.prompt_tokens > 0 and response.usage.total_tokens == response.usage.prompt_tokens


# --- legacy completions ------------------------------------------------------------------------------------------


def middle(sim: SimProcess, prompt: str, suffix: str) -> str:
    """What the simulator itself writes between ``prompt`` and ``suffix`` (its middle differs from the answer
    without a suffix, so a suffix lost on the way shows)."""
    with ollama.Client(host=sim.url) as direct:
        text = direct.generate(CODE_MODEL, prompt, suffix).response
    assert isinstance(text, str) and text
    return text


def test_completion_with_suffix(client: openai.OpenAI, sim: SimProcess) -> None:
    prompt, suffix = "def fibonacci(n):\n    ", "\n    return a"
    completion = client.completions.create(model=CODE_MODEL, prompt=prompt, suffix=suffix, max_tokens=64)
    sent = last_request(sim)
    assert sent["prompt"] == prompt and sent["suffix"] == suffix
    (choice,) = completion.choices
    assert choice.text == middle(sim, prompt, suffix) and choice.finish_reason == "stop" and choice.index == 0
    assert completion.object == "text_completion" and completion.model == CODE_MODEL
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_completion_without_suffix(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=CHAT_MODEL, prompt="Say this is a test" + sim_line(tokens=5))
    assert completion.choices[0].text == "".join(answer_tokens(5))
    assert completion.usage is not None and completion.usage.completion_tokens == 5


def test_completion_streamed(client: openai.OpenAI, sim: SimProcess) -> None:
    prompt, suffix = "def fibonacci(n):\n    ", "\n    return a"
    chunks = list(client.completions.create(model=CODE_MODEL, prompt=prompt, suffix=suffix, stream=True))
    sent = last_request(sim)
    assert sent["suffix"] == suffix and sent["stream"] is True
    pieces = [chunk.choices[0].text for chunk in chunks if chunk.choices and chunk.choices[0].text]
    assert "".join(pieces) == middle(sim, prompt, suffix) and len(pieces) > 1  # piece by piece, not one lump
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
