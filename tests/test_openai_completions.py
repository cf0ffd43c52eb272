"""OpenAI's legacy completions translated to and from Ollama's ``/api/generate``, in process: the request into a
generate body, Ollama's lines (hand-written, as docs/api.md shows them) into ``text_completion`` objects and chunks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types import Completion as OpenAICompletion

from clawweb.config import Settings
from clawweb.errors import InvalidField
from clawweb.openai_completions import TextCompletion, to_generate
from clawweb.validation import validate_generate

SETTINGS = Settings()


def test_prompt_suffix_and_sampling_fields_become_a_generate_body() -> None:
    raw = {
        "model": "qwen2.5-coder:7b",
        "prompt": "def add(a, b):\n",
        "suffix": "\n\nprint(add(1, 2))",
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 3,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 1,
        "best_of": 1,
        "echo": False,
        "logprobs": None,
        "user": "u1",
    }
    assert to_generate(raw, SETTINGS) == {
        "model": "qwen2.5-coder:7b",
        "prompt": "def add(a, b):\n",
        "suffix": "\n\nprint(add(1, 2))",
        "stream": True,
        "options": {
            "num_predict": 64,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": ["\n\n"],
            "seed": 3,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
        },
    }


def test_a_list_of_one_prompt_is_that_prompt_and_stream_defaults_to_false() -> None:
    assert to_generate({"prompt": ["once upon"]}, SETTINGS) == {"prompt": "once upon", "stream": False}


@pytest.mark.parametrize(
    ("raw", "param", "message"),
    [
        ({"prompt": ["a", "b"]}, "prompt", "a list of one string (one completion per request)"),
        ({"prompt": []}, "prompt", "must be a string"),
        ({}, "prompt", "must be a string"),
        ({"prompt": [15496, 11]}, "prompt", "token arrays are not supported"),
        ({"prompt": [[15496, 11]]}, "prompt", "token arrays are not supported"),
        ({"prompt": "x", "n": 2}, "n", "must be 1"),
        ({"prompt": "x", "best_of": 3}, "best_of", "must be 1"),
        ({"prompt": "x", "echo": True}, "echo", "is not supported"),
        ({"prompt": "x", "logprobs": 2}, "logprobs", "is not supported"),
        ({"prompt": "x", "logit_bias": {"50256": -100}}, "logit_bias", "is not supported"),
        ({"prompt": "x", "stream": "yes"}, "stream", "must be true or false"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", "must be at least 1"),
        ({"prompt": "x", "temperature": -1}, "temperature", "must be between 0 and 100"),
    ],
)
def test_what_ollama_cannot_do_is_a_400_naming_the_field(raw: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(InvalidField) as refused:
        to_generate(raw, SETTINGS)
    assert (refused.value.status, refused.value.field) == (400, param)
    assert message in refused.value.message


def data_of(frame: bytes) -> dict[str, Any]:
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    return dict(json.loads(frame[len(b"data: ") :]))


LINES = [
    {"model": "m", "created_at": "2026-01-28T02:21:55.1Z", "response": "", "thinking": "hm", "done": False},
    {"model": "m", "created_at": "2026-01-28T02:21:55.2Z", "response": "    return", "done": False},
    {"model": "m", "created_at": "2026-01-28T02:21:55.3Z", "response": " a + b", "done": False},
    {
        "model": "m",
        "created_at": "2026-01-28T02:21:55.4Z",
        "response": "",
        "done": True,
        "done_reason": "length",
        "context": [1, 2, 3],
        "prompt_eval_count": 9,
        "eval_count": 2,
    },
]


def test_a_stream_is_text_completion_chunks_and_a_finish() -> None:
    answer = TextCompletion("m", include_usage=True)
    assert answer.opening() == []
    chunks = [data_of(frame) for line in LINES for frame in answer.frames(line)]
    assert [c["choices"][0]["text"] for c in chunks] == ["    return", " a + b", ""]  # thinking has no place
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert {(c["id"], c["object"], c["model"]) for c in chunks} == {(answer.id, "text_completion", "m")}
    assert answer.id.startswith("cmpl-") and all(c["usage"] is None for c in chunks)
    usage = data_of(answer.usage_chunk(LINES[-1]))
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


def test_a_whole_completion() -> None:
    whole = TextCompletion("m").whole({**LINES[-1], "response": "    return a + b", "done_reason": "stop"})
    assert whole["object"] == "text_completion" and whole["id"].startswith("cmpl-")
    assert whole["choices"] == [{"text": "    return a + b", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert whole["usage"] == {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    assert OpenAICompletion.model_validate(whole).choices[0].text == "    return a + b"


def test_the_generate_body_is_then_checked_as_a_native_one() -> None:
    body = validate_generate(to_generate({"prompt": "a", "suffix": "b", "max_tokens": 5}, SETTINGS), SETTINGS)
    assert body == {
        "model": SETTINGS.default_model,
        "prompt": "a",
        "suffix": "b",
        "stream": False,
        "options": {"num_predict": 5},
    }
    with pytest.raises(InvalidField) as refused:
        validate_generate(to_generate({"prompt": "a", "suffix": 3}, SETTINGS), SETTINGS)
    assert (refused.value.field, refused.value.message) == ("suffix", "'suffix' must be a string")
