"""The chat page's behaviour as people use it, in Debian's Chromium against gunicorn and the simulator: the system
prompt sent with a message, Think remembered, Regenerate only where it can run, the scroll-down button, Esc stops,
a new chat's empty state, and the phone's drawer, model picker and row buttons."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, Route, expect

from .support.chromium import SCREENSHOTS
from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess, sim_line

PHONE: dict[str, Any] = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
ROWS = "#conversation-list li[data-id]"


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.1", "--tps", "50", "--model", "qwen3:32b", "--model", "qwen2.5-coder:7b")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, heartbeat_s=1, simulator=1)


Open = Callable[..., Page]


@pytest.fixture
def open_page(browser: Browser, gateway: Gateway, sim: SimProcess) -> Iterator[Open]:
    """``open_page(path, **context options)``: a page in a fresh context; at the end, none may have had a script
    error, a CSP violation or a failed request."""
    sim.reset()
    opened: list[tuple[Page, list[str]]] = []

    def open_(path: str = "/", **options: Any) -> Page:
        settings = {"viewport": {"width": 1200, "height": 800}, "locale": "en-US", **options}
        context = browser.new_context(**settings)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(gateway.url + path)
        opened.append((page, errors))
        return page

    yield open_
    for page, errors in opened:
        page.context.close()
        assert errors == []


def ask(page: Page, text: str, directive: dict[str, Any] | None = None) -> None:
    page.fill("#input", text + sim_line(**(directive or {})))
    page.keyboard.press("Enter")


def wait_status(page: Page, status: str, timeout: float = 20_000) -> None:
    expect(page.locator(".message.assistant").last).to_have_attribute("data-status", status, timeout=timeout)


def conversation_id(page: Page) -> str:
    expect(page).to_have_url(re.compile(r"/c/\w+$"))
    return page.url.rsplit("/", 1)[1]


def stored(gateway: Gateway, cid: str) -> dict[str, Any]:
    return dict(requests.get(f"{gateway.url}/api/conversations/{cid}", timeout=5).json())


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"behave-{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000


def test_an_unsaved_system_prompt_goes_with_the_message_and_is_shown_saved(
    open_page: Open, gateway: Gateway, sim: SimProcess
) -> None:
    page = open_page()
    page.click(".system-prompt summary")
    page.fill("#system-prompt", "Answer in French.")
    expect(page.locator("#system-prompt-status")).to_have_text("Not saved yet: it is saved with your next message.")
    ask(page, "Hello")  # Save was never clicked
    wait_status(page, "done")
    assert sim.stats()["last_request"]["messages"][0] == {"role": "system", "content": "Answer in French."}
    expect(page.locator("#system-prompt-status")).to_have_text("Saved with your message.")
    shot(page, "system-prompt-saved")
    cid = conversation_id(page)
    assert stored(gateway, cid)["system_prompt"] == "Answer in French."

    page.fill("#system-prompt", "Answer in German.")  # edited again in an open conversation, then a regenerate
    first_answer = page.locator(".message.assistant").get_attribute("data-id") or ""
    page.locator(".message.assistant .regenerate").click()
    expect(page.locator(".message.assistant")).not_to_have_attribute("data-id", first_answer)
    wait_status(page, "done")
    assert sim.stats()["last_request"]["messages"][0]["content"] == "Answer in German."
    assert stored(gateway, cid)["system_prompt"] == "Answer in German."
    page.reload()
    expect(page.locator("#system-prompt")).to_have_value("Answer in German.")
    expect(page.locator("#system-prompt-status")).to_have_text("")


def test_think_is_remembered_per_conversation_and_for_a_new_chat(open_page: Open, sim: SimProcess) -> None:
    page = open_page()
    think = page.locator("#think")
    expect(think).to_be_checked()  # the default, before any choice
    think.uncheck()
    ask(page, "Without thinking")
    wait_status(page, "done")
    assert sim.stats()["last_request"]["think"] is False
    without = conversation_id(page)
    page.reload()
    expect(think).not_to_be_checked()
    page.goto(page.url.rsplit("/c/", 1)[0] + "/")
    expect(think).not_to_be_checked()  # a new chat starts from the last choice
    think.check()
    ask(page, "With thinking")
    wait_status(page, "done")
    with_ = conversation_id(page)
    base = page.url.rsplit("/c/", 1)[0]
    page.goto(f"{base}/c/{without}")
    expect(think).not_to_be_checked()
    page.goto(f"{base}/c/{with_}")
    expect(think).to_be_checked()


def test_regenerate_is_offered_only_where_there_is_a_question_to_answer_again(
    open_page: Open, gateway: Gateway
) -> None:
    now = time.time()

    def node(nid: str, parent: str | None, children: list[str], role: str | None, text: str) -> dict[str, Any]:
        message = None
        if role is not None:
            parts = {"content_type": "text", "parts": [text]}
            message = {"id": nid, "author": {"role": role}, "create_time": now - 50 + len(nid), "content": parts}
        return {"id": nid, "message": message, "parent": parent, "children": children}

    mapping = {  # a conversation that starts with an answer (a greeting), as ChatGPT exports can
        "root": node("root", None, ["hi"], None, ""),
        "hi": node("hi", "root", ["q"], "assistant", "Hello! How can I help?"),
        "q": node("q", "hi", ["a"], "user", "What is a qubit?"),
        "a": node("a", "q", [], "assistant", "A two-level quantum system."),
    }
    export = [{"id": "greets-first", "title": "Greets first", "create_time": now - 60, "update_time": now - 30}]
    export[0].update(mapping=mapping, current_node="a")
    imported = requests.post(f"{gateway.url}/api/import", data=json.dumps(export), timeout=10)
    assert imported.status_code == 200, imported.text

    page = open_page()
    expect(page.locator("#messages .empty")).to_be_visible()
    assert page.locator("#messages .regenerate:visible, #messages .retry:visible").count() == 0  # an empty chat
    page.locator(ROWS, has_text="Greets first").locator("a").click()
    answers = page.locator(".message.assistant")
    expect(answers).to_have_count(2)
    expect(answers.first.locator(".regenerate")).to_be_hidden()  # nothing above it to answer again
    expect(answers.last.locator(".regenerate")).to_be_visible()
    expect(answers.last.locator(".regenerate")).to_be_enabled()


def test_a_button_goes_down_to_new_text_below_and_esc_stops(open_page: Open) -> None:
    page = open_page()
    ask(page, "Tell me a long story", {"tokens": 2000, "tps": 40})
    messages = page.locator("#messages")
    page.wait_for_function(
        "() => { const m = document.querySelector('#messages'); return m.scrollHeight > m.clientHeight + 400 }"
    )
    button = page.locator("#to-bottom")
    expect(button).to_be_hidden()  # following the answer at the bottom: nothing to go down to
    messages.evaluate("m => m.scrollTop = 0")  # the reader scrolls up to read from the start
    expect(button).to_be_visible()  # text keeps arriving below
    shot(page, "to-bottom")
    button.click()
    expect(button).to_be_hidden()
    at_bottom = "() => { const m = document.querySelector('#messages'); "
    at_bottom += "return m.scrollHeight - m.scrollTop - m.clientHeight < 48 }"
    page.wait_for_function(at_bottom)

    page.click("#conversation-menu-button")
    page.keyboard.press("ArrowDown")  # into the menu: its Esc closes it and the answer goes on
    page.keyboard.press("Escape")
    expect(page.locator("#conversation-menu-items")).to_be_hidden()
    expect(page.locator(".message.assistant").last).to_have_attribute("data-status", "streaming")
    page.keyboard.press("Escape")
    wait_status(page, "stopped", timeout=5000)


def test_a_new_chat_shows_examples_the_model_and_the_queue_now(open_page: Open, gateway: Gateway) -> None:
    page = open_page()
    queue = {"active": 1, "waiting": 2, "slots": 1, "eta_s": 40}

    def busy(route: Route) -> None:
        route.fulfill(json=queue)

    page.route("**/api/queue", busy)
    page.reload()
    empty = page.locator("#messages .empty")
    expect(empty.locator(".example")).to_have_count(4)
    expect(empty.locator(".empty-model")).to_have_text("Model: qwen3:32b")
    expect(empty.locator(".empty-queue")).to_have_text(
        "Busy: 1 of 1 answering, 2 waiting · a new question waits about 40 s"
    )
    shot(page, "empty-light")
    example = empty.locator(".example").first
    text = example.inner_text()
    example.click()  # sends itself
    wait_status(page, "done")
    expect(page.locator(".message.user .content")).to_have_text(text)
    expect(page.locator("#messages .empty")).to_have_count(0)

    cid = conversation_id(page)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(".message.user .delete-message").click()  # all gone: the empty state again, filled
    expect(empty.locator(".empty-model")).to_have_text("Model: qwen3:32b")
    assert stored(gateway, cid)["messages"] == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_phone_drawer_closes_on_the_backdrop_and_escape_and_leaves_its_button(
    open_page: Open, gateway: Gateway, scheme: str
) -> None:
    created = requests.post(gateway.url + "/api/conversations", json={"title": "A phone conversation"}, timeout=5)
    cid = created.json()["id"]
    page = open_page(f"/c/{cid}", color_scheme=scheme, **PHONE)
    sidebar, toggle = page.locator("#sidebar"), page.locator("#menu")
    model = page.locator("#model")
    expect(model).to_be_visible()  # the model picker stays in the phone's topbar
    box = model.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390

    toggle.tap()
    expect(sidebar).to_be_in_viewport()
    expect(page.locator(f'{ROWS}[data-id="{cid}"] .rename')).to_be_visible()  # row buttons: no hover on touch
    uncovered = (  # what a tap at the button's middle reaches
        "el => { const r = el.getBoundingClientRect(); "
        "return document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === el }"
    )
    assert toggle.evaluate(uncovered)  # the drawer does not cover its own button
    shot(page, f"phone-drawer-{scheme}")
    toggle.tap()  # which closes it
    expect(sidebar).not_to_be_in_viewport()

    toggle.tap()
    page.locator("#backdrop").tap(position={"x": 360, "y": 500})
    expect(sidebar).not_to_be_in_viewport()
    expect(page.locator("#backdrop")).to_be_hidden()
    toggle.tap()
    expect(sidebar).to_be_in_viewport()
    page.keyboard.press("Escape")
    expect(sidebar).not_to_be_in_viewport()
    expect(toggle).to_be_focused()  # the focus left the drawer for its button
    shot(page, f"phone-empty-{scheme}")


def test_a_new_conversation_row_has_its_buttons_and_its_title_the_whole_width(open_page: Open) -> None:
    page = open_page()
    ask(page, "A first question whose title is long enough to need most of the row")
    wait_status(page, "done")
    row = page.locator(f'{ROWS}[data-id="{conversation_id(page)}"]')
    page.mouse.move(700, 400)  # away from the list
    width = "li => li.querySelector('a').getBoundingClientRect().width / li.getBoundingClientRect().width"
    assert row.evaluate(width) > 0.99  # the hidden buttons take no room from the title
    row.hover()
    for button in (".pin", ".rename", ".delete"):
        expect(row.locator(button)).to_be_visible()
    # What another tab's news will use: a whole row from a conversation object, in its place.
    made = page.evaluate(
        "() => window.ClawwebSidebar.showRow({id: 'from-elsewhere', title: 'Made in another tab', "
        "updated_at: Date.now() / 1000 + 5, pinned: false}).outerHTML"
    )
    assert "rename" in made and "delete" in made and "pin" in made
    expect(page.locator(ROWS).first).to_have_attribute("data-id", "from-elsewhere")
    expect(page.locator("#conversation-list > li").first).to_have_text("Today")


def test_the_model_picker_offers_no_embedding_model(open_page: Open, sim: SimProcess) -> None:
    """The simulator lists an embedding model beside two chat models, as an Ollama used for RAG does: it cannot
    chat, so the picker, filled once the page is up, offers the two others only."""
    listed = requests.get(sim.url + "/api/tags", timeout=5).json()["models"]
    assert "nomic-embed-text:latest" in [m["name"] for m in listed]
    page = open_page("/")
    expect(page.locator("#model option")).to_have_text(["qwen3:32b", "qwen2.5-coder:7b"])
