"""Share links and pins: the API and the shared page under a real gunicorn (accounts off and on, each
CLAWWEB_SHARE), the page in Chromium, and the store underneath (expiry, the list's index)."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from clawweb.chat import shares
from clawweb.errors import ApiError
from clawweb.storage import CONVERSATION_PAGE, Store
from clawweb.storage.engine import Connection

from .support.chromium import SCREENSHOTS
from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway, wait_for
from .support.simproc import SimProcess

ANSWER = "Here is **bold** text.\n\n```python\nprint('shared')\n```\n"
PAGE_HEADERS = {"Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex", "Cache-Control": "private, no-store"}
Headers = dict[str, str]


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.02", "--tps", "200")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    """Accounts off: everyone is the one local user."""
    return start_module_gateway(sim.url)


@pytest.fixture(scope="module")
def team(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    """Accounts on, CLAWWEB_SHARE left at its default (users)."""
    return start_module_gateway(sim.url, auth="required")


@pytest.fixture(scope="module")
def keys(team: Gateway) -> dict[str, Headers]:
    return {name: {"Authorization": f"Bearer {team.new_user(name)}"} for name in ("ann", "bob")}


def db_path(gateway: Gateway) -> str:
    return gateway.env["CLAWWEB_DB"]


def api(gateway: Gateway, method: str, path: str, headers: Headers | None = None, **kwargs: Any) -> requests.Response:
    return requests.request(method, gateway.url + path, headers=headers, timeout=10, **kwargs)


def conversation_with_answer(gateway: Gateway, headers: Headers | None = None, text: str = ANSWER) -> str:
    """A conversation with one question and its finished answer; its id."""
    created = api(gateway, "POST", "/api/conversations", headers, json={"title": "Shared <notes>"})
    assert created.status_code == 201, created.text
    conversation_id = str(created.json()["id"])
    ask(gateway, conversation_id, headers, "Show me", text)
    return conversation_id


def ask(gateway: Gateway, conversation_id: str, headers: Headers | None, question: str, text: str) -> None:
    content = f"{question}\n#sim {json.dumps({'text': text})}"
    posted = api(gateway, "POST", f"/api/conversations/{conversation_id}/messages", headers, json={"content": content})
    assert posted.status_code == 202, posted.text

    def finished() -> bool:
        messages = api(gateway, "GET", f"/api/conversations/{conversation_id}", headers).json()["messages"]
        return bool(messages[-1]["status"] == "done")

    assert wait_for(finished, timeout=15)


def share(gateway: Gateway, conversation_id: str, headers: Headers | None = None, **body: Any) -> str:
    made = api(gateway, "POST", f"/api/conversations/{conversation_id}/share", headers, json=body)
    assert made.status_code == 201, made.text
    url = str(made.json()["url"])
    assert re.fullmatch(r"/s/[A-Za-z0-9_-]{43}", url)
    return url


def open_link(gateway: Gateway, url: str, headers: Headers | None = None) -> requests.Response:
    return requests.get(gateway.url + url, headers=headers, timeout=10, allow_redirects=False)


def raw_contents(page: requests.Response) -> list[str]:
    """The messages' text as the page carries it (the data-raw attributes, HTML-escaped)."""
    return re.findall(r'data-raw="([^"]*)"', page.text)


# --- the link and its page --------------------------------------------------------------------------------------


def test_a_link_opens_a_snapshot_of_the_branch_that_does_not_follow_the_conversation(gateway: Gateway) -> None:
    conversation_id = conversation_with_answer(gateway)
    made = api(gateway, "POST", f"/api/conversations/{conversation_id}/share", json={})
    assert made.status_code == 201 and made.json()["expires_at"] is None  # until revoked
    url = made.json()["url"]
    first = open_link(gateway, url)
    assert first.status_code == 200
    assert {name: first.headers.get(name) for name in PAGE_HEADERS} == PAGE_HEADERS
    assert "<h1>Shared &lt;notes&gt;</h1>" in first.text  # the title, escaped
    assert 'id="composer"' not in first.text and "<textarea" not in first.text  # read-only
    assert raw_contents(first)[1] == ANSWER.replace("'", "&#39;")
    assert "/static/markdown.js" in first.text and "/static/share.js" in first.text

    ask(gateway, conversation_id, None, "And then?", "A later answer.")
    again = open_link(gateway, url)
    assert again.status_code == 200 and len(raw_contents(again)) == 2  # as it was when shared
    assert "A later answer." not in again.text
    assert "A later answer." in open_link(gateway, share(gateway, conversation_id)).text  # a new link: as it is now


def test_only_the_digest_of_the_token_is_stored(gateway: Gateway) -> None:
    conversation_id = conversation_with_answer(gateway)
    token = share(gateway, conversation_id).removeprefix("/s/")
    with sqlite3.connect(db_path(gateway)) as db:
        rows = db.execute("SELECT digest FROM shares WHERE conversation_id = ?", (conversation_id,)).fetchall()
        dump = "\n".join(db.iterdump())
    assert rows == [(hashlib.sha256(token.encode()).hexdigest(),)]
    assert token not in dump


@pytest.mark.parametrize("url", ["/s/nope", "/s/" + "A" * 43, "/s/" + "é" * 43, "/s/" + "x" * 500])
def test_an_unknown_token_is_a_404_page_with_the_same_headers(gateway: Gateway, url: str) -> None:
    page = open_link(gateway, url)
    assert page.status_code == 404
    assert page.headers["Content-Type"].startswith("text/html")
    assert {name: page.headers.get(name) for name in PAGE_HEADERS} == PAGE_HEADERS
    assert "This link does not exist, has expired, or was revoked." in page.text


def test_revoking_closes_every_link_of_the_conversation(gateway: Gateway) -> None:
    conversation_id = conversation_with_answer(gateway)
    links = [share(gateway, conversation_id), share(gateway, conversation_id, expires_in_s=3600)]
    listed = api(gateway, "GET", f"/api/conversations/{conversation_id}/share").json()["shares"]
    assert [sorted(row) for row in listed] == [["created_at", "expires_at", "id"]] * 2
    assert listed[0]["expires_at"] is None and listed[1]["expires_at"] == pytest.approx(listed[1]["created_at"] + 3600)
    assert api(gateway, "DELETE", f"/api/conversations/{conversation_id}/share").status_code == 204
    assert [open_link(gateway, url).status_code for url in links] == [404, 404]
    assert api(gateway, "GET", f"/api/conversations/{conversation_id}/share").json() == {"shares": []}


def test_a_link_expires(gateway: Gateway) -> None:
    conversation_id = conversation_with_answer(gateway)
    url = share(gateway, conversation_id, expires_in_s=1)
    assert wait_for(lambda: open_link(gateway, url).status_code == 404, timeout=5)
    assert api(gateway, "GET", f"/api/conversations/{conversation_id}/share").json() == {"shares": []}


def test_deleting_the_conversation_deletes_its_links(gateway: Gateway) -> None:
    conversation_id = conversation_with_answer(gateway)
    url = share(gateway, conversation_id)
    assert api(gateway, "DELETE", f"/api/conversations/{conversation_id}").status_code == 204
    assert open_link(gateway, url).status_code == 404
    with sqlite3.connect(db_path(gateway)) as db:
        assert db.execute("SELECT count(*) FROM shares WHERE conversation_id = ?", (conversation_id,)).fetchone() == (
            0,
        )


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"expires_in_s": 0}, "'expires_in_s' must be a whole number of seconds from 1 to 31622400"),
        ({"expires_in_s": -5}, "'expires_in_s' must be a whole number"),
        ({"expires_in_s": 1.5}, "'expires_in_s' must be a whole number"),
        ({"expires_in_s": "60"}, "'expires_in_s' must be a whole number"),
        ({"expires_in_s": True}, "'expires_in_s' must be a whole number"),
        ({"expires_in_s": shares.MAX_EXPIRES_IN_S + 1}, "'expires_in_s' must be a whole number"),
        ([60], "JSON object"),
    ],
)
def test_a_wrong_expiry_is_refused_and_makes_no_link(gateway: Gateway, body: Any, problem: str) -> None:
    created = api(gateway, "POST", "/api/conversations", json={})
    conversation_id = created.json()["id"]
    refused = api(gateway, "POST", f"/api/conversations/{conversation_id}/share", json=body)
    assert refused.status_code == 400 and problem in refused.json()["error"]
    assert api(gateway, "GET", f"/api/conversations/{conversation_id}/share").json() == {"shares": []}


def test_a_conversation_has_at_most_max_links_live_links(store: Store) -> None:
    conversation = store.create_conversation(None, "m", title="t")
    for _ in range(shares.MAX_LINKS):
        shares.create(store, conversation, "", None)
    with pytest.raises(ApiError) as refused:
        shares.create(store, conversation, "", None)
    assert refused.value.status == 409 and "revoke them first" in refused.value.message
    shares.revoke_all(store, conversation["id"])
    shares.create(store, conversation, "", None)


def test_an_unknown_conversation_is_a_404(gateway: Gateway) -> None:
    for method in ("POST", "GET", "DELETE"):
        assert api(gateway, method, "/api/conversations/0123456789abcdef/share").status_code == 404


# --- who may open a link: CLAWWEB_SHARE --------------------------------------------------------------------------


def test_users_another_user_opens_a_link_nobody_logged_out_does(team: Gateway, keys: dict[str, Headers]) -> None:
    conversation_id = conversation_with_answer(team, keys["ann"])
    url = share(team, conversation_id, keys["ann"])
    page = open_link(team, url, keys["bob"])
    assert page.status_code == 200 and "Shared by ann on" in page.text
    anonymous = open_link(team, url)
    assert anonymous.status_code == 302 and anonymous.headers["Location"].startswith("/login?next=")
    assert open_link(team, url, {"Accept": "application/json"}).status_code == 401
    assert "bold" not in anonymous.text


def test_users_only_the_owner_makes_lists_and_revokes_links(team: Gateway, keys: dict[str, Headers]) -> None:
    conversation_id = conversation_with_answer(team, keys["ann"])
    url = share(team, conversation_id, keys["ann"])
    path = f"/api/conversations/{conversation_id}/share"
    for method in ("POST", "GET", "DELETE"):
        answer = api(team, method, path, keys["bob"], json={})
        assert answer.status_code == 404 and answer.json() == {"error": f"no conversation '{conversation_id}'"}
        assert api(team, method, path).status_code == 401
    assert open_link(team, url, keys["ann"]).status_code == 200  # bob's DELETE revoked nothing


def test_anyone_opens_a_link_without_logging_in(sim: SimProcess, start_gateway: StartGateway) -> None:
    server = start_gateway(sim.url, auth="required", share="anyone")
    ann = {"Authorization": f"Bearer {server.new_user('ann')}"}
    url = share(server, conversation_with_answer(server, ann), ann)
    page = open_link(server, url)
    assert page.status_code == 200 and "Shared by ann on" in page.text
    assert {name: page.headers.get(name) for name in PAGE_HEADERS} == PAGE_HEADERS
    assert open_link(server, "/s/" + "A" * 43).status_code == 404  # a wrong token: not found, not a login
    assert api(server, "GET", "/api/conversations").status_code == 401  # nothing else opened up


def test_off_makes_no_links_and_opens_none(sim: SimProcess, gateway: Gateway, start_gateway: StartGateway) -> None:
    conversation_id = conversation_with_answer(gateway)
    url = share(gateway, conversation_id)  # made while sharing was on
    server = start_gateway(sim.url, share="off", db=db_path(gateway))  # the same database, sharing off
    refused = api(server, "POST", f"/api/conversations/{conversation_id}/share", json={})
    assert refused.status_code == 403 and "CLAWWEB_SHARE=off" in refused.json()["error"]
    closed = open_link(server, url)
    assert closed.status_code == 404 and "This link does not exist" in closed.text
    assert open_link(gateway, url).status_code == 200  # the link itself is still there
    assert api(server, "DELETE", f"/api/conversations/{conversation_id}/share").status_code == 204  # revoking works
    assert open_link(gateway, url).status_code == 404


# --- pins --------------------------------------------------------------------------------------------------------


def test_pinned_conversations_come_first_and_pinned_is_a_bool(gateway: Gateway) -> None:
    ids = [api(gateway, "POST", "/api/conversations", json={"title": f"pin {n}"}).json()["id"] for n in range(3)]
    before = api(gateway, "GET", f"/api/conversations/{ids[0]}").json()

    def order() -> list[str]:
        listed = api(gateway, "GET", "/api/conversations", params={"limit": 200}).json()["conversations"]
        assert all(isinstance(row["pinned"], bool) for row in listed)
        return [row["id"] for row in listed if row["id"] in ids]

    assert order() == ids[::-1]  # newest first
    pinned = api(gateway, "PATCH", f"/api/conversations/{ids[0]}", json={"pinned": True})
    assert pinned.status_code == 200 and pinned.json()["pinned"] is True
    assert pinned.json()["updated_at"] == before["updated_at"]  # pinning is not an edit
    assert order() == [ids[0], ids[2], ids[1]]
    assert api(gateway, "GET", f"/api/conversations/{ids[0]}").json()["pinned"] is True
    both = api(gateway, "PATCH", f"/api/conversations/{ids[1]}", json={"pinned": True, "title": "renamed"}).json()
    assert both["pinned"] is True and both["title"] == "renamed"
    assert order() == [ids[1], ids[0], ids[2]]
    unpinned = api(gateway, "PATCH", f"/api/conversations/{ids[0]}", json={"pinned": False})
    assert unpinned.json()["pinned"] is False
    assert order() == [ids[1], ids[2], ids[0]]


@pytest.mark.parametrize("value", [1, 0, "true", [], {}])
def test_pinned_must_be_true_or_false(gateway: Gateway, value: Any) -> None:
    conversation_id = api(gateway, "POST", "/api/conversations", json={"title": "keep"}).json()["id"]
    refused = api(gateway, "PATCH", f"/api/conversations/{conversation_id}", json={"pinned": value, "title": "new"})
    assert refused.status_code == 400 and refused.json() == {"error": "'pinned' must be true or false"}
    unchanged = api(gateway, "GET", f"/api/conversations/{conversation_id}").json()
    assert unchanged["pinned"] is False and unchanged["title"] == "keep"  # validation before any change


def test_another_users_conversation_cannot_be_pinned(team: Gateway, keys: dict[str, Headers]) -> None:
    conversation_id = api(team, "POST", "/api/conversations", keys["ann"], json={}).json()["id"]
    assert (
        api(team, "PATCH", f"/api/conversations/{conversation_id}", keys["bob"], json={"pinned": True}).status_code
        == 404
    )
    assert api(team, "GET", f"/api/conversations/{conversation_id}", keys["ann"]).json()["pinned"] is False


# --- the store underneath ----------------------------------------------------------------------------------------


def test_a_link_past_its_expiry_opens_nothing(store: Store) -> None:
    conversation = store.create_conversation(None, "m", title="t")
    store.add_message(conversation["id"], "user", "hello")
    token, row = shares.create(store, conversation, "ann", 3600)
    assert shares.opened(store, token) is not None
    store.execute("UPDATE shares SET expires_at = ? WHERE id = ?", (row["created_at"] - 1, row["id"]))
    assert shares.opened(store, token) is None and shares.live(store, conversation["id"]) == []
    shares.create(store, conversation, "ann", None)  # making a link clears out the expired ones
    assert store.execute("SELECT id FROM shares WHERE id = ?", (row["id"],)) == []


def test_the_snapshot_leaves_out_an_answer_being_written(store: Store) -> None:
    conversation = store.create_conversation(None, "m", title="t", system_prompt="secret instructions")
    store.add_message(conversation["id"], "user", "hello")
    store.add_message(conversation["id"], "assistant", "half an ans", status="streaming")
    found = store.conversation(conversation["id"], None)
    assert found is not None
    snapshot = shares.snapshot(store, found, "ann", 0.0)
    assert [m["content"] for m in snapshot["messages"]] == ["hello"]
    assert "secret instructions" not in json.dumps(snapshot)


def test_the_conversation_list_reads_its_index_without_sorting(store: Store) -> None:
    for owner in (None, 1):
        if store.engine == "sqlite":
            plan = store.execute("EXPLAIN QUERY PLAN " + CONVERSATION_PAGE, (owner, 50, 0))
            details = [row["detail"] for row in plan]
            assert details == ["SEARCH conversations USING INDEX conversations_user (user_id=?)"], details
        elif owner is not None:
            # An empty table would be read whole: what matters is that the index gives the order. (PostgreSQL
            # sorts open mode's conversations, ``user_id IS NULL``: one local user's, a few hundred at most.)

            def explain(db: Connection, owner: int | None = owner) -> list[str]:
                db.execute("SET LOCAL enable_seqscan = off")
                db.execute("SET LOCAL enable_bitmapscan = off")
                return [row[0] for row in db.execute("EXPLAIN " + CONVERSATION_PAGE, (owner, 50, 0))]

            details = store.transaction(explain)
            assert "Index Scan using conversations_user on conversations" in details[1], details
            assert not any("Sort" in line for line in details), details


# --- the page in a browser ---------------------------------------------------------------------------------------


def screenshot(page: Page, name: str) -> None:
    """Saved under tests/artifacts/screenshots/ for a person to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5_000


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("share-desktop-light", {"viewport": {"width": 1200, "height": 800}, "locale": "en-US"}),
        ("share-phone-dark", {"viewport": {"width": 390, "height": 844}, "color_scheme": "dark", "locale": "zh-CN"}),
    ],
)
def test_a_link_opened_in_another_browser_shows_rendered_markdown_and_no_composer(
    browser: Browser, gateway: Gateway, name: str, options: dict[str, Any]
) -> None:
    sharer = browser.new_context(viewport={"width": 1200, "height": 800}, locale="en-US")
    reader = browser.new_context(**options)
    errors: list[str] = []
    try:
        chat = sharer.new_page()
        chat.goto(gateway.url + "/")
        chat.fill("#input", f"Share this\n#sim {json.dumps({'text': ANSWER})}")
        chat.keyboard.press("Enter")
        expect(chat.locator(".message.assistant").last).to_have_attribute("data-status", "done", timeout=15_000)
        conversation_id = chat.evaluate("document.body.dataset.conversationId")
        url = chat.evaluate(
            """async (id) => {
                const csrf = document.querySelector('meta[name="csrf-token"]').content;
                const response = await fetch(`/api/conversations/${id}/share`,
                    {method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: "{}"});
                return (await response.json()).url;
            }""",
            conversation_id,
        )
        page = reader.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(gateway.url + url)
        answer = page.locator(".message.assistant .content.rendered")
        expect(answer.locator("strong")).to_have_text("bold")
        expect(answer.locator("pre code.hljs")).to_contain_text("print('shared')")
        expect(answer.locator(".code-block .copy")).to_be_visible()
        expect(page.locator(".message.user .content")).to_contain_text("Share this")
        assert page.locator("#composer, textarea, #input, .sidebar").count() == 0
        expect(page.locator("h1")).to_contain_text("Share this")
        expect(page.locator(".share-note time")).not_to_have_text(re.compile(r"^\d{4}-\d\d-\d\d$"))  # localized
        screenshot(page, name)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    finally:
        sharer.close()
        reader.close()
    assert errors == []  # no script errors, no CSP violations, no missing files
