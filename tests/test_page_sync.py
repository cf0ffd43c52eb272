"""Every tab and device in sync, on the page: two tabs of one browser, and two browsers (a phone, in dark mode, and
a laptop) logged in as the same user, against real gunicorn and the simulator. What B does shows in A at once: a
new conversation's row (with its buttons), a message with its answer streaming, a rename, a delete; and A,
made stale, cannot send on a view that moved on: refused, shown as it is now, the typed text kept."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect

from clawweb.simulator import answer_tokens

from .support.chromium import SCREENSHOTS
from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess, sim_line

USER, PASSWORD = "ann", "correct horse battery"
LAPTOP: dict[str, Any] = {"viewport": {"width": 1200, "height": 800}}
PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844},
    "is_mobile": True,
    "has_touch": True,
    "color_scheme": "dark",
}


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.1", "--tps", "30")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    server = start_module_gateway(sim.url, auth="required", heartbeat_s=1, simulator=1)
    server.new_user(USER, PASSWORD)
    return server


def log_in(page: Page, gateway: Gateway) -> None:
    page.goto(gateway.url + "/login")
    page.fill("#name", USER)
    page.fill("#password", PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_url(gateway.url + "/")


class Pages:
    """Tab/device A and B; every page's script errors are collected and must stay none."""

    def __init__(self) -> None:
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []
        self.expected: set[str] = set()  # what Chromium logs for a refusal a test provokes

    def open(self, context: BrowserContext) -> Page:
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        return page


@pytest.fixture
def pages() -> Pages:
    return Pages()


@pytest.fixture(params=["tabs", "devices"])
def two(
    request: pytest.FixtureRequest, browser: Browser, gateway: Gateway, pages: Pages
) -> Iterator[tuple[Page, Page, str]]:
    """(A, B, how): two tabs of one browser (one login), or a phone and a laptop (each logged in)."""
    if request.param == "tabs":
        context = browser.new_context(locale="en-US", **LAPTOP)
        pages.contexts.append(context)
        a, b = pages.open(context), pages.open(context)
        log_in(a, gateway)
        b.goto(gateway.url + "/")
    else:
        phone, laptop = browser.new_context(locale="en-US", **PHONE), browser.new_context(locale="en-US", **LAPTOP)
        pages.contexts += [phone, laptop]
        a, b = pages.open(phone), pages.open(laptop)
        log_in(a, gateway)
        log_in(b, gateway)
    yield a, b, str(request.param)
    for context in pages.contexts:
        context.close()
    assert [error for error in pages.errors if error not in pages.expected] == []


def ask(page: Page, text: str, directive: dict[str, Any]) -> None:
    page.locator("#think").set_checked(False)
    page.fill("#input", text + sim_line(**directive))
    page.keyboard.press("Enter")


def row(page: Page, cid: str) -> Any:
    return page.locator(f'#conversation-list li[data-id="{cid}"]')


def conversation_id(page: Page) -> str:
    expect(page.locator("body")).not_to_have_attribute("data-conversation-id", "")
    return str(page.locator("body").get_attribute("data-conversation-id"))


def test_what_b_does_shows_in_a_at_once(two: tuple[Page, Page, str], gateway: Gateway) -> None:
    a, b, how = two
    ask(b, "Hello from B", {"tokens": 3})
    cid = conversation_id(b)
    expect(b.locator(".message")).to_have_count(2)
    new_row = row(a, cid)  # B's new conversation is in A's list, with its buttons, before A reloads anything
    expect(new_row.locator("a")).to_have_text('Hello from B #sim {"tokens": 3}'[:60])
    expect(new_row.locator("button")).to_have_count(3)
    expect(b.locator(".message.assistant").last).to_have_attribute("data-status", "done", timeout=10_000)

    a.goto(gateway.url + (new_row.locator("a").get_attribute("href") or ""))
    expect(a.locator(".message")).to_have_count(2)
    ask(b, "Tell me more", {"tokens": 120, "tps": 30})  # four seconds of answer
    a_answer = a.locator(".message.assistant").last
    expect(a.locator(".message.user").last.locator(".content")).to_contain_text("Tell me more")
    expect(a_answer).to_have_attribute("data-status", "streaming")
    expect(a_answer.locator(".content")).not_to_be_empty()  # B's answer streams in A too
    a.screenshot(path=str(SCREENSHOTS / f"sync-{how}-a-streaming.png"))
    b.screenshot(path=str(SCREENSHOTS / f"sync-{how}-b-streaming.png"))
    expect(a_answer).to_have_attribute("data-status", "done", timeout=15_000)
    assert a_answer.locator(".content").get_attribute("data-streamed") == "".join(answer_tokens(120))
    expect(a.locator(".message")).to_have_count(4)

    b.once("dialog", lambda dialog: dialog.accept("Renamed on B"))
    row(b, cid).hover()  # the row's buttons show on hover
    row(b, cid).locator("button.rename").click()
    expect(row(a, cid).locator("a")).to_have_text("Renamed on B")
    expect(a.locator(".topbar h1")).to_have_text("Renamed on B")

    b.click(".system-prompt summary")
    b.fill("#system-prompt", "Answer like a pirate.")
    b.click("#save-system")
    expect(a.locator("#system-prompt")).to_have_value("Answer like a pirate.")

    b.once("dialog", lambda dialog: dialog.accept())
    row(b, cid).hover()
    row(b, cid).locator("button.delete").click()
    a.wait_for_url(gateway.url + "/")  # the conversation A showed is gone: A goes to a new chat
    expect(row(a, cid)).to_have_count(0)


def test_a_stale_send_is_refused_and_recovered(two: tuple[Page, Page, str], gateway: Gateway, pages: Pages) -> None:
    a, b, how = two
    pages.expected.add("Failed to load resource: the server responded with a status of 409 (CONFLICT)")
    ask(b, "First", {"tokens": 3})
    cid = conversation_id(b)
    expect(b.locator(".message")).to_have_count(2)
    expect(b.locator(".message.assistant").last).to_have_attribute("data-status", "done", timeout=10_000)

    def no_events(route: Route) -> None:
        route.fulfill(status=204)  # A hears nothing from now on (EventSource stops on a 204)

    a.route("**/api/events**", no_events)
    a.goto(f"{gateway.url}/c/{cid}")
    expect(a.locator(".message")).to_have_count(2)
    ask(b, "Second, from B", {"tokens": 3})
    expect(b.locator(".message")).to_have_count(4)
    expect(b.locator(".message.assistant").last).to_have_attribute("data-status", "done", timeout=10_000)
    expect(a.locator(".message")).to_have_count(2)  # A is stale: it still shows the first exchange only

    a.fill("#input", "Sent from A on an old view")
    a.keyboard.press("Enter")
    expect(a.locator("#queue")).to_contain_text("changed in another tab or on another device")
    expect(a.locator(".message")).to_have_count(4)  # reloaded: B's message and answer are there
    expect(a.locator(".message.user").last.locator(".content")).to_contain_text("Second, from B")
    expect(a.locator("#input")).to_have_value("Sent from A on an old view")  # the text is kept
    a.screenshot(path=str(SCREENSHOTS / f"sync-{how}-a-stale-refused.png"))

    a.keyboard.press("Enter")  # now on the conversation as it is: sent
    expect(a.locator(".message")).to_have_count(6)
    expect(a.locator("#input")).to_have_value("")
    expect(a.locator("#queue")).to_have_text("")
    expect(a.locator(".message.assistant").last).to_have_attribute("data-status", "done", timeout=10_000)
    expect(b.locator(".message")).to_have_count(6)  # and B, which follows the feed, shows it too
    b.screenshot(path=str(SCREENSHOTS / f"sync-{how}-b-after.png"))
