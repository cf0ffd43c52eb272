"""ChatGPT ``conversations.json`` files of a chosen size, for import tests through the edge and the proxies."""

from __future__ import annotations

import json
from typing import Any


def chatgpt_conversation(key: str, answer: str) -> dict[str, Any]:
    """One conversation in ChatGPT's export format: a question and its answer under the mapping's root."""

    def node(node_id: str, parent: str | None, children: list[str], role: str | None, text: str) -> dict[str, Any]:
        message = None
        if role is not None:
            message = {
                "id": node_id,
                "author": {"role": role},
                "content": {"content_type": "text", "parts": [text]},
                "create_time": 10.0,
            }
        return {"id": node_id, "parent": parent, "children": children, "message": message}

    mapping = {
        "root": node("root", None, ["q"], None, ""),
        "q": node("q", "root", ["a"], "user", f"question {key}"),
        "a": node("a", "q", [], "assistant", answer),
    }
    return {"id": key, "title": f"imported {key}", "create_time": 9.0, "mapping": mapping, "current_node": "a"}


def chatgpt_file(size: int, conversations: int = 1, prefix: str = "c") -> bytes:
    """``conversations`` conversations (two messages each) whose JSON is exactly ``size`` bytes (padded answers)."""
    empty = [chatgpt_conversation(f"{prefix}-{n}", "") for n in range(conversations)]
    spare = size - len(json.dumps(empty).encode())
    assert spare >= 0, f"{size} bytes cannot hold {conversations} conversations"
    pads = [spare // conversations + (1 if n < spare % conversations else 0) for n in range(conversations)]
    data = json.dumps([chatgpt_conversation(f"{prefix}-{n}", "x" * pad) for n, pad in enumerate(pads)]).encode()
    assert len(data) == size
    return data
