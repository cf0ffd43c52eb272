"""``clawweb db copy``: an installation made by a real gateway on SQLite (accounts, keys, a login, branches, a
share link, quotas) moved to PostgreSQL and served from there by a real gateway, the same through its API;
back to SQLite; the verification catching a tampered row; and what the copy refuses."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from clawweb.chat import search
from clawweb.storage import Store
from clawweb.storage.copy import CopyRefused, copy
from clawweb.storage.engine import Database, open_database
from clawweb.storage.verify import verify

from .support.factories import StartGateway, StartSimulator
from .support.postgres import Databases
from .support.servers import ROOT, Gateway, wait_for
from .support.simproc import SimProcess, sim_line

PASSWORD = "correct horse battery"
pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@dataclass
class Installation:
    """A stopped gateway's SQLite database, and what its API showed before it stopped."""

    path: Path
    keys: dict[str, dict[str, str]]  # user -> the Authorization header of their key
    browser: requests.Session  # ann's login (a session row)
    conversations: dict[str, list[dict[str, Any]]]  # user -> the list
    trees: dict[str, dict[str, Any]]  # conversation id -> its tree
    branched: str  # ann's conversation with two answers to one question
    share_url: str


def call(url: str, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> requests.Response:
    return requests.request(method, url + path, headers=headers, timeout=10, **kwargs)


def answered(gateway: Gateway, headers: dict[str, str], conversation_id: str) -> bool:
    shown = call(gateway.url, "GET", f"/api/conversations/{conversation_id}", headers).json()
    return shown["generation"] is None and shown["messages"][-1]["status"] == "done"


def ask(gateway: Gateway, headers: dict[str, str], conversation_id: str, text: str, answer: str) -> dict[str, Any]:
    body = {"content": text + sim_line(text=answer), "think": False}
    posted = call(gateway.url, "POST", f"/api/conversations/{conversation_id}/messages", headers, json=body)
    assert posted.status_code == 202, posted.text
    assert wait_for(lambda: answered(gateway, headers, conversation_id), timeout=15)
    return dict(posted.json()["message"])


def conversation(gateway: Gateway, headers: dict[str, str], title: str) -> str:
    made = call(gateway.url, "POST", "/api/conversations", headers, json={"title": title})
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def log_in(url: str, name: str) -> requests.Session:
    browser = requests.Session()
    token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get(url + "/login", timeout=5).text)
    assert token
    data = {"name": name, "password": PASSWORD, "csrf_token": token.group(1), "next": "/"}
    assert browser.post(url + "/login", data=data, allow_redirects=False, timeout=10).status_code == 302
    return browser


def shown(url: str, headers: dict[str, str], installation: Installation) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every user's conversation list and every conversation's tree, as ``url``'s API shows them."""
    lists = {user: call(url, "GET", "/api/conversations", key).json() for user, key in installation.keys.items()}
    trees = {
        item["id"]: call(url, "GET", f"/api/conversations/{item['id']}/tree", key).json()
        for user, key in installation.keys.items()
        for item in lists[user]["conversations"]
    }
    return {user: found["conversations"] for user, found in lists.items()}, trees


@pytest.fixture(scope="module")
def installation(
    start_module_simulator: StartSimulator, start_module_gateway: StartGateway, tmp_path_factory: pytest.TempPathFactory
) -> Installation:
    sim: SimProcess = start_module_simulator("--ttft", "0.01", "--tps", "500")
    path = tmp_path_factory.mktemp("source") / "clawweb.db"
    gateway = start_module_gateway(sim.url, auth="required", db=str(path))
    keys = {name: {"Authorization": f"Bearer {gateway.new_user(name, PASSWORD)}"} for name in ("ann", "bob")}
    ann, bob = keys["ann"], keys["bob"]
    branched = conversation(gateway, ann, "Zebra notes")
    question = ask(gateway, ann, branched, "Tell me about zebras", "Zebras have stripes.")
    regenerated = call(gateway.url, "POST", f"/api/conversations/{branched}/regenerate", ann, json={"think": False})
    assert regenerated.status_code == 202, regenerated.text
    assert wait_for(lambda: answered(gateway, ann, branched), timeout=15)
    ask(gateway, ann, branched, "And their 中文 name?", "斑马")
    ask(gateway, ann, conversation(gateway, ann, "Second"), "Hello", "Hi there.")
    ask(gateway, bob, conversation(gateway, bob, "Bob's"), "Question", "Answer")
    made = call(gateway.url, "POST", f"/api/conversations/{branched}/share", ann, json={})
    assert made.status_code == 201, made.text
    browser = log_in(gateway.url, "ann")
    made_installation = Installation(path, keys, browser, {}, {}, branched, made.json()["url"])
    made_installation.conversations, made_installation.trees = shown(gateway.url, ann, made_installation)
    tree = made_installation.trees[branched]["messages"]
    assert len([m for m in tree if m["parent_id"] == question["id"]]) == 2  # the regenerated branch
    browser.close()  # its kept-alive connection would hold up the gateway's graceful stop
    gateway.stop()  # as an operator would: nothing writes while the copy runs
    return made_installation


def clawweb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawweb", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def opened() -> Iterator[list[Database]]:
    """Databases a test opens, closed at its end."""
    databases: list[Database] = []
    yield databases
    for database in databases:
        database.close()


def test_a_copied_installation_is_served_the_same_from_postgresql(
    installation: Installation,
    postgres_databases: Databases,
    start_module_simulator: StartSimulator,
    start_gateway: StartGateway,
) -> None:
    url = postgres_databases.fresh()
    done = clawweb("db", "copy", "--from", f"sqlite://{installation.path}", "--to", url)
    assert done.returncode == 0, done.stderr
    assert "copied messages: 9" in done.stdout  # 2 questions and 3 answers in ann's first, 2 + 2 in the others
    assert re.search(r"verified 8 tables, \d+ rows, 3 conversations equal\n\Z", done.stdout), done.stdout

    sim = start_module_simulator("--ttft", "0.01", "--tps", "500")
    gateway = start_gateway(sim.url, auth="required", database_url=url)
    ann = installation.keys["ann"]
    assert shown(gateway.url, ann, installation) == (installation.conversations, installation.trees)
    # The same login (its session row), the same password, the same share link.
    assert installation.browser.get(gateway.url + "/api/conversations", timeout=10).status_code == 200
    log_in(gateway.url, "bob").close()
    assert "Zebras have stripes." in installation.browser.get(gateway.url + installation.share_url, timeout=10).text
    installation.browser.close()
    found = call(gateway.url, "GET", "/api/search", ann, params={"q": "zebras"}).json()["results"]
    assert {hit["conversation_id"] for hit in found} == {installation.branched}
    # New rows get new ids: the sequences were set past the copied ones.
    copied_ids = {m["id"] for tree in installation.trees.values() for m in tree["messages"]}
    added = ask(gateway, ann, installation.branched, "One more", "Sure.")
    assert added["id"] > max(copied_ids)
    assert conversation(gateway, ann, "New") not in {c["id"] for c in installation.conversations["ann"]}


def test_back_to_sqlite_searchable_with_the_same_quotas(
    installation: Installation, postgres_databases: Databases, tmp_path: Path, opened: list[Database]
) -> None:
    source = open_database(str(installation.path))
    middle = open_database(postgres_databases.fresh())
    back_path = tmp_path / "back.db"
    back = open_database(f"sqlite://{back_path}")
    opened += [source, middle, back]
    copy(source, middle)
    copied = copy(middle, back)
    assert copied.rows["conversations"] == 3 and copied.streaming == 0
    checked = verify(source, back)
    assert checked.ok and checked.conversations == 3, checked.mismatches
    assert checked.rows["quota_usage"] == 2  # ann's and bob's, recomputed by the triggers, equal to the source's
    store = Store(str(back_path), mark_interrupted=False)
    try:
        ann = store.user(name="ann")
        assert ann is not None
        hits, _ = search.search(store, ann["id"], ["中文"], 10, 0)  # SQLite's FTS5 index, filled by the triggers
        assert [hit["conversation_id"] for hit in hits] == [installation.branched]
    finally:
        store.close()


def test_the_verification_finds_a_tampered_row(installation: Installation, postgres_databases: Databases) -> None:
    url = postgres_databases.fresh()
    assert clawweb("db", "copy", "--from", str(installation.path), "--to", url).returncode == 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE messages SET content = content || '!' WHERE id = (SELECT max(id) FROM messages)")
        conn.execute("UPDATE users SET disabled = 1 WHERE name = 'bob'")
        conn.execute("DELETE FROM shares")
        changed = conn.execute("SELECT conversation_id FROM messages ORDER BY id DESC LIMIT 1").fetchone()
    assert changed is not None
    done = clawweb("db", "verify", "--from", str(installation.path), "--to", url)
    assert done.returncode == 1
    assert "verified 8 tables" in done.stdout and "2 conversations equal" in done.stdout
    assert f"MISMATCH conversation {changed[0]}: its row or its messages differ" in done.stdout
    assert "MISMATCH users: as many rows on both sides (2), not the same rows" in done.stdout
    assert "MISMATCH shares: 1 row(s) in the source, 0 in the target" in done.stdout


def test_a_full_target_two_sqlite_files_and_streaming_answers_are_refused(
    installation: Installation, postgres_databases: Databases, tmp_path: Path, opened: list[Database]
) -> None:
    url = postgres_databases.fresh()
    assert clawweb("db", "copy", "--from", str(installation.path), "--to", url).returncode == 0
    again = clawweb("db", "copy", "--from", str(installation.path), "--to", url)
    assert again.returncode == 1
    assert "nothing copied: the target already holds rows (users, conversations" in again.stderr
    sqlite_only = clawweb("db", "copy", "--from", str(installation.path), "--to", str(tmp_path / "other.db"))
    assert sqlite_only.returncode == 1 and "both are SQLite files" in sqlite_only.stderr
    assert not (tmp_path / "other.db").exists()

    # An answer left streaming (a gateway still running, or one that died mid-answer): refused, or copied as it is.
    streaming = tmp_path / "streaming.db"
    source = Store(str(installation.path), mark_interrupted=False)
    source.backup(str(streaming))
    source.close()
    with_answer = Store(str(streaming), mark_interrupted=False)
    with_answer.add_message(installation.branched, "assistant", "half an ans", "qwen3:32b", "streaming")
    with_answer.close()
    target_url = postgres_databases.fresh()
    refused = clawweb("db", "copy", "--from", str(streaming), "--to", target_url)
    assert refused.returncode == 1 and "1 answer(s) are streaming in the source" in refused.stderr
    target = open_database(target_url)
    opened.append(target)
    assert target.execute("SELECT count(*) AS n FROM users") == [{"n": 0}]  # nothing written
    forced = clawweb("db", "copy", "--force", "--from", str(streaming), "--to", target_url)
    assert forced.returncode == 0, forced.stderr
    assert "1 answer(s) were copied while streaming: their text so far" in forced.stdout
    assert target.execute("SELECT content FROM messages WHERE status = 'streaming'") == [{"content": "half an ans"}]
    again_source = open_database(str(streaming))
    opened.append(again_source)
    with pytest.raises(CopyRefused, match="already holds rows"):
        copy(again_source, target)
