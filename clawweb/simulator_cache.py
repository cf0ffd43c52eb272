"""The simulator's prompt cache: what a request's time to first token saves when its host read its history already.

Ollama keeps, per parallel slot, the KV cache of the last prompt and the answer written after it; a request whose
messages begin with a slot's takes that slot and reads only the rest. Modelled simply, message by message: the
cache is ``slots`` entries (``--cache-prefixes``), each the messages of one request plus its answer; a request
takes the entry sharing the longest prefix with it (else the least recently used one), its prompt tokens beyond
that prefix are read at ``--prompt-rate`` tokens/s, and the entry then holds this request and its answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

Chain = list[tuple[bytes, int]]  # per message: the hash of the messages up to it, its prompt tokens


def chain(messages: Sequence[Any], tokens: Callable[[str], int]) -> Chain:
    running = hashlib.blake2b(digest_size=16)
    out: Chain = []
    for message in messages:
        role, content = (
            (str(message.get("role", "")), str(message.get("content") or ""))
            if isinstance(message, dict)
            else ("", str(message))
        )
        running.update(b"%d:%b%d:%b" % (len(role), role.encode(), len(content), content.encode()))
        out.append((running.copy().digest(), tokens(content) + 4))  # 4: the template's tokens around a message
    return out


class PromptCache:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._entries: list[Chain] = []  # least recently used first

    def read(self, messages: Sequence[Any], answer: str, tokens: Callable[[str], int]) -> tuple[int, int]:
        """(prompt tokens found cached, prompt tokens to read) for ``messages``; the slot taken then holds them
        and ``answer``."""
        asked = chain(messages, tokens)
        total = sum(count for _, count in asked)
        if self.slots <= 0:
            return 0, total
        best, shared = None, 0
        for position, entry in enumerate(self._entries):
            common = 0
            for (mine, _), (theirs, _) in zip(asked, entry, strict=False):
                if mine != theirs:
                    break
                common += 1
            if common > shared:
                best, shared = position, common
        if best is not None:
            del self._entries[best]
        elif len(self._entries) >= self.slots:
            del self._entries[0]
        self._entries.append(chain([*messages, {"role": "assistant", "content": answer}], tokens))
        cached = sum(count for _, count in asked[:shared])
        return cached, total - cached
