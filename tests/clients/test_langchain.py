"""LangChain's ``langchain-ollama``, unchanged, pointed at the gateway (accounts required, real gunicorn, the
simulator behind): ``ChatOllama`` with ``bind_tools`` and the tool's answer sent back, ``OllamaEmbeddings``;
each as langchain-ollama's docstrings and LangChain's tool-calling guide write it. The key goes in
``client_kwargs={"headers": ...}``, which langchain-ollama hands to the ollama client's httpx client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama, OllamaEmbeddings, OllamaLLM
from pydantic import BaseModel

from clawweb.simulator import answer_tokens

from ..support.clients import CHAT_MODEL, EMBED_MODEL, QUESTION, get_weather
from ..support.servers import Gateway
from ..support.simproc import SimProcess, sim_line

weather_tool = tool(get_weather)


@pytest.fixture
def client_kwargs(key: str) -> Iterator[dict[str, Any]]:
    """The keyword arguments every model here gets: the key in ``client_kwargs``'s headers, as langchain-ollama
    documents; and, for the test's sake only, the sync client's connections in a transport the test closes
    (langchain-ollama never closes its httpx clients: their sockets would warn when collected, in a later test)."""
    with httpx.HTTPTransport() as transport:
        yield {
            "client_kwargs": {"headers": {"Authorization": f"Bearer {key}"}, "timeout": 10},
            "sync_client_kwargs": {"transport": transport},
        }


@pytest.fixture(autouse=True)
def fresh_counters(sim: SimProcess) -> None:
    sim.reset()


def test_chat_ollama_bind_tools(gateway: Gateway, client_kwargs: dict[str, Any], sim: SimProcess) -> None:
    # validate_model_on_init: ChatOllama lists the models (GET /api/tags) before the first call.
    llm = ChatOllama(
        model=CHAT_MODEL, base_url=gateway.url, **client_kwargs, validate_model_on_init=True, temperature=0
    ).bind_tools([weather_tool])
    messages: list[BaseMessage] = [HumanMessage(QUESTION)]
    ai_msg = llm.invoke(messages)
    assert isinstance(ai_msg, AIMessage)
    assert [(call["name"], call["args"]) for call in ai_msg.tool_calls] == [("get_weather", {"city": "Paris"})]
    forwarded = sim.stats()["last_request"]
    assert forwarded["stream"] is True and forwarded["tools"][0]["function"]["name"] == "get_weather"
    # LangChain's tool-calling guide: invoking the tool with the call gives the ToolMessage to send back.
    messages.append(ai_msg)
    for call in ai_msg.tool_calls:
        tool_msg = weather_tool.invoke(call)
        assert isinstance(tool_msg, ToolMessage) and tool_msg.tool_call_id == call["id"]
        messages.append(tool_msg)
    final = llm.invoke(messages)
    assert isinstance(final, AIMessage) and not final.tool_calls
    assert "Sunny, 22 °C in Paris" in final.text
    sent = sim.stats()["last_request"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"] and sent[2]["content"] == "Sunny, 22 °C in Paris"


def test_chat_ollama_streams_text(gateway: Gateway, client_kwargs: dict[str, Any]) -> None:
    llm = ChatOllama(model=CHAT_MODEL, base_url=gateway.url, **client_kwargs, reasoning=False)
    chunks = list(llm.stream("Why is the sky blue?" + sim_line(tokens=6)))
    assert [chunk.text for chunk in chunks if chunk.text] == answer_tokens(6)  # token by token


class Weather(BaseModel):
    """The weather in a city."""

    city: str
    temperature_c: int


def test_chat_ollama_with_structured_output(gateway: Gateway, client_kwargs: dict[str, Any], sim: SimProcess) -> None:
    # ChatOllama's docstring: with_structured_output(Model) sends the model's JSON schema as Ollama's `format`.
    llm = ChatOllama(model=CHAT_MODEL, base_url=gateway.url, **client_kwargs)
    weather = llm.with_structured_output(Weather).invoke("It is 22 degrees in Paris.")
    assert isinstance(weather, Weather)
    assert set(sim.stats()["last_request"]["format"]["properties"]) == {"city", "temperature_c"}


def test_ollama_llm_completes(gateway: Gateway, client_kwargs: dict[str, Any], sim: SimProcess) -> None:
    # OllamaLLM calls /api/generate, and sends `format: ""` when none is set.
    llm = OllamaLLM(model=CHAT_MODEL, base_url=gateway.url, **client_kwargs, reasoning=False)
    assert llm.invoke("Why is the sky blue?" + sim_line(tokens=5)) == "".join(answer_tokens(5))
    assert sim.stats()["last_request"]["prompt"].startswith("Why is the sky blue?")


def test_ollama_embeddings(gateway: Gateway, client_kwargs: dict[str, Any], sim: SimProcess) -> None:
    embeddings = OllamaEmbeddings(model=EMBED_MODEL, base_url=gateway.url, **client_kwargs)
    query = embeddings.embed_query("What is a llama?")
    assert len(query) > 0 and all(isinstance(x, float) for x in query)
    assert embeddings.embed_query("What is a llama?") == query  # deterministic
    documents = embeddings.embed_documents(["Llamas are camelids", "What is a llama?"])
    assert len(documents) == 2 and documents[1] == query and documents[0] != query
    assert sim.stats()["last_request"]["input"] == ["Llamas are camelids", "What is a llama?"]
