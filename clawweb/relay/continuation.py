"""An answer continued on another host after its host failed mid-answer: what to ask the next host, and how its
stream is spliced onto what the client has already been sent.

Ollama continues a chat whose last message is the assistant's (OLLAMA_WIRE.md): the text relayed so far goes as
that message, the next host writes only the rest, and its lines follow the first host's in the one stream. Pure
functions over the relayed lines, which the reader keeps as they pass (a list append per token); they are only
parsed when a host fails.

Thinking: a host that died while the model was thinking (no answer text yet) is not asked to continue the thought.
Ollama cannot: its renderers close a prefilled thought (``<think>...</think>``) and its parsers then read the new
output as thinking or as content depending on the model, so an answer could end up inside ``thinking``. The next
host starts the answer afresh and its new thinking is not relayed (the client has a thought already; a second one
would repeat it in other words): the stream goes on with the answer. Once text has begun, the thought goes along
with it (``thinking`` on the assistant message), so the next host reads what the model had written.

Not continued (the failure is reported as before): ``/api/generate`` (no assistant message to put the text in; a
templated prompt cannot be extended from outside), an answer with ``format`` (the grammar would start a new JSON
value after the partial one), and an answer that has made tool calls.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..upstream.hosts import Host
from ..upstream.wire import model_key


def partial_text(lines: Iterable[bytes]) -> tuple[str, str, bool]:
    """(content, thinking, made tool calls) of the token lines relayed so far."""
    content: list[str] = []
    thinking: list[str] = []
    calls = False
    for line in lines:
        try:
            chunk = json.loads(line)
        except ValueError:
            continue
        message = chunk.get("message") if isinstance(chunk, dict) else None
        if not isinstance(message, dict):
            continue
        content.append(str(message.get("content") or ""))
        thinking.append(str(message.get("thinking") or ""))
        calls = calls or bool(message.get("tool_calls"))
    return "".join(content), "".join(thinking), calls


def continued_body(path: str, body: dict[str, Any], lines: Sequence[bytes]) -> tuple[dict[str, Any], bool] | None:
    """What the next host is sent, and whether it starts afresh (the host died while thinking): None when the answer
    cannot be continued (see the module docstring)."""
    if path != "/api/chat" or body.get("format"):
        return None
    content, thinking, calls = partial_text(lines)
    if calls:
        return None
    if not content:  # nothing written yet, or only thought: the next host starts over (its thinking is not relayed)
        return body, bool(thinking)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    continued = {**body, "messages": [*body["messages"], message]}
    limit = (body.get("options") or {}).get("num_predict")
    if isinstance(limit, int) and limit >= 0:  # the limit is the whole answer's: the next host writes what is left
        continued["options"] = {**body["options"], "num_predict": max(limit - len(lines), 1)}
    return continued, False


def others(hosts: Iterable[Host], model: str, failed: Collection[Host]) -> list[Host]:
    """The hosts that may continue: not failed in this answer, and listing the model (or not known yet)."""
    key = model_key(model)
    return [host for host in hosts if host not in failed and (host.models is None or key in host.models)]


def after_thinking(lines: Iterator[bytes]) -> Iterator[bytes]:
    """A fresh answer's lines without its thinking: those before the first one with anything else (text, a tool
    call, the done line, an error)."""
    for line in lines:
        if not line:
            continue
        if not _thinking_only(line):
            yield line
            yield from lines
            return


def _thinking_only(line: bytes) -> bool:
    try:
        chunk = json.loads(line)
    except ValueError:
        return False
    message = chunk.get("message") if isinstance(chunk, dict) else None
    if not isinstance(message, dict) or chunk.get("done") is not False or "error" in chunk:
        return False
    return bool(message.get("thinking")) and not message.get("content") and not message.get("tool_calls")


@dataclass
class Splice:
    """What the hosts that failed did for this answer, added into the last host's done line so that its counters
    cover the whole answer: ``eval_count`` every token generated (the failed hosts' as the lines relayed from them,
    the last host's as it counts, a hidden fresh thinking included), ``eval_duration`` and ``total_duration`` the
    time spent on every host (the failed hosts' measured here). ``prompt_eval_*`` and ``load_duration`` stay the last
    host's: the prompt it read includes the answer so far."""

    tokens: int = 0
    eval_ns: int = 0
    total_ns: int = 0

    def failed(self, tokens: int, sent_at: float, first_at: float, last_at: float) -> None:
        """A host failed: ``tokens`` relayed from it, the request sent at ``sent_at``, its first line (its headers,
        which Ollama sends with the first token) at ``first_at``, its last sign of life at ``last_at``."""
        self.tokens += tokens
        self.eval_ns += max(0, int((last_at - first_at) * 1e9))
        self.total_ns += max(0, int((last_at - sent_at) * 1e9))

    def final(self, line: bytes) -> bytes:
        """The last host's done line with the failed hosts' part added (unchanged if it is not JSON)."""
        try:
            chunk = json.loads(line)
        except ValueError:
            return line
        if not isinstance(chunk, dict):
            return line
        for name, added in (("eval_count", self.tokens), ("eval_duration", self.eval_ns)):
            chunk[name] = int(chunk.get(name) or 0) + added
        chunk["total_duration"] = int(chunk.get("total_duration") or 0) + self.total_ns
        return json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode()
