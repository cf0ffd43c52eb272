"""The error vocabulary in process: a refusal's meaning is in its fields (``field``, ``code``), so renaming a
field for OpenAI's clients never edits message text (the OpenAI side: test_openai_format.py)."""

from __future__ import annotations

from typing import Any

import pytest

from clawweb.config import Settings
from clawweb.errors import ApiError, InvalidField
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


def test_a_limit_on_the_messages_names_the_field_though_its_text_does_not_start_with_it() -> None:
    problem = refusal(validate_chat, {"messages": ASK * 4})
    assert (problem.status, problem.field) == (400, "messages") and "CLAWWEB_MAX_MESSAGES" in problem.message
