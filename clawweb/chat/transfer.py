"""Conversations out and in: Markdown of the branch shown, clawweb's JSON of whole trees, ChatGPT's export.

clawweb's JSON (``FORMAT``, version ``VERSION``)::

    {"format": "clawweb", "version": 1, "exported_at": <unix s>,
     "conversations": [{"id", "title", "model", "system_prompt", "created_at", "updated_at", "pinned",
                        "source", "current_id",
                        "messages": [{"id", "parent_id", "role", "content", "thinking", "model", "status",
                                      "error", "done_reason", "queue_ms", "load_ms", "ttft_ms",
                                      "thinking_ms", "tokens", "tokens_per_s", "created_at"}, ...]}, ...]}

Messages are listed parents first; ids are the exporting database's and only tie ``parent_id`` and
``current_id`` to them (an import gives new ones). An import is recorded in ``conversations.source``
(``clawweb:<id>``, ``chatgpt:<id>``; unique per owner), so sending the same file again imports nothing twice; a
conversation that was itself imported keeps its first source, so it is never imported twice via a detour.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from ..errors import ApiError
from ..storage import FIGURES, Duplicate, Store
from ..storage.engine import Connection
from . import tree

FORMAT, VERSION = "clawweb", 1
MAX_TITLE = 200
ROLES = ("user", "assistant")
STATUSES = ("done", "stopped", "error")
MESSAGE_FIELDS = (
    "id",
    "parent_id",
    "role",
    "content",
    "thinking",
    "model",
    "status",
    "error",
    "done_reason",
    *FIGURES,
    "created_at",
)
CONVERSATION_FIELDS = ("id", "title", "model", "system_prompt", "created_at", "updated_at", "pinned", "source")
# What a ChatGPT message does not say.
BLANK = {"thinking": "", "status": "done", "error": None, "done_reason": None, **dict.fromkeys(FIGURES)}
CHATGPT_TEXT = ("text", "multimodal_text")  # other content types are tools, browsing, code runs: not the chat


# --- out ----------------------------------------------------------------------------------------------------------


def exported(store: Store, conversation: dict[str, Any]) -> dict[str, Any]:
    """One conversation, its whole tree, as an entry of clawweb's JSON."""
    entry = {name: conversation[name] for name in CONVERSATION_FIELDS}
    entry["pinned"] = bool(entry["pinned"])
    entry["current_id"] = conversation["current_id"]
    entry["messages"] = [{name: m[name] for name in MESSAGE_FIELDS} for m in tree.everything(store, conversation["id"])]
    return entry


def envelope(conversations: list[dict[str, Any]]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "exported_at": time.time(), "conversations": conversations}


def stream_all(store: Store, owner: int | None, page: int = 50) -> Iterator[bytes]:
    """Every conversation of ``owner`` as clawweb's JSON, a conversation at a time: memory stays one
    conversation's, however much the owner keeps (a quota allows 500 MB)."""
    yield json.dumps(envelope([]))[: -len("]}")].encode()  # up to the list's "["
    after, first = "", True
    while True:
        rows = store.execute(
            "SELECT * FROM conversations WHERE user_id IS ? AND id > ? ORDER BY id LIMIT ?", (owner, after, page)
        )
        for row in rows:
            yield (("" if first else ",") + json.dumps(exported(store, row), ensure_ascii=False)).encode()
            first = False
        if len(rows) < page:
            break
        after = rows[-1]["id"]
    yield b"]}"


def _details(thinking: str) -> str:
    # A thought that writes "</details>" would end the block early: its "<" is written as an entity.
    safe = thinking.replace("</details", "&lt;/details")
    return f"<details>\n<summary>Thinking</summary>\n\n{safe}\n\n</details>\n\n"


def markdown(store: Store, conversation: dict[str, Any]) -> str:
    """The branch shown, as Markdown: a heading per message, the model's thinking collapsed."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(conversation["created_at"]))
    parts = [f"# {conversation['title'] or 'Conversation'}\n\n", f"*{conversation['model']} · {when}*\n\n"]
    if conversation["system_prompt"]:
        parts.append("**System:**\n\n" + conversation["system_prompt"] + "\n\n")
    for message in tree.branch(store, conversation):
        if message["role"] == "user":
            parts.append("## User\n\n")
        else:
            parts.append(f"## Assistant ({message['model']})\n\n" if message["model"] else "## Assistant\n\n")
        if message["thinking"]:
            parts.append(_details(message["thinking"]))
        parts.append(message["content"] + "\n\n")
    return "".join(parts)


def attachment(title: str, extension: str) -> str:
    """A ``Content-Disposition`` value naming the file after ``title``, whatever the title holds: an ASCII
    ``filename`` of letters, digits and dashes, and the title's own letters in ``filename*`` (RFC 6266)."""
    words = re.findall(r"\w+", title)[:12]
    unicode_name = "-".join(words)[:80] or "conversation"
    ascii_name = "-".join(re.findall(r"[A-Za-z0-9]+", unicode_name))[:80] or "conversation"
    return (
        f'attachment; filename="clawweb-{ascii_name}.{extension}"; '
        f"filename*=UTF-8''{quote(f'clawweb-{unicode_name}.{extension}', safe='')}"
    )


# --- in: what a file holds, checked, as plain conversations ----------------------------------------------------------


class Malformed(ApiError):
    """The file is not what the import takes: a 400 naming where (``conversations[2].messages[5].role``)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(400, f"{where} {problem}")


NUMBER = (int, float)
_KIND_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}


def _get(item: dict[str, Any], key: str, kinds: tuple[type, ...], where: str, default: Any = None) -> Any:
    """``item[key]`` if it is one of ``kinds`` (null or missing: ``default``), else a 400 naming it."""
    value = item.get(key)
    if value is None:
        return default
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise Malformed(f"{where}.{key}", "must be " + ("a number" if float in kinds else _KIND_NAMES[kinds[0]]))
    return value


def from_clawweb(data: dict[str, Any], max_chars: int) -> list[dict[str, Any]]:
    """clawweb's JSON as conversations ready to store (``messages`` parents first, ``parent``/``current`` as
    indexes into them)."""
    if data.get("version") != VERSION:
        raise Malformed("version", f"must be {VERSION} (this clawweb reads version {VERSION} of its format)")
    items = data.get("conversations")
    if not isinstance(items, list):
        raise Malformed("conversations", "must be a list")
    out = []
    for c_index, item in enumerate(items):
        where = f"conversations[{c_index}]"
        if not isinstance(item, dict):
            raise Malformed(where, "must be an object")
        raw_messages = _get(item, "messages", (list,), where, [])
        index_of: dict[Any, int] = {}
        messages = []
        for m_index, raw in enumerate(raw_messages):
            at = f"{where}.messages[{m_index}]"
            if not isinstance(raw, dict):
                raise Malformed(at, "must be an object")
            role = raw.get("role")
            if role not in ROLES:
                raise Malformed(f"{at}.role", f"must be one of {', '.join(ROLES)}")
            parent = raw.get("parent_id")
            if parent is not None and parent not in index_of:
                raise Malformed(f"{at}.parent_id", "must be the id of a message listed before it, or null")
            content, thinking = _get(raw, "content", (str,), at, ""), _get(raw, "thinking", (str,), at, "")
            if len(content) > max_chars or len(thinking) > max_chars:
                raise Malformed(at, f"holds more than {max_chars} characters (CLAWWEB_MAX_CHARS)")
            status = _get(raw, "status", (str,), at, "done")
            messages.append(
                {
                    "parent": None if parent is None else index_of[parent],
                    "role": role,
                    "content": content,
                    "thinking": thinking,
                    "model": _get(raw, "model", (str,), at),
                    # One that was still being written when exported has stopped, as far as this copy knows.
                    "status": status if status in STATUSES else "stopped",
                    "error": _get(raw, "error", (str,), at),
                    "done_reason": _get(raw, "done_reason", (str,), at),
                    **{name: _get(raw, name, (int,) if name == "tokens" else NUMBER, at) for name in FIGURES},
                    "created_at": _get(raw, "created_at", NUMBER, at),
                }
            )
            if "id" in raw:
                index_of[raw["id"]] = len(messages) - 1
        current = item.get("current_id")
        if current is not None and current not in index_of:
            raise Malformed(f"{where}.current_id", "must be the id of one of its messages, or null")
        source = _get(item, "source", (str,), where) or f"clawweb:{_get(item, 'id', (str,), where) or ''}"
        if source == "clawweb:":
            raise Malformed(f"{where}.id", "is missing (it makes a second import of the same file import nothing)")
        out.append(
            {
                "source": source,
                "title": _get(item, "title", (str,), where, "")[:MAX_TITLE],
                "model": _get(item, "model", (str,), where),
                "system_prompt": _get(item, "system_prompt", (str,), where, ""),
                "created_at": _get(item, "created_at", NUMBER, where),
                "updated_at": _get(item, "updated_at", NUMBER, where),
                "pinned": bool(_get(item, "pinned", (bool,), where, False)),
                "current": None if current is None else index_of[current],
                "messages": messages,
            }
        )
    return out


def _chatgpt_text(message: dict[str, Any]) -> str | None:
    """The text of a ChatGPT node worth keeping (a user's or an assistant's visible text), else None."""
    author, content, metadata = message.get("author"), message.get("content"), message.get("metadata")
    role = author.get("role") if isinstance(author, dict) else None
    if role not in ROLES or not isinstance(content, dict) or content.get("content_type") not in CHATGPT_TEXT:
        return None
    if isinstance(metadata, dict) and metadata.get("is_visually_hidden_from_conversation"):
        return None
    parts = content.get("parts")
    text = "".join(part for part in parts if isinstance(part, str)) if isinstance(parts, list) else ""
    return text if text.strip() else None


def _kept_ancestor(mapping: dict[str, Any], kept: dict[str, str], key: Any) -> str | None:
    """The nearest kept node above ``key``; None at the root (a cycle or a missing parent ends the walk too)."""
    seen = {key}
    while True:
        node = mapping.get(key)
        parent = node.get("parent") if isinstance(node, dict) else None
        if parent is None or parent in seen or parent not in mapping:
            return None
        if parent in kept:
            return str(parent)
        seen.add(parent)
        key = parent


def _chatgpt_conversation(item: Any, where: str, max_chars: int) -> dict[str, Any]:
    if not isinstance(item, dict) or not isinstance(item.get("mapping"), dict):
        raise Malformed(where, "must be a ChatGPT conversation (an object with a 'mapping' of its messages)")
    ident = item.get("conversation_id") or item.get("id")
    if not isinstance(ident, str) or not ident:
        raise Malformed(f"{where}.id", "must be the conversation's id (a string)")
    mapping: dict[str, Any] = item["mapping"]
    texts: dict[str, str] = {}  # the nodes kept: their text
    for key, node in mapping.items():
        if not isinstance(node, dict):
            raise Malformed(f"{where}.mapping.{key}", "must be an object")
        text = _chatgpt_text(node["message"]) if isinstance(node.get("message"), dict) else None
        if text is not None and len(text) > max_chars:
            raise Malformed(f"{where}.mapping.{key}", f"holds more than {max_chars} characters (CLAWWEB_MAX_CHARS)")
        if text is not None:
            texts[key] = text
    created = item.get("create_time") if isinstance(item.get("create_time"), NUMBER) else None
    parents = {key: _kept_ancestor(mapping, texts, key) for key in texts}
    children: dict[str | None, list[str]] = {}
    for key, parent in parents.items():
        children.setdefault(parent, []).append(key)
    stamps = {key: mapping[key]["message"].get("create_time") for key in texts}
    when = {key: float(stamp) if isinstance(stamp, NUMBER) else (created or 0.0) for key, stamp in stamps.items()}

    # Parents before children, and otherwise oldest first: message ids grow with time (chat/tree.py).
    order = itertools.count()
    ready = [(when[key], next(order), key) for key in children.get(None, [])]
    heapq.heapify(ready)
    index_of: dict[str, int] = {}
    messages: list[dict[str, Any]] = []
    while ready:
        _, _, key = heapq.heappop(ready)
        message, parent = mapping[key]["message"], parents[key]
        role = message["author"]["role"]
        metadata = message.get("metadata") if isinstance(message.get("metadata"), dict) else {}
        model = metadata.get("model_slug") if role == "assistant" else None
        index_of[key] = len(messages)
        messages.append(
            {
                **BLANK,
                "parent": None if parent is None else index_of[parent],
                "role": role,
                "content": texts[key],
                "model": model if isinstance(model, str) else None,
                "created_at": when[key],
            }
        )
        for child in children.get(key, []):
            heapq.heappush(ready, (when[child], next(order), child))
    shown = item.get("current_node")
    if shown not in texts:  # a tool call's or a hidden node: the message it hangs under
        shown = _kept_ancestor(mapping, texts, shown) if shown in mapping else None
    title, updated = item.get("title"), item.get("update_time")
    return {
        "source": f"chatgpt:{ident}",
        "title": (title if isinstance(title, str) else "")[:MAX_TITLE],
        "model": None,  # ChatGPT's models do not run here: the default model answers from now on
        "system_prompt": "",
        "created_at": created,
        "updated_at": updated if isinstance(updated, NUMBER) else created,
        "pinned": False,
        "current": None if shown is None else index_of.get(shown),
        "messages": messages,
    }


def from_chatgpt(items: list[Any], max_chars: int) -> list[dict[str, Any]]:
    """ChatGPT's ``conversations.json``: each ``mapping`` tree with the nodes that are not chat (the root, system
    and tool messages, hidden ones) left out, their children moved up to the nearest node kept."""
    return [_chatgpt_conversation(item, f"[{n}]", max_chars) for n, item in enumerate(items)]


def parse(data: Any, max_chars: int) -> list[dict[str, Any]]:
    """What an import file holds, as conversations to store; a 400 naming what is wrong otherwise."""
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return from_clawweb(data, max_chars)
    if isinstance(data, list):
        return from_chatgpt(data, max_chars)
    if isinstance(data, dict) and "mapping" in data:  # one conversation of ChatGPT's
        return from_chatgpt([data], max_chars)
    raise ApiError(
        400,
        'expected clawweb\'s export ({"format": "clawweb", ...}) or ChatGPT\'s conversations.json (a list of '
        "conversations, each with a 'mapping' of its messages)",
    )


def size(conversation: dict[str, Any]) -> int:
    """UTF-8 bytes as the quota counts them (quotas.py): title, system prompt, messages' content and thinking."""
    texts = [conversation["title"], conversation["system_prompt"]]
    texts += [text for m in conversation["messages"] for text in (m["content"], m["thinking"])]
    return sum(len(text.encode("utf-8", "surrogatepass")) for text in texts)


# --- in: storing ----------------------------------------------------------------------------------------------------


def known_sources(store: Store, owner: int | None) -> set[str]:
    """The sources ``owner`` has imported, and ``clawweb:<id>`` of each of its own conversations (its own export
    sent back is not a copy of everything)."""
    rows = store.execute("SELECT id, source FROM conversations WHERE user_id IS ?", (owner,))
    return {row["source"] for row in rows if row["source"]} | {f"clawweb:{row['id']}" for row in rows}


def store_one(store: Store, owner: int | None, conversation: dict[str, Any], default_model: str) -> bool:
    """Store one conversation in one transaction; False when ``owner`` has it already (a concurrent import)."""
    now = time.time()

    def write(db: Connection) -> None:
        conversation_id = secrets.token_hex(8)
        created = conversation["created_at"] or now
        db.execute(
            "INSERT INTO conversations (id, user_id, title, model, system_prompt, created_at, updated_at, pinned, "
            "source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                conversation_id,
                owner,
                conversation["title"],
                conversation["model"] or default_model,
                conversation["system_prompt"],
                created,
                conversation["updated_at"] or created,
                int(conversation["pinned"]),
                conversation["source"],
            ),
        )
        ids: list[int] = []
        for m in conversation["messages"]:
            row = db.execute(
                "INSERT INTO messages (conversation_id, parent_id, role, content, thinking, model, status, error, "
                f"done_reason, {', '.join(FIGURES)}, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    conversation_id,
                    None if m["parent"] is None else ids[m["parent"]],
                    m["role"],
                    m["content"],
                    m["thinking"],
                    m["model"],
                    m["status"],
                    m["error"],
                    m["done_reason"],
                    *(m[name] for name in FIGURES),
                    m["created_at"] or created,
                ),
            ).fetchone()
            ids.append(row[0])
        current = conversation["current"]
        leaf = ids[current] if current is not None else (ids[-1] if ids else None)
        db.execute("UPDATE conversations SET current_id = ? WHERE id = ?", (leaf, conversation_id))

    try:
        store.transaction(write)
    except Duplicate:  # the unique (owner, source): imported meanwhile by another request
        return False
    return True
