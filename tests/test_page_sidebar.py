"""The chat page's sidebar and conversation menu in a real headless Chromium, against gunicorn and the simulator:
search landing on a message's branch, export and import, paging as the list scrolls, day groups, pins."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from clawweb.simulator import answer_tokens

from .support.chromium import SCREENSHOTS
from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess

DAY = 86_400.0
ROWS = "#conversation-list li[data-id]"
RUNNING = ("queued", "streaming")


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "200")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, heartbeat_s=1, simulator=1)


@pytest.fixture(scope="module")
def crowded(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    """A gateway of its own with 120 conversations made through the API, aged in four groups of 30."""
    server = start_module_gateway(sim.url, simulator=1)
    ids = [new_conversation(server, f"Conversation {n:03}") for n in range(1, 121)]
    now = time.time()
    ages = {0: 40 * DAY, 1: 3 * DAY, 2: DAY, 3: 0.0}  # older, previous 7 days, yesterday, today
    # The API cannot backdate a conversation: age them in the database file (the gateway reads it afresh).
    with sqlite3.connect(str(server.env["CLAWWEB_DB"])) as db:
        for index, cid in enumerate(ids):
            db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now - ages[index // 30] - index, cid))
    return server


def open_page(browser: Browser, url: str, **options: Any) -> tuple[Page, list[str]]:
    settings = {"viewport": {"width": 1200, "height": 800}, "locale": "en-US", "timezone_id": "UTC", **options}
    context = browser.new_context(**settings)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(url)
    return page, errors


@pytest.fixture
def pages(browser: Browser) -> Iterator[list[tuple[Page, list[str]]]]:
    opened: list[tuple[Page, list[str]]] = []
    yield opened
    for page, errors in opened:
        page.context.close()
        assert errors == []  # no script errors, no CSP violations, no missing files


def new_conversation(server: Gateway, title: str | None = None) -> str:
    body = {"title": title} if title else {}
    response = requests.post(server.url + "/api/conversations", json=body, timeout=10)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def say(server: Gateway, cid: str, text: str, tokens: int = 3, parent_id: int | None = None) -> dict[str, Any]:
    """Post a user message, wait for its answer to finish; the user message."""
    body: dict[str, Any] = {"content": f"{text}\n#sim {json.dumps({'tokens': tokens})}"}
    if parent_id is not None:
        body["parent_id"] = parent_id
    response = requests.post(f"{server.url}/api/conversations/{cid}/messages", json=body, timeout=10)
    assert response.status_code == 202, response.text
    generation = response.json()["generation"]["id"]
    deadline = time.monotonic() + 30
    while requests.get(f"{server.url}/api/generations/{generation}", timeout=5).json()["status"] in RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return dict(response.json()["message"])


def branch_ids(server: Gateway, cid: str) -> list[int]:
    return [m["id"] for m in requests.get(f"{server.url}/api/conversations/{cid}", timeout=5).json()["messages"]]


def test_a_chinese_search_hit_opens_its_message_on_its_branch(
    browser: Browser, gateway: Gateway, pages: list[tuple[Page, list[str]]]
) -> None:
    cid = new_conversation(gateway)
    say(gateway, cid, "先打个招呼")
    first_answer = branch_ids(gateway, cid)[-1]
    # The emoji before the word: two UTF-16 code units, one code point (the highlight offsets are UTF-16).
    wanted = say(gateway, cid, "请解释🙂量子纠缠是什么意思", tokens=400)  # a long answer below it
    edited = say(gateway, cid, "换个话题：今天天气怎么样", tokens=400, parent_id=first_answer)  # the edit: a sibling
    assert wanted["id"] not in branch_ids(gateway, cid)  # the hit is on the branch not shown

    page, errors = open_page(browser, gateway.url + "/")
    pages.append((page, errors))
    page.fill("#search", "纠缠")  # two characters: shorter than a trigram
    hit = page.locator(f'#hits a[href="/c/{cid}?m={wanted["id"]}"]')
    expect(hit).to_be_visible()
    expect(hit.locator("mark")).to_have_text(["纠缠"])
    expect(page.locator("#conversation-list")).to_be_hidden()  # results replace the list while searching
    hit.click()

    expect(page).to_have_url(f"{gateway.url}/c/{cid}")  # ?m= is dropped once used
    article = page.locator(f'#messages article[data-id="{wanted["id"]}"]')
    expect(article).to_be_in_viewport()  # scrolled to, though the page opens at the bottom
    expect(article).to_have_class(re.compile(r"\bfound\b"))  # flashed
    expect(page.locator(f'#messages article[data-id="{edited["id"]}"]')).to_have_count(0)
    page.reload()
    expect(page.locator(f'#messages article[data-id="{wanted["id"]}"]')).to_have_count(1)  # the branch stays shown

    # The query is still there after the jump; Escape returns to the list.
    expect(page.locator("#search")).to_have_value("纠缠")
    expect(page.locator("#hits .hit")).not_to_have_count(0)
    page.locator("#search").press("Escape")
    expect(page.locator("#search")).to_have_value("")
    expect(page.locator("#search-results")).to_be_hidden()
    expect(page.locator(f'{ROWS}[data-id="{cid}"]')).to_be_visible()


def test_a_hit_for_another_conversation_message_is_ignored(gateway: Gateway) -> None:
    """``?m=`` of a message elsewhere changes nothing (and is no error)."""
    mine, other = new_conversation(gateway), new_conversation(gateway)
    say(gateway, mine, "one")
    elsewhere = say(gateway, other, "two")
    before = branch_ids(gateway, mine)
    for value in (str(elsewhere["id"]), "nope", "99999999", "-1"):
        assert requests.get(f"{gateway.url}/c/{mine}?m={value}", timeout=5).status_code == 200
    assert branch_ids(gateway, mine) == before


def chatgpt_export() -> list[dict[str, Any]]:
    """ChatGPT's conversations.json: one conversation whose question has two answers (a branch)."""
    now = time.time()

    def node(nid: str, parent: str | None, children: list[str], role: str | None, text: str) -> dict[str, Any]:
        message = None
        if role is not None:
            message = {
                "id": nid,
                "author": {"role": role},
                "create_time": now - 50 + len(nid),
                "content": {"content_type": "text", "parts": [text]},
            }
        return {"id": nid, "message": message, "parent": parent, "children": children}

    mapping = {
        "root": node("root", None, ["q"], None, ""),
        "q": node("q", "root", ["a1", "a2b"], "user", "What is a qubit?"),
        "a1": node("a1", "q", [], "assistant", "A two-level quantum system."),
        "a2b": node("a2b", "q", [], "assistant", "The quantum version of a bit."),
    }
    return [
        {
            "id": "chatgpt-conv-1",
            "conversation_id": "chatgpt-conv-1",
            "title": "Imported from ChatGPT",
            "create_time": now - 60,
            "update_time": now - 30,
            "mapping": mapping,
            "current_node": "a2b",
        }
    ]


def test_export_markdown_then_import_a_chatgpt_export(
    browser: Browser, gateway: Gateway, pages: list[tuple[Page, list[str]]], tmp_path: Path
) -> None:
    cid = new_conversation(gateway, "Export me")
    say(gateway, cid, "Write a haiku about exports", tokens=8)
    page, errors = open_page(browser, f"{gateway.url}/c/{cid}")
    pages.append((page, errors))

    page.click("#conversation-menu-button")
    expect(page.locator("#conversation-menu-items")).to_be_visible()
    with page.expect_download() as download:
        page.click("#export-md")
    saved = download.value.path()
    text = Path(saved).read_text(encoding="utf-8")
    assert "Write a haiku about exports" in text
    assert "".join(answer_tokens(8)).strip() in text
    expect(page.locator("#conversation-menu-items")).to_be_hidden()  # choosing an item closes the menu

    export_file = tmp_path / "conversations.json"
    export_file.write_text(json.dumps(chatgpt_export()), encoding="utf-8")
    with page.expect_response("**/api/import") as answer:
        page.set_input_files("#import-file", str(export_file))
    counts = answer.value.json()
    assert counts["imported"] == 1 and counts["skipped"] == 0 and counts["messages"] >= 3, counts
    expect(page.locator("#import-status")).to_have_text(f"Imported 1, already here 0, messages {counts['messages']}.")
    row = page.locator(ROWS, has_text="Imported from ChatGPT")
    expect(row).to_have_count(1)
    page.set_input_files("#import-file", str(export_file))  # once only
    expect(page.locator("#import-status")).to_have_text("Imported 0, already here 1, messages 0.")
    expect(row).to_have_count(1)
    row.locator("a").click()
    expect(page.locator(".message.assistant .content")).to_have_text("The quantum version of a bit.")  # its branch


def all_rows(page: Page) -> list[dict[str, str]]:
    """Every row with the group label above it."""
    rows: list[dict[str, str]] = page.evaluate(
        """() => {
            let group = null;
            const rows = [];
            for (const li of document.querySelectorAll('#conversation-list > li')) {
                if (li.classList.contains('group-label')) group = li.textContent;
                else rows.push({id: li.dataset.id, title: li.querySelector('a').textContent, group});
            }
            return rows;
        }"""
    )
    return rows


def scroll_to_the_end(page: Page) -> None:
    """Scroll the list down until the last page is in (the list's data-next-offset empties)."""
    for _ in range(20):
        if page.locator('#conversation-list[data-next-offset=""]').count():
            return
        count = page.locator(ROWS).count()
        page.locator("#sidebar-scroll").evaluate("e => e.scrollTop = e.scrollHeight")
        expect(page.locator(ROWS)).not_to_have_count(count)
    raise AssertionError("the list never ended")


def test_the_sidebar_pages_as_it_scrolls_grouped_by_day(
    browser: Browser, crowded: Gateway, pages: list[tuple[Page, list[str]]]
) -> None:
    page, errors = open_page(browser, crowded.url + "/")
    pages.append((page, errors))
    expect(page.locator(ROWS)).to_have_count(50)  # the first page, rendered by the server
    scroll_to_the_end(page)
    rows = all_rows(page)
    titles = [row["title"] for row in rows]
    assert len(titles) == 120 and len({row["id"] for row in rows}) == 120  # all of them, once each
    assert titles == [f"Conversation {n:03}" for n in [*range(91, 121), *range(61, 91), *range(31, 61), *range(1, 31)]]
    groups: dict[str, list[int]] = {row["group"]: [] for row in rows}
    for row in rows:
        groups[row["group"]].append(int(row["title"].split()[1]))
    assert list(groups) == ["Today", "Yesterday", "Previous 7 days", "Older"]
    assert [sorted(numbers) for numbers in groups.values()] == [
        list(range(91, 121)),
        list(range(61, 91)),
        list(range(31, 61)),
        list(range(1, 31)),
    ]


def test_pin_moves_a_row_to_the_top_and_survives_a_reload(
    browser: Browser, crowded: Gateway, pages: list[tuple[Page, list[str]]]
) -> None:
    page, errors = open_page(browser, crowded.url + "/")
    pages.append((page, errors))
    scroll_to_the_end(page)  # "Conversation 005" is far down, on the third page
    row = page.locator(ROWS, has_text="Conversation 005")
    row.hover()
    row.locator(".pin").click()
    expect(page.locator(ROWS).first.locator("a")).to_have_text("Conversation 005")
    expect(page.locator("#conversation-list > li").first).to_have_text("Pinned")
    expect(row.locator(".pin")).to_have_attribute("aria-pressed", "true")
    expect(row.locator(".pin")).to_be_focused()  # the focus moved with the row
    # The same change as the per-user feed then reports it (static/sync.js): the row is in place, and keeps the focus.
    page.evaluate(
        """(row) => ClawwebSidebar.synced({id: row.dataset.id, title: row.querySelector("a").textContent,
                                          updated_at: Number(row.dataset.updated), pinned: true})""",
        row.element_handle(),
    )
    expect(row.locator(".pin")).to_be_focused()

    page.reload()
    expect(page.locator(ROWS).first.locator("a")).to_have_text("Conversation 005")
    expect(page.locator("#conversation-list > li").first).to_have_text("Pinned")
    scroll_to_the_end(page)
    assert [row["title"] for row in all_rows(page)].count("Conversation 005") == 1  # not again further down

    first = page.locator(ROWS).first
    first.hover()
    first.locator(".pin").click()  # unpinned: back among the others
    expect(page.locator("#conversation-list > li").first).not_to_have_text("Pinned")
    assert [row["title"] for row in all_rows(page)].count("Conversation 005") == 1


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("light", {"color_scheme": "light"}),
        ("dark", {"color_scheme": "dark"}),
        ("phone", {"viewport": {"width": 375, "height": 740}, "is_mobile": True, "has_touch": True}),
        ("chinese", {"locale": "zh-CN", "color_scheme": "dark"}),
    ],
)
def test_screenshots(
    browser: Browser, gateway: Gateway, pages: list[tuple[Page, list[str]]], name: str, options: dict[str, Any]
) -> None:
    """The sidebar, a search, the conversation menu and the share dialog, saved under tests/artifacts/screenshots/
    for a person to look at; the asserts catch the obvious."""
    zh = name == "chinese"
    cid = new_conversation(
        gateway, "量子计算入门：从量子比特到纠缠" if zh else "Quantum computing from qubits to entanglement"
    )
    say(gateway, cid, "什么是量子纠缠？" if zh else "What is entanglement, in plain words?", tokens=40)
    pinned = new_conversation(gateway, "每周团队例会记录" if zh else "Weekly team notes")
    requests.patch(f"{gateway.url}/api/conversations/{pinned}", json={"pinned": True}, timeout=5)
    page, errors = open_page(browser, f"{gateway.url}/c/{cid}", **options)
    pages.append((page, errors))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def shot(what: str) -> None:
        path = SCREENSHOTS / f"sidebar-{name}-{what}.png"
        page.screenshot(path=str(path))
        assert path.stat().st_size > 10_000

    phone = name == "phone"
    if phone:
        assert not page.locator("#sidebar").is_visible()  # an overlay, closed
        page.click("#menu")
        expect(page.locator("#sidebar")).to_be_in_viewport()
        expect(page.locator(f'{ROWS}[data-id="{cid}"] .pin')).to_be_visible()  # no hover on a phone
    shot("list")
    if phone:
        page.click("#backdrop", position={"x": 360, "y": 400})
        expect(page.locator("#sidebar")).not_to_be_in_viewport()
    page.click("#conversation-menu-button")
    shot("menu")
    page.click("#share")
    expect(page.locator("#share-url")).to_have_value(re.compile(r"/s/"))
    expect(page.locator("#share-copy")).to_have_text("复制" if zh else "Copy")
    shot("share")
    page.click("#share-revoke")
    expect(page.locator("#share-url")).to_be_disabled()
    page.click("#share-close")
    if phone:
        page.click("#menu")
    page.fill("#search", "纠缠" if zh else "entanglement")
    expect(page.locator("#hits .hit").first).to_be_visible()
    shot("search")
    page.locator("#search").press("Escape")
