"""Validation of request bodies, before anything is opened towards Ollama.

Ollama accepts more fields than clawweb looks at; unknown fields pass through untouched so the official
clients (which send ``tools``, ``format`` and friends) work unchanged; ``keep_alive`` is accepted but not
forwarded (see ``validate_chat``).
"""

from __future__ import annotations

import json
from typing import Any

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from .config import Settings
from .errors import ApiError

ROLES = frozenset({"system", "user", "assistant", "tool"})
THINK_LEVELS = frozenset({"low", "medium", "high"})

# The options a request may set, with the bounds that keep one request from hurting everyone else's (Ollama's
# api/types.go has the full list). Left out on purpose: the load-time options (num_gpu, main_gpu, num_thread,
# num_batch, use_mmap, use_mlock, numa, low_vram), which would reload the model for every user of the GPU.
_INT, _FLOAT, _BOOL, _STRINGS = "an integer", "a number", "a boolean", "a list of strings"
MAX_CONTEXT = 1 << 20  # bounds token counts; num_ctx itself is clamped to CLAWWEB_MAX_NUM_CTX
OPTIONS: dict[str, tuple[str, float, float]] = {
    "num_ctx": (_INT, 1, float("inf")),  # clamped, not refused: clients send their own favourite
    "num_keep": (_INT, -1, MAX_CONTEXT),
    "num_predict": (_INT, -2, MAX_CONTEXT),  # -1: until the model stops, -2: fill the context
    "seed": (_INT, -(2**63), 2**63 - 1),
    "top_k": (_INT, 0, 100_000),
    "repeat_last_n": (_INT, -1, MAX_CONTEXT),
    "mirostat": (_INT, 0, 2),
    "top_p": (_FLOAT, 0, 1),
    "min_p": (_FLOAT, 0, 1),
    "typical_p": (_FLOAT, 0, 1),
    "temperature": (_FLOAT, 0, 100),
    "repeat_penalty": (_FLOAT, 0, 100),
    "presence_penalty": (_FLOAT, -100, 100),
    "frequency_penalty": (_FLOAT, -100, 100),
    "mirostat_tau": (_FLOAT, 0, 100),
    "mirostat_eta": (_FLOAT, 0, 100),
    "tfs_z": (_FLOAT, 0, 100),
    "penalize_newline": (_BOOL, 0, 1),
    "stop": (_STRINGS, 0, 16),  # at most 16 stop strings
}
MAX_STOP_CHARS = 200
MAX_DEPTH = 64  # a chat request with tools and their JSON schemas nests about 10 deep


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a body as a JSON object whatever the Content-Type says (Ollama does the same)."""
    if not raw.strip():
        raise ApiError(400, "missing request body; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, f"request body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ApiError(400, f"request body has a value clawweb cannot read: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    _check_values(body)
    return body


def _check_values(body: dict[str, Any]) -> None:
    """Refuse what JSON allows but nothing downstream can take: nesting deeper than any real request (it would
    overflow the stack when encoded again for Ollama) and unpaired UTF-16 surrogates (``"\\ud800"``: not
    text, so neither the database nor Ollama accepts it). Iterative, so depth costs no stack."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, f"request body is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "request body holds an unpaired UTF-16 surrogate (not text)") from None


def request_body(limit: int) -> bytes:
    """The request body. A chunked one (no Content-Length) longer than ``limit`` is a 413 like any other:
    werkzeug stops reading it at the limit without a word, which would pass its first part on as the body."""
    data = request.get_data(cache=False)
    if request.content_length is None and len(data) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return data


def _has_type(value: Any, kind: str) -> bool:
    if kind == _BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool):  # bool is an int subclass; Ollama would reject it for a number
        return False
    if kind == _INT:
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind == _FLOAT:
        return isinstance(value, int | float)
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def validate_options(options: Any, settings: Settings) -> dict[str, Any]:
    """Known options only, each of the right type and within bounds; ``num_ctx`` clamped (a huge context would
    exhaust GPU memory)."""
    if not isinstance(options, dict):
        raise ApiError(400, "'options' must be an object")
    for key, value in options.items():
        if key not in OPTIONS:
            raise ApiError(400, f"'options.{key}' is not an option clawweb passes on ({', '.join(sorted(OPTIONS))})")
        kind, low, high = OPTIONS[key]
        if not _has_type(value, kind):
            raise ApiError(400, f"'options.{key}' must be {kind}")
        size = len(value) if kind == _STRINGS else value
        if not low <= size <= high:
            bound = f"at most {high:g} strings" if kind == _STRINGS else f"between {low:g} and {high:g}"
            raise ApiError(400, f"'options.{key}' must be {bound}")
        if kind == _STRINGS and any(len(item) > MAX_STOP_CHARS for item in value):
            raise ApiError(400, f"'options.{key}' strings must be at most {MAX_STOP_CHARS} characters")
    if options.get("num_ctx", 0) > settings.max_num_ctx:
        options = {**options, "num_ctx": settings.max_num_ctx}
    return dict(options)


def validate_messages(messages: Any, settings: Settings) -> None:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects")
    if len(messages) > settings.max_messages:
        raise ApiError(400, f"too many messages: {len(messages)} > {settings.max_messages} (CLAWWEB_MAX_MESSAGES)")
    chars = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, f"'messages[{i}]' must be an object")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise ApiError(400, f"'messages[{i}].role' must be one of {', '.join(sorted(ROLES))}")
        content = message.get("content")
        if not isinstance(content, str):
            raise ApiError(400, f"'messages[{i}].content' must be a string")
        thinking = message.get("thinking", "")
        if not isinstance(thinking, str):
            raise ApiError(400, f"'messages[{i}].thinking' must be a string")
        images = message.get("images", [])
        if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
            raise ApiError(400, f"'messages[{i}].images' must be a list of base64 strings")
        chars += len(content) + len(thinking)
    if chars > settings.max_chars:
        raise ApiError(413, f"messages hold {chars} characters, more than {settings.max_chars} (CLAWWEB_MAX_CHARS)")


def validate_chat(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Check an Ollama ``/api/chat`` body; return the body to forward (model filled in, num_ctx clamped)."""
    body = dict(body)
    model = body.setdefault("model", settings.default_model)
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "'model' must be a non-empty string")
    validate_messages(body.get("messages"), settings)
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ApiError(400, "'stream' must be true or false")
    think = body.get("think")
    if think is not None and not isinstance(think, bool) and not (isinstance(think, str) and think in THINK_LEVELS):
        raise ApiError(400, '\'think\' must be true, false, "low", "medium" or "high"')
    keep_alive = body.pop("keep_alive", None)
    if keep_alive is not None and (isinstance(keep_alive, bool) or not isinstance(keep_alive, str | int | float)):
        raise ApiError(400, "'keep_alive' must be a duration string such as \"5m\" or a number of seconds")
    # Not forwarded: on a shared GPU how long the model stays loaded is the operator's (OLLAMA_KEEP_ALIVE), and
    # one client's keep_alive 0 would unload it for everyone (the next answer waits for a reload).
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise ApiError(400, "'tools' must be a list")
    if body.get("options") is not None:  # null is "no options", as for Ollama
        body["options"] = validate_options(body["options"], settings)
    return body
