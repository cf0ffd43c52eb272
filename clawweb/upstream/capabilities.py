"""Which listed models can chat: the page's model picker must not offer an embedding model.

``/api/tags`` does not say what a model can do; ``/api/show`` does (``capabilities``: ``completion``,
``embedding``, ``tools``...). Its answer is remembered per model digest, which changes only when the model is
pulled again, so the picker asks Ollama about each model once per process, not on every page load.
"""

from __future__ import annotations

from typing import Any

import gevent

from .client import PASS_THROUGH_TIMEOUT_S, OllamaClient

_CAN_CHAT: dict[tuple[str, str], bool] = {}  # (name, digest) -> it can chat


def _can_chat(client: OllamaClient, name: str) -> bool | None:
    """Ask ``/api/show``: None when it cannot say now (unreachable, an error), asked again next time."""
    try:
        response = client.request("POST", "/api/show", {"model": name}, read_timeout=PASS_THROUGH_TIMEOUT_S)
        capabilities = response.json().get("capabilities") if response.status_code == 200 else None
    except Exception:  # unreachable, not JSON: the picker goes on with what it knows
        return None
    if response.status_code != 200:
        return None
    return not isinstance(capabilities, list) or "completion" in capabilities  # an Ollama too old to say: it can


def chat_models(client: OllamaClient, listed: list[dict[str, Any]]) -> list[str]:
    """The names of the models in an ``/api/tags`` listing that can chat, in its order. One Ollama cannot tell
    about now is offered: better a model that refuses to chat than a chat model missing from the list."""
    keys = [(str(m.get("name", "")), str(m.get("digest", ""))) for m in listed if m.get("name")]
    unknown = [key for key in keys if key not in _CAN_CHAT]
    answers = [gevent.spawn(_can_chat, client, name) for name, _ in unknown]
    gevent.joinall(answers)
    for key, answer in zip(unknown, answers, strict=True):
        if answer.successful() and answer.value is not None:
            _CAN_CHAT[key] = answer.value
    return [name for name, digest in keys if _CAN_CHAT.get((name, digest), True)]
