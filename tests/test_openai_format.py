"""The OpenAI chat format translated to and from Ollama's, in process: requests into ``/api/chat`` bodies (then
through ``validate_chat``, as the route does), answers into OpenAI's objects and chunks, failures into its errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from clawweb.config import Settings
from clawweb.errors import ApiError, InvalidField
from clawweb.openai_format import Completion, error_body, to_ollama
from clawweb.validation import validate_chat

SETTINGS = Settings()
USER = [{"role": "user", "content": "hi"}]
PNG = "iVBORw0KGgo="


def ollama_body(**raw: Any) -> dict[str, Any]:
    """What Ollama receives for this OpenAI request."""
    return validate_chat(to_ollama({"messages": USER, **raw}, SETTINGS), SETTINGS)


def refusal(raw: dict[str, Any]) -> InvalidField:
    with pytest.raises(InvalidField) as refused:
        to_ollama(raw, SETTINGS)
    return refused.value


# --- requests ------------------------------------------------------------------------------------------------


def test_a_plain_request_is_an_unstreamed_chat_with_the_default_model() -> None:
    assert ollama_body() == {"model": SETTINGS.default_model, "messages": USER, "stream": False}
    assert ollama_body(model="llama3:8b", stream=True)["model"] == "llama3:8b"
    assert ollama_body(stream=None)["stream"] is False


def test_developer_messages_are_system_messages_and_text_parts_are_joined() -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": None},  # an assistant turn with nothing said
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
    ]
    assert to_ollama({"messages": messages}, SETTINGS)["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one\ntwo"},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": "no"},
    ]


def test_an_inline_image_is_passed_as_ollama_base64() -> None:
    parts = [
        {"type": "text", "text": "what is it"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    (message,) = ollama_body(messages=[{"role": "user", "content": parts}])["messages"]
    assert message == {"role": "user", "content": "what is it", "images": [PNG]}


def test_sampling_options_map_onto_ollama_options() -> None:
    raw = {"temperature": 0.2, "top_p": 0.9, "seed": 7, "max_tokens": 50, "stop": "END", "presence_penalty": 0.5}
    assert ollama_body(**raw)["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "num_predict": 50,
        "stop": ["END"],  # a single stop string is a list of one for Ollama
        "presence_penalty": 0.5,
    }
    assert "options" not in ollama_body(temperature=None)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert ollama_body(max_tokens=10, max_completion_tokens=20)["options"] == {"num_predict": 20}


@pytest.mark.parametrize(("effort", "think"), [("none", False), ("minimal", "low"), ("low", "low"), ("high", "high")])
def test_reasoning_effort_is_ollama_think(effort: str, think: bool | str) -> None:
    assert ollama_body(reasoning_effort=effort)["think"] == think


@pytest.mark.parametrize(
    ("response_format", "format"),
    [
        ({"type": "json_object"}, "json"),
        ({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}}, {"type": "object"}),
        ({"type": "text"}, None),
        (None, None),
    ],
)
def test_response_format_is_ollama_format(response_format: dict[str, Any] | None, format: Any) -> None:
    assert ollama_body(response_format=response_format).get("format") == format


@pytest.mark.parametrize("empty", [None, False, [], {}])
def test_an_unsupported_feature_sent_empty_is_no_feature(empty: Any) -> None:
    assert ollama_body(functions=empty, function_call=empty, logprobs=empty) == ollama_body()


@pytest.mark.parametrize(
    ("raw", "param", "message"),
    [
        ({"functions": [{"name": "f"}]}, "functions", "'functions' is not supported by this gateway"),
        ({"logprobs": True}, "logprobs", "'logprobs' is not supported"),
        ({"n": 2}, "n", "'n' must be 1"),
        ({"stream": "yes"}, "stream", "'stream' must be true or false"),
        ({"messages": []}, "messages", "'messages' must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "42"}]}, "messages[0].role", "must be system, developer, user"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "must be a string or a list"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}
                ]
            },
            "messages[0].content[0]",
            "the gateway fetches nothing",
        ),
        ({"reasoning_effort": "max"}, "reasoning_effort", "must be one of none, minimal, low, medium, high"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema with a schema"),
        ({"response_format": {"type": "json_schema", "json_schema": "n"}}, "response_format", "json_schema with a"),
        ({"response_format": "json"}, "response_format", "must be text, json_object"),
        ({"max_tokens": 0}, "max_tokens", "'max_tokens' must be at least 1"),
    ],
)
def test_what_ollama_cannot_do_is_a_400_naming_the_field(raw: dict[str, Any], param: str, message: str) -> None:
    refused = refusal({"messages": USER, **raw})
    assert (refused.status, refused.field) == (400, param)
    assert message in refused.message


@pytest.mark.parametrize(
    ("field", "value", "start"),
    [
        ("temperature", 1e9, "'temperature' must be between 0 and 100"),
        ("temperature", "hot", "'temperature' "),
        ("max_tokens", 1.5, "'max_tokens' "),
        ("stop", ["x" * 10_000], "'stop' "),
    ],
)
def test_an_option_error_names_the_openai_field_not_the_ollama_option(field: str, value: object, start: str) -> None:
    refused = refusal({"messages": USER, field: value})
    assert refused.field == field
    assert refused.message.startswith(start)
    assert "options." not in refused.message  # Ollama's name for it means nothing to an OpenAI client


def test_an_openai_error_is_an_api_error() -> None:
    """Routes that know nothing of OpenAI (body size, auth) raise plain ``ApiError``; both end as OpenAI errors."""
    assert isinstance(refusal({"messages": []}), ApiError)


# --- answers -------------------------------------------------------------------------------------------------


def data_of(frame: bytes) -> dict[str, Any]:
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n") and frame.count(b"\n") == 2
    return dict(json.loads(frame[len(b"data: ") :]))


def test_every_chunk_of_an_answer_repeats_its_id_time_and_model() -> None:
    completion = Completion("qwen3:32b")
    first, last = data_of(completion.chunk({"role": "assistant"})), data_of(completion.chunk({}, "stop"))
    assert first["id"].startswith("chatcmpl-") and first["object"] == "chat.completion.chunk"
    assert {key: first[key] for key in ("id", "created", "model")} == {
        key: last[key] for key in ("id", "created", "model")
    }
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in first  # asked for no usage: the field is absent, as from OpenAI
    assert Completion("m").id != completion.id


def test_with_usage_asked_for_each_chunk_has_null_usage_and_a_last_one_carries_it() -> None:
    completion = Completion("m", include_usage=True)
    assert data_of(completion.chunk({"content": "a"}))["usage"] is None
    final = data_of(completion.usage_chunk({"prompt_eval_count": 12, "eval_count": 5}))
    assert final["choices"] == [] and final["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "total_tokens": 17,
    }


def test_counters_ollama_omits_count_as_zero() -> None:
    """Ollama leaves zero counters out of its JSON (``omitempty``): a cached prompt has no prompt_eval_count."""
    usage = data_of(Completion("m", include_usage=True).usage_chunk({"eval_count": 3}))["usage"]
    assert usage == {"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3}


def test_a_whole_answer_with_and_without_reasoning() -> None:
    completion = Completion("m")
    answer = {"message": {"role": "assistant", "content": "4", "thinking": "2+2"}, "done_reason": "stop"}
    whole = completion.whole(answer)
    assert whole["object"] == "chat.completion" and whole["id"] == completion.id
    assert whole["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "4", "reasoning_content": "2+2"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    cut = completion.whole({"message": {"role": "assistant", "content": "fou"}, "done_reason": "length"})
    assert cut["choices"][0]["message"] == {"role": "assistant", "content": "fou"}  # no empty reasoning_content
    assert cut["choices"][0]["finish_reason"] == "length"
    assert completion.whole({})["choices"][0]["message"] == {"role": "assistant", "content": ""}


# --- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (400, "invalid_request_error", None),
        (401, "authentication_error", "invalid_api_key"),
        (403, "permission_error", None),
        (404, "invalid_request_error", "model_not_found"),
        (413, "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", "rate_limit_exceeded"),
        (409, "invalid_request_error", None),
        (502, "server_error", None),
        (503, "server_error", None),
    ],
)
def test_error_type_and_code_follow_the_status(status: int, kind: str, code: str | None) -> None:
    assert error_body(status, "why") == {"error": {"message": "why", "type": kind, "param": None, "code": code}}


def test_an_error_names_its_field_and_a_code_of_its_own_wins() -> None:
    body = error_body(404, "no such model", param="model", code="model_gone")
    assert body["error"] == {
        "message": "no such model",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_gone",
    }
