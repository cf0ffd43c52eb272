"""OpenAI's tool calling translated to and from Ollama's, in process: tools and tool_choice into Ollama's tools,
assistant calls and tool results into Ollama's messages (then through ``validate_chat``, as the route does), and
Ollama's calls (hand-written lines) into OpenAI's, accumulated by the official client's own stream state."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from clawweb.config import Settings
from clawweb.errors import InvalidField
from clawweb.openai_format import Completion, to_ollama
from clawweb.validation import validate_chat

SETTINGS = Settings()
USER = [{"role": "user", "content": "weather in Paris and Rome?"}]
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
OLLAMA_WEATHER = {"type": "function", "function": {k: v for k, v in WEATHER["function"].items() if k != "strict"}}
OLLAMA_TIME = TIME


def ollama_body(**raw: Any) -> dict[str, Any]:
    """What Ollama receives for this OpenAI request."""
    return validate_chat(to_ollama({"messages": USER, **raw}, SETTINGS), SETTINGS)


def refusal(**raw: Any) -> InvalidField:
    with pytest.raises(InvalidField) as refused:
        ollama_body(**raw)
    return refused.value


# --- tools and tool_choice -----------------------------------------------------------------------------------


def test_function_tools_are_ollama_tools_without_strict() -> None:
    assert ollama_body(tools=[WEATHER, TIME])["tools"] == [OLLAMA_WEATHER, OLLAMA_TIME]
    bare = {"type": "function", "function": {"name": "ping"}}
    assert ollama_body(tools=[bare])["tools"] == [bare]


@pytest.mark.parametrize(
    ("choice", "offered"),
    [
        (None, [OLLAMA_WEATHER, OLLAMA_TIME]),
        ("auto", [OLLAMA_WEATHER, OLLAMA_TIME]),
        # Ollama cannot force a call: "required" offers every tool, as "auto" does (see ollama_tools).
        ("required", [OLLAMA_WEATHER, OLLAMA_TIME]),
        ({"type": "function", "function": {"name": "get_time"}}, [OLLAMA_TIME]),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_time"}}],
                },
            },
            [OLLAMA_TIME],
        ),
    ],
)
def test_tool_choice_decides_which_tools_ollama_is_offered(choice: Any, offered: list[dict[str, Any]]) -> None:
    assert ollama_body(tools=[WEATHER, TIME], tool_choice=choice)["tools"] == offered


@pytest.mark.parametrize("tools", [None, []])
@pytest.mark.parametrize("choice", [None, "none", "auto"])
def test_no_tools_offered(tools: Any, choice: Any) -> None:
    assert "tools" not in ollama_body(tools=tools, tool_choice=choice)


def test_tool_choice_none_offers_no_tools() -> None:
    assert "tools" not in ollama_body(tools=[WEATHER], tool_choice="none")


@pytest.mark.parametrize(
    ("raw", "param", "message"),
    [
        ({"tools": {"get_weather": WEATHER}}, "tools", "must be a list"),
        ({"tools": ["get_weather"]}, "tools[0]", "must be an object"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type", 'must be "function"'),
        ({"tools": [{"type": "function"}]}, "tools[0].function", "must be an object"),
        ({"tools": [TIME, {"type": "function", "function": {"name": ""}}]}, "tools[1].function.name", "non-empty"),
        (
            {"tools": [{"type": "function", "function": {"name": "x", "parameters": []}}]},
            "tools[0].function.parameters",
            "object",
        ),
        ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
        ({"tools": [WEATHER], "tool_choice": "any"}, "tool_choice", 'must be "none", "auto", "required"'),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
            "tool_choice.function",
            "must name a function of 'tools' (get_weather)",
        ),
        (
            {
                "tools": [WEATHER],
                "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}},
            },
            "tool_choice.allowed_tools.tools",
            "non-empty list",
        ),
        (
            {
                "tools": [WEATHER],
                "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "x", "tools": [WEATHER]}},
            },
            "tool_choice.allowed_tools.mode",
            'must be "auto" or "required"',
        ),
        ({"functions": [WEATHER["function"]]}, "functions", "is not supported"),
        ({"function_call": {"name": "get_weather"}}, "function_call", "is not supported"),
    ],
)
def test_tools_that_cannot_be_offered_are_a_400_naming_the_field(raw: dict[str, Any], param: str, message: str) -> None:
    refused = refusal(**raw)
    assert (refused.status, refused.field) == (400, param)
    assert message in refused.message


def test_parallel_tool_calls_is_accepted_and_not_forwarded() -> None:
    assert ollama_body(tools=[WEATHER], parallel_tool_calls=False)["tools"] == [OLLAMA_WEATHER]


# --- a conversation with calls and results ---------------------------------------------------------------------


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_calls_and_their_results_become_ollama_messages() -> None:
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,  # what the official client sends back for an answer that only called tools
            "tool_calls": [call("call_1", "get_weather", '{"city": "Paris"}'), call("call_2", "get_time", "{}")],
        },
        {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny, 21 °C"}]},
        {"role": "assistant", "content": "Sunny.", "tool_calls": []},
        {"role": "user", "content": "and Zürich?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [call("call_1", "get_weather", '{"city":"Zürich"}')],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},  # a repeated id: the latest call's
    ]
    assert ollama_body(messages=messages, tools=[WEATHER, TIME])["messages"] == [
        *USER,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "get_time", "arguments": {}}},
            ],
        },
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
        {"role": "tool", "content": "sunny, 21 °C", "tool_name": "get_weather"},
        {"role": "assistant", "content": "Sunny.", "tool_calls": []},
        {"role": "user", "content": "and Zürich?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}],
        },
        {"role": "tool", "content": "rain", "tool_name": "get_weather"},
    ]


def assistant_calling(*calls: Any) -> list[dict[str, Any]]:
    return [*USER, {"role": "assistant", "content": None, "tool_calls": list(calls)}]


@pytest.mark.parametrize(
    ("messages", "param", "message"),
    [
        (
            assistant_calling(call("c", "get_weather", '"Paris"')),
            "messages[1].tool_calls[0].function.arguments",
            "JSON object",
        ),
        (
            assistant_calling(call("c", "get_weather", "{city: Paris}")),
            "messages[1].tool_calls[0].function.arguments",
            "JSON object",
        ),
        (
            assistant_calling(call("c", "get_weather", "")),
            "messages[1].tool_calls[0].function.arguments",
            "JSON object",
        ),
        (
            assistant_calling(
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"city": "Paris"}}}
            ),
            "messages[1].tool_calls[0].function.arguments",
            "must be a string holding a JSON object",
        ),
        (
            assistant_calling(call("c", "get_weather", '{"x": NaN}')),
            "messages[1].tool_calls[0].function.arguments",
            "JSON",
        ),
        (assistant_calling(call("c", "", "{}")), "messages[1].tool_calls[0].function.name", "non-empty"),
        (assistant_calling({"id": "c", "type": "custom", "custom": {}}), "messages[1].tool_calls[0].type", "function"),
        (assistant_calling({"id": "c", "type": "function"}), "messages[1].tool_calls[0].function", "must be an object"),
        (assistant_calling("get_weather"), "messages[1].tool_calls[0]", "must be an object"),
        ([*USER, {"role": "assistant", "tool_calls": {"id": "c"}}], "messages[1].tool_calls", "must be a list"),
        ([*USER, {"role": "tool", "content": "sunny"}], "messages[1].tool_call_id", "is required"),
        (
            [*USER, {"role": "tool", "tool_call_id": "call_9", "content": "x"}],
            "messages[1].tool_call_id",
            "names no tool call",
        ),
        (
            # a result must follow its call: the call after it does not count
            [
                *USER,
                {"role": "tool", "tool_call_id": "c", "content": "x"},
                *assistant_calling(call("c", "f", "{}"))[1:],
            ],
            "messages[1].tool_call_id",
            "names no tool call",
        ),
        ([*USER, {"role": "function", "name": "f", "content": "x"}], "messages[1].role", "must be system, developer"),
    ],
)
def test_calls_and_results_ollama_cannot_take_are_a_400_naming_the_field(
    messages: list[Any], param: str, message: str
) -> None:
    refused = refusal(messages=messages)
    assert (refused.status, refused.field) == (400, param)
    assert message in refused.message


# --- answers -------------------------------------------------------------------------------------------------

OLLAMA_CALLS = [
    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
    {"function": {"name": "get_weather", "arguments": {"city": "Zürich"}}},
]


def test_a_whole_answer_with_calls_has_null_content_and_finish_reason_tool_calls() -> None:
    answer = {"message": {"role": "assistant", "content": "", "tool_calls": OLLAMA_CALLS}, "done_reason": "stop"}
    (choice,) = Completion("m").whole(answer)["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    ids = [c["id"] for c in message["tool_calls"]]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    assert message["tool_calls"] == [
        {"id": ids[0], "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": ids[1], "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Zürich"}'}},
    ]


def test_text_beside_calls_is_kept_and_ollama_ids_are_used() -> None:
    calls = [{"id": "call_ollama7", "function": {"name": "get_time", "arguments": {}}}]
    answer = {"message": {"content": "Checking.", "thinking": "hm", "tool_calls": calls}, "done_reason": "stop"}
    message = Completion("m").whole(answer)["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": "Checking.",
        "reasoning_content": "hm",
        "tool_calls": [{"id": "call_ollama7", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}],
    }


def data_of(frame: bytes) -> dict[str, Any]:
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    return dict(json.loads(frame[len(b"data: ") :]))


def stream_of(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chunks of the chat stream for these Ollama lines, the role chunk first, as completion_frames sends."""
    completion = Completion("qwen3:32b")
    frames = [completion.chunk({"role": "assistant", "content": ""})]
    for line in lines:
        frames += completion.frames(line)
    return [data_of(frame) for frame in frames]


def ollama_line(done: bool = False, **message: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"model": "qwen3:32b", "message": {"role": "assistant", "content": "", **message}}
    return {**line, "done": True, "done_reason": "stop"} if done else {**line, "done": False}


# Ollama sends calls in one line, or (a model writing several calls) spread over several: both kinds here.
STREAMED = [
    ollama_line(thinking="Two cities."),
    ollama_line(content="Looking"),
    ollama_line(tool_calls=OLLAMA_CALLS[:1]),
    ollama_line(tool_calls=[*OLLAMA_CALLS[1:], {"function": {"name": "get_time", "arguments": {}}}]),
    ollama_line(done=True),
]


def test_streamed_calls_are_indexed_across_lines_and_whole_in_their_chunk() -> None:
    chunks = stream_of(STREAMED)
    calls = [c for chunk in chunks for c in chunk["choices"][0]["delta"].get("tool_calls", [])]
    assert [(c["index"], c["type"], c["function"]["name"]) for c in calls] == [
        (0, "function", "get_weather"),
        (1, "function", "get_weather"),
        (2, "function", "get_time"),
    ]
    assert [c["function"]["arguments"] for c in calls] == ['{"city":"Paris"}', '{"city":"Zürich"}', "{}"]
    assert len({c["id"] for c in calls}) == 3
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks][-2:] == [None, "tool_calls"]
    assert chunks[-1]["choices"][0]["delta"] == {}


def test_the_official_clients_stream_state_accumulates_the_calls() -> None:
    """openai-python's ``ChatCompletionStreamState`` (what ``client.chat.completions.stream`` uses) merges
    chunks by ``index`` and concatenates strings: the final message must hold each call exactly once."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState(input_tools=[WEATHER, TIME])  # type: ignore[list-item]
    for chunk in stream_of(STREAMED):
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    final = state.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Looking"
    calls = choice.message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", '{"city":"Paris"}'),
        ("get_weather", '{"city":"Zürich"}'),
        ("get_time", "{}"),
    ]
    # strict tools: the client parsed the arguments itself, from the strings as they arrived
    assert [c.function.parsed_arguments for c in calls] == [{"city": "Paris"}, {"city": "Zürich"}, None]


def test_a_stream_without_calls_still_finishes_with_stop() -> None:
    chunks = stream_of([ollama_line(content="Hi"), ollama_line(done=True)])
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("tool_calls" not in chunk["choices"][0]["delta"] for chunk in chunks)


def test_calls_in_the_done_line_are_sent_before_the_finish() -> None:
    chunks = stream_of([{**ollama_line(done=True), "message": {"role": "assistant", "tool_calls": OLLAMA_CALLS}}])
    assert [len(chunk["choices"][0]["delta"].get("tool_calls", [])) for chunk in chunks] == [0, 2, 0]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
