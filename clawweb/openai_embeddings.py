"""OpenAI's embeddings (``/v1/embeddings``) translated to and from Ollama's ``/api/embed``: ``input`` text in,
an ``embedding`` list out, as floats or as base64.

The official Python client asks for base64 when the caller names no encoding, and decodes it itself: base64 is
the vector's float32 values, little-endian, back to back (what OpenAI sends; Ollama's own layer encodes the
same). Ollama takes text only, so token arrays are refused; ``user`` is accepted and not forwarded.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from .errors import InvalidField

ENCODINGS = ("float", "base64")


def _input(value: Any) -> str | list[str]:
    if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int | list) for v in value):
        raise InvalidField("input", "must be text: token arrays are not supported (Ollama tokenizes the text itself)")
    raise InvalidField("input", "must be a string or a non-empty list of strings")


def to_embed(raw: dict[str, Any]) -> dict[str, Any]:
    """An embeddings request as an Ollama ``/api/embed`` body, to be checked by ``validate_embed``."""
    if raw.get("encoding_format") not in (None, *ENCODINGS):
        raise InvalidField("encoding_format", 'must be "float" or "base64"')
    body: dict[str, Any] = {"input": _input(raw.get("input"))}
    for name in ("model", "dimensions"):  # the same names in Ollama's; validate_embed checks their values
        if raw.get(name) is not None:
            body[name] = raw[name]
    return body


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def embedding_list(answer: dict[str, Any], model: str, encoding: str | None) -> dict[str, Any]:
    """Ollama's ``/api/embed`` answer as OpenAI's list, one ``embedding`` per input, in the inputs' order."""
    vectors = answer.get("embeddings") or []
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(vector, encoding or "float")}
        for i, vector in enumerate(vectors)
    ]
    tokens = answer.get("prompt_eval_count") or 0  # omitted when zero (``omitempty``)
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
