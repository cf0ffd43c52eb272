"""The store's contract, on both engines: every test here runs on SQLite and on a real PostgreSQL (the ``store``
fixture, tests/conftest.py), with the same expectations. Search has its own module (test_search.py), also run
on both; this one holds conversations and their message tree, users, keys, sessions, quotas, shares, imports.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from clawweb.chat import adopt, shares, transfer, tree
from clawweb.storage import INTERRUPTED, Duplicate, Store

DAY = "2026-12-01"


def utf8(*texts: str) -> int:
    return sum(len(text.encode()) for text in texts)


def ask(store: Store, conversation: str, question: str, answer: str, parent: int | None | str = "leaf") -> int:
    """A finished turn under ``parent``; the answer's id."""
    user = store.add_message(conversation, "user", question, parent_id=parent)  # type: ignore[arg-type]
    return int(store.add_message(conversation, "assistant", answer, "m", parent_id=user["id"])["id"])


def begin(store: Store, cid: str, question: str | None = "q", **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A streaming answer (after a new question) started: (the question, the answer)."""
    started = store.start_answer(cid, None, "m", question=question, **options)
    assert not isinstance(started, str), started
    user, answer = started
    assert user is not None
    return user, answer


# --- conversations ----------------------------------------------------------------------------------------------


def test_conversations_are_found_by_their_owner_only(store: Store) -> None:
    ann = store.add_user("ann", "x")["id"]
    mine = store.create_conversation(ann, "qwen3:32b", "mine", "be brief")
    assert mine["title"] == "mine" and mine["system_prompt"] == "be brief" and mine["pinned"] is False
    assert isinstance(mine["created_at"], float) and mine["user_id"] == ann
    assert store.conversation(mine["id"], ann) == mine
    assert store.conversation(mine["id"], None) is None  # open mode does not see an account's
    assert store.conversation(mine["id"], ann + 1) is None
    open_mode = store.create_conversation(None, "m")
    assert store.conversation(open_mode["id"], None) is not None
    assert store.conversation(open_mode["id"], ann) is None


def test_the_list_is_pinned_first_then_newest_and_pages(store: Store) -> None:
    ids = []
    for n in range(5):
        ids.append(store.create_conversation(None, "m", f"c{n}")["id"])
        time.sleep(0.002)  # distinct updated_at
    store.pin(ids[1], True)
    before = store.conversation(ids[1], None)
    assert before is not None and before["pinned"] is True
    listed = [c["id"] for c in store.conversations(None, 10, 0)]
    assert listed == [ids[1], ids[4], ids[3], ids[2], ids[0]]
    assert [c["id"] for c in store.conversations(None, 2, 2)] == [ids[3], ids[2]]
    # A new message moves a conversation up; pinning did not (its updated_at is unchanged).
    assert store.conversation(ids[1], None)["updated_at"] == before["updated_at"]  # type: ignore[index]
    store.add_message(ids[0], "user", "hello")
    assert [c["id"] for c in store.conversations(None, 3, 0)] == [ids[1], ids[0], ids[4]]


def test_update_and_delete(store: Store) -> None:
    made = store.create_conversation(None, "m", "old")
    updated = store.update_conversation(made["id"], title="new", system_prompt="sys", ignored="x")
    assert updated is not None and (updated["title"], updated["system_prompt"]) == ("new", "sys")
    assert updated["updated_at"] >= made["updated_at"]
    assert store.update_conversation("nope", title="x") is None
    ask(store, made["id"], "q", "a")
    shares.create(store, updated, "ann", None)
    store.delete_conversation(made["id"])
    assert store.conversation(made["id"], None) is None
    assert store.execute("SELECT count(*) AS n FROM messages")[0]["n"] == 0
    assert store.execute("SELECT count(*) AS n FROM shares")[0]["n"] == 0


# --- the message tree -------------------------------------------------------------------------------------------


def test_a_tree_of_branches(store: Store) -> None:
    conversation = store.create_conversation(None, "m")
    cid = conversation["id"]
    first = ask(store, cid, "q1", "a1")
    question = store.message(first)["parent_id"]  # type: ignore[index]
    second = store.add_message(cid, "assistant", "a1 again", "m", parent_id=question)["id"]  # regenerated
    ask(store, cid, "q2", "a2")  # under the branch shown: a1 again
    shown = store.conversation(cid, None)
    assert shown is not None
    branch = tree.branch(store, shown)
    assert [m["content"] for m in branch] == ["q1", "a1 again", "q2", "a2"]
    assert branch[0]["siblings"] == [question] and branch[1]["siblings"] == [first, second]
    assert [m["content"] for m in tree.path(store, cid, first)] == ["q1", "a1"]
    assert tree.has_children(store, cid, second) and not tree.has_children(store, cid, first)
    # Showing the first answer's branch, then deleting the branch shown: the newest sibling left is shown.
    assert tree.show(store, cid, first) == first
    assert tree.remove(store, cid, first) == [first]
    leaf = store.conversation(cid, None)["current_id"]  # type: ignore[index]
    assert [m["content"] for m in tree.path(store, cid, leaf)] == ["q1", "a1 again", "q2", "a2"]
    gone = tree.remove(store, cid, second)
    assert len(gone) == 3 and store.conversation(cid, None)["current_id"] == question  # type: ignore[index]
    assert [m["content"] for m in tree.everything(store, cid)] == ["q1"]
    assert tree.show(store, cid, 10**9) is None
    assert tree.message(store, None, question) is not None and tree.message(store, 1, question) is None


def test_an_answer_starts_once_and_not_under_a_deleted_parent(store: Store) -> None:
    cid = store.create_conversation(None, "m")["id"]
    user, answer = begin(store, cid, "hi", system_prompt="new prompt")
    assert user["content"] == "hi" and answer["status"] == "streaming"
    assert store.conversation(cid, None)["system_prompt"] == "new prompt"  # type: ignore[index]
    assert store.start_answer(cid, user["id"], "m") == "busy"
    store.finish_message(answer["id"], content="hello", status="done", tokens=2, ttft_ms=12.5, done_reason="stop")
    finished = store.message(answer["id"])
    assert finished is not None and (finished["content"], finished["tokens"], finished["ttft_ms"]) == ("hello", 2, 12.5)
    assert store.start_answer(cid, 10**9, "m") == "gone"
    reopened = store.reopen_message(answer["id"])
    assert reopened is not None and reopened["status"] == "done"  # the row as it was
    assert store.message(answer["id"])["status"] == "streaming"  # type: ignore[index]
    assert store.reopen_message(answer["id"]) is None  # one at a time


def test_of_racing_starts_exactly_one_answer_begins(database: str) -> None:
    """Eight connections start an answer in one conversation at once: threads, each with a store of its own
    (made in the thread: SQLite's storage thread belongs to the creating thread's gevent hub)."""
    setup = Store(database)
    cid = setup.create_conversation(None, "m")["id"]
    results: list[object] = []
    ready = threading.Barrier(8)

    def start() -> None:
        store = Store(database, mark_interrupted=False)
        try:
            ready.wait()
            results.append(store.start_answer(cid, None, "m", question="race"))
        finally:
            store.close()

    threads = [threading.Thread(target=start) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(results) == 8
        assert sum(1 for r in results if r != "busy") == 1, results
        streaming = setup.execute("SELECT count(*) AS n FROM messages WHERE status = 'streaming'")[0]["n"]
        assert streaming == 1
    finally:
        setup.close()


def test_checkpoints_and_interruptions(store: Store) -> None:
    cid = store.create_conversation(None, "m")["id"]
    _, answer = begin(store, cid)
    done = store.add_message(cid, "assistant", "kept", "m")
    store.checkpoint({answer["id"]: ("part", "thought"), done["id"]: ("overwritten?", "")})
    assert (store.message(answer["id"]) or {})["content"] == "part"
    assert (store.message(done["id"]) or {})["content"] == "kept"  # only streaming answers are checkpointed
    store.mark_interrupted(cid, time.time() - 3600)  # started after that: left alone
    assert (store.message(answer["id"]) or {})["status"] == "streaming"
    store.mark_interrupted(cid, time.time() + 1)
    assert (store.message(answer["id"]) or {})["error"] == INTERRUPTED
    store.interrupt(answer["id"], "recovered text", "")
    assert (store.message(answer["id"]) or {})["content"] == "recovered text"
    store.interrupt(done["id"], "never", "")
    assert (store.message(done["id"]) or {})["content"] == "kept"


def test_a_store_opened_where_answers_were_left_streaming_marks_them(database: str) -> None:
    first = Store(database)
    cid = first.create_conversation(None, "m")["id"]
    _, answer = begin(first, cid)
    first.close()
    kept = Store(database, mark_interrupted=False)
    assert (kept.message(answer["id"]) or {})["status"] == "streaming"
    kept.close()
    again = Store(database)
    assert (again.message(answer["id"]) or {})["error"] == INTERRUPTED
    again.close()


# --- users, keys, sessions --------------------------------------------------------------------------------------


def test_user_names_are_unique_whatever_their_case(store: Store) -> None:
    ann = store.add_user("Ann", "h1")
    assert store.user(name="ann") == ann and store.user(name="ANN") == ann and store.user(user_id=ann["id"]) == ann
    with pytest.raises(Duplicate):
        store.add_user("aNN", "h2")
    store.add_user("bob", "h")
    store.add_user("Carl", "h")
    assert [u["name"] for u in store.users()] == ["Ann", "bob", "Carl"]
    store.update_user(ann["id"], disabled=1, password_hash="h3", name="not changed")
    changed = store.user(user_id=ann["id"])
    assert changed is not None and (changed["disabled"], changed["password_hash"], changed["name"]) == (1, "h3", "Ann")


def test_keys(store: Store) -> None:
    ann, bob = store.add_user("ann", "x")["id"], store.add_user("bob", "x")["id"]
    laptop = store.add_key(ann, "laptop", "cw_abc", "d1")
    batch = store.add_key(ann, "indexer", "cw_def", "d2", admin=True, lane="batch")
    store.add_key(bob, "bob's", "cw_ghi", "d3")
    with pytest.raises(Duplicate):
        store.add_key(bob, "same digest", "cw_x", "d1")
    found = store.key("d2")
    assert found is not None and (found["user_name"], found["admin"], found["lane"]) == ("ann", 1, "batch")
    assert [k["name"] for k in store.keys(ann)] == ["laptop", "indexer"]
    assert len(store.keys()) == 3 and "digest" not in store.keys()[0]
    assert not store.revoke_key(laptop["id"], user_id=bob)  # not bob's
    assert store.revoke_key(laptop["id"], user_id=ann)
    assert not store.revoke_key(laptop["id"])  # revoked already
    assert store.key("d1") is None
    assert store.revoke_key(batch["id"])  # an administrator's revoke names no user
    store.touch_key(laptop["id"])
    assert store.keys(ann)[0]["last_used_at"] is not None


def test_sessions(store: Store) -> None:
    ann = store.add_user("ann", "x")["id"]
    sessions = [store.add_session(f"s{n}", ann, "Firefox", "127.0.0.1") for n in range(4)]
    found = store.session("s0", time.time() - 60)
    assert found is not None and found["user_name"] == "ann" and found["user_disabled"] == 0
    assert store.session("s0", time.time() + 60) is None  # created before the cut: expired
    store.touch_session(sessions[0]["id"], "::1")
    assert (store.session("s0", 0) or {})["address"] == "::1"
    assert store.sessions(ann)[0]["id"] == sessions[0]["id"]  # the one seen last first
    assert store.end_sessions(ann, digest="s1") == 1
    assert store.end_sessions(ann, session_id=sessions[2]["id"]) == 1
    assert store.end_sessions(ann + 1, session_id=sessions[3]["id"]) == 0  # not that user's
    assert store.end_sessions(ann, keep=sessions[3]["id"]) == 1
    assert [s["digest"] for s in store.sessions(ann)] == ["s3"]
    store.end_expired_sessions(time.time() + 1)
    assert store.sessions(ann) == []


# --- quotas -----------------------------------------------------------------------------------------------------


def test_usage_follows_every_write(store: Store) -> None:
    ann = store.add_user("ann", "x")["id"]
    empty = {"conversations": 0, "bytes": 0, "answers_today": 0}
    assert store.usage(ann, DAY) == empty
    made = store.create_conversation(ann, "m", "模型", "sys")
    answer = ask(store, made["id"], "héllo", "wörld")
    expected = utf8("模型", "sys", "héllo", "wörld")
    assert store.usage(ann, DAY) == {**empty, "conversations": 1, "bytes": expected}
    store.update_conversation(made["id"], title="t")
    store.finish_message(answer, content="ok", thinking="思考")
    expected = utf8("t", "sys", "héllo", "ok", "思考")
    assert store.usage(ann, DAY)["bytes"] == expected
    tree.remove(store, made["id"], answer)
    assert store.usage(ann, DAY)["bytes"] == expected - utf8("ok", "思考")
    assert store.usage(None, DAY)["conversations"] == 0  # open mode counts apart
    store.delete_conversation(made["id"])
    assert store.usage(ann, DAY) == empty


def test_answers_per_day_stop_at_the_limit(store: Store) -> None:
    assert [store.count_answer(7, DAY, 2) for _ in range(3)] == [True, True, False]
    assert store.usage(7, DAY)["answers_today"] == 2
    store.uncount_answer(7, DAY)
    assert store.count_answer(7, DAY, 2) and not store.count_answer(7, DAY, 2)
    assert store.count_answer(7, "2026-12-02", 2)
    assert all(store.count_answer(None, DAY, 0) for _ in range(5))  # 0: no limit
    store.uncount_answer(8, DAY)  # nothing counted: stays absent
    assert store.usage(8, DAY)["answers_today"] == 0


def test_adopting_open_mode_conversations_moves_their_figures(store: Store) -> None:
    ann = store.add_user("ann", "x")["id"]
    kept = store.create_conversation(None, "m", "one")
    ask(store, kept["id"], "q", "a")
    store.create_conversation(None, "m", "two")
    before = store.usage(None, DAY)
    assert adopt.ownerless(store) == 2
    assert adopt.adopt(store, ann, [kept["id"]]) == (1, 0)
    assert store.usage(ann, DAY)["bytes"] == utf8("one", "q", "a")
    assert store.usage(None, DAY)["bytes"] == before["bytes"] - utf8("one", "q", "a")
    assert adopt.adopt(store, ann) == (1, 0) and adopt.ownerless(store) == 0
    assert store.usage(ann, DAY)["conversations"] == 2 and store.usage(None, DAY)["conversations"] == 0


# --- shares and imports -----------------------------------------------------------------------------------------


def test_share_links(store: Store) -> None:
    made = store.create_conversation(None, "m", "shared")
    ask(store, made["id"], "q", "a")
    conversation = store.conversation(made["id"], None)
    assert conversation is not None
    token, row = shares.create(store, conversation, "ann", 3600)
    expired, _ = shares.create(store, conversation, "ann", 3600)
    store.execute("UPDATE shares SET expires_at = ? WHERE digest = ?", (time.time() - 1, shares.digest(expired)))
    snapshot = shares.opened(store, token)
    assert snapshot is not None and [m["content"] for m in snapshot["messages"]] == ["q", "a"]
    assert shares.opened(store, expired) is None and shares.opened(store, "nope") is None
    assert [link["id"] for link in shares.live(store, made["id"])] == [row["id"]]
    shares.revoke_all(store, made["id"])
    assert shares.opened(store, token) is None


def test_an_import_is_stored_once_and_exported_whole(store: Store) -> None:
    ann = store.add_user("ann", "x")["id"]
    envelope = transfer.envelope(
        [
            {
                "title": "imported",
                "model": "m",
                "system_prompt": "",
                "pinned": True,
                "source": "chatgpt:42",
                "created_at": 1_700_000_000.0,
                "updated_at": 1_700_000_100.0,
                "messages": [
                    {"role": "user", "content": "q", "parent": None},
                    {"role": "assistant", "content": "a1", "parent": 0},
                    {"role": "assistant", "content": "a2", "parent": 0},
                ],
            }
        ]
    )
    (parsed,) = transfer.parse(json.loads(json.dumps(envelope)), 10_000)
    assert transfer.store_one(store, ann, parsed, "m")
    assert not transfer.store_one(store, ann, parsed, "m")  # the same source again: Duplicate, nothing stored
    assert transfer.store_one(store, None, parsed, "m")  # another owner may have it
    assert "chatgpt:42" in transfer.known_sources(store, ann)
    exported: dict[str, Any] = json.loads(b"".join(transfer.stream_all(store, ann)))
    (conversation,) = exported["conversations"]
    assert conversation["title"] == "imported" and conversation["pinned"] is True
    assert [m["content"] for m in conversation["messages"]] == ["q", "a1", "a2"]
    assert store.usage(ann, DAY)["bytes"] == utf8("imported", "q", "a1", "a2")
