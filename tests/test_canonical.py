"""Unit tests of what may reach Ollama: the canonicalizer's tables (bodies -> the 400 or the body forwarded), and
the strict parsers of query integers and event cursors. Against the real gunicorn: tests/test_forwarded.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask

from clawweb.config import Settings
from clawweb.errors import ApiError
from clawweb.state.base import valid_cursor
from clawweb.validation import parse_json_object, query_int, validate_chat

SETTINGS = Settings(max_messages=5, max_chars=100, max_num_ctx=4096)
USER = [{"role": "user", "content": "hi"}]
BASE = '"messages": [{"role": "user", "content": "hi"}]'


def forwarded(raw: str) -> dict[str, Any]:
    """The body the gateway would send upstream for this request body (as the view does it)."""
    return validate_chat(parse_json_object(raw.encode()), SETTINGS)


def refusal(raw: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        forwarded(raw)
    return info.value


# --- case variants and repeated keys: a 400 naming the key ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        # The bodies: Go's decoder would read each of these keys as the field.
        (
            '{"model": "qwen3:32b", "MODEL": "qwen3:evil", ' + BASE + "}",
            "'MODEL' and 'model' are one key to Ollama (it matches keys case-insensitively); "
            "send it once, spelled 'model'",
        ),
        ('{"MODEL": "qwen3:evil", ' + BASE + "}", "'MODEL' is not a field; the field is 'model'"),
        ('{"Options": {"num_gpu": 1}, ' + BASE + "}", "'Options' is not a field; the field is 'options'"),
        ('{"\\u212aeep_alive": -1, ' + BASE + "}", "'\u212aeep_alive' is not a field; the field is 'keep_alive'"),
        ('{"\\u017ftream": false, ' + BASE + "}", "'\u017ftream' is not a field; the field is 'stream'"),
        ('{"Messages": [], ' + BASE + "}", "'Messages' is not a field; the field is 'messages'"),
        ('{"model": "a", "model": "b", ' + BASE + "}", "'model' appears more than once; send each field once"),
        (
            '{"messages": [{"role": "user", "Content": "x", "content": "y"}]}',
            "'messages[0].Content' is not a field; the field is 'messages[0].content'",
        ),
        ('{"messages": [{"role": "user", "content": "x", "content": "y"}]}', "'messages[0].content' appears more"),
        ('{"messages": [{"ROLE": "system", "content": "x"}]}', "'messages[0].ROLE' is not a field; the field is"),
        ('{"messages": [{"role": "user", "Images": []}]}', "'messages[0].Images' is not a field"),
        (
            '{"messages": [{"role": "assistant", "tool_calls": [{"Function": {"name": "f"}}]}]}',
            "'messages[0].tool_calls[0].Function' is not a field; the field is 'messages[0].tool_calls[0].function'",
        ),
        (
            '{"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "NAME": "g"}}]}]}',
            "'messages[0].tool_calls[0].function.NAME' and 'messages[0].tool_calls[0].function.name' are one key",
        ),
        ('{"options": {"NUM_CTX": 99999999}, ' + BASE + "}", "'options.NUM_CTX' is not a field"),
        ('{"options": {"seed": 1, "seed": 2}, ' + BASE + "}", "'options.seed' appears more than once"),
        ('{"tools": [{"type": "function", "Type": "x"}], ' + BASE + "}", "'tools[0].Type' and 'tools[0].type'"),
        ('{"tools": [{"function": {"Parameters": {}}}], ' + BASE + "}", "'tools[0].function.Parameters' is not"),
        # Unknown keys are dropped, but two that Ollama would read as one are still refused.
        ('{"foo": 1, "FOO": 2, ' + BASE + "}", "'FOO' and 'foo' are one key"),
        # JSON that Go's decoder refuses, so nothing built from it could be forwarded.
        ('{"format": {"maximum": NaN}, ' + BASE + "}", "holds NaN, which is not JSON"),
        ('{"format": {"maximum": 1e999}, ' + BASE + "}", "a number too large for a double"),
    ],
)
def test_case_variants_and_repeated_keys_are_refused_naming_the_key(raw: str, message: str) -> None:
    error = refusal(raw)
    assert error.status == 400
    assert message in error.message, error.message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"tools": {}, ' + BASE + "}", "'tools' must be a list"),
        ('{"tools": ["f"], ' + BASE + "}", "'tools[0]' must be an object"),
        ('{"tools": [{"function": "f"}], ' + BASE + "}", "'tools[0].function' must be an object"),
        (
            '{"tools": [{"function": {"name": "f", "parameters": []}}], ' + BASE + "}",
            "'tools[0].function.parameters' must",
        ),
        ('{"tools": [{"type": 1}], ' + BASE + "}", "'tools[0].type' must be \"function\""),
        ('{"format": "yaml", ' + BASE + "}", "'format' must be \"json\" or a JSON schema object"),
        ('{"format": 1, ' + BASE + "}", "'format' must be"),
        ('{"messages": [{"content": "x"}]}', "'messages[0].role' is required"),
        ('{"model": "m"}', "'messages' is required"),
        ('{"messages": [{"role": "tool", "content": "3", "tool_name": 3}]}', "'messages[0].tool_name' must be"),
        ('{"messages": [{"role": "assistant", "tool_calls": {}}]}', "'messages[0].tool_calls' must be a list"),
        (
            '{"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "a=1"}}]}]}',
            "'messages[0].tool_calls[0].function.arguments' must be an object",
        ),
        ('{"options": {"num_gpu": 1}, ' + BASE + "}", "'options.num_gpu' is not an option clawweb passes on"),
    ],
)
def test_wrong_types_in_nested_structs(raw: str, message: str) -> None:
    error = refusal(raw)
    assert error.status == 400 and message in error.message, error.message


# --- what is forwarded: the validated fields, in canonical spelling, nothing else -------------------------------

SCHEMA = {"type": "object", "properties": {"Name": {"type": "string"}, "name": {"type": "integer"}}}


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        # Unknown keys, anywhere in a struct, are dropped; keep_alive is checked and dropped.
        (
            '{"foo": 1, "keep_alive": -1, "logprobs": true, "messages": [{"role": "user", "content": "x", "x": 1}]}',
            {"model": "qwen3:32b", "messages": [{"role": "user", "content": "x"}]},
        ),
        # Null and "" mean "not set" where Ollama reads them so.
        (
            '{"format": null, "think": null, "options": null, "tools": null, ' + BASE + "}",
            {"model": "qwen3:32b", "messages": USER},
        ),
        ('{"format": "", ' + BASE + "}", {"model": "qwen3:32b", "messages": USER}),
        # An option set to null is not set, whatever its name (LangChain sends "num_gpu": null).
        (
            '{"options": {"num_gpu": null, "temperature": null, "Seed": null, "top_k": 5}, ' + BASE + "}",
            {"model": "qwen3:32b", "messages": USER, "options": {"top_k": 5}},
        ),
        # A JSON schema is a value: its keys are data, "Name" beside "name" included; a repeat inside it is
        # collapsed (the one forwarded is the one every reader sees).
        (
            '{"format": {"type": "object", "properties": {"Name": {"type": "string"}, "name": {"type": "integer"}}, '
            '"type": "object"}, ' + BASE + "}",
            {"model": "qwen3:32b", "messages": USER, "format": SCHEMA},
        ),
        # Tools: the struct fields are checked, their parameters (a schema) and call arguments are values.
        (
            '{"tools": [{"type": "function", "extra": 1, "function": {"name": "f", "description": "d", '
            '"parameters": {"type": "object", "properties": {"Name": {}, "name": {}}, "REQUIRED": ["name"]}}}], '
            '"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"function": '
            '{"name": "f", "index": 0, "arguments": {"A": 1, "a": 2}}}]}, '
            '{"role": "tool", "content": "3", "tool_name": "f"}]}',
            {
                "model": "qwen3:32b",
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"A": 1, "a": 2}}}]},
                    {"role": "tool", "content": "3", "tool_name": "f"},
                ],
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "description": "d",
                            "parameters": {
                                "type": "object",
                                "properties": {"Name": {}, "name": {}},
                                "REQUIRED": ["name"],
                            },
                        },
                    }
                ],
            },
        ),
        # Options: checked one by one, num_ctx clamped.
        (
            '{"options": {"num_ctx": 100000, "temperature": 0.5, "stop": ["\\n"]}, "think": "high", "stream": false, '
            + BASE
            + "}",
            {
                "model": "qwen3:32b",
                "messages": USER,
                "stream": False,
                "options": {"num_ctx": 4096, "temperature": 0.5, "stop": ["\n"]},
                "think": "high",
            },
        ),
    ],
)
def test_the_forwarded_body_holds_only_validated_fields(raw: str, sent: dict[str, Any]) -> None:
    assert forwarded(raw) == sent


def test_forwarded_keys_are_in_table_order_and_the_body_is_a_new_object() -> None:
    body = json.loads('{"stream": true, "model": "qwen3:32b", ' + BASE + ', "think": false}')
    sent = validate_chat(body, SETTINGS)
    assert list(sent) == ["model", "messages", "stream", "think"]
    assert sent is not body and sent["messages"][0] is not body["messages"][0]


@pytest.mark.parametrize(
    "body",
    [
        # What the official ollama client (0.6.3) sends: model_dump(exclude_none=True) of its ChatRequest. An
        # assistant message that only calls tools has no "content".
        {"model": "qwen3:32b", "stream": False, "messages": USER, "tools": []},
        {
            "model": "qwen3:32b",
            "stream": True,
            "options": {"temperature": 0.1, "num_ctx": 4096},
            "format": "json",
            "keep_alive": "5m",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
                {"role": "tool", "content": "3", "tool_name": "add"},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "add",
                        "description": "Add.",
                        "parameters": {
                            "type": "object",
                            "required": ["a", "b"],
                            "properties": {"a": {"type": "integer", "description": "first"}},
                        },
                    },
                }
            ],
            "think": True,
        },
        {"model": "qwen3:32b", "stream": False, "format": SCHEMA, "keep_alive": 0.0, "messages": USER, "think": "low"},
    ],
)
def test_the_official_clients_bodies_pass_whole_except_keep_alive(body: dict[str, Any]) -> None:
    sent = forwarded(json.dumps(body))
    assert sent == {key: value for key, value in body.items() if key != "keep_alive"}


# --- query integers and event cursors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ["²", "١", "１", "-1", "+1", " 1", "1 ", "1\n", "", "0x10", "1e3", "1.0", "201", "0", "9" * 20, "9" * 5000],
)
def test_query_int_takes_ascii_digits_within_bounds_only(app: Flask, raw: str) -> None:
    with app.test_request_context("/", query_string={"limit": raw}), pytest.raises(ApiError) as info:
        query_int("limit", 50, 1, 200)
    assert info.value.status == 400 and info.value.message == "'limit' must be a whole number from 1 to 200"


def test_query_int_default_and_leading_zeros(app: Flask) -> None:
    with app.test_request_context("/?limit=007&limit=x"):
        assert query_int("limit", 50, 1, 200) == 7  # the first of repeated parameters, as everywhere in Flask
        assert query_int("offset", 0, 0, 10) == 0


@pytest.mark.parametrize(
    ("raw", "valid"),
    [
        ("0", True),
        ("12", True),
        ("1732700000000-0", True),
        ("18446744073709551615-18446744073709551615", True),  # Redis's largest stream id
        ("18446744073709551616", False),  # beyond 64 bits: XREAD refuses it, in the middle of the response
        ("99999999999999999999", False),
        ("1-99999999999999999999", False),
        ("١٢", False),  # int() reads Arabic-Indic digits; Redis does not
        ("²", False),
        ("-1", False),
        ("1-", False),
        ("1-2-3", False),
        ("$", False),
        ("", False),
        (" 1", False),
    ],
)
def test_event_cursors(raw: str, valid: bool) -> None:
    assert valid_cursor(raw) is valid
