"""The simulator's prompt cache: what a request's time to first token saves when its host read its history already.

Ollama keeps, per parallel slot, the KV cache of the last prompt and the answer written after it; a request whose
messages begin with a slot's takes that slot and reads only the rest. Modelled simply, message by message: the
cache is ``slots`` slots (``--cache-prefixes``), each holding the messages of one request plus its answer; a
request takes a free slot (the one sharing the longest prefix with it), its prompt tokens beyond that prefix are
read at ``--prompt-rate`` tokens/s, and the slot then holds this request and its answer. A slot in use is not
taken: with a system prompt shared by every conversation, a new one would otherwise take a running one's slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(eq=False)
class Slot:
    chain: Chain
    busy: bool = True  # an answer is being written in it: no other request may take it (Ollama's InUse)


class PromptCache:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._slots: list[Slot] = []  # least recently used first

    def take(self, messages: Sequence[Any], answer: str, tokens: Callable[[str], int]) -> tuple[int, int, Slot | None]:
        """(prompt tokens found cached, prompt tokens to read, the slot taken: ``release`` it once answered) for
        ``messages``; the slot then holds them and ``answer``. As Ollama's runner picks one (findLongestCacheSlot):
        the free slot sharing the longest prefix, else an empty one, else the least recently used free one."""
        asked = chain(messages, tokens)
        total = sum(count for _, count in asked)
        if self.slots <= 0:
            return 0, total, None
        best, shared = None, 0
        for slot in self._slots:
            if slot.busy:
                continue
            common = 0
            for (mine, _), (theirs, _) in zip(asked, slot.chain, strict=False):
                if mine != theirs:
                    break
                common += 1
            if best is None or common > shared:
                best, shared = slot, common
        if best is None or (not shared and len(self._slots) < self.slots):
            best, shared = Slot([]), 0  # more answers at once than slots: one more, until released
        else:
            self._slots.remove(best)
        best.chain, best.busy = chain([*messages, {"role": "assistant", "content": answer}], tokens), True
        self._slots.append(best)
        cached = sum(count for _, count in asked[:shared])
        return cached, total - cached, best

    def release(self, slot: Slot | None) -> None:
        if slot is None:
            return
        slot.busy = False
        while len(self._slots) > self.slots:  # the least recently used free ones go
            free = next((s for s in self._slots if not s.busy), None)
            if free is None:
                break
            self._slots.remove(free)
