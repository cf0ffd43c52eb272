"""The error vocabulary in process: a refusal's meaning is in its fields (``field``, ``code``), and the OpenAI
shape is built from them, so renaming a field for OpenAI's clients never edits message text."""

from __future__ import annotations

from typing import Any

import pytest

from clawweb.config import Settings
from clawweb.errors import ApiError, InvalidField
from clawweb.openai_format import error_body, to_ollama
from clawweb.validation import validate_chat

SETTINGS = Settings(max_messages=3, max_chars=20, max_num_ctx=4096)
ASK = [{"role": "user", "content": "hi"}]


def refusal(call: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as raised:
        call(*args, SETTINGS)
    return raised.value


def test_an_invalid_field_names_itself_in_its_message_and_field() -> None:
    problem = refusal(validate_chat, {"messages": [{"role": "robot", "content": "hi"}]})
    assert isinstance(problem, InvalidField) and problem.status == 400
    assert problem.field == "messages[0].role" and problem.message.startswith("'messages[0].role' must be one of")


def test_renaming_keeps_the_problem_and_changes_only_the_name() -> None:
    original = InvalidField("options.num_predict", "must be a whole number")
    renamed = original.renamed("max_tokens")
    assert (renamed.field, renamed.message, renamed.status) == (
        "max_tokens",
        "'max_tokens' must be a whole number",
        400,
    )


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [("temperature", "hot", "temperature"), ("max_tokens", 1.5, "max_tokens"), ("stop", ["x" * 10_000], "stop")],
)
def test_an_openai_option_is_refused_under_the_name_the_client_sent(field: str, value: object, param: str) -> None:
    problem = refusal(to_ollama, {"messages": ASK, field: value})
    assert problem.field == param and problem.message.startswith(f"'{param}' ")
    assert "options." not in problem.message  # Ollama's name for it means nothing to an OpenAI client


def test_a_limit_on_the_messages_names_the_field_though_its_text_does_not_start_with_it() -> None:
    problem = refusal(validate_chat, {"messages": ASK * 4})
    assert (problem.status, problem.field) == (400, "messages") and "CLAWWEB_MAX_MESSAGES" in problem.message


def test_the_openai_shape_comes_from_the_fields() -> None:
    assert error_body(404, "model 'x' not found", param="model", code="model_not_found") == {
        "error": {
            "message": "model 'x' not found",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert error_body(429, "slow down")["error"]["code"] == "rate_limit_exceeded"  # the status' default code
    assert error_body(503, "busy")["error"]["type"] == "server_error"
