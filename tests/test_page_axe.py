"""axe-core (tests/vendor/, never served) on every page a person sees, light and dark, in Debian's Chromium: no
violation of impact serious or critical on the login, chat (empty, and with code, a table and thoughts), account,
shared and error pages. The 404 for someone else's conversation is the same page as for an unknown one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, BrowserContext, Page, expect

from .support import chromium
from .support.chromium import SCREENSHOTS
from .support.colours import colours, luminance
from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess

AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
PASSWORD = "correct horse battery"
ANSWER = (
    "Compared:\n\n| Model | Size |\n|---|---|\n| qwen3:8b | 5.2 GB |\n| qwen3:32b | 20 GB |\n\n"
    "```python\n# a greeting, its every kind of token highlighted\nclass Greeter:\n"
    "    def greet(self, name: str) -> None:\n"
    "        print(f'hello, {name}', 42, True, 'world ' * 30)\n```\n\n"
    "See [the docs](https://example.org/docs) and `inline code`.\n"
)
SERIOUS = ("serious", "critical")


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "400")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, auth="required", heartbeat_s=1, simulator=1)


@pytest.fixture(scope="module")
def keys(gateway: Gateway) -> dict[str, str]:
    return {name: gateway.new_user(name, PASSWORD) for name in ("alice", "bob")}


@pytest.fixture
def context(browser: Browser, keys: dict[str, str]) -> Iterator[BrowserContext]:
    # axe is injected as an inline script: the pages' Content-Security-Policy (script-src 'self') would refuse it.
    opened = browser.new_context(viewport={"width": 1200, "height": 800}, locale="en-US", bypass_csp=True)
    yield opened
    opened.close()


def log_in(page: Page, gateway: Gateway, name: str = "alice") -> None:
    chromium.log_in(page, gateway.url, name, PASSWORD)


def violations(page: Page) -> list[dict[str, Any]]:
    """axe's serious and critical violations on the page as it is now."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    found: list[dict[str, Any]] = page.evaluate("async () => (await axe.run(document)).violations")
    return [v for v in found if v.get("impact") in SERIOUS]


def readable(found: list[dict[str, Any]]) -> str:
    lines = []
    for violation in found:
        lines.append(f"{violation['impact']}: {violation['id']}: {violation['help']} ({violation['helpUrl']})")
        for node in violation["nodes"][:8]:
            summary = " / ".join(line.strip() for line in (node.get("failureSummary") or "").splitlines()[1:])
            lines.append(f"    {' '.join(map(str, node['target']))}: {summary}")
    return "\n".join(lines)


def check(page: Page, name: str) -> None:
    """No serious or critical violation in light and in dark; a screenshot of each."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems = []
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.screenshot(path=str(SCREENSHOTS / f"axe-{name}-{scheme}.png"))
        found = violations(page)
        if found:
            problems.append(f"--- {name}, {scheme} ---\n{readable(found)}")
    page.emulate_media(color_scheme="light")
    assert not problems, "\n".join(problems)


def conversation_with_everything(page: Page) -> str:
    """Asked on the page: an answer with thoughts, a table, code, a link; its conversation's id."""
    page.locator("#think").set_checked(True)
    page.fill("#input", "Compare the models\n#sim " + json.dumps({"text": ANSWER, "think_tokens": 12}))
    page.keyboard.press("Enter")
    answer = page.locator(".message.assistant").last
    expect(answer).to_have_attribute("data-status", "done", timeout=20_000)
    expect(answer.locator(".content.rendered table")).to_be_visible()
    expect(answer.locator(".code-block .code-language")).to_have_text("python")
    page.wait_for_function("location.pathname.startsWith('/c/')")
    return page.url.rsplit("/", 1)[1]


def test_the_login_page(context: BrowserContext, gateway: Gateway) -> None:
    page = context.new_page()
    page.goto(gateway.url + "/login")
    check(page, "login")
    page.fill("#name", "alice")
    page.fill("#password", "wrong")
    page.click("form button[type=submit]")
    expect(page.locator(".login .error")).to_be_visible()
    check(page, "login-error")


def test_the_chat_page_empty_and_with_a_conversation(context: BrowserContext, gateway: Gateway) -> None:
    page = context.new_page()
    log_in(page, gateway)
    check(page, "chat-empty")
    conversation_with_everything(page)
    page.reload()  # as the server renders it, then chat.js
    expect(page.locator(".message.assistant .content.rendered table")).to_be_visible()
    page.locator(".message.assistant details.thinking summary").click()
    page.locator("details.system-prompt summary").click()
    check(page, "chat-conversation")
    page.set_viewport_size({"width": 390, "height": 844})
    check(page, "chat-conversation-phone")


def test_the_account_page(context: BrowserContext, gateway: Gateway) -> None:
    page = context.new_page()
    log_in(page, gateway)
    page.goto(gateway.url + "/account")
    page.fill("#key-name", "laptop")
    page.locator("#key-name").press("Enter")
    expect(page.locator(".new-key code")).to_be_visible()
    check(page, "account")


def test_a_shared_page_and_a_gone_link(context: BrowserContext, gateway: Gateway, keys: dict[str, str]) -> None:
    page = context.new_page()
    log_in(page, gateway)
    conversation_id = conversation_with_everything(page)
    made = requests.post(
        f"{gateway.url}/api/conversations/{conversation_id}/share",
        json={},
        headers={"Authorization": f"Bearer {keys['alice']}"},
        timeout=5,
    )
    assert made.status_code == 201, made.text
    page.goto(gateway.url + made.json()["url"])
    expect(page.locator(".message.assistant .content.rendered table")).to_be_visible()
    page.locator("details.thinking summary").click()
    check(page, "shared")
    gone = page.goto(gateway.url + "/s/not-a-token")
    assert gone is not None and gone.status == 404
    check(page, "shared-gone")


def test_someone_elses_conversation_is_the_same_styled_404_as_an_unknown_one(
    context: BrowserContext, gateway: Gateway, keys: dict[str, str]
) -> None:
    made = requests.post(
        gateway.url + "/api/conversations",
        json={"title": "Bob's secret plans"},
        headers={"Authorization": f"Bearer {keys['bob']}"},
        timeout=5,
    )
    assert made.status_code == 201, made.text
    page = context.new_page()
    log_in(page, gateway)
    seen = {}
    for label, conversation_id in (("bobs", made.json()["id"]), ("unknown", "0123456789abcdef")):
        response = page.goto(f"{gateway.url}/c/{conversation_id}")
        assert response is not None and response.status == 404
        assert "Bob" not in page.content()
        seen[label] = page.locator("main").inner_text()
        expect(page.locator("h1")).to_have_text(
            "Nothing is here: no such page, or no conversation of yours at this address."
        )
        expect(page.locator("a.button", has_text="Start a new chat")).to_have_attribute("href", "/")
        for scheme in ("light", "dark"):  # the app's stylesheet, dark mode included
            page.emulate_media(color_scheme=scheme)
            _, background = colours(page.locator("body"))
            assert (luminance(background) < 0.05) == (scheme == "dark"), (scheme, background)
        box = page.locator(".error-box").bounding_box()
        assert box is not None and box["width"] < 800 and box["x"] > 100  # a centred card, not a bare page
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(SCREENSHOTS / f"error-404-{label}-phone.png"))
        page.set_viewport_size({"width": 1200, "height": 800})
        check(page, f"error-404-{label}")
    assert seen["bobs"] == seen["unknown"]  # nothing tells another user's conversation from none
    # A program asking for JSON gets JSON.
    api = requests.get(
        f"{gateway.url}/c/{made.json()['id']}",
        headers={"Authorization": f"Bearer {keys['alice']}", "Accept": "application/json"},
        timeout=5,
    )
    assert api.status_code == 404 and api.headers["Content-Type"].startswith("application/json")
    assert "error" in api.json()


def test_axe_is_for_the_tests_only(gateway: Gateway) -> None:
    """Not in static/ (the server cannot send it), and no template names it."""
    assert AXE.stat().st_size > 100_000
    root = Path(__file__).resolve().parents[1]
    assert not list((root / "static").rglob("axe*"))
    assert all("axe" not in path.read_text() for path in (root / "templates").glob("*.html"))
    assert requests.get(gateway.url + "/static/vendor/axe.min.js", timeout=5).status_code == 404
