"""OpenAI's embeddings translated to and from Ollama's ``/api/embed``, in process: the request into an embed body,
the answer into OpenAI's list, as floats or as the base64 the official client asks for by default."""

from __future__ import annotations

import array
import base64
import struct
from typing import Any

import pytest

from clawweb.config import Settings
from clawweb.errors import ApiError, InvalidField
from clawweb.openai_embeddings import embedding_list, to_embed
from clawweb.validation import validate_embed

OLLAMA_ANSWER = {
    "model": "nomic-embed-text",
    "embeddings": [[0.1, -0.25, 3.0], [1e-8, 0.0, -1.5]],
    "total_duration": 14143917,
    "load_duration": 1019500,
    "prompt_eval_count": 8,
}


@pytest.mark.parametrize("text", ["one text", ["one", "two"]])
def test_text_model_and_dimensions_are_ollamas_and_user_is_not_forwarded(text: str | list[str]) -> None:
    raw = {"input": text, "model": "nomic-embed-text", "dimensions": 256, "encoding_format": "float", "user": "u1"}
    assert to_embed(raw) == {"input": text, "model": "nomic-embed-text", "dimensions": 256}
    assert to_embed({"input": text}) == {"input": text}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"input": [1, 2, 3]}, "token arrays are not supported"),
        ({"input": [[1, 2], [3]]}, "token arrays are not supported"),
        ({"input": []}, "must be a string or a non-empty list of strings"),
        ({"input": ["a", 2]}, "must be a string or a non-empty list of strings"),
        ({"input": None}, "must be a string"),
        ({"input": {"text": "a"}}, "must be a string"),
        ({"input": "a", "encoding_format": "binary"}, '\'encoding_format\' must be "float" or "base64"'),
    ],
)
def test_what_ollama_cannot_embed_is_a_400_naming_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidField) as refused:
        to_embed(raw)
    assert (refused.value.status, refused.value.field) == (
        400,
        "encoding_format" if "encoding_format" in raw else "input",
    )
    assert message in refused.value.message


@pytest.mark.parametrize("encoding", [None, "float"])
def test_floats_one_embedding_per_input_in_order(encoding: str | None) -> None:
    assert embedding_list(OLLAMA_ANSWER, "nomic-embed-text", encoding) == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, -0.25, 3.0]},
            {"object": "embedding", "index": 1, "embedding": [1e-8, 0.0, -1.5]},
        ],
        "model": "nomic-embed-text",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }


def test_base64_is_little_endian_float32_as_the_official_client_decodes_it() -> None:
    data = embedding_list(OLLAMA_ANSWER, "nomic-embed-text", "base64")["data"]
    first = base64.b64decode(data[0]["embedding"])
    assert first == struct.pack("<3f", 0.1, -0.25, 3.0) and len(first) == 12
    # openai-python's decoding (lib/_parsing/_embeddings.py, without numpy): array("f") of the bytes
    decoded = [array.array("f", base64.b64decode(item["embedding"])).tolist() for item in data]
    vectors: list[list[float]] = OLLAMA_ANSWER["embeddings"]  # type: ignore[assignment]
    assert decoded == [list(struct.unpack("<3f", struct.pack("<3f", *vector))) for vector in vectors]
    assert decoded[0][1:] == [-0.25, 3.0]  # exact in float32


def test_counters_ollama_omits_count_as_zero() -> None:
    answer = embedding_list({"embeddings": [[1.0]]}, "m", None)
    assert answer["usage"] == {"prompt_tokens": 0, "total_tokens": 0}


def test_the_embed_body_is_then_checked_as_a_native_one() -> None:
    settings = Settings(max_embed_inputs=2)
    body = validate_embed(to_embed({"input": ["a", "b"], "dimensions": 8.0}), settings)
    assert body == {"model": settings.default_model, "input": ["a", "b"], "dimensions": 8}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": ["a", "b", "c"]}, "input"),
    ]
    for raw, field in cases:
        with pytest.raises(ApiError) as refused:
            validate_embed(to_embed(raw), settings)
        assert (refused.value.status, refused.value.field) == (400, field)
