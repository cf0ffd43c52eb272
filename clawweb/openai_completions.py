"""OpenAI's legacy completions (``/v1/completions``) translated to and from Ollama's ``/api/generate``: a prompt
(and a ``suffix``, for fill-in-the-middle) in, ``text_completion`` objects and chunks out.

The sampling fields are the chat's (openai_format.py ``options_of``): the same names, bounds and error messages.
What the legacy API has and Ollama lacks is refused with a 400 naming the field: ``echo`` (Ollama returns only
the new text), ``logprobs``, ``best_of`` and ``n`` above 1, ``logit_bias``. OpenAI's default of 16 tokens for an
absent ``max_tokens`` is not applied: Ollama's own ``/v1/completions`` does not either, and fill-in-the-middle
clients send their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .config import Settings
from .errors import InvalidField
from .openai_format import Answer, finish_reason, options_of, refuse_unsupported

UNSUPPORTED = ("echo", "logprobs", "logit_bias")


def _prompt(prompt: Any) -> str:
    """A string, or a list of one string (what clients send for one prompt); token arrays are not text."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, int | list) for p in prompt):
        raise InvalidField("prompt", "must be text: token arrays are not supported (Ollama tokenizes the text itself)")
    raise InvalidField("prompt", "must be a string, or a list of one string (one completion per request)")


def to_generate(raw: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A legacy completion request as an Ollama ``/api/generate`` body, to be checked by ``validate_generate``."""
    refuse_unsupported(raw, UNSUPPORTED)
    for name in ("n", "best_of"):
        if raw.get(name) not in (None, 1):
            raise InvalidField(name, "must be 1: one completion per request")
    if not isinstance(raw.get("stream", False), bool | None):
        raise InvalidField("stream", "must be true or false")
    body: dict[str, Any] = {"prompt": _prompt(raw.get("prompt")), "stream": bool(raw.get("stream"))}
    if raw.get("model") is not None:
        body["model"] = raw["model"]
    if raw.get("suffix") is not None:
        body["suffix"] = raw["suffix"]  # a wrong type is validate_generate's 400, under the same name
    if options := options_of(raw, settings):
        body["options"] = options
    return body


@dataclass
class TextCompletion(Answer):
    """A legacy completion: each chunk is a ``text_completion`` with the new text in ``choices[0].text``."""

    PREFIX: ClassVar[str] = "cmpl-"
    OBJECT: ClassVar[str] = "text_completion"
    CHUNK: ClassVar[str] = "text_completion"  # OpenAI streams the same object, a piece of the text in each

    def _choice(self, text: str, finish: str | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

    def frames(self, line: dict[str, Any]) -> list[bytes]:
        """Its ``response`` (a thinking model's ``thinking`` has no place in a text completion)."""
        frames = [self._chunk(self._choice(line["response"], None))] if line.get("response") else []
        if line.get("done") is True:
            frames.append(self._chunk(self._choice("", finish_reason(line))))
        return frames

    def whole(self, answer: dict[str, Any]) -> dict[str, Any]:
        return self._whole(self._choice(answer.get("response") or "", finish_reason(answer)), answer)
