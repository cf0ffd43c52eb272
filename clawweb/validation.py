"""Validation of request bodies, before anything is opened towards Ollama.

Ollama accepts more fields than clawweb looks at; unknown fields pass through untouched so the official
clients (which send ``tools``, ``format``, ``keep_alive`` and friends) work unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from .config import Settings
from .errors import ApiError

ROLES = frozenset({"system", "user", "assistant", "tool"})
THINK_LEVELS = frozenset({"low", "medium", "high"})

# Ollama's known options and their JSON types (api/types.go, Options and Runner).
_INT, _FLOAT, _BOOL, _STRINGS = "an integer", "a number", "a boolean", "a list of strings"
OPTION_TYPES: dict[str, str] = {
    **dict.fromkeys(
        (
            "num_ctx",
            "num_batch",
            "num_gpu",
            "main_gpu",
            "num_thread",
            "num_keep",
            "seed",
            "num_predict",
            "top_k",
            "repeat_last_n",
            "mirostat",
        ),
        _INT,
    ),
    **dict.fromkeys(
        (
            "top_p",
            "min_p",
            "typical_p",
            "temperature",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
            "mirostat_tau",
            "mirostat_eta",
            "tfs_z",
        ),
        _FLOAT,
    ),
    **dict.fromkeys(("use_mmap", "use_mlock", "numa", "low_vram", "penalize_newline"), _BOOL),
    "stop": _STRINGS,
}


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
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


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
    """Type-check the known options and clamp ``num_ctx`` (a huge context would exhaust GPU memory)."""
    if not isinstance(options, dict):
        raise ApiError(400, "'options' must be an object")
    for key, kind in OPTION_TYPES.items():
        if key in options and not _has_type(options[key], kind):
            raise ApiError(400, f"'options.{key}' must be {kind}")
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
        if role not in ROLES:
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
    if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
        raise ApiError(400, '\'think\' must be true, false, "low", "medium" or "high"')
    keep_alive = body.get("keep_alive")
    if keep_alive is not None and (isinstance(keep_alive, bool) or not isinstance(keep_alive, str | int | float)):
        raise ApiError(400, "'keep_alive' must be a duration string such as \"5m\" or a number of seconds")
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise ApiError(400, "'tools' must be a list")
    if body.get("options") is not None:  # null is "no options", as for Ollama
        body["options"] = validate_options(body["options"], settings)
    return body
