"""The chat page in a real headless Chromium (Debian's, driven by Playwright), against gunicorn and the simulator."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import APIResponse, Browser, Locator, Page, expect

from clawweb.simulator import answer_tokens, default_tokens, thinking_tokens

from .support.chromium import SCREENSHOTS, chat_page
from .support.factories import StartGateway, StartSimulator
from .support.servers import CuttableProxy, Gateway
from .support.simproc import SimProcess


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.2", "--tps", "25")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, heartbeat_s=1, upstream_label="Ollama simulator", simulator=1)


@pytest.fixture
def page(browser: Browser, gateway: Gateway, sim: SimProcess) -> Iterator[Page]:
    sim.reset()
    with chat_page(browser, gateway.url) as opened:
        yield opened


def ask(page: Page, text: str, directive: dict[str, Any] | None = None, think: bool = False) -> None:
    page.locator("#think").set_checked(think)
    page.fill("#input", text + (f"\n#sim {json.dumps(directive)}" if directive else ""))
    page.keyboard.press("Enter")


def last_answer(page: Page) -> Any:
    return page.locator(".message.assistant").last


def wait_status(page: Page, status: str, timeout: float = 20_000) -> None:
    expect(last_answer(page)).to_have_attribute("data-status", status, timeout=timeout)


def test_answer_grows_like_typing_and_ends_with_the_exact_text(page: Page) -> None:
    ask(page, "What is quantum computing?")
    content = last_answer(page).locator(".content")
    expect(content).not_to_be_empty(timeout=5000)
    lengths = []
    for _ in range(6):
        lengths.append(len(content.inner_text()))
        time.sleep(0.2)
    assert all(b > a for a, b in zip(lengths, lengths[1:], strict=False)), lengths  # strictly growing
    wait_status(page, "done")
    expected = "".join(answer_tokens(default_tokens()))
    assert content.get_attribute("data-raw") == expected
    assert content.get_attribute("data-streamed") == expected  # what the stream painted, no loss, no repeat
    meta = last_answer(page).locator(".meta").inner_text()
    assert "first token" in meta and "tokens/s" in meta
    assert "/c/" in page.url  # the conversation got its own URL
    expect(page.locator(".conversation-list li.current a")).to_have_text("What is quantum computing?")


def test_stop_really_stops_the_model(page: Page, sim: SimProcess) -> None:
    ask(page, "Tell me a long story", {"tokens": 600, "tps": 20})
    expect(last_answer(page).locator(".content")).not_to_be_empty(timeout=5000)
    page.click("#stop")
    wait_status(page, "stopped", timeout=5000)
    deadline = time.monotonic() + 2
    while sim.stats()["disconnects"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.stats()["disconnects"] == 1  # the upstream request was closed
    partial = last_answer(page).locator(".content").get_attribute("data-raw") or ""
    assert partial and "".join(answer_tokens(600)).startswith(partial)
    expect(last_answer(page).locator(".meta .status")).to_have_text("Stopped")


def test_reload_mid_answer_continues_without_repeating(page: Page) -> None:
    ask(page, "Count slowly", {"tokens": 90, "tps": 25})
    expect(last_answer(page).locator(".content")).not_to_be_empty(timeout=5000)
    time.sleep(0.8)
    page.reload()
    wait_status(page, "done")
    content = last_answer(page).locator(".content")
    expected = "".join(answer_tokens(90))
    assert content.get_attribute("data-streamed") == expected
    assert content.get_attribute("data-raw") == expected
    assert page.locator(".message.assistant").count() == 1


def test_network_drop_reconnects_and_loses_nothing(browser: Browser, gateway: Gateway) -> None:
    proxy = CuttableProxy(gateway.port)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(proxy.url + "/")
        ask(page, "Keep going", {"tokens": 120, "tps": 25})
        expect(last_answer(page).locator(".content")).not_to_be_empty(timeout=5000)
        assert proxy.cut() > 0  # the Wi-Fi drops mid-answer
        expect(page.locator("#connection")).to_have_attribute("data-state", "closed", timeout=5000)
        wait_status(page, "done")  # EventSource reconnected with Last-Event-ID
        assert last_answer(page).locator(".content").get_attribute("data-streamed") == "".join(answer_tokens(120))
    finally:
        context.close()
        proxy.close()


def test_a_conversation_started_on_the_page_can_be_renamed_and_deleted_at_once(page: Page, gateway: Gateway) -> None:
    """Its sidebar row comes from the same markup as the server's, and one listener on the list serves both."""

    def conversation_id() -> str:
        expect(page).to_have_url(re.compile(r"/c/\w+$"))
        return page.url.rsplit("/", 1)[1]

    def stored(cid: str) -> APIResponse:
        return page.request.get(f"{gateway.url}/api/conversations/{cid}")

    def click(row: Locator, button: str, answer: str | None = None) -> None:
        page.once("dialog", lambda dialog: dialog.accept(*([answer] if answer else [])))
        row.hover()  # the row's buttons show on hover
        row.locator(button).click()

    ask(page, "Started before")
    wait_status(page, "done")
    earlier = conversation_id()
    page.goto(gateway.url + "/")
    ask(page, "Started on the page")
    wait_status(page, "done")
    started = conversation_id()
    page.evaluate("window.sameDocument = true")  # gone if anything reloads the page
    row = page.locator(f'.conversation-list li[data-id="{started}"]')
    expect(row).to_have_class("current")

    click(row, ".rename", "Renamed on the page")
    expect(row.locator("a")).to_have_text("Renamed on the page")
    expect(page.locator(".topbar h1")).to_have_text("Renamed on the page")
    assert stored(started).json()["title"] == "Renamed on the page"

    other = page.locator(f'.conversation-list li[data-id="{earlier}"]')  # a row the server rendered
    click(other, ".delete")
    expect(other).to_have_count(0)
    assert stored(earlier).status == 404
    assert page.evaluate("window.sameDocument") is True

    click(row, ".delete")  # the open conversation: back to a new chat
    expect(page).to_have_url(gateway.url + "/")
    expect(page.locator(f'.conversation-list li[data-id="{started}"]')).to_have_count(0)
    assert stored(started).status == 404


def test_model_output_cannot_run_script(page: Page) -> None:
    payload = (
        'Look: <img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script> '
        '[click me](javascript:window.__xss=3) <a href="javascript:window.__xss=4">here</a>'
    )
    ask(page, "Show HTML", {"text": payload})
    wait_status(page, "done")
    content = last_answer(page).locator(".content")
    page.locator(".content a", has_text="click me").click()
    assert page.evaluate("window.__xss") is None
    assert content.locator("img, script").count() == 0
    assert page.locator('.content a[href^="javascript"]').count() == 0
    text = content.inner_text()
    assert '<img src=x onerror="window.__xss=1">' in text and "<script>" in text  # shown, as text


def test_code_is_highlighted_and_copyable(page: Page) -> None:
    ask(page, "Show code")
    wait_status(page, "done")
    block = last_answer(page).locator("pre code.hljs")
    expect(block.locator(".hljs-keyword").first).to_be_visible()
    last_answer(page).locator(".code-block .copy").click()
    expect(last_answer(page).locator(".code-block .copy")).to_have_text("Copied")
    assert "QuantumCircuit(2)" in page.evaluate("navigator.clipboard.readText()")


def test_thinking_is_shown_live_then_collapsed(page: Page) -> None:
    ask(page, "Think first", {"tokens": 20, "think_tokens": 30, "tps": 25}, think=True)
    details = last_answer(page).locator("details.thinking")
    expect(details).to_be_visible(timeout=5000)
    expect(details).to_have_attribute("open", "", timeout=3000)  # open while the model thinks
    wait_status(page, "done")
    assert details.get_attribute("open") is None  # collapsed once the answer started
    details.locator("summary").click()
    expect(details.locator(".thinking-text")).to_have_text("".join(thinking_tokens(30)).strip())


def test_errors_show_in_the_conversation_with_retry(page: Page) -> None:
    ask(page, "Break", {"error_after": 3})
    wait_status(page, "error")
    status = last_answer(page).locator(".meta .status")
    expect(status).to_contain_text("simulated failure after 3 tokens")
    expect(last_answer(page).locator(".meta .retry")).to_be_visible()
    first_id = last_answer(page).get_attribute("data-id")
    last_answer(page).locator(".meta .retry").click()  # regenerates (the directive fails it again)
    expect(last_answer(page)).not_to_have_attribute("data-id", first_id or "", timeout=5000)
    wait_status(page, "error")
    assert page.locator(".message.assistant").count() == 1  # the failed answer was replaced, not added to


def test_queue_position_with_one_slot_and_two_tabs(
    browser: Browser, sim: SimProcess, start_gateway: StartGateway
) -> None:
    server = start_gateway(sim.url, max_active=1)
    context = browser.new_context()
    try:
        first, second = context.new_page(), context.new_page()
        for tab in (first, second):
            tab.goto(server.url + "/")
        ask(first, "Long answer", {"tokens": 400, "tps": 20})
        expect(last_answer(first).locator(".content")).not_to_be_empty(timeout=5000)
        ask(second, "Me too", {"tokens": 3})
        line = last_answer(second).locator(".status-line")
        expect(line).to_have_text(re.compile(r"^You are next"), timeout=5000)  # in the answer's place
        first.click("#stop")
        wait_status(second, "done")
        expect(line).to_be_hidden()
    finally:
        context.close()


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("light", {"color_scheme": "light"}),
        ("dark", {"color_scheme": "dark"}),
        ("phone", {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}),
        ("chinese", {"locale": "zh-CN"}),
    ],
)
def test_screenshots(browser: Browser, gateway: Gateway, name: str, options: dict[str, Any]) -> None:
    """Saved under tests/artifacts/screenshots/ for a person to look at; the asserts catch the obvious."""
    context = browser.new_context(**{"viewport": {"width": 1200, "height": 800}, **options})
    try:
        page = context.new_page()
        page.goto(gateway.url + "/")
        ask(page, "什么是量子计算？" if name == "chinese" else "What is quantum computing?", think=True)
        wait_status(page, "done")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000
        if name == "chinese":
            assert page.locator("html").get_attribute("lang") == "zh-CN"
            expect(page.locator(".new-chat")).to_contain_text("新对话")
        if name == "phone":
            sidebar = page.locator("#sidebar")
            box = sidebar.bounding_box()
            assert not sidebar.is_visible() or (box is not None and box["x"] < 0)
    finally:
        context.close()
