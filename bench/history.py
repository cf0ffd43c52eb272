"""Benchmark part 6: a team's history. A conversation of 2000 messages in 50 branches opens (the server's answer
to ``GET /api/conversations/<id>``, and the page's time to interactive in Chromium), and search answers over
20000 messages (trigram queries, and a 2-character Chinese word: the short-term index). Each beside its yardstick
in the same run: a conversation of 2 messages, and the same search over a 200-message history.

``.venv/bin/python bench/history.py`` prints the figures as JSON. Loopback only.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from clawweb.storage import Store  # noqa: E402
from clawweb.storage.engine import Connection  # noqa: E402
from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.support.servers import Gateway  # noqa: E402

BRANCHES, PER_BRANCH = 50, 40  # 2000 messages
SEARCH_MESSAGES, PER_CONVERSATION = 20_000, 100
ROUNDS = 200  # requests per figure

WORDS = (
    "the gateway relays every token as it arrives from the model while the page renders markdown and code "
    "blocks with highlighting queue admission slots redis lease worker greenlet nginx buffering timeout "
    "conversation branch sibling regenerate continue export import share search ranking snippet"
).split()
IDENTIFIERS = ["parse_json_object", "StorageUnavailable", "max_active_per_client", "iter_lines", "LeaseRenewer"]
CHINESE = ["你好", "模型", "中文", "搜索", "对话", "服务器", "流式输出", "令牌"]
QUERIES = {
    "a word (trigram index)": "ranking",
    "a code identifier": "parse_json",
    "a 2-character Chinese word (short-term index)": "模型",
}


def sentence(rng: random.Random, words: int = 60) -> str:
    pool = [rng.choice(WORDS) for _ in range(words)]
    pool[rng.randrange(words)] = rng.choice(IDENTIFIERS)
    pool[rng.randrange(words)] = rng.choice(CHINESE)
    return " ".join(pool)


def insert(db: Connection, conversation: str, parent: int | None, role: str, text: str) -> int:
    row = db.execute(
        "INSERT INTO messages (conversation_id, parent_id, role, content, model, status, created_at) "
        "VALUES (?, ?, ?, ?, 'qwen3:32b', 'done', ?) RETURNING id",
        (conversation, parent, role, text, time.time()),
    ).fetchone()
    return int(row[0])


def branched_conversation(store: Store, rng: random.Random) -> str:
    """2000 messages: a first chain, then 49 more branches, each an edit of a random earlier user message
    followed by its own 40 messages (20 turns); the branch shown is the newest."""
    conversation = str(store.create_conversation(None, "qwen3:32b", "A long branched conversation")["id"])

    def build(db: Connection) -> int:
        users: list[tuple[int | None, int]] = []  # (parent, id) of every user message
        leaf: int | None = None
        for branch in range(BRANCHES):
            parent = None if branch == 0 else rng.choice(users)[0]  # a sibling of an earlier user message
            for _ in range(PER_BRANCH // 2):
                user = insert(db, conversation, parent, "user", sentence(rng, 20))
                users.append((parent, user))
                parent = leaf = insert(db, conversation, user, "assistant", sentence(rng))
        db.execute("UPDATE conversations SET current_id = ? WHERE id = ?", (leaf, conversation))
        return int(db.execute("SELECT count(*) FROM messages WHERE conversation_id = ?", (conversation,)).fetchone()[0])

    assert store.transaction(build) == BRANCHES * PER_BRANCH
    return conversation


def linear_conversation(store: Store, rng: random.Random, messages: int, title: str) -> str:
    conversation = str(store.create_conversation(None, "qwen3:32b", title)["id"])

    def build(db: Connection) -> None:
        parent: int | None = None
        for n in range(messages):
            parent = insert(db, conversation, parent, "user" if n % 2 == 0 else "assistant", sentence(rng))
        db.execute("UPDATE conversations SET current_id = ? WHERE id = ?", (parent, conversation))

    store.transaction(build)
    return conversation


def timed_gets(url: str, rounds: int = ROUNDS, **params: str) -> dict[str, float]:
    session = requests.Session()
    session.get(url, params=params, timeout=30).raise_for_status()  # warm: the first one opens files
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        response = session.get(url, params=params, timeout=30)
        samples.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    samples.sort()
    return {
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[int(len(samples) * 0.99) - 1],
        "bytes": len(response.content),
    }


# Time to interactive: the navigation's DOMContentLoaded, or the end of the last long task after it (the page's
# own rendering of the stored messages runs then), whichever is later; read after two quiet seconds.
TTI = """
() => new Promise((resolve) => {
  const nav = performance.getEntriesByType("navigation")[0];
  let last = nav.domContentLoadedEventEnd;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) last = Math.max(last, e.startTime + e.duration);
  }).observe({ type: "longtask", buffered: true });
  setTimeout(() => resolve({ tti_ms: last, articles: document.querySelectorAll("article.message").length }), 2000);
})
"""


def page_tti(base: str, conversation: str, rounds: int = 5) -> dict[str, float]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            samples, articles = [], 0
            for _ in range(rounds):
                context = browser.new_context()
                page = context.new_page()
                page.goto(f"{base}/c/{conversation}", wait_until="load")
                measured = page.evaluate(TTI)
                samples.append(float(measured["tti_ms"]))
                articles = int(measured["articles"])
                context.close()
        finally:
            browser.close()
    return {"tti_p50_ms": statistics.median(samples), "tti_max_ms": max(samples), "articles": articles}


def fill_history(location: str, rng: random.Random | None = None) -> tuple[str, str]:
    """The history searched, in the database at ``location`` (either engine): a conversation of 2000 messages in
    50 branches, one of 2, and ``SEARCH_MESSAGES`` more in conversations of ``PER_CONVERSATION``; the first two's
    ids."""
    rng = rng or random.Random(17)
    store = Store(location)
    try:
        big = branched_conversation(store, rng)
        small = linear_conversation(store, rng, 2, "A short one")
        for n in range(SEARCH_MESSAGES // PER_CONVERSATION):
            linear_conversation(store, rng, PER_CONVERSATION, f"History {n}")
    finally:
        store.close()
    return big, small


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="clawweb-bench-history-"))
    rng = random.Random(17)
    big, small = fill_history(str(work / "clawweb.db"), rng)  # where Gateway puts its database: beside its log
    database_bytes = (work / "clawweb.db").stat().st_size  # what the indexes cost, beside the text
    yard = Path(tempfile.mkdtemp(prefix="clawweb-bench-history-small-"))
    store = Store(str(yard / "clawweb.db"))
    for n in range(2):
        linear_conversation(store, rng, PER_CONVERSATION, f"History {n}")
    store.close()

    # The simulator is not needed: nothing here asks for an answer. An unreachable upstream is fine.
    gateway = Gateway(work / "gw.log", "http://127.0.0.1:9", log_level="warning")
    small_gateway = Gateway(yard / "gw.log", "http://127.0.0.1:9", log_level="warning")
    try:
        result: dict[str, Any] = {
            "open": {
                "2000 messages, 50 branches": timed_gets(f"{gateway.url}/api/conversations/{big}"),
                "2 messages (yardstick)": timed_gets(f"{gateway.url}/api/conversations/{small}"),
            },
            "page": {
                "2000 messages, 50 branches": page_tti(gateway.url, big),
                "2 messages (yardstick)": page_tti(gateway.url, small),
            },
            "search": {},
            "database_bytes": database_bytes,
        }
        for name, query in QUERIES.items():
            result["search"][name] = {
                "20000 messages": timed_gets(f"{gateway.url}/api/search", q=query),
                "200 messages (yardstick)": timed_gets(f"{small_gateway.url}/api/search", q=query),
            }
    finally:
        gateway.stop()
        small_gateway.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
