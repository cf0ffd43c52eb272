"""The official ``ollama`` Python client, unchanged, pointed at the gateway (accounts required, real gunicorn, the
simulator behind): generate (with ``suffix``, streamed), embed, show and a chat with a tool call, each called as
ollama-python's README and examples/ do. A route the client calls that the gateway lacks fails here."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import ollama
import pytest
from pydantic import BaseModel

from clawweb.simulator import answer_tokens

from ..support.clients import CHAT_MODEL, CODE_MODEL, EMBED_MODEL, QUESTION, get_weather
from ..support.servers import Gateway
from ..support.simproc import SimProcess, sim_line


@pytest.fixture
def client(gateway: Gateway, key: str, sim: SimProcess) -> Iterator[ollama.Client]:
    # ollama-python's README, "Custom client": Client(host=..., headers={...}); the key as a bearer token.
    sim.reset()
    with ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        yield client


@pytest.fixture
def direct(sim: SimProcess) -> Iterator[ollama.Client]:
    """The same client on the simulator itself: what the gateway should hand on unchanged."""
    with ollama.Client(host=sim.url, timeout=10) as client:
        yield client


def last_request(sim: SimProcess) -> dict[str, Any]:
    return dict(sim.stats()["last_request"])


# --- generate ----------------------------------------------------------------------------------------------------


def test_generate(client: ollama.Client) -> None:
    # examples/generate.py: generate(model, prompt) and response['response'].
    response = client.generate(model=CHAT_MODEL, prompt="Why is the sky blue?" + sim_line(tokens=6))
    assert response["response"] == "".join(answer_tokens(6))
    assert response.done and response.done_reason == "stop" and response.eval_count == 6
    assert response.model == CHAT_MODEL


def test_generate_passes_context_through(client: ollama.Client, direct: ollama.Client) -> None:
    prompt = "Why is the sky blue?" + sim_line(tokens=3)
    through, straight = client.generate(model=CHAT_MODEL, prompt=prompt), direct.generate(CHAT_MODEL, prompt)
    assert through.response == straight.response == "".join(answer_tokens(3))
    assert through.context == straight.context  # Ollama's docs/api.md: the final object's `context` (token ids)


def test_generate_fill_in_the_middle(client: ollama.Client, direct: ollama.Client, sim: SimProcess) -> None:
    # examples/fill-in-middle.py, as a code assistant completes between the cursor's two sides.
    prompt = 'def remove_non_ascii(s: str) -> str:\n    """ '
    suffix = "\n    return result\n"
    options = {"num_predict": 128, "temperature": 0, "top_p": 0.9, "stop": ["<EOT>"]}
    response = client.generate(model=CODE_MODEL, prompt=prompt, suffix=suffix, options=options)
    sent = last_request(sim)
    assert sent["prompt"] == prompt and sent["suffix"] == suffix and sent["options"] == options
    # The simulator writes another middle for a suffix than without one: the same as Ollama's own answer is the
    # middle, so the suffix arrived.
    assert response["response"] == direct.generate(CODE_MODEL, prompt, suffix, options=options).response
    assert response["response"] != direct.generate(CODE_MODEL, prompt, options=options).response


def test_generate_streamed(client: ollama.Client) -> None:
    # examples/generate-stream.py: for part in generate(..., stream=True): print(part['response'], end='').
    parts = list(client.generate(model=CHAT_MODEL, prompt="Tell me a story" + sim_line(tokens=8), stream=True))
    assert "".join(part["response"] for part in parts) == "".join(answer_tokens(8))
    assert len([part for part in parts if part.response]) == 8  # token by token, not one lump at the end
    assert parts[-1].done and parts[-1].done_reason == "stop" and not any(part.done for part in parts[:-1])


# --- embed -------------------------------------------------------------------------------------------------------


def embedding_length(client: ollama.Client, model: str) -> int:
    """The vector length a client reads from /api/show: model_info's ``<architecture>.embedding_length``."""
    info = client.show(model).modelinfo or {}
    return int(info[f"{info['general.architecture']}.embedding_length"])


def test_embed_one_input(client: ollama.Client, direct: ollama.Client) -> None:
    # examples/embed.py: embed(model, input='...') and response['embeddings'].
    response = client.embed(model=EMBED_MODEL, input="The sky is blue because of Rayleigh scattering")
    (vector,) = response["embeddings"]
    assert len(vector) == embedding_length(direct, EMBED_MODEL) and all(isinstance(x, float) for x in vector)
    assert response.model == EMBED_MODEL
    again = client.embed(model=EMBED_MODEL, input="The sky is blue because of Rayleigh scattering")
    assert again.embeddings == [vector]  # deterministic
    straight = direct.embed(model=EMBED_MODEL, input="The sky is blue because of Rayleigh scattering")
    assert straight.embeddings == [vector]  # the gateway hands Ollama's numbers on unchanged


def test_embed_several_inputs(client: ollama.Client, sim: SimProcess) -> None:
    texts = ["Llamas are members of the camelid family", "Grass is green", "Llamas are members of the camelid family"]
    response = client.embed(model=EMBED_MODEL, input=texts)
    assert last_request(sim)["input"] == texts  # one request for the batch, in its order
    first, second, third = response.embeddings
    assert first == third and first != second and len(first) == len(second)
    # Each vector is the one its text gets alone: the batch is neither reordered nor mixed.
    assert [client.embed(model=EMBED_MODEL, input=text).embeddings[0] for text in texts[:2]] == [first, second]


def test_embed_with_fewer_dimensions(client: ollama.Client, direct: ollama.Client) -> None:
    # Ollama's docs/api.md: `dimensions` cuts the vector (Matryoshka models such as nomic-embed-text).
    (vector,) = client.embed(model=EMBED_MODEL, input="Grass is green", dimensions=256).embeddings
    assert len(vector) == 256 < embedding_length(direct, EMBED_MODEL)
    assert direct.embed(model=EMBED_MODEL, input="Grass is green", dimensions=256).embeddings == [vector]


def test_embeddings_the_older_route(client: ollama.Client) -> None:
    # Deprecated in the client "in favor of embed", still called by older programs: POST /api/embeddings.
    one = client.embeddings(model=EMBED_MODEL, prompt="Grass is green")
    assert len(one.embedding) > 0 and one.embedding == client.embeddings(EMBED_MODEL, "Grass is green").embedding


def test_without_the_key_the_gateway_refuses(gateway: Gateway) -> None:
    with ollama.Client(host=gateway.url, timeout=10) as anonymous, pytest.raises(ollama.ResponseError) as info:
        anonymous.embed(model=EMBED_MODEL, input="Grass is green")
    assert info.value.status_code == 401


# --- show --------------------------------------------------------------------------------------------------------


def test_show_context_length_and_capabilities(client: ollama.Client, direct: ollama.Client) -> None:
    # examples/show.py reads `capabilities`; programs read the context length from model_info.
    details = client.show(CHAT_MODEL)
    info = details.modelinfo or {}
    architecture = info["general.architecture"]
    assert isinstance(info[f"{architecture}.context_length"], int) and info[f"{architecture}.context_length"] > 0
    assert "completion" in (details.capabilities or []) and "tools" in (details.capabilities or [])
    assert details.details is not None and details.details.family
    straight = direct.show(CHAT_MODEL)
    assert (info, details.capabilities) == (straight.modelinfo, straight.capabilities)
    embedder = client.show(EMBED_MODEL)
    assert "embedding" in (embedder.capabilities or []) and "completion" not in (embedder.capabilities or [])


def test_show_an_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.show("missing:7b")
    assert info.value.status_code == 404 and "missing:7b" in info.value.error  # Ollama's "model '...' not found"


# --- chat: structured output, a tool ----------------------------------------------------------------------------


class Country(BaseModel):
    name: str
    capital: str
    languages: list[str]


def test_chat_structured_output(client: ollama.Client, sim: SimProcess) -> None:
    # examples/structured-outputs.py: format=Model.model_json_schema(), then Model.model_validate_json(content).
    messages = [{"role": "user", "content": "Tell me about Canada."}]
    response = client.chat(model=CHAT_MODEL, messages=messages, format=Country.model_json_schema())
    country = Country.model_validate_json(response.message.content or "")
    assert isinstance(country, Country)
    assert last_request(sim)["format"] == Country.model_json_schema()  # the schema reached Ollama as it was sent


# --- chat with a tool ----------------------------------------------------------------------------------------------


def named(calls: Sequence[ollama.Message.ToolCall]) -> list[tuple[str, dict[str, Any]]]:
    return [(call.function.name, dict(call.function.arguments)) for call in calls]


def test_chat_with_a_python_function_as_tool(client: ollama.Client, sim: SimProcess) -> None:
    # examples/tools.py, step by step: the function as a tool, its call run, the answer sent back as a `tool` message.
    available_functions = {"get_weather": get_weather}
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    response = client.chat(model=CHAT_MODEL, messages=messages, tools=[get_weather])
    calls = response.message.tool_calls or []
    assert named(calls) == [("get_weather", {"city": "Paris"})]
    tool = sim.stats()["last_request"]["tools"][0]["function"]  # the schema the client built from the docstring
    assert tool["name"] == "get_weather" and tool["parameters"]["required"] == ["city"]
    assert tool["parameters"]["properties"]["city"]["type"] == "string"
    for call in calls:
        output = available_functions[call.function.name](**call.function.arguments)
        messages.append(response.message)
        messages.append({"role": "tool", "content": str(output), "tool_name": call.function.name})
    final = client.chat(model=CHAT_MODEL, messages=messages)
    assert "Sunny, 22 °C in Paris" in (final.message.content or "") and not final.message.tool_calls
    sent = sim.stats()["last_request"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[2] == {"role": "tool", "content": "Sunny, 22 °C in Paris", "tool_name": "get_weather"}
    assert sent[1]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]


def test_chat_streamed_with_a_tool(client: ollama.Client) -> None:
    # examples/gpt-oss-tools-stream.py: the tool calls arrive in a streamed chunk's message.tool_calls.
    stream = client.chat(
        model=CHAT_MODEL, messages=[{"role": "user", "content": QUESTION}], tools=[get_weather], stream=True
    )
    calls = [call for chunk in stream for call in chunk.message.tool_calls or []]
    assert named(calls) == [("get_weather", {"city": "Paris"})]
