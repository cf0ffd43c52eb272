"""Validation of request bodies and query parameters, before anything is opened towards Ollama.

The ``/api/chat`` body is checked against the tables below (one per object Ollama decodes into a struct) by
the canonicalizer in canonical.py, and the body sent upstream is built from the validated fields only, in their
canonical spelling: a case variant of a field (``MODEL``, ``Options``, ``\\u212aeep_alive``) or a key given twice
is a 400 naming it, because Ollama's Go decoder would read it as the field. Unknown keys are dropped, not passed
through: Ollama ignores them too, and the official clients send only fields listed here (``tools``, ``format``,
``options``, ``think``, ``keep_alive``...). ``keep_alive`` is accepted but not forwarded (see ``CHAT``).
A route that forwards another Ollama body (``/api/generate``, ``/api/embed``, ``/api/show``) adds its table here
and goes through the same ``canonical``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from .canonical import OMIT, Field, Parse, Struct, canonical, list_of, object_pairs, struct
from .config import Settings
from .errors import ApiError, InvalidField

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
        body = json.loads(text, object_pairs_hook=object_pairs, parse_constant=_not_json, parse_float=_finite)
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


def _not_json(constant: str) -> Any:
    raise ApiError(400, f"request body holds {constant}, which is not JSON (Ollama refuses it)")


def _finite(digits: str) -> float:
    """A JSON number as a float; one too large for a double (``1e999``) would be forwarded as ``Infinity``."""
    value = float(digits)
    if not math.isfinite(value):
        raise ApiError(400, f"request body holds a number too large for a double ({digits[:40]})")
    return value


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


def _option(kind: str, low: float, high: float) -> Parse:
    def parse(value: Any, where: str, settings: Settings) -> Any:
        if not _has_type(value, kind):
            raise InvalidField(where, f"must be {kind}")
        size = len(value) if kind == _STRINGS else value
        if not low <= size <= high:
            bound = f"at most {high:g} strings" if kind == _STRINGS else f"between {low:g} and {high:g}"
            raise InvalidField(where, f"must be {bound}")
        if kind == _STRINGS and any(len(item) > MAX_STOP_CHARS for item in value):
            raise InvalidField(where, f"strings must be at most {MAX_STOP_CHARS} characters")
        return value

    return parse


def _num_ctx(value: Any, where: str, settings: Settings) -> Any:
    """Clamped, not refused (clients send their own favourite): a huge context would exhaust GPU memory."""
    value = _option(*OPTIONS["num_ctx"])(value, where, settings)
    return settings.max_num_ctx if value > settings.max_num_ctx else value


# Options are a map in Ollama's Go (matched exactly, unknown ones ignored with a warning), but a table here like
# any struct: a variant spelling is refused all the same, and an unknown option is refused with the list.
OPTION_FIELDS = Struct(
    {name: Field(_num_ctx if name == "num_ctx" else _option(*spec)) for name, spec in OPTIONS.items()},
    unknown=f"is not an option clawweb passes on ({', '.join(sorted(OPTIONS))})",
)


# --- field parsers: (value, where, settings) -> the value to forward --------------------------------------------


def _text(value: Any, where: str, settings: Settings) -> str:
    if not isinstance(value, str):
        raise InvalidField(where, "must be a string")
    return value


def _model(value: Any, where: str, settings: Settings) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(where, "must be a non-empty string")
    return value


def _name(value: Any, where: str, settings: Settings) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidField(where, "must be a non-empty string")
    return value


def _role(value: Any, where: str, settings: Settings) -> str:
    if not isinstance(value, str) or value not in ROLES:
        raise InvalidField(where, f"must be one of {', '.join(sorted(ROLES))}")
    return value


def _images(value: Any, where: str, settings: Settings) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(image, str) for image in value):
        raise InvalidField(where, "must be a list of base64 strings")
    return value


def _bool(value: Any, where: str, settings: Settings) -> bool:
    if not isinstance(value, bool):
        raise InvalidField(where, "must be true or false")
    return value


def _value_object(value: Any, where: str, settings: Settings) -> Any:
    """A free-form object (a JSON schema, tool-call arguments), forwarded as it is; null: not set."""
    if value is None:
        return OMIT
    if not isinstance(value, dict):
        raise InvalidField(where, "must be an object")
    return value


def _function_type(value: Any, where: str, settings: Settings) -> str:
    """A tool's ``type``: Ollama calls functions only (its clients send ``"function"``, or nothing)."""
    if value != "function":
        raise InvalidField(where, 'must be "function"')
    return "function"


def _think(value: Any, where: str, settings: Settings) -> Any:
    if value is None:
        return OMIT
    if not isinstance(value, bool) and not (isinstance(value, str) and value in THINK_LEVELS):
        raise InvalidField(where, 'must be true, false, "low", "medium" or "high"')
    return value


def _format(value: Any, where: str, settings: Settings) -> Any:
    """``"json"`` or a JSON schema (a value); null and ``""`` mean "not set", as Ollama reads them."""
    if value is None or value == "":
        return OMIT
    if value != "json" and not isinstance(value, dict):
        raise InvalidField(where, 'must be "json" or a JSON schema object')
    return value


def _keep_alive(value: Any, where: str, settings: Settings) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, str | int | float)):
        raise InvalidField(where, 'must be a duration string such as "5m" or a number of seconds')
    return OMIT


def _options(value: Any, where: str, settings: Settings) -> Any:
    """null: no options. An option set to null is not set, as Ollama reads it, and is dropped whatever its name:
    LangChain's ``OllamaEmbeddings`` sends every option it knows, ``"num_gpu": null`` included."""
    if value is None:
        return OMIT
    if type(value) is dict:  # a RepeatedKeys (a key sent twice) goes on as it is, to be refused
        value = {key: option for key, option in value.items() if option is not None}
    return canonical(value, OPTION_FIELDS, where, settings)


def _messages(value: Any, where: str, settings: Settings) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise InvalidField(where, "must be a non-empty list of {role, content} objects")
    if len(value) > settings.max_messages:
        problem = f"too many messages: {len(value)} > {settings.max_messages} (CLAWWEB_MAX_MESSAGES)"
        raise ApiError(400, problem, field=where)
    messages = [canonical(message, MESSAGE, f"{where}[{i}]", settings) for i, message in enumerate(value)]
    _cap_chars(sum(len(m.get("content", "")) + len(m.get("thinking", "")) for m in messages), where, settings)
    return messages


# --- the tables: Ollama's api/types.go structs, the fields clawweb forwards -------------------------------------

# A tool call's function: its name (Ollama's templates render it, and the tool's answer names it again) and its
# arguments, an object (the OpenAI routes decode theirs from a string before this).
CALLED = Struct({"name": Field(_name, required=True), "arguments": Field(_value_object)})
TOOL_CALL = Struct({"function": Field(struct(CALLED), required=True)})
MESSAGE = Struct(
    {
        "role": Field(_role, required=True),
        "content": Field(_text),  # absent in the official client's assistant messages that only call tools
        "thinking": Field(_text),
        "images": Field(_images),
        "tool_calls": Field(list_of(TOOL_CALL, nullable=True)),
        "tool_name": Field(_text),
    }
)
TOOL_FUNCTION = Struct(
    {
        "name": Field(_name, required=True),
        "description": Field(_text),
        "parameters": Field(_value_object),  # a JSON schema: a value, its keys are data
    }
)
TOOL = Struct({"type": Field(_function_type), "function": Field(struct(TOOL_FUNCTION), required=True)})
CHAT = Struct(
    {
        "model": Field(_model, default=lambda settings: settings.default_model),
        "messages": Field(_messages, required=True),
        "stream": Field(_bool),
        "format": Field(_format),
        "options": Field(_options),
        "think": Field(_think),
        "tools": Field(list_of(TOOL, nullable=True)),
        # Not forwarded: on a shared GPU how long the model stays loaded is the operator's (OLLAMA_KEEP_ALIVE),
        # and one client's keep_alive 0 would unload it for everyone (the next answer waits for a reload).
        "keep_alive": Field(_keep_alive, forward=False),
    }
)


def _context(value: Any, where: str, settings: Settings) -> Any:
    """``/api/generate``'s ``context``: the token ids a previous answer returned (deprecated, still sent)."""
    if value is None:
        return OMIT
    if not isinstance(value, list) or not all(_token_id(t) for t in value):
        raise InvalidField(where, "must be a list of token ids (the context a previous answer returned)")
    if len(value) > MAX_CONTEXT:
        raise InvalidField(where, f"must hold at most {MAX_CONTEXT} tokens")
    return value


def _token_id(value: Any) -> bool:
    """A token id as a previous answer returned it: llama.cpp's ``llama_token`` is an int32 and never negative.
    Anything else is no context (an id past the vocabulary is a known way to crash a tokenizer's runner), and one
    past Go's int64 is a 400 from Ollama only after a slot was spent on it."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def _inputs(value: Any, where: str, settings: Settings) -> Any:
    """``/api/embed``'s ``input``: one text or a list of texts, counted and capped."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise InvalidField(where, "must be a string or a list of strings")
    if len(texts) > settings.max_embed_inputs:
        problem = f"too many inputs: {len(texts)} > {settings.max_embed_inputs} (CLAWWEB_MAX_EMBED_INPUTS)"
        raise ApiError(400, problem, field=where)
    _cap_chars(sum(map(len, texts)), where, settings)
    return value


def _dimensions(value: Any, where: str, settings: Settings) -> Any:
    if value is None:
        return OMIT
    if not _has_type(value, _INT) or not 1 <= value <= 65_536:
        raise InvalidField(where, "must be a whole number from 1 to 65536")
    return int(value)


def _cap_chars(chars: int, where: str, settings: Settings) -> None:
    if chars > settings.max_chars:
        problem = f"'{where}' holds {chars} characters, more than {settings.max_chars} (CLAWWEB_MAX_CHARS)"
        raise ApiError(413, problem, field=where)


def _capped_text(value: Any, where: str, settings: Settings) -> str:
    text = _text(value, where, settings)
    _cap_chars(len(text), where, settings)
    return text


# Ollama's GenerateRequest. ``prompt`` may be empty: with nothing else, that loads the model (see api.py).
GENERATE = Struct(
    {
        "model": Field(_model, default=lambda settings: settings.default_model),
        "prompt": Field(_text),
        "suffix": Field(_text),  # fill-in-the-middle: the answer goes between prompt and suffix
        "system": Field(_text),
        "template": Field(_text),
        "context": Field(_context),
        "stream": Field(_bool),
        "raw": Field(_bool),
        "format": Field(_format),
        "images": Field(_images),
        "options": Field(_options),
        "think": Field(_think),
        "keep_alive": Field(_keep_alive, forward=False),  # as for chat; an admin's load request forwards it
    }
)
# Ollama's EmbedRequest (/api/embed) and the older EmbeddingRequest (/api/embeddings).
EMBED = Struct(
    {
        "model": Field(_model, default=lambda settings: settings.default_model),
        "input": Field(_inputs, required=True),
        "truncate": Field(_bool),
        "dimensions": Field(_dimensions),
        "options": Field(_options),
        "keep_alive": Field(_keep_alive, forward=False),
    }
)
EMBEDDINGS = Struct(
    {
        "model": Field(_model, default=lambda settings: settings.default_model),
        "prompt": Field(_capped_text, required=True),
        "options": Field(_options),
        "keep_alive": Field(_keep_alive, forward=False),
    }
)
# Ollama's ShowRequest: ``name`` is its old spelling of ``model``, still read when ``model`` is empty.
SHOW = Struct({"model": Field(_model), "name": Field(_model), "verbose": Field(_bool)})


def validate_options(options: Any, settings: Settings) -> dict[str, Any]:
    """Known options only, each of the right type and within bounds; ``num_ctx`` clamped."""
    return canonical(options, OPTION_FIELDS, "options", settings)


def validate_chat(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Check an Ollama ``/api/chat`` body; return the body to forward: the validated fields only, in canonical
    spelling (model filled in, num_ctx clamped, keep_alive and unknown keys left out)."""
    return canonical(body, CHAT, "", settings)


# --- query parameters -------------------------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]{1,20}")  # ASCII only: str.isdigit() and int() also take "²" and "١"


def query_int(name: str, default: int, low: int, high: int) -> int:
    """The integer query parameter ``name`` (``default`` when absent), ``low``..``high`` or a 400."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise InvalidField(name, f"must be a whole number from {low} to {high}")
    return int(raw)


GENERATE_TEXTS = ("prompt", "suffix", "system", "template")


def validate_generate(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """An Ollama ``/api/generate`` body, checked as ``validate_chat`` checks a chat; its texts together hold at most
    ``CLAWWEB_MAX_CHARS`` characters, as a chat's messages do."""
    forwarded = canonical(body, GENERATE, "", settings)
    _cap_chars(sum(len(forwarded.get(name, "")) for name in GENERATE_TEXTS), "prompt", settings)
    return forwarded


def validate_embed(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """An Ollama ``/api/embed`` body: at most ``CLAWWEB_MAX_EMBED_INPUTS`` texts, ``CLAWWEB_MAX_CHARS`` characters."""
    return canonical(body, EMBED, "", settings)


def validate_embeddings(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The older ``/api/embeddings`` body: one ``prompt``."""
    return canonical(body, EMBEDDINGS, "", settings)


def validate_show(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """An Ollama ``/api/show`` body, as ``{"model", "verbose"?}`` (``name`` read as ``model``, as Ollama does)."""
    shown = canonical(body, SHOW, "", settings)
    model = shown.pop("model", None) or shown.pop("name", None)
    shown.pop("name", None)
    if model is None:
        raise InvalidField("model", "is required")
    return {"model": model, **shown}
