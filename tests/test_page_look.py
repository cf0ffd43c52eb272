"""What screenshots showed wrong on the chat page, measured in Debian's Chromium: tables, code blocks' header,
the system prompt's summary, the simulator banner in dark mode, Send's contrast, the skip link, plural forms."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, ViewportSize, expect

from .support.chromium import SCREENSHOTS, chat_page
from .support.colours import colours, contrast, luminance, parse, text_contrast
from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess

PHONE: ViewportSize = {"width": 390, "height": 844}
WIDE: ViewportSize = {"width": 1200, "height": 800}  # chat_page's
TABLE = "| Model | Size | Speed |\n|---|---|---|\n| qwen3:8b | 5.2 GB | fast |\n| qwen3:32b | 20 GB | slow |\n"
LONG_LINE = "result = " + " + ".join(f"value_{n}" for n in range(40))
CODE = f"Here:\n\n```python\n{LONG_LINE}\nprint(result)\n```\n\nand plain:\n\n```\nno language\n```\n"


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "400")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, heartbeat_s=1, simulator=1)


@pytest.fixture
def page(browser: Browser, gateway: Gateway) -> Iterator[Page]:
    with chat_page(browser, gateway.url) as opened:
        yield opened


def answer(page: Page, text: str) -> Any:
    """Ask for an answer of exactly ``text`` (the simulator's directive) and wait until it is rendered."""
    page.locator("#think").set_checked(False)
    page.fill("#input", "Show me\n#sim " + json.dumps({"text": text}))
    page.keyboard.press("Enter")
    last = page.locator(".message.assistant").last
    expect(last).to_have_attribute("data-status", "done", timeout=20_000)
    expect(last.locator(".content.rendered")).to_be_attached()
    return last


def shots(page: Page, name: str, target: Any = None) -> None:
    """Light, dark and phone width, saved under tests/artifacts/screenshots/ to be looked at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for scheme in ("light", "dark"):
        # Reduced motion: at phone width the sidebar turns into a drawer that would be shot mid-slide.
        page.emulate_media(color_scheme=scheme, reduced_motion="reduce")
        for width, viewport in (("wide", WIDE), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            if target is not None:
                target.scroll_into_view_if_needed()
            path = SCREENSHOTS / f"look-{name}-{scheme}-{width}.png"
            page.screenshot(path=str(path))
            assert path.stat().st_size > 5_000
    page.emulate_media(color_scheme="light", reduced_motion="no-preference")
    page.set_viewport_size(WIDE)


def px(value: str) -> float:
    assert value.endswith("px"), value
    return float(value[:-2])


def style(locator: Any, *names: str) -> dict[str, str]:
    found: dict[str, str] = locator.evaluate(
        "(node, names) => Object.fromEntries(names.map((n) => [n, getComputedStyle(node).getPropertyValue(n)]))",
        list(names),
    )
    return found


def test_tables_have_borders_padding_and_a_header(page: Page) -> None:
    last = answer(page, "Sizes:\n\n" + TABLE)
    table = last.locator(".content table")
    expect(table.locator("tbody tr")).to_have_count(2)
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        for cell in (table.locator("th").first, table.locator("td").nth(4)):
            found = style(
                cell, "border-top-width", "border-left-width", "border-top-color", "padding-left", "padding-top"
            )
            assert px(found["border-top-width"]) >= 1 and px(found["border-left-width"]) >= 1, found
            assert parse(found["border-top-color"])[1] == 1.0, found  # an opaque line, not a transparent one
            # The line is visible on the page: its colour differs from the answer's background.
            border, _ = parse(found["border-top-color"])
            _, behind = colours(last.locator(".content"))
            assert contrast(border, behind) > 1.2, (scheme, found)
            assert px(found["padding-left"]) >= 8 and px(found["padding-top"]) >= 4, found
        _, header_background = colours(table.locator("th").first)
        _, body_background = colours(table.locator("td").first)
        assert header_background != body_background  # the header row stands out
        assert text_contrast(table.locator("td").first) >= 4.5
    page.emulate_media(color_scheme="light")
    # Columns are as wide as their words (no letter-per-line cells) and the table fits or scrolls on its own.
    cells = [table.locator("td").nth(n).bounding_box() for n in range(3)]
    assert all(box is not None and box["height"] < 40 for box in cells), cells
    shots(page, "table", table)
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.locator(".messages").evaluate("(node) => node.scrollWidth <= node.clientWidth + 1")


def test_code_scrolls_under_a_header_with_its_language_and_copy(page: Page) -> None:
    last = answer(page, CODE)
    blocks = last.locator(".code-block")
    expect(blocks).to_have_count(2)
    python = blocks.first
    expect(python.locator(".code-head .code-language")).to_have_text("python")
    expect(blocks.nth(1).locator(".code-head .code-language")).to_have_text("")  # no fence language: no label
    expect(python.locator("code.hljs .hljs-built_in, code.hljs .hljs-keyword").first).to_be_attached()
    for viewport in (None, PHONE):
        if viewport:
            page.set_viewport_size(viewport)
        pre = python.locator("pre")
        button = python.locator(".code-head .copy")
        pre_box, button_box = pre.bounding_box(), button.bounding_box()
        assert pre_box is not None and button_box is not None
        # The button sits in the bar above the code, not over it; the long line scrolls inside the <pre>.
        assert button_box["y"] + button_box["height"] <= pre_box["y"] + 0.5, (button_box, pre_box)
        assert pre.evaluate("(node) => node.scrollWidth > node.clientWidth")
        pre.evaluate("(node) => { node.scrollLeft = node.scrollWidth; }")
        assert button.bounding_box() == button_box  # the header does not scroll with the code
        head = python.locator(".code-head").bounding_box()
        assert head is not None and abs(head["width"] - pre_box["width"]) <= 2  # one block, one width
        assert text_contrast(python.locator(".code-language")) >= 4.5
    page.set_viewport_size(WIDE)
    python.locator(".copy").click()
    expect(python.locator(".copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == LONG_LINE + "\nprint(result)\n"
    shots(page, "code", python)


def test_system_prompt_reads_as_text_and_its_summary_says_it_is_set(page: Page, gateway: Gateway) -> None:
    details = page.locator("details.system-prompt")
    state = page.locator("#system-prompt-state")
    expect(state).to_have_text("")
    assert details.get_attribute("data-set") is None
    details.locator("summary").click()
    text_colour = page.locator("#input").evaluate("(node) => getComputedStyle(node).color")
    muted = page.locator(".message, .empty").first.evaluate("(node) => getComputedStyle(node).color")
    assert page.locator("#system-prompt").evaluate("(node) => getComputedStyle(node).color") == text_colour != muted
    prompt = "You are a terse pirate.\n  Answer   in one line, always, and never break character whatever is asked."
    page.fill("#system-prompt", prompt)
    page.click("#save-system")
    expect(page.locator("#save-system")).to_have_text("Saved")
    preview = " · " + " ".join(prompt.split())[:79] + "…"  # blanks folded, cut at 80 characters
    expect(state).to_have_text(preview)
    expect(details).to_have_attribute("data-set", "")
    # The server renders the same after a reload, with the summary closed.
    page.wait_for_function("location.pathname.startsWith('/c/')")
    page.reload()
    expect(state).to_have_text(preview)
    expect(details).to_have_attribute("data-set", "")
    assert details.get_attribute("open") is None
    summary = details.locator("summary")
    assert text_contrast(summary) >= 4.5
    box = summary.bounding_box()
    assert box is not None and box["height"] < 40  # one line, cut with an ellipsis, also at phone width
    shots(page, "system-prompt")
    page.set_viewport_size(PHONE)
    box = summary.bounding_box()
    assert box is not None and box["height"] < 40 and box["width"] <= PHONE["width"]
    # Emptied: the summary says nothing again.
    page.set_viewport_size(WIDE)
    summary.click()
    page.fill("#system-prompt", "  \n ")
    page.click("#save-system")
    expect(state).to_have_text("")
    expect(details).not_to_have_attribute("data-set", "")


def test_the_simulator_banner_is_a_warning_in_both_schemes(page: Page) -> None:
    banner = page.locator(".banner")
    expect(banner).to_contain_text("Simulator")
    page_background = {}
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        text, background = colours(banner)
        _, page_background[scheme] = colours(page.locator(".messages"))
        assert contrast(text, background) >= 4.5, scheme
        red, _, blue = background
        assert red - blue >= 30, (scheme, background)  # amber, the colour of a warning, in both
        assert background != page_background[scheme]  # a band of its own colour
        if scheme == "dark":
            assert luminance(background) < 0.1, background  # not the light scheme's bright yellow
    shots(page, "banner")


def test_send_has_enough_contrast_in_both_schemes(page: Page) -> None:
    page.fill("#input", "Something to send")
    send = page.locator("#send")
    expect(send).to_be_enabled()
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        ratio = text_contrast(send)
        assert ratio >= 4.5, (scheme, ratio, style(send, "color", "background-color"))


def test_a_skip_link_is_the_first_tab_stop_and_leads_to_the_message_box(page: Page, gateway: Gateway) -> None:
    for n in range(26):  # the sidebar of someone who has used it for a while
        requests.post(gateway.url + "/api/conversations", json={"title": f"Chat {n}"}, timeout=5).raise_for_status()
    page.reload()
    assert page.locator("#conversation-list li[data-id]").count() >= 26
    skip = page.locator(".skip-link")
    hidden = skip.bounding_box()
    assert hidden is not None and hidden["width"] <= 1 and hidden["height"] <= 1  # out of sight until focused
    # Tabbing in from the browser's own bar starts at the top of the document; chat.js has focused the message
    # box meanwhile, so put the focus back at the top (on <html>, focusable for that moment only) first.
    page.evaluate(
        """() => { const root = document.documentElement; root.tabIndex = -1; root.focus();
                   root.removeAttribute("tabindex"); }"""
    )
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    expect(skip).to_have_text("Skip to message box")
    shown = skip.bounding_box()
    assert shown is not None and shown["width"] > 60 and shown["height"] > 20 and shown["x"] >= 0 and shown["y"] >= 0
    assert text_contrast(skip) >= 4.5
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "look-skip-link.png"))
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "input"
    page.keyboard.type("typed after the skip")
    expect(page.locator("#input")).to_have_value("typed after the skip")


def test_counts_are_plural_in_english_and_not_in_chinese(page: Page, browser: Browser, gateway: Gateway) -> None:
    say = "(n) => ClawwebPage.fmt(ClawwebPage.plural('status_ahead', n), { n })"
    assert [page.evaluate(say, n) for n in (1, 2, 5)] == [
        "1 question ahead of you",
        "2 questions ahead of you",
        "5 questions ahead of you",
    ]
    context = browser.new_context(locale="zh-CN")
    try:
        chinese = context.new_page()
        chinese.goto(gateway.url + "/")
        assert chinese.evaluate(say, 1) == "前面还有 1 个问题"
        assert chinese.evaluate(say, 3) == "前面还有 3 个问题"
        expect(chinese.locator(".new-chat")).to_have_text("+ 新对话")
    finally:
        context.close()
