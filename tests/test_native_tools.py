"""Tools on the native ``/api/chat``: ``tools`` and assistant ``tool_calls`` are checked against Ollama's shapes
(api/types.go: Tool, ToolCall) and forwarded as the official ``ollama`` client sends them, in process and through
a real gunicorn to the simulator."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from clawweb.config import Settings
from clawweb.errors import InvalidField
from clawweb.validation import validate_chat

from .support.factories import StartGateway, StartSimulator

SETTINGS = Settings()
USER = [{"role": "user", "content": "weather in Paris?"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALLED = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
}
RESULT = {"role": "tool", "content": "sunny", "tool_name": "get_weather"}


def test_tools_calls_and_results_pass_through_as_ollama_takes_them() -> None:
    body = {"model": "qwen3:32b", "messages": [*USER, CALLED, RESULT], "tools": [TOOL], "stream": False}
    assert validate_chat(body, SETTINGS) == body


def test_a_tool_without_type_is_a_function_and_unknown_keys_are_dropped() -> None:
    tool = {"function": {"name": "ping", "strict": True}, "x": 1}
    call = {"id": "call_1", "function": {"name": "ping", "arguments": {}, "index": 0}}
    body = validate_chat({"messages": [*USER, {**CALLED, "tool_calls": [call]}], "tools": [tool]}, SETTINGS)
    assert body["tools"] == [{"function": {"name": "ping"}}]
    assert body["messages"][1]["tool_calls"] == [{"function": {"name": "ping", "arguments": {}}}]


def calling(*calls: Any) -> dict[str, Any]:
    return {"messages": [*USER, {"role": "assistant", "content": "", "tool_calls": list(calls)}]}


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        (
            {"messages": USER, "tools": [{"type": "custom", "function": TOOL["function"]}]},
            "tools[0].type",
            'must be "function"',
        ),
        ({"messages": USER, "tools": [{"type": "function"}]}, "tools[0].function", "is required"),
        (
            {"messages": USER, "tools": [{"type": "function", "function": {"description": "x"}}]},
            "tools[0].function.name",
            "is required",
        ),
        (
            {"messages": USER, "tools": [{"type": "function", "function": {"name": ""}}]},
            "tools[0].function.name",
            "non-empty",
        ),
        (
            {"messages": USER, "tools": [{"function": {"name": "f", "parameters": "{}"}}]},
            "tools[0].function.parameters",
            "object",
        ),
        ({"messages": USER, "tools": ["get_weather"]}, "tools[0]", "must be an object"),
        (calling({}), "messages[1].tool_calls[0].function", "is required"),
        (calling({"function": {"arguments": {}}}), "messages[1].tool_calls[0].function.name", "is required"),
        (
            calling({"function": {"name": "f", "arguments": '{"city": "Paris"}'}}),
            "messages[1].tool_calls[0].function.arguments",
            "must be an object",
        ),
        (
            calling({"function": {"name": "f", "arguments": ["Paris"]}}),
            "messages[1].tool_calls[0].function.arguments",
            "must be an object",
        ),
        (calling({"Function": {"name": "f"}}), "messages[1].tool_calls[0].Function", "the field is"),
    ],
)
def test_tools_and_calls_ollama_cannot_read_are_a_400_naming_the_field(
    body: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(InvalidField) as refused:
        validate_chat(body, SETTINGS)
    assert (refused.value.status, refused.value.field) == (400, field)
    assert problem in refused.value.message


def test_through_the_gateway(start_simulator: StartSimulator, start_gateway: StartGateway) -> None:
    sim = start_simulator("--ttft", "0", "--tokens", "3")
    gateway = start_gateway(sim.url)
    body = {"model": "qwen3:32b", "messages": [*USER, CALLED, RESULT], "tools": [TOOL], "stream": False, "think": False}
    answer = requests.post(gateway.url + "/api/chat", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert requests.get(sim.url + "/_sim/stats", timeout=5).json()["last_request"] == body
    bad = {**body, "tools": [{"type": "function", "function": {"name": 7}}]}
    refused = requests.post(gateway.url + "/api/chat", json=bad, timeout=10)
    assert refused.status_code == 400
    assert refused.json() == {"error": "'tools[0].function.name' must be a non-empty string"}
    assert requests.get(sim.url + "/_sim/stats", timeout=5).json()["requests"] == 1
