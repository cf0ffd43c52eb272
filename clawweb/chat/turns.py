"""Starting an answer in a conversation tree: after a new user message, as a regenerated sibling, or continuing an
answer in place; and the history each sends Ollama (the path root → its parent, never another branch).

Everything that can refuse (one answer at a time, the ids, the body's limits, the quota, admission) is checked
before anything is written; a start that fails after that (a 503) takes back what it wrote, and the conversation
shows the branch it showed before.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from .. import quotas
from ..auth import owner
from ..errors import ApiError
from ..relay.admit import admit
from ..relay.relay import Relay
from ..services import services
from ..validation import validate_chat
from . import tree
from .generations import AnyGeneration, Resumed


def history(conversation: dict[str, Any], message_id: int | None) -> list[dict[str, str]]:
    """What Ollama is sent to answer under ``message_id`` (None: a first message): the system prompt, then the
    path root → that message; answers only when they hold text that was not cut by a failure."""
    path = [] if message_id is None else tree.path(services().store, conversation["id"], message_id)
    if message_id is not None and not path:  # deleted since the caller found it
        raise ApiError(404, f"no message {message_id} in this conversation")
    sent = [
        {"role": m["role"], "content": m["content"]}
        for m in path
        if m["role"] == "user" or (m["status"] in ("done", "stopped") and m["content"])
    ]
    if conversation["system_prompt"]:
        sent.insert(0, {"role": "system", "content": conversation["system_prompt"]})
    return sent


def message_of(conversation: dict[str, Any], message_id: int | None) -> dict[str, Any]:
    """The message ``message_id`` of this conversation (None: its current leaf), or a 404 / 409."""
    if message_id is None:
        message_id = conversation["current_id"]
        if message_id is None:
            raise ApiError(409, "the conversation has no messages yet")
    found = tree.in_conversation(services().store, conversation["id"], message_id)
    if found is None:
        raise ApiError(404, f"no message {message_id} in this conversation")
    return found


def ask(
    conversation: dict[str, Any],
    content: str,
    parent_id: int | None | Literal["leaf"],
    knobs: dict[str, Any],
    system_prompt: str | None = None,
) -> tuple[dict[str, Any], AnyGeneration]:
    """A user message under ``parent_id`` ("leaf": the current leaf; None: a new first message, i.e. the first
    message edited) and its answer; (the user message, the generation). ``system_prompt`` (all three starts take
    it): the conversation's new one, used for this answer and saved with it, or not at all if it is refused."""
    _idle(conversation)
    parent = conversation["current_id"] if parent_id == "leaf" else parent_id
    if parent is not None:
        parent = message_of(conversation, parent)["id"]
    sent = [*history(_prompted(conversation, system_prompt), parent), {"role": "user", "content": content}]
    relay, model = _admitted(conversation, sent, knobs, quotas.size(content) + _growth(conversation, system_prompt))
    user, _, generation = _start(conversation, relay, parent, model, content, system_prompt)
    assert user is not None  # a question was given
    return user, generation


def regenerate(
    conversation: dict[str, Any], message_id: int | None, knobs: dict[str, Any], system_prompt: str | None = None
) -> tuple[dict[str, Any], AnyGeneration]:
    """A new answer beside an answer (None: the current leaf's), which stays; for a user message, a new answer
    to it. (The new answer, the generation.)"""
    _idle(conversation)
    message = message_of(conversation, message_id)
    parent = message["id"] if message["role"] == "user" else message["parent_id"]
    if parent is None:
        raise ApiError(409, f"message {message['id']} answers nothing: there is no question to answer again")
    sent = history(_prompted(conversation, system_prompt), parent)
    relay, model = _admitted(conversation, sent, knobs, _growth(conversation, system_prompt))
    _, answer, generation = _start(conversation, relay, parent, model, None, system_prompt)
    return answer, generation


def resume(
    conversation: dict[str, Any], message_id: int | None, knobs: dict[str, Any], system_prompt: str | None = None
) -> tuple[dict[str, Any], AnyGeneration]:
    """Continue an answer (None: the current leaf) in place: Ollama is sent its text as the last message and
    writes on. Only a leaf answer that stopped short: stopped, cut by ``num_predict`` (done_reason "length"), or
    ended by a failure with some text. It keeps its model; ``knobs`` may set think and options."""
    _idle(conversation)
    message = message_of(conversation, message_id)
    problem = _why_not_continued(conversation, message)
    if problem:
        raise ApiError(409, f"message {message['id']} cannot be continued: {problem}")
    sent = [
        *history(_prompted(conversation, system_prompt), message["parent_id"]),
        {"role": "assistant", "content": message["content"]},
    ]
    knobs = {**knobs, "model": message["model"] or conversation["model"]}
    relay, _ = _admitted(conversation, sent, knobs, _growth(conversation, system_prompt))
    store = services().store
    try:
        before = store.reopen_message(message["id"], system_prompt)
        if before is None:  # another request reopened it since the checks above
            raise ApiError(409, BUSY)
        try:
            generation = services().generations.start(
                conversation["id"], conversation["user_id"], message["id"], relay, Resumed.of(before)
            )
        except BaseException:
            store.finish_message(message["id"], **{k: before[k] for k in ("status", "error", "done_reason")})
            _restore_prompt(conversation, system_prompt)
            raise
    except BaseException:
        relay.close()
        raise
    return {**before, "status": "streaming", "error": None, "done_reason": None}, generation


def _why_not_continued(conversation: dict[str, Any], message: dict[str, Any]) -> str | None:
    if message["role"] != "assistant":
        return "it is not an answer"
    if tree.has_children(services().store, conversation["id"], message["id"]):
        return "the conversation goes on after it (continue its last answer, or regenerate)"
    if message["status"] == "stopped":
        return None
    if message["status"] == "done":
        return None if message["done_reason"] == "length" else "it is complete"
    if message["status"] == "error":
        return None if message["content"] else "it has no text to continue"
    return "it is still being generated"


BUSY = "an answer is still being generated in this conversation; stop it first"


def _idle(conversation: dict[str, Any]) -> None:
    """A 409 while an answer runs. The check that counts is the store's, in the transaction that starts the next
    answer (requests racing past this one); this one refuses early, and marks answers left ``streaming`` by a dead
    process as interrupted (as opening the conversation does), so that they do not block it."""
    generations = services().generations
    if generations.running_for(conversation["id"]) is not None:
        raise ApiError(409, BUSY)
    services().store.mark_interrupted(conversation["id"], time.time() - generations.lease_s)


def _admitted(
    conversation: dict[str, Any], sent: list[dict[str, str]], knobs: dict[str, Any], stored_bytes: int
) -> tuple[Relay, str]:
    """The request validated, the quota checked, the answer admitted: (its relay, the model)."""
    model = knobs.get("model") or conversation["model"]
    body = validate_chat({**knobs, "model": model, "messages": sent, "stream": True}, services().settings)
    quotas.check_storing(owner(), stored_bytes)  # 413 over the quota; 0: refused once over
    return admit(body, conversation=conversation["id"]), model  # admit also counts the answer for today's quota


def _prompted(conversation: dict[str, Any], system_prompt: str | None) -> dict[str, Any]:
    """The conversation as the answer sees it: with the system prompt sent along, if one was."""
    return conversation if system_prompt is None else {**conversation, "system_prompt": system_prompt}


def _growth(conversation: dict[str, Any], system_prompt: str | None) -> int:
    """The bytes a new system prompt adds to what the user stores (0 when it is shorter, or not sent)."""
    if system_prompt is None:
        return 0
    return max(0, quotas.size(system_prompt) - quotas.size(conversation["system_prompt"] or ""))


def _restore_prompt(conversation: dict[str, Any], system_prompt: str | None) -> None:
    """Take back a system prompt saved by a start that then failed."""
    if system_prompt is not None:
        before = (conversation["system_prompt"], conversation["id"])
        services().store.execute("UPDATE conversations SET system_prompt = ? WHERE id = ?", before)


def _start(
    conversation: dict[str, Any],
    relay: Relay,
    parent: int | None,
    model: str,
    question: str | None = None,
    system_prompt: str | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any], AnyGeneration]:
    """The question (if any) and a streaming answer written under ``parent`` in one transaction, then the answer
    started: (the question or None, the answer, its generation). When that fails (a 409 or 404 from the store's
    own check, a 503), the slot is given back, and what was written is taken back: the conversation shows what
    it showed, from where it was in the list."""
    store = services().store
    try:
        started = store.start_answer(conversation["id"], parent, model, question, system_prompt)
        if started == "busy":
            raise ApiError(409, BUSY)
        if started == "gone":
            raise ApiError(404, f"no message {parent} in this conversation")
        user, answer = started
        try:
            generation = services().generations.start(conversation["id"], conversation["user_id"], answer["id"], relay)
        except BaseException:  # it leaves nothing behind to answer 409 for
            tree.remove(store, conversation["id"], (user or answer)["id"])
            store.execute(
                "UPDATE conversations SET current_id = ?, updated_at = ? WHERE id = ?",
                (conversation["current_id"], conversation["updated_at"], conversation["id"]),
            )
            _restore_prompt(conversation, system_prompt)
            raise
    except BaseException:
        relay.close()  # give the slot back: nothing will run it
        raise
    return user, answer, generation
