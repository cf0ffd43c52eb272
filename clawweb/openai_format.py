"""The OpenAI chat format, translated to and from Ollama's: requests into ``/api/chat`` bodies, answers into
``chat.completion`` objects and ``chat.completion.chunk`` frames, failures into OpenAI's error shape.

Pure translation, no routes (those are in openai_api.py). Anything without an Ollama counterpart here is refused
with a 400 naming the field, rather than silently ignored.
"""

from __future__ import annotations

import re
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .config import Settings
from .errors import InvalidField
from .openai_tools import ollama_calls, ollama_tools, openai_calls, tool_name
from .relay import sse
from .validation import validate_options

DONE = b"data: [DONE]\n\n"
# OpenAI's error ``type`` and ``code`` by status (the clients choose their exception class by status alone).
ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
# OpenAI request field -> Ollama option; checked by the same ``validate_options`` as native requests.
OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",  # the newer name wins when both are sent
    "stop": "stop",
}
THINK = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high"}
# Features with no Ollama counterpart here: refused rather than silently ignored, unless sent empty.
# ``functions``/``function_call`` are the deprecated spelling of tools: no call ids, so no way to answer them.
UNSUPPORTED = tuple(
    "functions function_call logprobs top_logprobs logit_bias audio prediction web_search_options".split()
)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind, default_code = ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code or default_code}}


# --- requests --------------------------------------------------------------------------------------------------------


def _content(content: Any, where: str) -> tuple[str, list[str]]:
    """A message's text and base64 images: a string, or text and ``image_url`` (data: URL) parts."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise InvalidField(where, "must be a string or a list of content parts")
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        url = (part.get("image_url") or {}).get("url") if kind == "image_url" else None
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            texts.append(part[kind])
        elif isinstance(url, str) and re.match(r"data:image/[\w.+-]+;base64,", url):
            images.append(url.split(",", 1)[1])
        else:
            message = "must be a text part, or an image_url part with a base64 data: URL (the gateway fetches nothing)"
            raise InvalidField(f"{where}[{j}]", message)
    return "\n".join(texts), images


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidField("messages", "must be a non-empty list of {role, content} objects")
    messages = []
    names: dict[str, str] = {}  # tool call id -> the function called, for the tool messages that answer it
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant", "tool"):  # "function" (deprecated) gives no call id
            raise InvalidField(f"{where}.role", "must be system, developer, user, assistant or tool")
        content, images = _content(message.get("content"), f"{where}.content")
        converted = {"role": role, "content": content, **({"images": images} if images else {})}
        if role == "assistant" and message.get("tool_calls") is not None:
            converted["tool_calls"] = ollama_calls(message["tool_calls"], f"{where}.tool_calls", names)
        elif role == "tool":
            converted["tool_name"] = tool_name(message, where, names)
        messages.append(converted)
    return messages


def options_of(raw: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The sampling fields of a chat or legacy completion request as Ollama options, errors under their names."""
    options: dict[str, Any] = {}
    for name, key in OPTIONS.items():
        value = raw.get(name)
        if value is None:
            continue
        try:
            options.update(validate_options({key: [value] if isinstance(value, str) else value}, settings))
        except InvalidField as exc:  # named as Ollama's option: say it as the client sent it
            raise exc.renamed(name + exc.field.removeprefix(f"options.{key}")) from None
        if key == "num_predict" and options[key] < 1:
            raise InvalidField(name, "must be at least 1")
    return options


def refuse_unsupported(raw: dict[str, Any], names: tuple[str, ...]) -> None:
    """A 400 naming the first of ``names`` that is sent and not empty (clients send some as false, none or {})."""
    for name in names:
        if raw.get(name) not in (None, False, 0, "none", "auto", [], {}):
            raise InvalidField(name, "is not supported by this gateway")


def include_usage(raw: dict[str, Any]) -> bool:
    """``stream_options.include_usage``: a last chunk with the usage, as OpenAI sends it."""
    stream_options = raw.get("stream_options")
    return isinstance(stream_options, dict) and stream_options.get("include_usage") is True


def _format(form: Any) -> Any:
    """``response_format`` as Ollama's ``format``: "json" for ``json_object``, the schema itself for
    ``json_schema`` (Ollama constrains the output to it; its ``name`` and ``strict`` have no counterpart, and the
    official client's ``parse`` validates the answer against its model anyway)."""
    form = form or {"type": "text"}
    kind = form.get("type") if isinstance(form, dict) else None
    described = form.get("json_schema") if kind == "json_schema" else None
    schema = described.get("schema") if isinstance(described, dict) else None
    if kind == "json_object":
        return "json"
    if isinstance(schema, dict):
        return schema
    if kind != "text":
        raise InvalidField("response_format", "must be text, json_object, or json_schema with a schema")
    return None


def to_ollama(raw: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """An OpenAI chat request as an Ollama ``/api/chat`` body, read field by field by exact name; it still
    passes ``validate_chat``, whose canonical builder makes what Ollama receives (as for native requests)."""
    refuse_unsupported(raw, UNSUPPORTED)
    if raw.get("n") not in (None, 1):
        raise InvalidField("n", "must be 1: one answer per request")
    if not isinstance(raw.get("stream", False), bool | None):
        raise InvalidField("stream", "must be true or false")
    body: dict[str, Any] = {"messages": _messages(raw.get("messages")), "stream": bool(raw.get("stream"))}
    if raw.get("model") is not None:
        body["model"] = raw["model"]
    if options := options_of(raw, settings):
        body["options"] = options
    # ``parallel_tool_calls`` is accepted and not forwarded: Ollama has no such switch (a model makes the calls it
    # makes), and refusing it would refuse clients that send ``true``, which is what Ollama does anyway.
    if (tools := ollama_tools(raw)) is not None:
        body["tools"] = tools
    effort = raw.get("reasoning_effort")
    if effort is not None:
        if effort not in THINK:
            raise InvalidField("reasoning_effort", f"must be one of {', '.join(THINK)}")
        body["think"] = THINK[effort]
    if (form := _format(raw.get("response_format"))) is not None:
        body["format"] = form
    return body


# --- answers ---------------------------------------------------------------------------------------------------------


def finish_reason(final: dict[str, Any]) -> str:
    return "length" if final.get("done_reason") == "length" else "stop"


def _usage(final: dict[str, Any]) -> dict[str, int]:
    """Ollama omits zero counters (``omitempty``), hence the defaults."""
    prompt, completion = final.get("prompt_eval_count") or 0, final.get("eval_count") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass
class Answer(ABC):
    """One answer as OpenAI sends it: what every chunk repeats (its id, creation time and model) and the usage.
    A kind of answer (chat here, text in openai_completions.py) says how Ollama's lines become its chunks."""

    PREFIX: ClassVar[str] = "chatcmpl-"
    OBJECT: ClassVar[str] = "chat.completion"
    CHUNK: ClassVar[str] = "chat.completion.chunk"

    model: str
    include_usage: bool = False
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = self.id or self.PREFIX + secrets.token_hex(12)

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _chunk(self, choice: dict[str, Any]) -> bytes:
        usage = {"usage": None} if self.include_usage else {}  # as OpenAI: null on all but the usage chunk
        return sse.json_frame({**self._head(self.CHUNK), "choices": [choice], **usage})

    def usage_chunk(self, final: dict[str, Any]) -> bytes:
        return sse.json_frame({**self._head(self.CHUNK), "choices": [], "usage": _usage(final)})

    def _whole(self, choice: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        return {**self._head(self.OBJECT), "choices": [choice], "usage": _usage(answer)}

    def opening(self) -> list[bytes]:
        """What goes before the first line's chunks."""
        return []

    @abstractmethod
    def frames(self, line: dict[str, Any]) -> list[bytes]:
        """The chunks for one Ollama line, the finish reason with the last line's."""

    @abstractmethod
    def whole(self, answer: dict[str, Any]) -> dict[str, Any]:
        """The whole answer, from Ollama's ``stream: false`` object."""


@dataclass
class Completion(Answer):
    """A chat answer; the tool calls streamed so far are counted (numbered across the stream's lines; any call
    makes the finish reason "tool_calls", as in Ollama's layer)."""

    calls: int = 0

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self._chunk({"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason})

    def opening(self) -> list[bytes]:
        return [self.chunk({"role": "assistant", "content": ""})]

    def frames(self, line: dict[str, Any]) -> list[bytes]:
        """Its thinking (``reasoning_content``), text and tool calls."""
        message = line.get("message") or {}
        calls = openai_calls(message.get("tool_calls"), self.calls)
        self.calls += len(calls)
        delta = {"reasoning_content": message.get("thinking"), "content": message.get("content"), "tool_calls": calls}
        frames = [self.chunk(delta)] if (delta := {k: v for k, v in delta.items() if v}) else []
        if line.get("done") is True:
            frames.append(self.chunk({}, "tool_calls" if self.calls else finish_reason(line)))
        return frames

    def whole(self, answer: dict[str, Any]) -> dict[str, Any]:
        message = answer.get("message") or {}
        calls = [{k: v for k, v in call.items() if k != "index"} for call in openai_calls(message.get("tool_calls"), 0)]
        # OpenAI's content is null when the model only called tools; "" is an answer that said nothing.
        reply: dict[str, Any] = {"role": "assistant", "content": message.get("content") or (None if calls else "")}
        if message.get("thinking"):
            reply["reasoning_content"] = message["thinking"]
        if calls:
            reply["tool_calls"] = calls
        finish = "tool_calls" if calls else finish_reason(answer)
        return self._whole({"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}, answer)
