"""Search: the pure parts (terms, FTS5 quoting, snippets) in-process, the ranking and owner scope over a Store on
both engines (SQLite's FTS5, PostgreSQL's pg_trgm: the same expectations), and ``GET /api/search`` under the
real gunicorn with two users."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from clawweb.chat import search, search_postgres, search_sqlite, tree
from clawweb.errors import InvalidField
from clawweb.storage import Store, spaced
from clawweb.storage.engine import Connection
from clawweb.storage.migrations import SQLITE as MIGRATIONS

from .support.factories import StartGateway, StartSimulator
from .support.postgres import Databases
from .support.servers import Gateway

HOSTILE = [
    '"',
    '""',
    "*",
    "a*",
    "NEAR(",
    "NEAR(a b)",
    "OR",
    "a OR b",
    "-",
    "-a",
    "'",
    "\\",
    "%",
    "_",
    "^x",
    "(",
    ")",
    "col:x",
    "content:abc",
    "{a b}",
    "a AND",
    "NOT",
    "\u202e",
    "𝔘𝔫𝔦",
]


def test_terms_are_split_on_whitespace_and_control_characters_and_deduplicated() -> None:
    assert search.terms("  Foo\tbar\x00baz foo ") == ["Foo", "bar", "baz"]
    assert search.terms("中文") == ["中文"]


@pytest.mark.parametrize(
    ("q", "problem"),
    [
        (None, "is required"),
        ("", "must hold something"),
        ("\x00\x01 \n", "must hold something"),
        ("x" * 10_000, "longer than 500"),
        (" ".join(f"w{i}" for i in range(17)), "more than 16 words"),
    ],
)
def test_a_query_that_cannot_be_searched_is_a_400_naming_q(q: str | None, problem: str) -> None:
    with pytest.raises(InvalidField) as refused:
        search.terms(q)
    assert refused.value.status == 400 and refused.value.field == "q" and problem in refused.value.message


def test_each_term_is_one_quoted_fts5_string_and_like_wildcards_are_escaped() -> None:
    assert search_sqlite.match_expression(['say "hi"', "NEAR(", "OR"]) == '"say ""hi""" "NEAR(" "OR"'
    assert search.like_pattern("50%_a\\") == "%50\\%\\_a\\\\%"


def test_a_snippet_is_plain_text_around_the_first_match_with_utf16_offsets() -> None:
    text = "x" * 300 + " the 🦊 Quick\n\n brown FOX " + "y" * 300
    shown, highlights = search.snippet(text, ["quick", "fox"])
    assert shown.startswith("…") and shown.endswith("…") and "\n" not in shown
    # JavaScript's slice: the fox emoji is two UTF-16 code units.
    utf16 = shown.encode("utf-16-le")
    assert [utf16[2 * a : 2 * b].decode("utf-16-le") for a, b in highlights] == ["Quick", "FOX"]
    assert search.snippet("<b>no match</b>", ["zzz"]) == ("<b>no match</b>", [])


def conversation(store: Store, owner: int | None, title: str, *texts: str) -> dict[str, Any]:
    made = store.create_conversation(owner, "m", title)
    for n, text in enumerate(texts):
        store.add_message(made["id"], "user" if n % 2 == 0 else "assistant", text)
    return made


def found(store: Store, owner: int | None, q: str, limit: int = 20, offset: int = 0) -> list[tuple[str, int | None]]:
    results, _ = search.search(store, owner, search.terms(q), limit, offset)
    return [(hit["conversation_id"], hit["message_id"]) for hit in results]


def test_titles_come_first_then_messages_by_bm25_and_only_the_owners(store: Store) -> None:
    ann, bob = store.add_user("ann", "x")["id"], store.add_user("bob", "x")["id"]
    titled = conversation(store, ann, "Zebra facts", "nothing here")
    other = conversation(store, ann, "misc", "one zebra among many other words in a long sentence", "zebra zebra zebra")
    conversation(store, bob, "zebra", "zebra")  # bob's: never in ann's results
    hits = found(store, ann, "ZEBRA")
    assert hits[0] == (titled["id"], None)
    messages = tree.everything(store, other["id"])
    assert hits[1:] == [(other["id"], messages[1]["id"]), (other["id"], messages[0]["id"])]  # denser first
    assert found(store, None, "zebra") == []  # open mode's own (none)


def test_a_term_in_more_than_common_messages_ranks_newest_first(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """bm25 for a term in a few messages; newest first once it is in more than COMMON (ranking them all costs)."""
    made = conversation(store, None, "misc", "zebra zebra zebra", "a zebra", "one zebra among many other words")
    dense, sparse, sparsest = (m["id"] for m in tree.everything(store, made["id"]))
    assert [m for _, m in found(store, None, "zebra")] == [dense, sparse, sparsest]  # by bm25: denser first
    monkeypatch.setattr(search, "COMMON", 2)
    assert [m for _, m in found(store, None, "zebra")] == [sparsest, sparse, dense]  # newest first
    assert [m for _, m in found(store, None, "zebra zebra")] == [sparsest, sparse, dense]
    monkeypatch.setattr(search, "COMMON", 3)  # at the bound: still ranked
    assert [m for _, m in found(store, None, "zebra")] == [dense, sparse, sparsest]
    assert [m for _, m in found(store, None, "zebra nowhere")] == []  # together: in no message


def test_two_character_chinese_and_one_character_terms_match_through_the_short_index(store: Store) -> None:
    made = conversation(store, None, "", "我想学习中文", "好的", "50% off_sale")
    messages = tree.everything(store, made["id"])
    assert found(store, None, "中文") == [(made["id"], messages[0]["id"])]
    assert found(store, None, "好") == [(made["id"], messages[1]["id"])]
    assert found(store, None, "%") == [(made["id"], messages[2]["id"])]  # a literal percent, not a wildcard
    assert found(store, None, "_") == [(made["id"], messages[2]["id"])]
    assert found(store, None, "学习中文 想") == [(made["id"], messages[0]["id"])]  # both indexes: ANDed
    assert found(store, None, "学习中文 好") == [] and found(store, None, "学习中文 文想") == []


def test_the_short_index_holds_each_character_and_adjacent_pair_once_spaced() -> None:
    assert spaced("模型") == "\x01模\x01型\x01" and spaced("") == "\x01\x01" and spaced(None) is None
    assert search_sqlite.short_expression(["模", "模型", '"a']) == '"\x01模\x01" "模\x01型" """\x01a"'


SHORT_TEXTS = ["模型很好用", "模型", "模", "abcde", "xy", "x"]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("模", [0, 1, 2]),  # at the start; the whole message (模)
        ("很", [0]),  # in the middle
        ("用", [0]),  # at the end
        ("模型", [0, 1]),  # at the start; the whole message (模型)
        ("很好", [0]),
        ("好用", [0]),
        ("型模", []),  # both characters there, not in this order
        ("模用", []),  # both there, not side by side
        ("a", [3]),
        ("c", [3]),
        ("e", [3]),
        ("ab", [3]),
        ("cd", [3]),
        ("de", [3]),
        ("ae", []),
        ("ed", []),
        ("x", [4, 5]),  # the whole message (x), the start of another
        ("xy", [4]),
        ("y", [4]),
        ("z", []),
        ("模 型", [0, 1]),
        ("模 ab", []),  # in two different messages: ANDed within one
    ],
)
def test_short_terms_match_at_the_start_middle_end_and_as_the_whole_message(
    store: Store, q: str, expected: list[int]
) -> None:
    made = conversation(store, None, "", *SHORT_TEXTS)
    ids = [m["id"] for m in tree.everything(store, made["id"])]
    assert found(store, None, q) == [(made["id"], ids[n]) for n in reversed(expected)]  # newest first


def test_a_sqlite_store_in_memory_keeps_its_short_index_too() -> None:
    """``:memory:`` (a connection of its own, no file): the short index's function is registered there too."""
    store = Store(":memory:")
    try:
        made = conversation(store, None, "", *SHORT_TEXTS)
        ids = [m["id"] for m in tree.everything(store, made["id"])]
        assert found(store, None, "模型") == [(made["id"], ids[1]), (made["id"], ids[0])]
        store.delete_conversation(made["id"])
        index_is_consistent(store)
        assert found(store, None, "模") == []
    finally:
        store.close()


@pytest.mark.parametrize(
    ("q", "expected"),
    [("h", [0]), ("H", [0]), ("wo", [0]), ("WO", [0]), ("lD", [0]), ("à", [1]), ("ÀÉ", [1]), ("éx", [1]), ("Σσ", [2])],
)
def test_short_terms_fold_case_as_the_trigram_tokenizer_does(store: Store, q: str, expected: list[int]) -> None:
    made = conversation(store, None, "", "Hello WORLD", "àÉX", "σΣ")
    ids = [m["id"] for m in tree.everything(store, made["id"])]
    hits = found(store, None, q)
    assert hits == [(made["id"], ids[n]) for n in reversed(expected)]
    assert search.search(store, None, [q], 20, 0)[0][0]["highlights"]  # the snippet marks it, whatever the case


def index_is_consistent(store: Store) -> None:
    """Both message indexes pass FTS5's own integrity check, and the short index holds exactly the (trigram,
    message) pairs an index built afresh from the stored messages holds (its integrity check cannot compare a
    contentless index with the text: a 'delete' given the wrong values goes unnoticed there). SQLite's alone:
    PostgreSQL's trigram indexes are over the table's own column, kept by PostgreSQL, with nothing to drift."""
    if store.engine != "sqlite":
        return
    indexed = "FROM messages WHERE status != 'streaming'"
    # Against the text too (rank 1) only when nothing streams: messages_search leaves out what is being written.
    streaming = store.execute("SELECT count(*) AS n FROM messages WHERE status = 'streaming'")[0]["n"]
    store.execute(
        f"INSERT INTO messages_search (messages_search, rank) VALUES ('integrity-check', {int(not streaming)})"
    )
    store.execute("INSERT INTO messages_short (messages_short, rank) VALUES ('integrity-check', 1)")
    store.execute("DROP TABLE IF EXISTS temp.fresh")
    store.execute(
        "CREATE VIRTUAL TABLE temp.fresh USING fts5 (content, content = '', detail = none, tokenize = trigram)"
    )
    store.execute(f"INSERT INTO fresh (rowid, content) SELECT id, clawweb_spaced(content) {indexed}")
    for name, table in (("live", "main, messages_short"), ("built", "temp, fresh")):
        store.execute(f"DROP TABLE IF EXISTS temp.{name}")
        store.execute(f"CREATE VIRTUAL TABLE temp.{name} USING fts5vocab ({table}, 'instance')")
    difference = store.execute(
        "SELECT * FROM (SELECT term, doc FROM temp.live EXCEPT SELECT term, doc FROM temp.built) "
        "UNION ALL SELECT * FROM (SELECT term, doc FROM temp.built EXCEPT SELECT term, doc FROM temp.live)"
    )
    assert difference == []
    docs = store.execute("SELECT count(DISTINCT doc) AS n FROM temp.live")[0]["n"]
    assert docs == store.execute(f"SELECT count(*) AS n {indexed}")[0]["n"]  # every message there, each once


def test_updates_and_deletes_keep_the_short_index_consistent(store: Store) -> None:
    kept = conversation(store, None, "", "老的文字 old", "不变 same")
    gone = conversation(store, None, "", "删掉的对话 dropped")
    old, same = tree.everything(store, kept["id"])
    index_is_consistent(store)
    store.finish_message(old["id"], content="新的内容 fresh")  # an edit of the text
    answer = store.add_message(kept["id"], "assistant", "", status="streaming", parent_id=same["id"])
    store.checkpoint({answer["id"]: ("流式 partial", "")})
    store.finish_message(answer["id"], content="流式 partial 完成", status="done")
    store.reopen_message(answer["id"])  # continued: out of the index while it streams again
    store.checkpoint({answer["id"]: ("流式 partial 完成 续写", "")})
    store.finish_message(answer["id"], content="流式 partial 完成 续写", status="stopped")
    store.delete_conversation(gone["id"])
    index_is_consistent(store)
    assert found(store, None, "老") == [] and found(store, None, "ol") == [] and found(store, None, "old") == []
    assert found(store, None, "新的") == found(store, None, "fr") == [(kept["id"], old["id"])]
    assert found(store, None, "删") == [] and found(store, None, "对话") == [] and found(store, None, "dr") == []
    assert found(store, None, "续写") == [(kept["id"], answer["id"])]
    tree.remove(store, kept["id"], same["id"])  # the message and the answer under it
    index_is_consistent(store)
    assert found(store, None, "续写") == [] and found(store, None, "不变") == []
    assert found(store, None, "新") == [(kept["id"], old["id"])]


def test_a_message_holding_the_separator_is_still_found_right(store: Store) -> None:
    made = conversation(store, None, "", "a\x01b 模\x01型")
    (message,) = tree.everything(store, made["id"])
    assert found(store, None, "a") == found(store, None, "模") == [(made["id"], message["id"])]
    assert found(store, None, "ab") == [] and found(store, None, "模型") == []  # not side by side in the text
    index_is_consistent(store)


def test_a_migrated_database_has_its_messages_in_the_short_index(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:4], start=1):
        old.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    old.execute("INSERT INTO conversations (id, model, created_at, updated_at) VALUES ('c', 'm', 1, 1)")
    old.execute("INSERT INTO messages (conversation_id, role, content, created_at) VALUES ('c', 'user', '量子', 1)")
    old.execute(
        "INSERT INTO messages (conversation_id, role, content, status, created_at) "
        "VALUES ('c', 'user', '量', 'streaming', 2)"
    )
    old.close()
    store = Store(str(path), mark_interrupted=False)
    try:
        assert [hit["message_id"] for hit in search.search(store, None, ["量"], 20, 0)[0]] == [1]
        index_is_consistent(store)
    finally:
        store.close()
    shell = sqlite3.connect(path)  # another program than clawweb: reads, but cannot write messages
    try:
        assert shell.execute("SELECT content FROM messages WHERE id = 1").fetchone() == ("量子",)
        with pytest.raises(sqlite3.OperationalError, match="no such function: clawweb_spaced"):
            shell.execute("UPDATE messages SET content = 'x' WHERE id = 1")
    finally:
        shell.close()


def test_paging_runs_over_titles_then_messages(store: Store) -> None:
    made = [conversation(store, None, f"apple {n}", f"apple pie {n}") for n in range(3)]
    everything = found(store, None, "apple", limit=50)
    assert len(everything) == 6 and all(m is None for _, m in everything[:3])
    pages = [found(store, None, "apple", limit=4), found(store, None, "apple", limit=4, offset=4)]
    assert pages[0] + pages[1] == everything
    _, more = search.search(store, None, ["apple"], 4, 0)
    assert more and {c for c, _ in everything} == {m["id"] for m in made}


@pytest.mark.parametrize("q", HOSTILE)
def test_hostile_queries_are_text_never_fts5_syntax(store: Store, q: str) -> None:
    made = conversation(store, None, "", f"before {q} after", "plain")
    hits = found(store, None, q)
    assert (made["id"], tree.everything(store, made["id"])[0]["id"]) in hits


def test_an_answer_still_streaming_is_found_once_it_is_done(store: Store) -> None:
    made = store.create_conversation(None, "m")
    answer = store.add_message(made["id"], "assistant", "streaming text", status="streaming")
    assert found(store, None, "streaming") == [] and found(store, None, "te") == []
    store.finish_message(answer["id"], content="finished streaming text", status="done")
    assert found(store, None, "streaming") == [(made["id"], answer["id"])]


def test_like_wildcards_and_the_escape_character_are_literal(store: Store) -> None:
    """``%``, ``_`` and ``\\`` are what PostgreSQL's ``ILIKE`` (and SQLite's ``LIKE``) read as syntax: escaped, short
    and long terms alike match only themselves."""
    made = conversation(store, None, "", "50% off", "5000 off", "a_b", "axb", "back\\slash", "backslash")
    ids = [m["id"] for m in tree.everything(store, made["id"])]
    for q, expected in (
        ("50%", [0]),
        ("0%", [0]),
        ("%", [0]),
        ("a_b", [2]),
        ("_b", [2]),
        ("_", [2]),
        ("k\\s", [4]),
        ("\\", [4]),
        ("%%", []),
        ("__", []),
    ):
        assert found(store, None, q) == [(made["id"], ids[n]) for n in reversed(expected)], q


def test_a_chinese_two_character_word_with_a_long_term_and_alone(store: Store) -> None:
    made = conversation(store, None, "模型笔记", "这个模型很好用", "大语言模型的训练", "训练数据", "模 型")
    ids = [m["id"] for m in tree.everything(store, made["id"])]
    assert found(store, None, "模型") == [(made["id"], None), (made["id"], ids[1]), (made["id"], ids[0])]
    assert found(store, None, "语言模型 训练") == [(made["id"], ids[1])]  # long through the index, short filters
    assert found(store, None, "训练 数据") == [(made["id"], ids[2])]
    assert found(store, None, "笔记 模型") == [(made["id"], None)]  # the title alone holds both


def test_short_and_long_terms_together_are_anded_and_ranked_by_the_long_ones(store: Store) -> None:
    made = conversation(store, None, "", "zebra ab", "zebra zebra zebra ab", "ab only", "zebra alone")
    ids = [m["id"] for m in tree.everything(store, made["id"])]
    assert found(store, None, "ab zebra") == [(made["id"], ids[1]), (made["id"], ids[0])]  # denser first
    assert found(store, None, "ZEBRA Ab") == found(store, None, "ab zebra")
    assert found(store, None, "zebra qz") == [] and found(store, None, "ly zebra") == []


def test_a_deleted_conversation_is_never_found(store: Store) -> None:
    ann = store.add_user("ann", "x")["id"]
    kept = conversation(store, ann, "kept zebra", "a zebra here 中文")
    gone = conversation(store, ann, "gone zebra", "a zebra there 中文")
    store.delete_conversation(gone["id"])
    assert {c for c, _ in found(store, ann, "zebra")} == {kept["id"]}
    assert {c for c, _ in found(store, ann, "中文")} == {kept["id"]}
    assert found(store, ann, "gone") == [] and found(store, ann, "there") == []


def test_an_answer_streaming_again_is_not_found_until_it_ends(store: Store) -> None:
    made = store.create_conversation(None, "m")
    answer = store.add_message(made["id"], "assistant", "first zebra", status="done")
    store.reopen_message(answer["id"])  # continued: written again, so not a hit meanwhile
    store.checkpoint({answer["id"]: ("first zebra and more 中文", "")})
    assert found(store, None, "zebra") == [] and found(store, None, "中文") == [] and found(store, None, "z") == []
    store.finish_message(answer["id"], content="first zebra and more 中文", status="stopped")
    assert found(store, None, "zebra") == found(store, None, "中文") == [(made["id"], answer["id"])]


@pytest.fixture
def postgres_store(postgres_databases: Databases) -> Iterator[Store]:
    """A store on PostgreSQL alone, for what only PostgreSQL has (a planner choosing the trigram index)."""
    opened = Store(postgres_databases.fresh())
    yield opened
    opened.close()


@pytest.mark.integration
@pytest.mark.postgres
def test_postgresql_reads_the_trigram_index_for_a_long_term(postgres_store: Store) -> None:
    """A long term's hits can come from the GIN trigram index: the queries' shape lets the planner use it (the
    partial index's own condition, ``ILIKE``), for the ranked query and the count that chooses the ranking, for
    both kinds of owner. Forbidden to read the table whole or any other index whole (what a few rows make
    cheapest), the planner must find that plan or fail the test."""
    store = postgres_store
    ann = store.add_user("ann", "x")["id"]
    for n in range(20):
        conversation(store, ann if n % 2 else None, f"talk {n}", f"message {n} about zebras", f"answer {n}")
    store.execute("ANALYZE")

    def explain(sql: str, names: dict[str, Any]) -> list[str]:
        def run(db: Connection) -> list[str]:
            db.execute("SET LOCAL enable_seqscan = off")
            db.execute("SET LOCAL enable_indexscan = off")  # a GIN index is read through a bitmap only
            return [row[0] for row in db.execute("EXPLAIN " + sql, names)]

        return store.transaction(run)

    for owner in (None, ann):
        sql, names = search_postgres.message_query(owner, ["zebra"], ["ab"], True, 20, 0)
        plan = explain(sql, names)
        assert any("Bitmap Index Scan on messages_content_trgm" in line for line in plan), "\n".join(plan)
    count, names = search_postgres.count_query(["zebra"])
    plan = explain(count, names)
    assert any("Bitmap Index Scan on messages_content_trgm" in line for line in plan), plan
    assert [m for _, m in found(store, ann, "zebras")] and len(found(store, None, "zebras")) == 10


# --- over HTTP -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(start_module_simulator: StartSimulator, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(start_module_simulator().url, auth="required")


@pytest.fixture(scope="module")
def keys(gateway: Gateway) -> dict[str, dict[str, str]]:
    return {name: {"Authorization": f"Bearer {gateway.new_user(name)}"} for name in ("alice", "bob")}


def imported(gateway: Gateway, headers: dict[str, str], title: str, *texts: str) -> None:
    messages = [
        {"id": n, "parent_id": n - 1 if n else None, "role": "user" if n % 2 == 0 else "assistant", "content": t}
        for n, t in enumerate(texts)
    ]
    entry = {"id": f"{title}-{time.time()}", "title": title, "model": "m", "messages": messages}
    body = {"format": "clawweb", "version": 1, "conversations": [entry]}
    response = requests.post(gateway.url + "/api/import", json=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text


def test_search_over_http_finds_the_callers_own_and_refuses_bad_parameters(
    gateway: Gateway, keys: dict[str, dict[str, str]]
) -> None:
    imported(gateway, keys["alice"], "Notes", "how to say 中文", "你好 <b>world</b>")
    imported(gateway, keys["bob"], "Bob", "中文 for bob")

    def get(who: str, **params: Any) -> requests.Response:
        return requests.get(gateway.url + "/api/search", params=params, headers=keys[who], timeout=10)

    body = get("alice", q="中文").json()
    assert [hit["snippet"] for hit in body["results"]] == ["how to say 中文"] and body["next_offset"] is None
    hit = body["results"][0]
    assert hit["title"] == "Notes" and hit["role"] == "user" and hit["highlights"] == [[11, 13]]
    shown = requests.get(f"{gateway.url}/api/conversations/{hit['conversation_id']}", headers=keys["alice"], timeout=10)
    assert hit["message_id"] in [m["id"] for m in shown.json()["messages"]]
    assert get("alice", q="world").json()["results"][0]["snippet"] == "你好 <b>world</b>"  # text, as it was written
    assert len(get("bob", q="中文").json()["results"]) == 1
    for params, status in (
        ({"q": "中文", "limit": "0"}, 400),
        ({"q": "中文", "limit": "51"}, 400),
        ({"q": "中文", "offset": "-1"}, 400),
        ({}, 400),
        ({"q": "x" * 1000}, 400),
        ({"q": "x" * 10_000}, 414),  # gunicorn's own: a request line over its 4094 bytes
        *(({"q": q}, 200) for q in HOSTILE),
    ):
        response = get("alice", **params)
        assert response.status_code == status, (params, response.text)
        if status != 414:
            assert "error" in response.json() if status == 400 else "results" in response.json()
    assert requests.get(gateway.url + "/api/search", params={"q": "中文"}, timeout=10).status_code == 401
