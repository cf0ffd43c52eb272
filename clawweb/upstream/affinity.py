"""Conversation affinity: the next turn of a conversation goes to the host that served the previous one.

Ollama keeps each parallel slot's last prompt (and the answer written after it) in its KV cache; a request whose
messages begin with those skips re-reading them, which for a long history on a 32B model is seconds. So each
answer is remembered, per process, under keys that the next turn of the same conversation will bring:

- the chat page's conversation id (``c:<id>``): every answer of a conversation, whatever was edited in between;
- the whole message list it sent (a hash). The previous request's messages are a prefix of the next turn's (its
  answer and the new question follow, or a tool's answer), so looking up the longest remembered prefix of a
  request's messages but the last finds the host that read most of it, without collecting any answer's text on
  the hot path. The last message is left out: two first questions alike (or one sent twice) are no conversation,
  and spread as before. A prefix that holds no user message (a system prompt alone) is never looked up either.

``Memory`` is a bounded LRU of key -> host index, one per process (with several workers each remembers what it
routed; a turn that lands in another worker is routed as if new). Whether the remembered host is taken is
``hosts.rank``'s rule (up, the model there, at most ``CLAWWEB_AFFINITY_SLACK`` streams busier).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

# hit: went to the remembered host; miss: one was remembered, another host answered (down, busier, failed over);
# none: nothing remembered (a first turn), a single host (no choice to make) or affinity off.
Result = Literal["hit", "miss", "none"]


def _message_bytes(message: Any) -> bytes:
    """One message as hashed: role and content, length-prefixed; any other field (images, tool calls) as JSON."""
    if not isinstance(message, dict):
        return b"?" + json.dumps(message, sort_keys=True, default=str).encode()
    role = str(message.get("role", "")).encode()
    content = str(message.get("content") or "").encode()
    rest = {k: v for k, v in message.items() if k not in ("role", "content") and v}
    extra = json.dumps(rest, sort_keys=True, default=str).encode() if rest else b""
    return b"%d:%b%d:%b%d:%b" % (len(role), role, len(content), content, len(extra), extra)


def keys_of(body: dict[str, Any], conversation: str | None) -> tuple[list[bytes], bytes | None]:
    """(the keys to look up, best first; the key of the whole message list) for one ``/api/chat`` body."""
    lookups: list[bytes] = [b"c:" + conversation.encode()] if conversation else []
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return lookups, None
    running = hashlib.blake2b(str(body.get("model", "")).encode(), digest_size=16)
    prefixes: list[bytes] = []
    asked = False  # a user message so far
    for message in messages:
        running.update(_message_bytes(message))
        asked = asked or (isinstance(message, dict) and message.get("role") == "user")
        prefixes.append(b"m:" + running.copy().digest() if asked else b"")
    whole = prefixes[-1] or None
    lookups.extend(key for key in reversed(prefixes[:-1]) if key)  # the longest prefix first
    return lookups, whole


class Memory:
    """Which host served what, most recent ``entries`` keys (0: affinity off)."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._hosts: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._hosts)

    def lookup(self, keys: Sequence[bytes]) -> int | None:
        """The host index remembered under the first of ``keys`` that is remembered."""
        for key in keys:
            index = self._hosts.get(key)
            if index is not None:
                self._hosts.move_to_end(key)
                return index
        return None

    def remember(self, keys: Sequence[bytes | None], index: int) -> None:
        for key in keys:
            if key is None:
                continue
            self._hosts[key] = index
            self._hosts.move_to_end(key)
        while len(self._hosts) > self.entries:
            self._hosts.popitem(last=False)
